"""A FastAPI shop whose endpoints send events in their own transaction and start runs.
See README.md in this folder."""
