"""The base of every error melodyvae raises for bad input.

Command-line entry points print these as one line and exit non-zero; the OSC server
answers them with ``/mvae/error``. Anything else is a bug and keeps its traceback.
"""


class MelodyVAEError(Exception):
    """Bad input: a file, an argument, a message or a checkpoint that cannot be used."""


class UserError(MelodyVAEError):
    """A mistake in what was asked for on the command line (an argument, a missing input)."""
