"""The time budget of a run: wall time, the deadline, and the step-time estimate behind it."""

from __future__ import annotations

import time


class TimeBudget:
    """Wall time of a run (``elapsed_before`` seconds of earlier runs it resumes included), its
    ``max_time`` deadline, and the measured seconds per step, per evaluation and per checkpoint
    from which a time-bounded run decides when to stop and where its schedule ends.

    Example::

        budget = TimeBudget(max_time=110.0, elapsed_before=0.0)
        budget.record_steps(20, 1.5)                      # 20 steps took 1.5 s
        budget.out_of_time(estimated_eval=4.0, steps=20)  # stop before the next call?
    """

    now = staticmethod(time.perf_counter)  # replaceable in tests

    def __init__(self, max_time: float | None, elapsed_before: float):
        self.start = self.now() - elapsed_before
        self.max_time = max_time
        self.seconds_per_step: float | None = None
        self.eval_seconds: float | None = None
        self.save_seconds: float | None = None

    def elapsed(self) -> float:
        return self.now() - self.start

    def record_steps(self, steps: int, seconds: float) -> None:
        if steps <= 0 or seconds <= 0:
            return
        rate = seconds / steps
        # Averaged so that one slow interval (another process on the machine) does not swing it.
        self.seconds_per_step = rate if self.seconds_per_step is None else (
            0.7 * self.seconds_per_step + 0.3 * rate)

    def reserve(self, estimated_eval: float) -> float:
        """Seconds kept for the final evaluation and checkpoint (and a margin for the last step)."""
        if self.eval_seconds is not None:  # measured beats estimated
            estimated_eval = 1.2 * (self.eval_seconds + (self.save_seconds or 0.0))
        return estimated_eval + 1.0

    def out_of_time(self, estimated_eval: float, *, steps: int = 1) -> bool:
        """Whether ``steps`` more steps and the final evaluation would pass ``max_time``."""
        if self.max_time is None:
            return False
        next_steps = (self.seconds_per_step or 0.0) * steps
        return self.elapsed() + next_steps + self.reserve(estimated_eval) >= self.max_time

    def estimated_total_steps(self, step: int, estimated_eval: float) -> int | None:
        """The step at which the run will run out of time at the measured speed (None until a
        speed is measured, or without ``max_time``)."""
        if self.max_time is None or self.seconds_per_step is None:
            return None
        remaining = self.max_time - self.elapsed() - self.reserve(estimated_eval)
        return step + max(int(remaining / self.seconds_per_step), 1)
