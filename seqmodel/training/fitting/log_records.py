"""Log records: the fetched steps' metrics summarised every ``log_every`` steps."""

from __future__ import annotations

import numpy as np


class LogIntervals:
    """Collects the per-step metrics of fetched calls and turns them into one record per
    finished log interval of ``log_every`` steps. A call of several steps may pass a log step,
    so steps wait here until their interval is complete: records then fall every ``log_every``
    steps whatever the steps per call.

    Example::

        log = LogIntervals(log_every=20, teacher_forcing=False)
        log.add(training.fetch(), seconds=1.5)
        for record in log.complete(final=False, elapsed=12.0):
            writer.write(record)       # {"step": 20, "loss": ..., "tokens_per_second": ...}
    """

    def __init__(self, log_every: int, *, teacher_forcing: bool):
        self.log_every = log_every
        self.teacher_forcing = teacher_forcing  # records carry the feed probability
        # Fetched steps whose log interval is not complete: (step, seconds, metrics).
        self.unlogged: list[tuple[int, float, dict]] = []
        self.train_loss = float("nan")  # mean loss of the last fetched steps

    def add(self, steps: list[tuple[int, dict]], seconds: float) -> None:
        """``steps`` ``[(step, metrics)]`` fetched together, which took ``seconds``."""
        self.train_loss = float(np.mean([metrics["loss"] for _, metrics in steps]))
        for at_step, metrics in steps:
            self.unlogged.append((at_step, seconds / len(steps), metrics))

    def complete(self, *, final: bool, elapsed: float) -> list[dict]:
        """One record per finished log interval (with ``final``, before an evaluation or at the
        end, the unfinished one too); ``elapsed`` is the run's wall time for the records."""
        records = []
        while self.unlogged:
            last_step = self.unlogged[-1][0]
            # The steps of the first interval in the buffer: up to its next multiple of log_every.
            end = (self.unlogged[0][0] - 1) // self.log_every * self.log_every + self.log_every
            if last_step < end and not final:
                break
            group = [entry for entry in self.unlogged if entry[0] <= end]
            self.unlogged = self.unlogged[len(group):]
            at_step, _, last = group[-1]
            seconds = sum(share for _, share, _ in group)
            elements = sum(metrics["elements"] for _, _, metrics in group)
            record = {"step": at_step,
                      "loss": float(np.mean([metrics["loss"] for _, _, metrics in group])),
                      "learning_rate": last["learning_rate"], "grad_norm": last["grad_norm"],
                      "tokens_per_second": elements / seconds if seconds > 0 else None,
                      "elapsed": round(elapsed, 3)}
            if self.teacher_forcing:
                record["teacher_forcing"] = last["teacher_forcing"]
            records.append(record)
        return records
