"""A minimal Django project whose signup view sends its event in the view's own transaction.
See README.md in this folder."""
