"""One exception type for mistakes a user can fix; the CLI prints its message as a single line."""


class UserError(Exception):
    """Bad input (unknown name, missing data, mismatched checkpoint...). The message says what to do."""
