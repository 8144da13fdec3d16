"""Split-conformal calibration of forecast intervals, per horizon step and per interval level.

A model's sample paths give central intervals ``[q_(1-L)/2, q_(1+L)/2]`` that are often too narrow
(the model's own errors compound free running, and a model fits the data it trained on). On
calibration windows whose truth the intervals did not see, conformalised quantile regression
(Romano et al. 2019) scores each window by how far the truth fell outside its interval,

    E = max(q_lo - y, y - q_hi) / s        (negative inside the interval)

with ``s`` the window's scale (the mean ``|y|`` of its context, so that series of different levels
pool), and widens every interval of that level and horizon step by the ``ceil((n + 1) L) / n``
empirical quantile of ``E`` times the scale of the window forecast. With exchangeable windows the
calibrated interval covers at least ``L``. The levels calibrated (:data:`DEFAULT_LEVELS`) run
from 10% to 99%; an interval between two of them is widened by their margins interpolated, one
wider than the widest by the widest's margin (with a warning).

A margin widens, it never narrows (``narrow=False``, the default): the calibration windows lie
in the validation tail the checkpoint was chosen on, and where that tail is short they reach
back into the data the model fitted, so they understate the errors of a later forecast. Where
even those windows say an interval is too narrow it is too narrow; where they say it is too
wide, that is not evidence enough. Chosen on the tuning suite (benchmarks/bench_calibration.py,
27 held-out (series, seed) pairs): the mean distance of the held-out coverage from the nominal
fell from 0.062 to 0.054 (80%) and 0.044 to 0.033 (95%) against narrowing allowed.

Calibration windows: rolling origins, one step apart, whose forecast windows lie in the
validation part of every series (what training did not fit), extended back into the training
part when that part is too short for :data:`MIN_WINDOWS` windows.

Example::

    calibration = calibrate(forecaster, dataset, horizon=12)
    lo, hi = calibration.adjust(quantiles, levels, scale)      # calibrated quantiles
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import jax
import numpy as np

from seqmodel.data.batching import DataError

# The central intervals calibrated: every 10% (so every symmetric pair of the deciles, which the
# backtests score), and the wide ones users ask for (95%, 98%, 99%). An interval between two of
# them is widened by their margins interpolated (Calibration.adjust). Each level's margin comes
# from the same calibration paths, so more levels cost no more forecasts.
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
# Fewest calibration windows; fewer leaves the conformal quantile of a 95% interval undefined.
MIN_WINDOWS = 40
# Most calibration windows (evenly spread over all that fit): their paths cost a forecast each.
MAX_WINDOWS = 400
CALIBRATION_SAMPLES = 100


def window_scale(history: np.ndarray, context_length: int) -> np.ndarray:
    """``(d,)``: the mean ``|y|`` of the last ``context_length`` steps (NaN skipped), 1 where
    that is 0 or undefined: the unit in which conformal scores pool across series."""
    recent = np.abs(np.asarray(history, np.float64)[-context_length:])
    with np.errstate(invalid="ignore"):
        scale = np.nanmean(recent, axis=0)
    return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def central_pairs(quantile_levels: Sequence[float]) -> list[tuple[int, int, float]]:
    """``(low index, high index, coverage)`` of every central interval the quantile levels hold:
    each level ``q < 0.5`` whose mirror ``1 - q`` is also there (compared to 6 decimals)."""
    rounded = [round(float(level), 6) for level in quantile_levels]
    return [(index, rounded.index(round(1 - level, 6)), round(1 - 2 * level, 6))
            for index, level in enumerate(rounded)
            if level < 0.5 and round(1 - level, 6) in rounded]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Conformal margins per interval level and horizon step.

    Attributes:
      levels: the central interval coverages calibrated, e.g. ``(0.8, 0.95)``.
      margins: ``(len(levels), H)``: the widening of each interval, in window scales (negative
        narrows it; only with ``narrow=True``).
      coverage_before: per level, the coverage of the raw intervals on the calibration windows.
      windows: how many calibration windows there were.
    """

    levels: tuple
    margins: np.ndarray
    coverage_before: dict
    windows: int

    @property
    def horizon(self) -> int:
        return self.margins.shape[1]

    def margin(self, coverage: float, horizon: int) -> np.ndarray:
        """``(horizon,)``: the margin of the central ``coverage`` interval at each step. A
        calibrated level's own; between two calibrated levels their margins interpolated
        linearly in the coverage (below the lowest, toward 0 at coverage 0: the median moves
        by nothing); above the highest, the highest's, with a warning (those windows cannot
        say how far out a wider interval must go)."""
        order = np.argsort(self.levels)
        levels = np.concatenate([[0.0], np.asarray(self.levels, np.float64)[order]])
        margins = np.concatenate([np.zeros((1, self.horizon)), self.margins[order]])
        if coverage > levels[-1] + 1e-9:
            warnings.warn(f"the {coverage:.4g} interval is wider than the widest calibrated "
                          f"({levels[-1]:.4g}): it is widened by that one's margin only",
                          stacklevel=3)
        return np.array([np.interp(coverage, levels, margins[:, step])
                         for step in range(horizon)])

    def adjust(self, quantiles: np.ndarray, quantile_levels: Sequence[float],
               scale: np.ndarray) -> np.ndarray:
        """Calibrated ``quantiles`` ``(Q, ..., H, d)`` at ``quantile_levels``: every central
        pair (``q`` and ``1 - q``) moved out by its margin (:meth:`margin`) times ``scale``
        ``(..., d)``, the median kept, the levels kept in order."""
        quantiles = np.array(quantiles, np.float64, copy=True)
        horizon = quantiles.shape[-2]
        if horizon > self.horizon:
            raise ValueError(f"the calibration covers {self.horizon} steps, the forecast "
                             f"{horizon}; calibrate with the forecast's horizon")
        scale = np.asarray(scale, np.float64)[..., None, :]  # (..., 1, d)
        for low, high, coverage in central_pairs(quantile_levels):
            margin = self.margin(coverage, horizon)[:, None] * scale  # (..., H, d)
            quantiles[low] -= margin
            quantiles[high] += margin
        return np.sort(quantiles, axis=0)  # a narrowed pair cannot cross its neighbours

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "margins": self.margins.round(6).tolist(),
                "coverage_before": self.coverage_before, "windows": self.windows}

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        return cls(tuple(values["levels"]), np.asarray(values["margins"], np.float64),
                   dict(values["coverage_before"]), int(values["windows"]))


def interval_scores(low: np.ndarray, high: np.ndarray, truth: np.ndarray,
                    scale: np.ndarray) -> np.ndarray:
    """``(n, H, d)`` conformal scores of intervals ``[low, high]`` ``(n, H, d)`` against
    ``truth``: how far it fell outside, in window scales ``(n, d)`` (negative inside)."""
    return np.maximum(low - truth, truth - high) / scale[:, None, :]


def conformal_margins(paths: np.ndarray, truth: np.ndarray, scale: np.ndarray,
                      levels: Sequence[float] = DEFAULT_LEVELS, *,
                      narrow: bool = False) -> Calibration:
    """The :class:`Calibration` of sample paths ``(n, S, H, d)`` against ``truth`` ``(n, H, d)``
    (NaN: missing) with window scales ``(n, d)``; pooled over windows and features. With
    ``narrow=False`` a negative margin (the windows found the interval too wide) is 0."""
    levels = tuple(float(level) for level in levels)
    n = len(paths)
    margins = np.zeros((len(levels), paths.shape[2]))
    coverage_before = {}
    for index, coverage in enumerate(levels):
        low, high = np.quantile(paths, [(1 - coverage) / 2, (1 + coverage) / 2], axis=1)
        scores = interval_scores(low, high, truth, scale)  # (n, H, d)
        present = np.isfinite(scores)
        coverage_before[f"{coverage:g}"] = float((scores[present] <= 0).mean())
        for step in range(paths.shape[2]):
            column = scores[:, step][present[:, step]]
            if not len(column):
                continue
            # The ceil((n + 1) L)-th smallest score (the largest where that exceeds n).
            rank = min(math.ceil((len(column) + 1) * coverage), len(column))
            margins[index, step] = np.partition(column, rank - 1)[rank - 1]
    if not narrow:
        margins = np.maximum(margins, 0.0)
    return Calibration(levels, margins, coverage_before, n)


def calibration_origins(lengths: Sequence[int], splits: Sequence[int], *, horizon: int,
                        first: int, minimum: int = MIN_WINDOWS,
                        maximum: int = MAX_WINDOWS) -> list[tuple[int, int]]:
    """``(series, origin)`` pairs: every origin one step apart whose ``horizon`` steps lie at
    or after the series' split, moved back into the training part (never before ``first``)
    until there are ``minimum``; at most ``maximum``, evenly spread."""
    def origins(back: int):
        return [(row, origin) for row, (length, split) in enumerate(zip(lengths, splits))
                for origin in range(max(split - back, first), length - horizon + 1)]

    back, chosen = 0, origins(0)
    longest = max(lengths)
    while len(chosen) < minimum and back < longest:
        back = max(1, 2 * back)
        chosen = origins(back)
    if not chosen:
        raise DataError(f"no calibration window fits: the series are shorter than the horizon "
                        f"{horizon} plus the {first} steps a forecast needs first")
    if len(chosen) > maximum:
        picks = np.linspace(0, len(chosen) - 1, maximum).round().astype(int)
        chosen = [chosen[i] for i in picks]
    return chosen


def calibrate(forecaster, series: Sequence, splits: Sequence[int], *, horizon: int,
              levels: Sequence[float] = DEFAULT_LEVELS, num_samples: int = CALIBRATION_SAMPLES,
              key=None, narrow: bool = False) -> Calibration:
    """Conformal margins of ``forecaster``'s intervals on rolling windows of ``series``
    (:class:`~seqmodel.data.preparation.Series`, globally normalised) at or after ``splits``;
    ``narrow``: let a margin narrow an interval the windows found too wide.

    Example::

        calibration = calibrate(forecaster, dataset.series, dataset.splits, horizon=12)
    """
    first = max(forecaster.preparation.spec.max_lag, 2)
    chosen = calibration_origins([len(item) for item in series], splits, horizon=horizon,
                                 first=first)
    paths, truth, scale = window_paths(forecaster, series, chosen, horizon=horizon,
                                       num_samples=num_samples,
                                       key=jax.random.key(1) if key is None else key)
    return conformal_margins(paths, truth, scale, levels, narrow=narrow)


def window_paths(forecaster, series: Sequence, chosen: Sequence[tuple[int, int]], *,
                 horizon: int, num_samples: int, key
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(paths (n, S, H, d), truth (n, H, d), scale (n, d))`` in original units of the
    ``chosen`` ``(series, origin)`` windows of the normalised ``series``: each forecast from
    the history before its origin, its truth and its window scale."""
    spec, normalizer = forecaster.preparation.spec, forecaster.preparation.normalizer
    values = [series[row].values[:origin] for row, origin in chosen]
    known = [series[row].known[: origin + horizon] for row, origin in chosen]
    paths = forecaster.sample(values, known, horizon=horizon, num_samples=num_samples, key=key)
    truth = np.stack([normalizer.denormalize(series[row].values[origin : origin + horizon])
                      for row, origin in chosen])
    scale = np.stack([window_scale(normalizer.denormalize(v), spec.context_length)
                      for v in values])
    return paths, truth, scale
