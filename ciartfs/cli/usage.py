"""UsageError: why a command cannot run, printed as one line by `ciartfs.cli.command.main`."""


class UsageError(Exception):
    """A one-line reason the command cannot run."""
