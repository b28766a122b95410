"""The one exception type for bad user input: the CLI prints it as a single line and exits 2."""


class UserInputError(ValueError):
    """Input the user can fix (a path, a label list, a schedule name); the message says how."""
