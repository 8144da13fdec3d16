"""Checkpoints of a run: what each save holds, and the best validation loss so far."""

from __future__ import annotations

import math
import pathlib

from seqmodel import train


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


class RunSaver:
    """Saves the run folder's ``latest`` checkpoint (and ``best`` when validation improved) with
    the metadata that ``seqmodel sample/eval`` and a resumed run read back. Without a run folder
    it saves nothing. Every process takes part in a save (orbax writes from process 0).

    Example::

        saver = RunSaver(out_path, metadata={"model_config": ..., "train_config": ...})
        saver.save(2000, host_state, val=result, last_val=result, data_position=position,
                   tokens=tokens, train_seconds=elapsed)
    """

    def __init__(self, out_path: pathlib.Path | None, *, metadata: dict,
                 best_val_loss: float | None = None, saved_step: int | None = None):
        self.out_path = out_path
        self.checkpoints = None
        if out_path is not None:
            from seqmodel import checkpoint  # keeps orbax off the import path

            self.checkpoints = checkpoint.RunCheckpoints(out_path)
        self.metadata = metadata
        self.best_val_loss = best_val_loss
        self.saved_step = saved_step  # the step of the newest checkpoint on disk

    @property
    def active(self) -> bool:
        return self.checkpoints is not None

    def save(self, step: int, state, *, val: train.EvalResult | None,
             last_val: train.EvalResult | None, data_position, tokens: int,
             train_seconds: float) -> None:
        """Save ``state`` (gathered to the host) at ``step``. ``val``: this step's evaluation,
        which decides ``best`` (None: an interrupted run, never best); ``last_val``: the latest
        evaluation, recorded in the metadata."""
        if self.checkpoints is None:
            return
        improved = val is not None and _finite(val.loss) and (
            self.best_val_loss is None or val.loss < self.best_val_loss)
        if improved:
            self.best_val_loss = val.loss
        metadata = {
            **self.metadata,
            "data_position": data_position,
            "step": step,
            "tokens": tokens,
            "train_seconds": train_seconds,
            "val_loss": None if last_val is None else last_val.loss,
            "best_val_loss": self.best_val_loss,
        }
        self.checkpoints.save(step, state, metadata, best=improved)
        self.saved_step = step

    def kept(self) -> str:
        """What is on disk, for an error message."""
        if self.saved_step is not None and self.out_path is not None:
            return f"the last good checkpoint (step {self.saved_step}) is in {self.out_path}"
        return "no checkpoint was written"

    def latest_path(self) -> str | None:
        return None if self.checkpoints is None else str(self.checkpoints.latest_path())

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()
