"""Classical forecasting baselines: point and quantile forecasts of one series.

A deep forecaster is worth running only if it beats these in the same report. Each baseline maps
a history ``(T,)`` and a horizon ``H`` to a :class:`BaselineForecast` (point ``(H,)`` and
quantiles ``(Q, H)``, the layout :mod:`seqmodel.forecasting.scores` scores):

- :func:`persistence` (naive): repeat the last value;
- :func:`seasonal_naive`: repeat the last season of length ``season``;
- :func:`auto_ets`, :func:`auto_arima`: statsforecast's AutoETS and AutoARIMA (automatic model
  selection by AICc), with the optional ``forecast`` extra (``pip install 'seqmodel[forecast]'``).

The naive baselines' quantiles are the standard ones (Hyndman & Athanasopoulos, *Forecasting:
Principles and Practice*, section 5.5, and statsforecast's ``Naive`` / ``SeasonalNaive``):
normal around the point forecast with the in-sample residual spread
``sigma = sqrt(mean e_t^2)`` of the one-step (seasonal-)naive residuals, widened with the horizon
``h = 1, 2, ...``: ``sigma sqrt(h)`` for persistence (a random walk's), and
``sigma sqrt(floor((h - 1) / season) + 1)`` for seasonal naive. AutoETS and AutoARIMA give
prediction intervals at the levels ``|2q - 1|``; the quantile ``q`` is an interval's lower
(``q < 0.5``) or upper end, the median their mean (their forecast distributions are normal).

Example::

    forecast = seasonal_naive(history, 24, season=12)
    forecast.point                       # (24,)
    forecast.quantiles                   # (11, 24) at forecast.quantile_levels
    forecast_baseline("auto_ets", history, 24, season=12)   # by name, with the extra
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

from seqmodel.forecasting.scores import DEFAULT_QUANTILE_LEVELS


@dataclasses.dataclass(frozen=True)
class BaselineForecast:
    """A baseline's forecast of one series: ``point`` ``(H,)`` and ``quantiles`` ``(Q, H)`` at
    ``quantile_levels`` ``(Q,)``."""

    point: np.ndarray
    quantiles: np.ndarray
    quantile_levels: tuple[float, ...]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _check_history(history, *, minimum: int, why: str) -> np.ndarray:
    history = np.asarray(history, np.float64)
    if history.ndim != 1:
        raise ValueError(f"history must be one series of shape (T,), got shape {history.shape}; "
                         "forecast each series apart")
    missing = np.flatnonzero(~np.isfinite(history))
    if len(missing):
        raise ValueError(
            f"history holds a missing or infinite value at step {missing[0]} (of "
            f"{len(history)}); the baselines need a complete history: fill or cut it first"
        )
    if len(history) < minimum:
        raise ValueError(f"history has {len(history)} steps, but {why} needs at least "
                         f"{minimum}; give a longer history")
    return history


def _check_horizon(horizon) -> int:
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer (steps ahead), got {horizon!r}")
    return int(horizon)


def _check_season(season) -> int:
    if not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season must be a positive integer (1 = no season), got {season!r}")
    return int(season)


def _check_levels(quantile_levels) -> tuple[float, ...]:
    levels = tuple(float(level) for level in quantile_levels)
    if not levels or not all(0 < level < 1 for level in levels):
        raise ValueError(f"quantile_levels={quantile_levels!r} must be levels strictly "
                         "inside (0, 1), e.g. (0.1, 0.5, 0.9)")
    return levels


# ---------------------------------------------------------------------------------------------
# Naive baselines
# ---------------------------------------------------------------------------------------------


def _normal_forecast(point: np.ndarray, spread: np.ndarray, levels: tuple[float, ...]
                     ) -> BaselineForecast:
    standard = np.array([NormalDist().inv_cdf(level) for level in levels])
    quantiles = point[None, :] + standard[:, None] * spread[None, :]
    return BaselineForecast(point, quantiles, levels)


def persistence(history, horizon: int, *,
                quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS) -> BaselineForecast:
    """The naive forecast: the last value at every step, with normal quantiles of spread
    ``sigma sqrt(h)``, ``sigma^2`` the mean squared one-step change of the history.

    Example::

        persistence(np.array([1.0, 3.0, 2.0]), 2).point   # [2., 2.]
    """
    history = _check_history(history, minimum=2, why="persistence's residual spread")
    horizon = _check_horizon(horizon)
    sigma = math.sqrt(np.mean(np.diff(history) ** 2))
    steps = np.arange(1, horizon + 1)
    return _normal_forecast(np.full(horizon, history[-1]), sigma * np.sqrt(steps),
                            _check_levels(quantile_levels))


def seasonal_naive(history, horizon: int, *, season: int,
                   quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS
                   ) -> BaselineForecast:
    """The seasonal naive forecast: step ``h`` repeats the value one season before it (the
    last season, repeated), with normal quantiles of spread
    ``sigma sqrt(floor((h - 1) / season) + 1)``, ``sigma^2`` the mean squared in-sample
    seasonal difference. ``season=1`` is :func:`persistence`.

    Example::

        seasonal_naive(np.array([1.0, 2.0, 3.0, 4.0]), 3, season=2).point   # [3., 4., 3.]
    """
    season = _check_season(season)
    history = _check_history(history, minimum=season + 1,
                             why=f"seasonal naive with season={season}")
    horizon = _check_horizon(horizon)
    steps = np.arange(horizon)
    point = history[-season:][steps % season]
    sigma = math.sqrt(np.mean((history[season:] - history[:-season]) ** 2))
    spread = sigma * np.sqrt(steps // season + 1)
    return _normal_forecast(point, spread, _check_levels(quantile_levels))


# ---------------------------------------------------------------------------------------------
# statsforecast's automatic models (the optional ``forecast`` extra)
# ---------------------------------------------------------------------------------------------


def _statsforecast_models():
    try:
        from statsforecast import models
    except ImportError as error:
        raise ImportError(
            "the AutoETS and AutoARIMA baselines need statsforecast, which is not installed: "
            "install the optional extra with  pip install 'seqmodel[forecast]'  (or leave "
            "them out and use persistence / seasonal_naive)"
        ) from error
    return models


def _interval_level(level: float) -> float | int:
    """The central interval (percent) whose end is the quantile ``level``: 0.1 -> 80."""
    percent = round(100 * abs(1 - 2 * level), 9)
    return int(percent) if percent.is_integer() else percent


def _from_intervals(model, history: np.ndarray, horizon: int, levels: tuple[float, ...]
                    ) -> BaselineForecast:
    intervals = sorted({_interval_level(level) for level in levels if level != 0.5})
    result = model.forecast(y=history, h=horizon, level=intervals or None)
    point = np.asarray(result["mean"], np.float64)
    rows = []
    for level in levels:
        if level == 0.5:
            rows.append(point)
        else:
            side = "lo" if level < 0.5 else "hi"
            rows.append(np.asarray(result[f"{side}-{_interval_level(level)}"], np.float64))
    return BaselineForecast(point, np.stack(rows), levels)


def auto_ets(history, horizon: int, *, season: int = 1,
             quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS) -> BaselineForecast:
    """statsforecast's AutoETS (exponential smoothing, error/trend/season chosen by AICc) with
    ``season_length=season``; quantiles from its prediction intervals.

    Needs the ``forecast`` extra (statsforecast); raises ``ImportError`` saying so otherwise.

    Example::

        auto_ets(history, 12, season=12).quantiles     # (Q, 12)
    """
    season = _check_season(season)
    history = _check_history(history, minimum=3, why="AutoETS")
    horizon = _check_horizon(horizon)
    levels = _check_levels(quantile_levels)
    models = _statsforecast_models()
    return _from_intervals(models.AutoETS(season_length=season), history, horizon, levels)


def auto_arima(history, horizon: int, *, season: int = 1,
               quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS) -> BaselineForecast:
    """statsforecast's AutoARIMA (Hyndman-Khandakar stepwise search by AICc) with
    ``season_length=season``; quantiles from its prediction intervals.

    Needs the ``forecast`` extra (statsforecast); raises ``ImportError`` saying so otherwise.

    Example::

        auto_arima(history, 12, season=12).point       # (12,)
    """
    season = _check_season(season)
    history = _check_history(history, minimum=3, why="AutoARIMA")
    horizon = _check_horizon(horizon)
    levels = _check_levels(quantile_levels)
    models = _statsforecast_models()
    return _from_intervals(models.AutoARIMA(season_length=season), history, horizon, levels)


def _persistence_with_season(history, horizon, *, season=1, quantile_levels=DEFAULT_QUANTILE_LEVELS):
    return persistence(history, horizon, quantile_levels=quantile_levels)


BASELINES = {
    "persistence": _persistence_with_season,
    "seasonal_naive": seasonal_naive,
    "auto_ets": auto_ets,
    "auto_arima": auto_arima,
}
# The baselines that need the optional ``forecast`` extra.
STATSFORECAST_BASELINES = ("auto_ets", "auto_arima")


def statsforecast_available() -> bool:
    """True when the optional ``forecast`` extra (statsforecast) is installed."""
    try:
        _statsforecast_models()
    except ImportError:
        return False
    return True


def forecast_baseline(name: str, history, horizon: int, *, season: int = 1,
                      quantile_levels: Sequence[float] = DEFAULT_QUANTILE_LEVELS
                      ) -> BaselineForecast:
    """The forecast of the baseline ``name`` (one of :data:`BASELINES`); ``season`` is ignored
    by persistence.

    Example::

        forecasts = {name: forecast_baseline(name, history, 24, season=12)
                     for name in BASELINES if name not in STATSFORECAST_BASELINES
                     or statsforecast_available()}
    """
    if name not in BASELINES:
        raise ValueError(f"name={name!r} is not a baseline: allowed are {', '.join(BASELINES)}")
    return BASELINES[name](history, horizon, season=season, quantile_levels=quantile_levels)
