"""The one exception type autosam raises for bad input; the CLI prints it as one line and exits 2."""


class AutosamError(Exception):
    """Bad input or configuration, with a message that names the file and the problem."""
