"""The evaluation schedule of a run: which steps evaluate, log and end it, and how many steps
each compiled call takes."""

from __future__ import annotations

import dataclasses

from seqmodel.training.optimization import TrainConfig


@dataclasses.dataclass(frozen=True)
class CallSchedule:
    """Where the steps of a run fall, from its :class:`~seqmodel.training.optimization.TrainConfig`: evaluations
    every ``eval_every`` steps, log records every ``log_every``, the end at ``steps``, and calls
    of ``steps_per_call`` steps that never pass an evaluation step or the end.

    Example::

        schedule = CallSchedule(TrainConfig(steps=100, eval_every=50, steps_per_call=20))
        schedule.steps_this_call(40)      # 1: a call of 20 would pass the evaluation at 50
        schedule.evaluates_at(50), schedule.done(100)
    """

    config: TrainConfig

    def done(self, step: int) -> bool:
        return self.config.steps is not None and step >= self.config.steps

    def evaluates_at(self, step: int) -> bool:
        return self.config.eval_every is not None and step % self.config.eval_every == 0

    def logs_between(self, before: int, after: int) -> bool:
        """Whether a log step lies in ``(before, after]``."""
        return after // self.config.log_every > before // self.config.log_every

    def steps_this_call(self, step: int) -> int:
        """``steps_per_call`` when that many steps from ``step`` fit before the next evaluation
        and the end of the run, else 1. The calls then fall at the same steps in a resumed run as
        in an uninterrupted one (a run stops, and so resumes, only between calls), so the same
        programs compute the same steps."""
        config = self.config
        count = config.steps_per_call
        if count == 1:
            return 1
        boundaries = []
        if config.eval_every is not None:
            boundaries.append((step // config.eval_every + 1) * config.eval_every)
        if config.steps is not None:
            boundaries.append(config.steps)
        return count if not boundaries or step + count <= min(boundaries) else 1
