"""Exceptions that users meet, importable without the heavy modules that raise them.

The command line (:func:`seqmodel.cli.main`) sorts exceptions by one rule:

- a *user error* (a :class:`UserError`: :class:`CheckpointError`, ``DataError``,
  ``DistributedError``, the CLI's usage errors) is the user's to fix: one line on stderr, exit
  status 2;
- :class:`TrainingError`: the run itself failed (a diverged loss, a checkpoint that cannot be
  written): one line, exit status 1;
- anything else is a bug: its traceback is shown.

:class:`CheckpointError` lives here rather than in :mod:`seqmodel.training.checkpoint`, which imports
orbax (slow to import): ``from seqmodel import CheckpointError`` and the CLI's error handling
then cost nothing until a checkpoint is actually read or written.

Example::

    from seqmodel import CheckpointError, load_model
    try:
        model, metadata = load_model("runs/demo")
    except CheckpointError as error:
        print(error)            # one line: what is wrong and what to do
"""

from __future__ import annotations


class UserError(ValueError):
    """Base of the errors that a user causes and can fix (a missing file, a bad setting, an
    incompatible checkpoint); the message is one line that says what to do. A ``ValueError``, so
    that code catching ``ValueError`` for bad arguments keeps working."""


class CheckpointError(UserError):
    """A missing, unreadable or incompatible checkpoint; the message is one line for the user."""


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a checkpoint that cannot be written); the message says
    what happened and what was kept on disk."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is one of the library's user errors (see the module docstring).

    Example::

        is_user_error(CheckpointError("no checkpoint in runs/x"))   # True
        is_user_error(KeyError("step"))                               # False: a bug
    """
    return isinstance(error, UserError)
