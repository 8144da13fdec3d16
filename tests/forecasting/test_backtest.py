"""seqmodel.forecasting.backtest: origins, the baselines' numbers against seqmodel.forecasting.scores computed
by hand on a toy series, the normal CRPS against scoringrules, the JSON keys and the plot."""

import jax
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.data.normalization import Normalizer
from seqmodel.data.series import Series
from seqmodel.forecasting import backtest, baselines, plots
from seqmodel.forecasting import scores as forecast_metrics
from seqmodel.data.series import plain_preparation


def plain_spec(size: int):
    """The layout of a model that reads its bare elements."""
    return plain_preparation(tuple(f"feature {i}" for i in range(size)),
                             Normalizer.identity(size), head="gaussian").spec


def toy_series(length=40, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    return 5 + 2 * np.sin(2 * np.pi * steps / 4) + 0.05 * steps + 0.3 * rng.normal(size=length)


def as_series(values, normalizer):
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    return Series("toy", normalizer.normalize(values), np.zeros((len(values), 0), np.float32))


def test_origins_are_the_last_windows_and_short_series_are_refused():
    np.testing.assert_array_equal(
        backtest.origins_of([40, 30], windows=3, horizon=5, minimum=2),
        [[25, 30, 35], [15, 20, 25]])
    with pytest.raises(ValueError, match="series 1 has 12 steps.*lower --backtest"):
        backtest.origins_of([40, 12], windows=2, horizon=5, minimum=5)


def test_normal_crps_matches_scoringrules():
    scoringrules = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(0)
    truth, mean, spread = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.1, 3, 50)
    np.testing.assert_allclose(backtest.normal_crps(truth, mean, spread),
                               scoringrules.crps_normal(truth, mean, spread), rtol=1e-10)
    np.testing.assert_allclose(backtest.normal_crps(truth, mean, np.zeros(50)),
                               np.abs(truth - mean))


def test_baseline_scores_equal_forecast_metrics_by_hand():
    values = toy_series()
    normalizer = Normalizer((3.0,), (2.0,))
    windows, horizon, season = 3, 4, 4
    result = backtest.backtest(None, plain_spec(1), normalizer, [as_series(values, normalizer)],
                               windows=windows, horizon=horizon, season=season,
                               key=jax.random.key(0),
                               methods=("persistence", "seasonal_naive"))
    levels = forecast_metrics.DEFAULT_QUANTILE_LEVELS
    origins = [28, 32, 36]
    np.testing.assert_array_equal(result.origins, [origins])
    truth = np.stack([values[o : o + horizon] for o in origins])  # (N, H)
    for name in ("persistence", "seasonal_naive"):
        forecasts = [baselines.forecast_baseline(name, values[:o], horizon, season=season)
                     for o in origins]
        point = np.stack([f.point for f in forecasts])
        quantiles = np.stack([f.quantiles for f in forecasts], axis=1)  # (Q, N, H)
        scale = np.array([forecast_metrics.seasonal_scale(values[:o], season=season)
                          for o in origins])
        expected = forecast_metrics.score_forecasts(truth, point=point, quantiles=quantiles,
                                                    quantile_levels=levels, scale=scale)
        scores = result.scores[name]
        for metric, score in expected.items():
            np.testing.assert_allclose(scores[metric].per_step, score.per_step, rtol=1e-9,
                                       err_msg=f"{name} {metric}")
            assert scores[metric].overall == pytest.approx(score.overall, rel=1e-9)
        spread = (quantiles[levels.index(0.9)] - point) / 1.2815515655446004
        crps = backtest.normal_crps(truth, point, spread)
        np.testing.assert_allclose(scores["crps"].per_step, crps.mean(0), rtol=1e-6)
    # By hand: the seasonal naive forecast of the first window repeats steps 24..27.
    np.testing.assert_allclose(result.forecasts["seasonal_naive"].point[0, 0, 0], values[24:28])
    assert result.scores["persistence"]["mae"].overall == pytest.approx(
        np.mean(np.abs(truth - np.array([values[o - 1] for o in origins])[:, None])))


def test_the_models_forecasts_json_and_plot(tmp_path):
    values = toy_series(60)
    normalizer = Normalizer.fit([values[:, None]])
    model = sm.SequenceModel(sm.ModelConfig(input_size=1, head="gaussian", hidden_size=8),
                             rngs=nnx.Rngs(0))
    series = [as_series(values, normalizer), as_series(values[:50] * 3, normalizer)]
    methods = ("seqmodel", "persistence", "seasonal_naive")
    result = backtest.backtest(model, plain_spec(1), normalizer, series, windows=2, horizon=5,
                               season=4, key=jax.random.key(0), num_samples=30,
                               methods=methods)
    summary = result.to_dict()
    assert (summary["horizon"], summary["windows"], summary["season"], summary["series"]) == (
        5, 2, 4, 2)
    assert tuple(summary["methods"]) == methods
    for scores in summary["methods"].values():
        assert tuple(scores) == backtest.METRICS
        for score in scores.values():
            assert set(score) == {"overall", "per_step"} and len(score["per_step"]) == 5
    model_forecasts = result.forecasts["seqmodel"]
    assert model_forecasts.quantiles.shape == (11, 2, 2, 1, 5)
    assert np.all(np.diff(model_forecasts.quantiles, axis=0) >= 0)
    again = backtest.backtest(model, plain_spec(1), normalizer, series, windows=2, horizon=5,
                              season=4, key=jax.random.key(0), num_samples=30,
                              methods=("seqmodel",))
    np.testing.assert_array_equal(again.forecasts["seqmodel"].point, model_forecasts.point)
    path = plots.plot_backtest(result, tmp_path / "backtest.png")
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown"):
        backtest.backtest(model, plain_spec(1), normalizer, series, windows=1, horizon=2,
                          season=1, key=jax.random.key(0), methods=("prophet",))
