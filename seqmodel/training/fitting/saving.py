"""Checkpoints of a run: what each save holds, the best validation loss so far, the save in
progress, and a save that fails."""

from __future__ import annotations

import math
import os
import pathlib
import re
import time

from seqmodel.errors import TrainingError
from seqmodel.training import evaluation


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _cause(error: BaseException) -> str:
    """A short cause of a failed write: the OS error when there is one (tensorstore reports disk
    full as a long ValueError ending in ``[os_error_code=28]``)."""
    if isinstance(error, OSError) and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


class RunSaver:
    """Saves the run folder's checkpoints (:class:`seqmodel.training.checkpoint.RunCheckpoints`: the
    newest two steps and the best one) with the metadata that ``seqmodel sample/eval`` and a
    resumed run read back. Without a run folder it saves nothing. Every process takes part in a
    save (orbax writes from process 0).

    Saves are asynchronous: :meth:`save` returns once the state is on the host and the files are
    written while training goes on; the next save, :meth:`wait` and :meth:`close` wait for them.
    :attr:`wait_seconds` adds up the time the loop spent in these calls. A save that fails
    raises :class:`~seqmodel.errors.TrainingError` naming the folder and the cause; the steps
    saved before it stay complete and readable.

    Example::

        saver = RunSaver(out_path, metadata={"model_config": ..., "train_config": ...})
        saver.save(2000, host_state, val=result, last_val=result, data_position=position,
                   tokens=tokens, train_seconds=elapsed)
        saver.wait()       # before the run ends: raises if writing failed
        saver.close()
    """

    def __init__(self, out_path: pathlib.Path | None, *, metadata: dict,
                 best_val_loss: float | None = None, saved_step: int | None = None):
        self.out_path = out_path
        self.checkpoints = None
        if out_path is not None:
            from seqmodel.training import checkpoint  # keeps orbax off the import path

            self.checkpoints = checkpoint.RunCheckpoints(out_path)
        self.metadata = metadata
        self.best_val_loss = best_val_loss
        self.saved_step = saved_step  # the newest step known complete on disk
        self.pending_step: int | None = None  # the step being written in the background
        self.wait_seconds = 0.0
        self.failed = False

    @property
    def active(self) -> bool:
        return self.checkpoints is not None

    @property
    def newest_step(self) -> int | None:
        """The newest step saved or being saved."""
        return self.pending_step if self.pending_step is not None else self.saved_step

    def save(self, step: int, state, *, val: evaluation.EvalResult | None,
             last_val: evaluation.EvalResult | None, data_position, tokens: int,
             train_seconds: float, wait: bool = False) -> None:
        """Save ``state`` (gathered to the host) at ``step``. ``val``: this step's evaluation,
        which decides ``best`` (None: saved without one, e.g. an interrupted run); ``last_val``:
        the latest evaluation, recorded in the metadata. ``wait``: return only once the files
        are written (to time a whole save). A step already saved is not saved again."""
        if self.checkpoints is None:
            return
        started = time.perf_counter()
        try:
            self._finish_pending()
            if step == self.saved_step:
                return  # e.g. a resumed run stopped before its first step: nothing new
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
                "step_val_loss": val.loss if val is not None and _finite(val.loss) else None,
                "best_val_loss": self.best_val_loss,
            }
            try:
                started_saving = self.checkpoints.save(
                    step, state, metadata, val_loss=metadata["step_val_loss"])
            except Exception as error:  # orbax: OSError, or tensorstore's ValueError
                raise self._failure(step, error) from error
            if started_saving:
                self.pending_step = step
            if wait:
                self._finish_pending()
        finally:
            self.wait_seconds += time.perf_counter() - started

    def wait(self) -> None:
        """Wait until the save in progress is written; raises
        :class:`~seqmodel.errors.TrainingError` if it failed."""
        started = time.perf_counter()
        try:
            self._finish_pending()
        finally:
            self.wait_seconds += time.perf_counter() - started

    def _finish_pending(self) -> None:
        if self.pending_step is None or self.checkpoints is None:
            return
        step, self.pending_step = self.pending_step, None
        try:
            self.checkpoints.wait()
        except Exception as error:
            raise self._failure(step, error) from error
        self.saved_step = step

    def _failure(self, step: int, error: BaseException) -> TrainingError:
        self.failed = True
        folder = self.checkpoints.folder if self.checkpoints is not None else self.out_path
        return TrainingError(
            f"cannot write the checkpoint of step {step} to {folder}: {_cause(error)}; "
            f"{self.kept(complete=True)}. Free space or fix the folder, then resume the run")

    def kept(self, *, complete: bool = False) -> str:
        """What is on disk, for an error message (``complete``: not counting the step being
        written)."""
        step = self.saved_step if complete else self.newest_step
        if step is not None and self.out_path is not None:
            return f"the last good checkpoint (step {step}) is in {self.out_path}"
        return "no checkpoint was written"

    def latest_path(self) -> str | None:
        return None if self.checkpoints is None else str(self.checkpoints.folder)

    def close(self) -> None:
        """Wait for the save in progress (its error, if any, was or will be reported by
        :meth:`wait`; here it is not raised again) and release the checkpoint manager."""
        if self.checkpoints is None:
            return
        started = time.perf_counter()
        try:
            self.checkpoints.close()
        except Exception:
            if not self.failed and self.pending_step is None:
                raise
        finally:
            self.wait_seconds += time.perf_counter() - started
