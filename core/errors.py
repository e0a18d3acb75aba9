"""Exception types for mistakes a user can fix; the CLI prints their message as a single line."""


class UserError(Exception):
    """Bad input (unknown name, missing data, mismatched checkpoint...). The message says what to do."""


class DivergedError(UserError):
    """Training produced a non-finite loss: the run stops, keeping the state of its last good epoch."""
