"""Checkpoints with orbax-checkpoint: the full training state, device-independent.

A run folder holds the steps of one orbax ``CheckpointManager``::

    RUN/checkpoints/<step>/{params, train_state, metadata, metrics}

kept by orbax's preservation policy: the newest :data:`KEEP_LATEST` steps (so that a damaged
newest step still leaves the one before it) and the step with the lowest validation loss (the
*best* one). Saves are asynchronous: :meth:`RunCheckpoints.save` returns once the state is copied
to the host, and the files are written while training goes on. orbax writes a step into
``<step>.orbax-checkpoint-tmp*`` and renames it when complete, so a process killed during a save
leaves the steps before it intact (the next run removes the partial one).

- ``params``: the model parameters as a plain nested dict of arrays (``nnx.to_pure_dict``).
- ``train_state``: everything else that changes during training (optimizer state, step, the
  lanes' carry, RNG keys, schedule horizon), as a nested dict named by the fields of
  :class:`~seqmodel.training.optimization.TrainState` and the paths inside them (``opt_state/0/mu/...``), so that
  an incompatible checkpoint names the field.
- ``metadata``: JSON with the model and train configs, the data side (tokenizer or normaliser),
  the data position, step, tokens, elapsed seconds and validation losses.
- ``metrics``: orbax's record of the step's validation loss, by which it keeps the best step.

Arrays are written as NumPy arrays and read back as NumPy arrays, then placed on the default
device: a checkpoint written on a GPU loads on a CPU (nothing pins a device or a sharding).

Run folders written before this layout (``RUN/latest/<step>``, ``RUN/best/<step>``, the training
state as numbered leaves) still load for sampling, evaluation and resuming; a resumed run writes
``RUN/checkpoints``.

:func:`inspect_run` is the one reading of what a folder holds (steps, partial steps, records);
``seqmodel train --out`` and ``--resume`` both decide by it.

Modules: :mod:`~seqmodel.training.checkpoint.folders` (what a folder holds, no orbax),
:mod:`~seqmodel.training.checkpoint.trees` (arrays and names), :mod:`~seqmodel.training.checkpoint.saving`
(:class:`RunCheckpoints`), :mod:`~seqmodel.training.checkpoint.loading` (restore, load, metadata).

Example::

    model, metadata = load_model("runs/demo")                 # best if present, else latest
    tokenizer = tokenizer_from_dict(metadata["data"]["tokenizer"])
"""

from seqmodel.errors import CheckpointError
from seqmodel.training.checkpoint.folders import (
    CHECKPOINTS,
    DELETED,
    LEGACY_KINDS,
    RECORDS,
    UNREADABLE,
    RunFolder,
    SavedStep,
    inspect_run,
    set_aside_unreadable_steps,
)
from seqmodel.training.checkpoint.loading import (
    RestoredRun,
    check_model_config,
    find_checkpoint,
    load_model,
    peek_metadata,
    read_metadata,
    restore_train_state,
)
from seqmodel.training.checkpoint.saving import KEEP_LATEST, RunCheckpoints
from seqmodel.training.checkpoint.trees import TRAIN_STATE_FIELDS

__all__ = [
    "CHECKPOINTS", "DELETED", "KEEP_LATEST", "LEGACY_KINDS", "RECORDS", "TRAIN_STATE_FIELDS",
    "UNREADABLE", "CheckpointError", "RestoredRun", "RunCheckpoints", "RunFolder", "SavedStep",
    "check_model_config", "find_checkpoint", "inspect_run", "load_model", "peek_metadata",
    "read_metadata", "restore_train_state", "set_aside_unreadable_steps",
]
