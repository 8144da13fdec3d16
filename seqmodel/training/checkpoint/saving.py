"""Writing a run's checkpoints: one orbax ``CheckpointManager``, asynchronous saves, orbax's
preservation policy (the newest steps and the best one)."""

from __future__ import annotations

import math
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from seqmodel.training.checkpoint.folders import CHECKPOINTS, DELETED
from seqmodel.training.checkpoint.trees import named_arrays, train_state_tree

KEEP_LATEST = 2


def _validation_loss(metrics: dict) -> float:
    """The metric that orbax ranks steps by (lower is better); a step saved without an
    evaluation ranks last."""
    loss = metrics.get("val_loss") if metrics else None
    return math.inf if loss is None or not math.isfinite(loss) else float(loss)


class RunCheckpoints:
    """The checkpoints of one run folder: one orbax ``CheckpointManager`` on
    ``RUN/checkpoints`` that keeps the newest ``keep_latest`` steps and the best one, saving
    asynchronously. Opening it removes the partial steps of a killed save. Steps that the policy
    drops leave the step listing in one rename (into ``.deleted``, emptied at the next save), so
    that a process killed while deleting leaves no half-deleted step.

    Example::

        checkpoints = RunCheckpoints("runs/demo")
        checkpoints.save(step, state, metadata, val_loss=2.31)   # returns while the disk writes
        checkpoints.wait()                                        # raises if the write failed
        checkpoints.close()
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep_latest: int = KEEP_LATEST):
        self.run_dir = pathlib.Path(run_dir)
        self.folder = self.run_dir / CHECKPOINTS
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep_latest),
            # reverse: sorted from the highest loss down, the last n are kept.
            checkpoint_managers.BestN(get_metric_fn=_validation_loss, reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
            preservation_policy=policy, todelete_subdir=DELETED,
            # With best_fn orbax writes each step's metrics, so a resumed run still knows
            # which earlier step is the best one.
            best_fn=_validation_loss, best_mode="min")
        self.manager = ocp.CheckpointManager(self.folder.absolute(), options=options)
        self._empty_deleted()

    def _empty_deleted(self) -> None:
        """Remove the steps orbax dropped (process 0 writes and deletes for the run)."""
        if jax.process_index() == 0:
            shutil.rmtree(self.folder / DELETED, ignore_errors=True)

    def save(self, step: int, state, metadata: dict, *, val_loss: float | None) -> bool:
        """Start saving ``state`` (a :class:`~seqmodel.training.optimization.TrainState`) at ``step``, evaluated
        at ``val_loss`` (None: saved without an evaluation). Copies the state to the host, waits
        for the previous save, and returns while the files are written; :meth:`wait` raises if
        writing failed. A step already on disk is not saved again (returns False)."""
        self.manager.wait_until_finished()  # the previous save, and the steps it dropped
        self._empty_deleted()
        if step in self.manager.all_steps():
            return False
        params = named_arrays(nnx.to_pure_dict(state.params))
        rest = named_arrays(train_state_tree(state))
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(rest),
            metadata=ocp.args.JsonSave(metadata),
        )
        self.manager.save(step, args=args, metrics={"val_loss": val_loss})
        return True

    def wait(self) -> None:
        """Wait for the save in progress; raises its error if it failed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        self._empty_deleted()
