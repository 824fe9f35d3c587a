"""Errors a user can cause: the CLI prints their one sentence and exits with code 2."""


class UserError(Exception):
    pass
