"""Rolling-origin backtest: the model against classical baselines over the last windows.

Over the last ``N`` windows of ``H`` steps of every series (origins ``T - N H, ..., T - H``),
each method forecasts ``H`` steps from the history before the origin, and every score of
:mod:`seqmodel.forecasting.scores` is computed per horizon step and overall, pooled over series,
windows and target features:

- ``mae``, ``rmse``, ``mase`` (scaled by each history's in-sample seasonal-naive MAE),
  ``smape``, ``nd`` of the point forecast (the median);
- ``wql`` (GluonTS's mean weighted quantile loss), ``coverage_80`` / ``coverage_95`` of the
  central intervals, and ``crps``.

Methods: ``seqmodel`` (sample paths of :func:`seqmodel.forecasting.free_running.forecast_series`: empirical
quantiles, the fair CRPS of the samples), ``persistence``, ``seasonal_naive`` and, with the
optional ``forecast`` extra, ``auto_ets`` and ``auto_arima`` (:mod:`seqmodel.forecasting.baselines`). The
baselines' forecast distributions are normal, so their CRPS is the closed form of the normal
distribution whose spread their 10% and 90% quantiles give.

Example::

    result = backtest(model, spec, normalizer, series, windows=5, horizon=12, season=12,
                      key=jax.random.key(0))
    result.to_dict()["methods"]["seqmodel"]["mase"]["overall"]
    plot_backtest(result, "backtest.png")
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Sequence

import jax
import numpy as np

from seqmodel.data.batching import DataError

from seqmodel.forecasting import baselines, scores
from seqmodel.forecasting.scores import crps_from_samples

Array = jax.Array

METRICS = ("mae", "rmse", "mase", "smape", "nd", "wql", "crps", "coverage_80", "coverage_95")
MODEL_METHOD = "seqmodel"
NAIVE_BASELINES = ("persistence", "seasonal_naive")
_Z90 = NormalDist().inv_cdf(0.9)


@dataclasses.dataclass(frozen=True)
class MethodForecasts:
    """One method's forecasts of every window: ``point`` ``(n, N, d, H)`` and ``quantiles``
    ``(Q, n, N, d, H)`` in original units; ``crps`` ``(n, N, d, H)``."""

    point: np.ndarray
    quantiles: np.ndarray
    crps: np.ndarray


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """What :func:`backtest` found.

    Attributes:
      horizon, windows, season: ``H``, ``N`` and the season of MASE and seasonal naive.
      origins: ``(n, N)`` the first forecast step of each window of each series.
      truth: ``(n, N, d, H)`` original units (NaN: missing).
      series: the whole series ``[(T_i, d)]`` in original units (for plots); ``names``.
      quantile_levels: the levels of every method's quantiles.
      forecasts: method name -> :class:`MethodForecasts`.
      scores: method name -> metric name -> :class:`~seqmodel.forecasting.scores.Score`.
      overlap: whether windows overlapped what the model saw (``allow_overlap``).
      calibration: ``coverage_80_before`` / ``_after``, ... with conformal calibration.
    """

    horizon: int
    windows: int
    season: int
    origins: np.ndarray
    truth: np.ndarray
    series: list
    names: list
    quantile_levels: tuple
    forecasts: dict
    scores: dict
    overlap: bool = False
    calibration: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready: ``{"horizon", "windows", "season", "series", "overlap", "calibration",
        "methods": {method: {metric: {"overall": float, "per_step": [H floats]}}}}``;
        ``overlap`` says whether windows overlapped what the model saw (scored with
        ``allow_overlap``), ``calibration`` the model's coverage before and after conformal
        calibration."""
        return {
            "horizon": self.horizon, "windows": self.windows, "season": self.season,
            "series": len(self.series), "overlap": self.overlap,
            "calibration": self.calibration,
            "methods": {method: {name: score.to_dict() for name, score in scores.items()}
                        for method, scores in self.scores.items()},
        }


def origins_of(lengths: Sequence[int], *, windows: int, horizon: int, minimum: int) -> np.ndarray:
    """``(n, N)`` origins ``T_i - (N - k) H``; each history must keep ``minimum`` steps."""
    for name, value in (("windows", windows), ("horizon", horizon)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: allowed is a positive integer")
    origins = np.array([[length - (windows - k) * horizon for k in range(windows)]
                        for length in lengths], np.int64)
    short = np.flatnonzero(origins[:, 0] < minimum)
    if len(short):
        index = int(short[0])
        raise ValueError(
            f"series {index} has {lengths[index]} steps: {windows} windows of {horizon} leave "
            f"{origins[index, 0]} steps of history before the first, fewer than the {minimum} "
            "needed (longest lag, seasonal naive); lower --backtest or --horizon")
    return origins


def overlapping(seen: Sequence[dict], series: Sequence, origins: np.ndarray) -> list[str]:
    """The series whose first backtest window starts at or before the last step that training or
    validation saw (``seen``: ``dataset.seen()`` of the checkpoint, matched by name), each as a
    line ``"'name': the first window starts at ..., the model saw ... through ..."``; compared
    by time stamp when both have one, else by step."""
    saved = {entry["name"]: entry for entry in seen}
    found = []
    for item, row in zip(series, origins):
        entry = saved.get(item.name)
        if entry is None:
            continue
        origin = int(row[0])
        last_time = entry.get("last_time")
        if last_time is not None and item.times is not None:
            first = item.times[origin]
            if isinstance(first, np.datetime64):
                if first > np.datetime64(last_time):
                    continue
                found.append(f"{item.name!r}: the first window starts at "
                             f"{np.datetime_as_string(first, unit='s')}, the model saw it "
                             f"through {last_time}")
                continue
            if float(first) > float(last_time):
                continue
            found.append(f"{item.name!r}: the first window starts at time {float(first):g}, "
                         f"the model saw it through {float(last_time):g}")
            continue
        if origin >= int(entry["steps"]):
            continue
        found.append(f"{item.name!r}: the first window starts at step {origin}, the model saw "
                     f"steps 0-{int(entry['steps']) - 1}")
    return found


def normal_crps(truth: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """CRPS of normal forecasts ``N(mean, spread^2)`` (Gneiting et al. 2005):
    ``spread (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``, ``z = (y - mean) / spread``;
    the absolute error where ``spread`` is 0."""
    spread = np.asarray(spread, np.float64)
    safe = np.where(spread > 0, spread, 1.0)
    z = (truth - mean) / safe
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    value = safe * (z * erf(z / math.sqrt(2)) + 2 * density - 1 / math.sqrt(math.pi))
    return np.where(spread > 0, value, np.abs(truth - mean))


def _score(truth, forecasts: MethodForecasts, levels, scale) -> dict:
    results = scores.score_forecasts(
        truth, point=forecasts.point, quantiles=forecasts.quantiles, quantile_levels=levels,
        scale=scale)
    present = np.isfinite(truth)
    crps = np.where(present, forecasts.crps, 0.0)
    leading = tuple(range(truth.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = crps.sum(leading) / present.sum(leading)
        overall = crps.sum() / present.sum()
    results["crps"] = scores.Score(float(overall), per_step)
    return {name: results[name] for name in METRICS}


def _model_forecasts(models, spec, normalizer, series, origins, *, horizon, key, num_samples,
                     temperature, levels, calibration=None):
    """``(MethodForecasts, raw quantiles)``: the paths of ``models`` (an equal share each),
    their median, CRPS and quantiles (conformal when ``calibration`` is given)."""
    from seqmodel.forecasting.conformal import window_scale
    from seqmodel.forecasting.free_running import forecast_series

    values, known = [], []
    for item, row in zip(series, origins):
        for origin in row:
            values.append(item.values[:origin])
            known.append(item.known[: origin + horizon])
    counts = [num_samples // len(models) + (k < num_samples % len(models))
              for k in range(len(models))]
    paths = np.concatenate([
        forecast_series(model, spec, normalizer, values, known,
                        key=jax.random.fold_in(key, k) if k else key, horizon=horizon,
                        num_samples=count, temperature=temperature)
        for k, (model, count) in enumerate(zip(models, counts)) if count], axis=1)
    n, windows = origins.shape
    truth = np.stack([normalizer.denormalize(item.values[origin : origin + horizon])
                      for item, row in zip(series, origins) for origin in row])  # (r, H, d)
    crps = crps_from_samples(paths, truth, axis=1) if num_samples > 1 else np.abs(
        paths[:, 0] - truth)
    raw = np.quantile(paths, levels, axis=1)  # (Q, r, H, d)
    quantiles = raw
    if calibration is not None:
        scale = np.stack([window_scale(normalizer.denormalize(v), spec.context_length)
                          for v in values])
        quantiles = calibration.adjust(raw, levels, scale)
    point = np.median(paths, axis=1)

    def arrange(a, leading=0):  # (..., r, H, d) -> (..., n, N, d, H)
        a = a.reshape(a.shape[:leading] + (n, windows) + a.shape[leading + 1:])
        return np.swapaxes(a, -1, -2)

    return MethodForecasts(arrange(point), arrange(quantiles, 1), arrange(crps)), arrange(raw, 1)


def _baseline_forecasts(name: str, histories: list, truth: np.ndarray, *, horizon: int,
                        season: int, levels, baseline_history: int | None) -> MethodForecasts:
    """``histories[i][k]`` ``(T, d)`` of series ``i``, window ``k``; univariate per feature."""
    n, windows, d, _ = truth.shape
    point = np.zeros(truth.shape)
    quantiles = np.zeros((len(levels),) + truth.shape)
    spread = np.zeros(truth.shape)
    low, high = levels.index(0.1), levels.index(0.9)
    for i in range(n):
        for k in range(windows):
            for feature in range(d):
                history = histories[i][k][:, feature]
                if baseline_history is not None and name not in NAIVE_BASELINES:
                    history = history[-baseline_history:]
                result = baselines.forecast_baseline(name, history, horizon, season=season,
                                                     quantile_levels=levels)
                point[i, k, feature] = result.point
                quantiles[:, i, k, feature] = result.quantiles
                spread[i, k, feature] = (result.quantiles[high] - result.quantiles[low]) / (
                    2 * _Z90)
    return MethodForecasts(point, quantiles, normal_crps(truth, point, spread))


def backtest(model, spec, normalizer, series: Sequence, *, windows: int, horizon: int,
             season: int, key: Array, num_samples: int = 100, temperature: float = 1.0,
             methods: Sequence[str] | None = None, baseline_history: int | None = None,
             quantile_levels: Sequence[float] = scores.DEFAULT_QUANTILE_LEVELS,
             seen: Sequence[dict] | None = None, allow_overlap: bool = False,
             calibration=None, members: Sequence = ()) -> BacktestResult:
    """Rolling-origin backtest of ``model`` and the baselines over the last ``windows`` windows.

    Args:
      model: a trained real-valued :class:`seqmodel.SequenceModel` (sampled in eval mode).
      spec, normalizer: its :class:`~seqmodel.data.features.FeatureSpec` and target normaliser.
      series: :class:`seqmodel.data.series.Series` (whole series: values globally
        normalised, known features of every step).
      windows, horizon: ``N`` windows of ``H`` steps at the end of every series.
      season: seasonal period of MASE and seasonal naive (1: none).
      key: PRNG key of the model's sample paths.
      num_samples: ``S`` paths per window.
      methods: which of ``seqmodel``, ``persistence``, ``seasonal_naive``, ``auto_ets``,
        ``auto_arima`` (default: all, the last two only when statsforecast is installed).
      baseline_history: AutoETS and AutoARIMA see at most this many steps of history (a long
        seasonal history makes AutoARIMA slow); None: all of it.
      quantile_levels: levels of every method's quantiles (must hold 0.025, 0.1 ... 0.9, 0.975).
      seen: what the model trained and validated on (``dataset.seen()`` of its checkpoint):
        windows that start at or before it are refused (a :class:`DataError` naming the series
        and saying how to keep them out: ``--holdout``) unless ``allow_overlap``.
      calibration: conformal margins (:class:`~seqmodel.forecasting.conformal.Calibration`)
        applied to the model's intervals; the raw intervals' coverage is reported beside.
      members: more models (an ensemble) whose paths pool with ``model``'s.

    Returns:
      a :class:`BacktestResult`.

    Example::

        result = backtest(model, dataset.spec, dataset.normalizer, dataset.series, windows=4,
                          horizon=24, season=dataset.season, key=jax.random.key(0))
    """
    levels = tuple(float(level) for level in quantile_levels)
    if methods is None:
        methods = (MODEL_METHOD,) + NAIVE_BASELINES + (
            baselines.STATSFORECAST_BASELINES if baselines.statsforecast_available() else ())
    unknown = [m for m in methods if m != MODEL_METHOD and m not in baselines.BASELINES]
    if unknown:
        raise ValueError(f"methods {unknown} are unknown: allowed are {MODEL_METHOD}, "
                         f"{', '.join(baselines.BASELINES)}")
    if not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season={season!r} is invalid: allowed is a positive integer "
                         "(1: no season)")
    lengths = [len(item) for item in series]
    origins = origins_of(lengths, windows=windows, horizon=horizon,
                         minimum=max(spec.max_lag, season + 1, 3))
    overlaps = overlapping(seen or (), series, origins)
    if overlaps and not allow_overlap:
        raise DataError(
            f"the backtest windows overlap what the model trained or validated on ({overlaps[0]}"
            f"{f'; {len(overlaps) - 1} more series' if len(overlaps) > 1 else ''}): train with "
            f"--holdout {windows * horizon} (the {windows} windows of {horizon} steps) to keep "
            "them out, or pass --allow-overlap to score them anyway")
    originals = [normalizer.denormalize(np.asarray(item.values, np.float64)) for item in series]
    truth = np.stack([np.stack([values[o : o + horizon].T for o in row])
                      for values, row in zip(originals, origins)])  # (n, N, d, H)
    histories = [[values[:o] for o in row] for values, row in zip(originals, origins)]
    scale = np.stack([np.stack([scores.seasonal_scale(h.T, season=season)
                                for h in row]) for row in histories])  # (n, N, d)
    forecasts, method_scores, calibration_report = {}, {}, None
    for method in methods:
        if method == MODEL_METHOD:
            result, raw = _model_forecasts([model, *members], spec, normalizer, series, origins,
                                           horizon=horizon, key=key, num_samples=num_samples,
                                           temperature=temperature, levels=levels,
                                           calibration=calibration)
            if calibration is not None:
                calibrated = {}
                for interval in scores.COVERAGE_INTERVALS:
                    name = f"coverage_{round(interval * 100)}"
                    before = scores.coverage(truth, raw, levels, interval=interval)
                    calibrated[f"{name}_before"] = float(before.overall)
                    calibrated[f"{name}_after"] = None  # filled from the scores below
                calibration_report = {**calibrated, "windows": calibration.windows}
        else:
            result = _baseline_forecasts(method, histories, truth, horizon=horizon,
                                         season=season, levels=levels,
                                         baseline_history=baseline_history)
        forecasts[method] = result
        method_scores[method] = _score(truth, result, levels, scale)
        if method == MODEL_METHOD and calibration is not None:
            for interval in scores.COVERAGE_INTERVALS:
                name = f"coverage_{round(interval * 100)}"
                calibration_report[f"{name}_after"] = float(method_scores[method][name].overall)
    return BacktestResult(horizon, windows, season, origins, truth, originals,
                          [getattr(item, "name", f"series {i}") for i, item in enumerate(series)],
                          levels, forecasts, method_scores, bool(overlaps), calibration_report)
