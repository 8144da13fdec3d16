"""Baselines: the naive forecasts exactly, statsforecast's models when the forecast extra is in."""

import math
import sys
from statistics import NormalDist

import numpy as np
import pytest

from seqmodel.forecasting.baselines import (
    BASELINES,
    auto_arima,
    auto_ets,
    forecast_baseline,
    persistence,
    seasonal_naive,
    statsforecast_available,
)
from seqmodel.forecasting.scores import mase, seasonal_scale

LEVELS = (0.1, 0.5, 0.9)
Z90 = NormalDist().inv_cdf(0.9)


def test_persistence_by_hand():
    history = np.array([1.0, 3.0, 2.0, 4.0])
    forecast = persistence(history, 3, quantile_levels=LEVELS)
    np.testing.assert_array_equal(forecast.point, [4.0, 4.0, 4.0])
    sigma = math.sqrt((4 + 1 + 4) / 3)  # one-step changes 2, -1, 2
    spread = sigma * np.sqrt([1, 2, 3])
    np.testing.assert_allclose(forecast.quantiles,
                               [4 - Z90 * spread, [4.0, 4.0, 4.0], 4 + Z90 * spread])
    assert forecast.quantile_levels == LEVELS


def test_seasonal_naive_by_hand():
    history = np.array([5.0, 1.0, 2.0, 6.0, 2.0, 4.0])
    forecast = seasonal_naive(history, 5, season=2, quantile_levels=LEVELS)
    np.testing.assert_array_equal(forecast.point, [2.0, 4.0, 2.0, 4.0, 2.0])
    sigma = math.sqrt((9 + 25 + 0 + 4) / 4)  # y_t - y_(t-2): -3, 5, 0, -2
    spread = sigma * np.sqrt([1, 1, 2, 2, 3])  # widens once per season
    np.testing.assert_allclose(forecast.quantiles[2] - forecast.point, Z90 * spread)
    np.testing.assert_allclose(forecast.quantiles[0] - forecast.point, -Z90 * spread)
    # season 1 is persistence
    np.testing.assert_allclose(seasonal_naive(history, 3, season=1).quantiles,
                               persistence(history, 3).quantiles)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="step 2"):
        persistence(np.array([1.0, 2.0, np.nan, 3.0]), 2)
    with pytest.raises(ValueError, match="horizon"):
        persistence(np.ones(4), 0)
    with pytest.raises(ValueError, match="season"):
        seasonal_naive(np.ones(4), 2, season=0)
    with pytest.raises(ValueError, match="at least 5"):
        seasonal_naive(np.ones(4), 2, season=4)
    with pytest.raises(ValueError, match="shape"):
        persistence(np.ones((2, 4)), 2)
    with pytest.raises(ValueError, match="quantile_levels"):
        persistence(np.ones(4), 2, quantile_levels=(0.0, 0.5))
    with pytest.raises(ValueError, match="not a baseline"):
        forecast_baseline("prophet", np.ones(4), 2)


def test_missing_extra_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsforecast", None)  # import statsforecast fails
    assert not statsforecast_available()
    with pytest.raises(ImportError, match=r"seqmodel\[forecast\]"):
        auto_ets(np.arange(20.0), 3)
    with pytest.raises(ImportError, match=r"seqmodel\[forecast\]"):
        forecast_baseline("auto_arima", np.arange(20.0), 3)


# ---------------------------------------------------------------------------------------------
# With statsforecast (the optional forecast extra)
# ---------------------------------------------------------------------------------------------


def toy_series(length: int, season: int = 12, seed: int = 0) -> np.ndarray:
    """A trending seasonal series: level 50, slope 0.5 a step, amplitude 10, noise 1."""
    steps = np.arange(length)
    noise = np.random.default_rng(seed).normal(size=length)
    return 50 + 0.5 * steps + 10 * np.sin(2 * np.pi * steps / season) + noise


def test_naive_quantiles_equal_statsforecast():
    models = pytest.importorskip("statsforecast.models")
    history = toy_series(30, season=4)
    levels = (0.025, 0.1, 0.5, 0.9, 0.975)
    for ours, theirs in [(persistence(history, 9, quantile_levels=levels), models.Naive()),
                         (seasonal_naive(history, 9, season=4, quantile_levels=levels),
                          models.SeasonalNaive(season_length=4))]:
        result = theirs.forecast(y=history, h=9, level=[80, 95])
        expected = [result["lo-95"], result["lo-80"], result["mean"], result["hi-80"],
                    result["hi-95"]]
        np.testing.assert_allclose(ours.quantiles, np.stack(expected), rtol=1e-10)


def test_auto_ets_beats_persistence_on_a_trending_seasonal_series():
    pytest.importorskip("statsforecast")
    series = toy_series(72)
    history, truth = series[:60], series[60:]
    ets = auto_ets(history, 12, season=12)
    naive = persistence(history, 12)
    scale = seasonal_scale(history, season=12)
    ets_mase = mase(truth, ets.point, scale=scale).overall
    naive_mase = mase(truth, naive.point, scale=scale).overall
    assert ets_mase < 0.5 * naive_mase, (ets_mase, naive_mase)
    # quantiles: ordered, the median is the point forecast
    assert np.all(np.diff(ets.quantiles, axis=0) >= 0)
    levels = list(ets.quantile_levels)
    np.testing.assert_array_equal(ets.quantiles[levels.index(0.5)], ets.point)


def test_auto_arima_and_baselines_by_name():
    if not statsforecast_available():
        pytest.skip("statsforecast (the forecast extra) is not installed")
    history = toy_series(48, season=4)
    arima = auto_arima(history, 6, season=4, quantile_levels=LEVELS)
    assert arima.point.shape == (6,) and arima.quantiles.shape == (3, 6)
    assert np.all(arima.quantiles[0] < arima.point) and np.all(arima.point < arima.quantiles[2])
    for name in BASELINES:
        forecast = forecast_baseline(name, history, 6, season=4, quantile_levels=LEVELS)
        assert forecast.quantiles.shape == (3, 6), name
