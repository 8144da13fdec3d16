"""Tokens and speed of a run, measured between fetches of the step metrics."""

from __future__ import annotations

import time

from seqmodel.training.fitting.clock import TimeBudget


class Throughput:
    """Counts the tokens (weighted elements) trained on and times the steps between two fetches
    of their metrics (an interval). Intervals that compiled a program are left out of the step
    speed and of the time budget's step-time estimate.

    Example::

        meter = Throughput(tokens_before=0)
        meter.dispatched(20, compiled=False)
        seconds = meter.close_interval(elements=20 * 512.0, budget=budget)
    """

    def __init__(self, tokens_before: int):
        self.tokens_before = tokens_before
        self.tokens = tokens_before
        self.interval_start = time.perf_counter()
        self.interval_steps = 0
        self.interval_compiled = False
        # Train steps after the compile: what step_tokens_per_second reports.
        self.steady_elements, self.steady_seconds = 0.0, 0.0

    def dispatched(self, steps: int, *, compiled: bool) -> None:
        self.interval_steps += steps
        self.interval_compiled = self.interval_compiled or compiled

    def close_interval(self, elements: float, budget: TimeBudget) -> float:
        """End the interval whose steps trained on ``elements`` tokens; returns its seconds."""
        now = time.perf_counter()
        seconds = now - self.interval_start
        self.tokens += int(round(elements))
        if not self.interval_compiled:
            budget.record_steps(self.interval_steps, seconds)
            self.steady_elements += elements
            self.steady_seconds += seconds
        self.interval_compiled = False
        self.interval_start, self.interval_steps = now, 0
        return seconds

    def restart_interval(self) -> None:
        """Start the interval anew (after an evaluation: it is not step time)."""
        self.interval_start = time.perf_counter()

    def step_tokens_per_second(self) -> float | None:
        return self.steady_elements / self.steady_seconds if self.steady_seconds > 0 else None
