"""Errors a user can act on: the CLI prints their message (no traceback) and exits with status 2."""


class FastembError(Exception):
    """Base of every error whose message tells the user what to fix."""
