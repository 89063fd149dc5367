"""The errors that are the user's to fix, and the one base class the CLI recognises.

A `UserError` is a mistake in what the user gave jaxvna (data, config, paths, a workdir in
use): `jaxvna <command>` prints its message on one line and exits with status 2, keeping
the traceback for `--verbose`. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input, config or path; the message says what was given and what was expected."""


class ConfigError(UserError, ValueError):
  """A config field holds a value that cannot work; the message names field and value."""


class RefusedPathError(UserError, FileExistsError):
  """jaxvna would have to replace or delete a file or folder that it did not write."""


class NonFiniteError(UserError, FloatingPointError):
  """Non-finite numbers where they must not be: losses or gradients too many training steps
  in a row, or parameters about to be saved."""


class MissingCheckpointError(UserError, FileNotFoundError):
  """A command needs a trained run, and the workdir holds no checkpoint."""
