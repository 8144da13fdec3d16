"""Scores of point and probabilistic forecasts, as the forecasting literature defines them.

Pure NumPy. Every score takes the truth ``y`` and a forecast of shape ``(..., H)``: ``H`` horizon
steps last, any leading axes (series, backtest windows) pooled. Quantile forecasts carry a leading
quantile axis, ``(Q, ..., H)`` for ``Q`` levels, which is what ``np.quantile(samples, levels,
axis=0)`` and the heads' ``quantile`` give (:func:`quantiles_from_samples`). Each score returns a
:class:`Score`: one value per horizon step (``per_step``, ``(H,)``, pooled over the leading axes)
and one over everything (``overall``).

The definitions follow GluonTS's ``Evaluator`` and Hyndman & Athanasopoulos, *Forecasting:
Principles and Practice* (``e = y - yhat``, sums and means over the pooled entries):

- :func:`mae`: ``mean |e|``;
- :func:`rmse`: ``sqrt(mean e^2)``;
- :func:`mase`: ``mean(|e| / scale)``, ``scale`` the in-sample seasonal-naive MAE of each series'
  history (:func:`seasonal_scale`; season 1 is the naive scale);
- :func:`smape`: ``mean 200 |e| / (|y| + |yhat|)`` (M4's, 0-200; a term is 0 where both are 0);
- :func:`nd`: ``sum |e| / sum |y|`` (normalised deviation);
- :func:`weighted_quantile_loss`: ``mean_q 2 sum rho_q(y, yhat_q) / sum |y|`` with the pinball
  loss ``rho_q = (y - yhat_q)(q - 1{y < yhat_q})`` (GluonTS's ``mean_wQuantileLoss``);
- :func:`coverage`: the fraction of ``y`` inside the central interval
  ``[yhat_((1-c)/2), yhat_((1+c)/2)]``.

A NaN in the truth marks a missing value: it is left out of every score. A step with no value
left scores NaN. A series whose history is constant has a zero seasonal scale and an infinite
MASE (as in GluonTS and utilsforecast).

Example::

    levels = DEFAULT_QUANTILE_LEVELS
    quantiles = quantiles_from_samples(samples, levels)       # samples (S, b, H)
    scores = score_forecasts(truth, point=quantiles[levels.index(0.5)], quantiles=quantiles,
                             quantile_levels=levels, scale=seasonal_scale(history, season=12))
    scores["mase"].overall, scores["wql"].per_step
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

# Quantile levels of a probabilistic forecast by default: GluonTS's nine wQL levels plus the ends
# of the central 95% interval.
DEFAULT_QUANTILE_LEVELS = (0.025, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.975)
# The levels GluonTS averages for mean_wQuantileLoss (and so the published wQL figures).
WQL_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COVERAGE_INTERVALS = (0.8, 0.95)
_LEVEL_TOLERANCE = 1e-9


class Score(NamedTuple):
    """A score per horizon step ``(H,)`` and over all steps."""

    overall: float
    per_step: np.ndarray

    def to_dict(self) -> dict:
        """``{"overall": float, "per_step": [float, ...]}`` for JSON (NaN stays NaN)."""
        return {"overall": float(self.overall), "per_step": [float(v) for v in self.per_step]}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _as_truth(truth) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, np.float64)
    if truth.ndim < 1:
        raise ValueError(f"truth must have a horizon axis (..., H), got a scalar {truth!r}")
    return truth, np.isfinite(truth)


def _as_forecast(name: str, forecast, truth: np.ndarray, *, leading: int = 0) -> np.ndarray:
    forecast = np.asarray(forecast, np.float64)
    if forecast.shape[leading:] != truth.shape or forecast.ndim != truth.ndim + leading:
        expected = "(Q, " + str(truth.shape)[1:] if leading else str(truth.shape)
        raise ValueError(
            f"{name} has shape {forecast.shape}, but the truth has shape {truth.shape}: "
            f"give {name} of shape {expected}"
        )
    return forecast


def _as_levels(quantile_levels, count: int) -> np.ndarray:
    levels = np.asarray(quantile_levels, np.float64)
    if levels.ndim != 1 or len(levels) != count:
        raise ValueError(
            f"quantile_levels={quantile_levels!r} must list one level per quantile forecast "
            f"({count} along the leading axis of quantiles)"
        )
    if not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"quantile_levels={quantile_levels!r} must lie strictly in (0, 1)")
    return levels


def _level_index(levels: np.ndarray, level: float, what: str) -> int:
    matches = np.flatnonzero(np.abs(levels - level) < _LEVEL_TOLERANCE)
    if not len(matches):
        raise ValueError(
            f"{what} needs the quantile level {level:g}, but quantile_levels holds "
            f"{[float(v) for v in levels]}; add it to the forecast's levels"
        )
    return int(matches[0])


def _pooled(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Sums and counts of ``values`` where ``mask``, per horizon step and over everything."""
    values = np.where(mask, values, 0.0)
    leading = tuple(range(values.ndim - 1))
    step_sum, step_count = values.sum(leading), mask.sum(leading)
    return step_sum, step_count, float(step_sum.sum()), int(step_count.sum())


def _ratio(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(numerator, denominator)


def _mean_score(values: np.ndarray, mask: np.ndarray) -> Score:
    step_sum, step_count, total, count = _pooled(values, mask)
    return Score(float(_ratio(total, count)), _ratio(step_sum, step_count))


# ---------------------------------------------------------------------------------------------
# Point forecasts
# ---------------------------------------------------------------------------------------------


def mae(truth, point) -> Score:
    """Mean absolute error ``mean |y - yhat|``; truth and point ``(..., H)``.

    Example::

        mae([[1.0, 2.0]], [[1.5, 2.0]]).overall  # 0.25
    """
    truth, mask = _as_truth(truth)
    point = _as_forecast("point", point, truth)
    return _mean_score(np.abs(truth - point), mask)


def rmse(truth, point) -> Score:
    """Root mean squared error ``sqrt(mean (y - yhat)^2)``; truth and point ``(..., H)``.

    Example::

        rmse([[1.0, 2.0]], [[2.0, 2.0]]).overall  # sqrt(0.5)
    """
    truth, mask = _as_truth(truth)
    point = _as_forecast("point", point, truth)
    squared = _mean_score((truth - point) ** 2, mask)
    return Score(float(np.sqrt(squared.overall)), np.sqrt(squared.per_step))


def seasonal_scale(history, *, season: int = 1) -> np.ndarray:
    """In-sample MAE of the seasonal-naive forecast, ``mean_t |y_t - y_(t-season)|``, of each
    series: history ``(..., T)`` -> ``(...)``. ``season=1`` is the naive (persistence) scale.
    NaN entries (missing values, or left padding of shorter histories) are skipped.

    Example::

        scale = seasonal_scale(history, season=12)        # history (b, T) -> (b,)
    """
    history = np.asarray(history, np.float64)
    if not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season must be a positive integer (1 = no season), got {season!r}")
    if history.ndim < 1 or history.shape[-1] <= season:
        raise ValueError(
            f"history of shape {history.shape} is too short for season={season}: the seasonal "
            f"scale needs more than {season} steps; give a longer history or a shorter season"
        )
    differences = np.abs(history[..., season:] - history[..., :-season])
    valid = np.isfinite(differences)
    count = valid.sum(-1)
    if np.any(count == 0):
        raise ValueError(
            f"history has a series without two non-missing values {season} step(s) apart: "
            "its seasonal scale is undefined"
        )
    return np.where(valid, differences, 0.0).sum(-1) / count


def mase(truth, point, *, scale) -> Score:
    """Mean absolute scaled error ``mean(|y - yhat| / scale)``: truth and point ``(..., H)``,
    scale ``(...)`` (or a scalar) from :func:`seasonal_scale` of each series' history. Below 1
    the forecast beats the in-sample (seasonal) naive forecast.

    Example::

        mase(truth, point, scale=seasonal_scale(history, season=7)).overall
    """
    truth, mask = _as_truth(truth)
    point = _as_forecast("point", point, truth)
    scale = np.asarray(scale, np.float64)
    try:
        scale = np.broadcast_to(scale[..., None], truth.shape)
    except ValueError:
        raise ValueError(
            f"scale has shape {scale.shape}, but the truth has shape {truth.shape}: give one "
            f"scale per series, shape {truth.shape[:-1]}"
        ) from None
    return _mean_score(_ratio(np.abs(truth - point), scale), mask)


def smape(truth, point) -> Score:
    """Symmetric MAPE as in the M4 competition, in percent (0-200):
    ``mean 200 |y - yhat| / (|y| + |yhat|)``, a term counting 0 where ``y = yhat = 0``.

    Example::

        smape([[1.0]], [[3.0]]).overall  # 100.0
    """
    truth, mask = _as_truth(truth)
    point = _as_forecast("point", point, truth)
    denominator = np.abs(truth) + np.abs(point)
    terms = np.where(denominator > 0, _ratio(200.0 * np.abs(truth - point), denominator), 0.0)
    return _mean_score(terms, mask)


def nd(truth, point) -> Score:
    """Normalised deviation ``sum |y - yhat| / sum |y|`` (pooled sums, not a mean of ratios).

    Example::

        nd([[1.0, 3.0]], [[2.0, 3.0]]).overall  # 0.25
    """
    truth, mask = _as_truth(truth)
    point = _as_forecast("point", point, truth)
    error_step, _, error_total, _ = _pooled(np.abs(truth - point), mask)
    target_step, _, target_total, _ = _pooled(np.abs(truth), mask)
    return Score(float(_ratio(error_total, target_total)), _ratio(error_step, target_step))


# ---------------------------------------------------------------------------------------------
# Probabilistic forecasts
# ---------------------------------------------------------------------------------------------


def quantiles_from_samples(samples, quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS
                           ) -> np.ndarray:
    """Empirical quantiles of sample paths: samples ``(S, ..., H)`` -> ``(Q, ..., H)``
    (``np.quantile``'s linear interpolation, as GluonTS's ``SampleForecast``).

    Example::

        quantiles = quantiles_from_samples(paths, (0.1, 0.5, 0.9))   # paths (100, b, H)
    """
    samples = np.asarray(samples, np.float64)
    levels = _as_levels(quantile_levels, np.size(quantile_levels))
    if samples.ndim < 2:
        raise ValueError(f"samples must be (S, ..., H) with a sample axis first, got shape "
                         f"{samples.shape}")
    return np.quantile(samples, levels, axis=0)


def weighted_quantile_loss(truth, quantiles, quantile_levels: Sequence[float]) -> Score:
    """GluonTS's mean weighted quantile loss: for each level ``q``,
    ``wQL_q = 2 sum rho_q(y, yhat_q) / sum |y|`` with the pinball loss
    ``rho_q = (y - yhat_q)(q - 1{y < yhat_q})``, then the mean over the levels. truth
    ``(..., H)``, quantiles ``(Q, ..., H)`` at ``quantile_levels`` ``(Q,)``.

    Example::

        weighted_quantile_loss(truth, quantiles, WQL_LEVELS).overall
    """
    truth, mask = _as_truth(truth)
    quantiles = _as_forecast("quantiles", quantiles, truth, leading=1)
    levels = _as_levels(quantile_levels, len(quantiles))
    shaped = levels.reshape((-1,) + (1,) * truth.ndim)
    error = truth[None] - quantiles
    pinball = error * (shaped - (error < 0))
    loss_step, _, _, _ = _pooled(pinball.sum(0), mask)  # summed over levels, then pooled
    target_step, _, target_total, _ = _pooled(np.abs(truth), mask)
    count = len(levels)
    return Score(float(_ratio(2.0 * loss_step.sum(), target_total * count)),
                 _ratio(2.0 * loss_step, target_step * count))


def coverage(truth, quantiles, quantile_levels: Sequence[float], *, interval: float = 0.8
             ) -> Score:
    """Fraction of the truth inside the central ``interval`` (e.g. 0.8: between the 0.1 and
    0.9 quantiles, ends included). truth ``(..., H)``, quantiles ``(Q, ..., H)`` whose
    ``quantile_levels`` must contain ``(1 - interval) / 2`` and ``(1 + interval) / 2``.
    A calibrated forecast covers about ``interval``.

    Example::

        coverage(truth, quantiles, DEFAULT_QUANTILE_LEVELS, interval=0.95).overall
    """
    if not 0 < interval < 1:
        raise ValueError(f"interval must be in (0, 1), e.g. 0.8 for the central 80%, got "
                         f"{interval!r}")
    truth, mask = _as_truth(truth)
    quantiles = _as_forecast("quantiles", quantiles, truth, leading=1)
    levels = _as_levels(quantile_levels, len(quantiles))
    what = f"coverage of the central {interval:.0%} interval"
    lower = quantiles[_level_index(levels, (1 - interval) / 2, what)]
    upper = quantiles[_level_index(levels, (1 + interval) / 2, what)]
    inside = ((truth >= lower) & (truth <= upper)).astype(np.float64)
    return _mean_score(inside, mask)


# ---------------------------------------------------------------------------------------------
# All at once
# ---------------------------------------------------------------------------------------------


def score_forecasts(
    truth,
    *,
    point,
    quantiles=None,
    quantile_levels: Sequence[float] | None = None,
    scale=None,
    wql_levels: Sequence[float] = WQL_LEVELS,
    intervals: Sequence[float] = COVERAGE_INTERVALS,
) -> dict[str, Score]:
    """Every score of one method's forecasts, by name.

    Args:
        truth: ``(..., H)``; NaN marks a missing value.
        point: ``(..., H)`` point forecast (a median or a mean).
        quantiles: optional ``(Q, ..., H)`` at ``quantile_levels`` ``(Q,)``; adds ``"wql"``
            (over ``wql_levels``, which the levels must contain) and ``"coverage_80"``,
            ``"coverage_95"`` (one per entry of ``intervals``).
        scale: optional ``(...)`` seasonal scale of each series (:func:`seasonal_scale`);
            adds ``"mase"``.

    Returns:
        ``{"mae", "rmse", "smape", "nd"[, "mase"][, "wql", "coverage_80", "coverage_95"]}`` ->
        :class:`Score`.

    Example::

        scores = score_forecasts(truth, point=median, quantiles=quantiles,
                                 quantile_levels=DEFAULT_QUANTILE_LEVELS,
                                 scale=seasonal_scale(history, season=12))
        {name: score.to_dict() for name, score in scores.items()}   # JSON-ready
    """
    scores = {"mae": mae(truth, point), "rmse": rmse(truth, point),
              "smape": smape(truth, point), "nd": nd(truth, point)}
    if scale is not None:
        scores["mase"] = mase(truth, point, scale=scale)
    if quantiles is None:
        return scores
    if quantile_levels is None:
        raise ValueError("quantiles were given without quantile_levels: give the level of each "
                         "quantile forecast (e.g. DEFAULT_QUANTILE_LEVELS)")
    quantiles = np.asarray(quantiles, np.float64)
    levels = _as_levels(quantile_levels, len(quantiles))
    chosen = [_level_index(levels, level, "the weighted quantile loss") for level in wql_levels]
    scores["wql"] = weighted_quantile_loss(truth, quantiles[chosen], levels[chosen])
    for interval in intervals:
        scores[f"coverage_{round(100 * interval):d}"] = coverage(
            truth, quantiles, levels, interval=interval
        )
    return scores


# ---------------------------------------------------------------------------------------------
# From samples
# ---------------------------------------------------------------------------------------------


def crps_from_samples(samples: np.ndarray, truth: np.ndarray, *, axis: int = 1,
                      estimator: str = "fair") -> np.ndarray:
    """Continuous ranked probability score of a forecast given by samples, per element.

    ``CRPS = E|X - y| - 0.5 E|X - X'|`` with ``X, X'`` independent draws of the forecast. From
    ``S`` samples ``x_1..x_S`` the first term is the mean of ``|x_i - y|``; the second has two
    estimators:

    - ``"fair"`` (default): the mean of ``|x_i - x_j|`` over the ``S (S - 1)`` pairs ``i != j``,
      unbiased, so scores of forecasts with different ``S`` compare (Ferro 2014;
      ``scoringrules.crps_ensemble(..., estimator="fair")``). Needs ``S >= 2``.
    - ``"energy"``: the mean over all ``S^2`` pairs, ``i == j`` included, i.e. the CRPS of the
      empirical distribution (``properscoring.crps_ensemble``); it exceeds the fair value by
      ``E|X - X'| / (2 S)``.

    The pairwise sum comes from the sorted samples in ``O(S log S)`` time and ``O(S)`` memory per
    element: ``sum_ij |x_i - x_j| = 2 sum_i (2i - S + 1) x_(i)`` (0-based ranks). Lower is
    better.

    Args:
      samples: draws with the sample axis at ``axis``, e.g. paths ``(b, S, H, d)``.
      truth: the same shape without the sample axis, e.g. ``(b, H, d)``.
      axis: the sample axis of ``samples``.
      estimator: ``"fair"`` or ``"energy"``.

    Returns:
      CRPS with the shape of ``truth``, float64.

    Example::

        crps = crps_from_samples(paths, truth)      # (b, S, H, d), (b, H, d) -> (b, H, d)
        per_horizon = crps.mean(axis=(0, 2))        # (H,)
    """
    if estimator not in ("fair", "energy"):
        raise ValueError(f"estimator={estimator!r} is invalid; allowed: 'fair', 'energy'")
    samples = np.moveaxis(np.asarray(samples, np.float64), axis, 0)
    truth = np.asarray(truth, np.float64)
    if samples.shape[1:] != truth.shape:
        raise ValueError(
            f"samples without the sample axis have shape {samples.shape[1:]}, but truth has shape "
            f"{truth.shape}; they must match"
        )
    count = samples.shape[0]
    if estimator == "fair" and count < 2:
        raise ValueError(
            f"samples has {count} sample(s) on axis {axis}; estimator='fair' needs at least 2 "
            "(it averages over pairs of distinct samples): draw more, or pass "
            "estimator='energy' (one sample: the absolute error)"
        )
    absolute_error = np.abs(samples - truth[None]).mean(0)
    ordered = np.sort(samples, axis=0)
    rank_weight = (2.0 * np.arange(count) - count + 1.0).reshape((count,) + (1,) * truth.ndim)
    pair_sum = 2.0 * (rank_weight * ordered).sum(0)
    pairs = count * (count - 1) if estimator == "fair" else count * count
    return absolute_error - 0.5 * pair_sum / pairs


def sample_quantiles(samples: np.ndarray, quantiles: Sequence[float], *, axis: int = 1) -> np.ndarray:
    """Empirical quantiles over the sample axis: ``(b, S, H, d)`` -> ``(Q, b, H, d)``."""
    quantiles = np.asarray(quantiles, np.float64)
    if quantiles.ndim != 1 or np.any((quantiles < 0) | (quantiles > 1)):
        raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles.tolist()}")
    return np.quantile(np.asarray(samples), quantiles, axis=axis)


def horizon_mean(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Average ``(b, H, d)`` errors over rows and features -> ``(H,)``, counting only steps where
    ``mask (b, H)`` is 1."""
    values = np.asarray(values, np.float64).mean(-1)  # (b, H)
    if mask is None:
        return values.mean(0)
    mask = np.asarray(mask, np.float64)
    return (values * mask).sum(0) / np.maximum(mask.sum(0), 1.0)
