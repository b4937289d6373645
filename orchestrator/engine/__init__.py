"""Executing one run: replay the recorded steps, execute the next ones, checkpoint each."""
