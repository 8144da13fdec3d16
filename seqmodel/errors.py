"""Exceptions that users meet and that must be importable without the heavy modules behind them.

:class:`CheckpointError` lives here rather than in :mod:`seqmodel.checkpoint`, which imports
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


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint; the message is one line for the user."""
