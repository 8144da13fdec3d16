"""Forecast scores: hand-computed values, and utilsforecast's implementations where installed."""

import math

import numpy as np
import pytest

from seqmodel.forecasting.scores import (
    DEFAULT_QUANTILE_LEVELS,
    WQL_LEVELS,
    Score,
    coverage,
    mae,
    mase,
    nd,
    quantiles_from_samples,
    rmse,
    score_forecasts,
    seasonal_scale,
    smape,
    weighted_quantile_loss,
)

# Two series (rows), horizon 3.
TRUTH = np.array([[1.0, 2.0, 4.0], [10.0, 0.0, -2.0]])
POINT = np.array([[2.0, 2.0, 1.0], [8.0, 0.0, -1.0]])
# |e| = [[1, 0, 3], [2, 0, 1]]


def test_point_scores_by_hand():
    score = mae(TRUTH, POINT)
    assert isinstance(score, Score)
    assert score.overall == pytest.approx(7 / 6)
    np.testing.assert_allclose(score.per_step, [1.5, 0.0, 2.0])

    score = rmse(TRUTH, POINT)
    assert score.overall == pytest.approx(math.sqrt((1 + 9 + 4 + 1) / 6))
    np.testing.assert_allclose(score.per_step, np.sqrt([2.5, 0.0, 5.0]))

    # 200 |e| / (|y| + |yhat|); the (0, 0) term counts 0
    terms = 200 * np.array([[1 / 3, 0, 3 / 5], [2 / 18, 0, 1 / 3]])
    score = smape(TRUTH, POINT)
    assert score.overall == pytest.approx(terms.mean())
    np.testing.assert_allclose(score.per_step, terms.mean(0))
    assert smape([[1.0]], [[3.0]]).overall == pytest.approx(100.0)

    score = nd(TRUTH, POINT)
    assert score.overall == pytest.approx(7 / 19)  # sum |y| = 7 + 12
    np.testing.assert_allclose(score.per_step, [3 / 11, 0 / 2, 4 / 6])


def test_seasonal_scale_and_mase_by_hand():
    history = np.array([[1.0, 3.0, 2.0, 6.0, 4.0], [0.0, 0.0, 5.0, 5.0, 10.0]])
    np.testing.assert_allclose(seasonal_scale(history), [(2 + 1 + 4 + 2) / 4, (0 + 5 + 0 + 5) / 4])
    np.testing.assert_allclose(seasonal_scale(history, season=2), [(1 + 3 + 2) / 3, (5 + 5 + 5) / 3])
    scale = seasonal_scale(history, season=2)  # [2, 5]
    score = mase(TRUTH, POINT, scale=scale)
    scaled = np.array([[1, 0, 3], [2, 0, 1]]) / scale[:, None]
    assert score.overall == pytest.approx(scaled.mean())
    np.testing.assert_allclose(score.per_step, scaled.mean(0))
    # left padding with NaN (a shorter history) is skipped
    padded = np.array([[np.nan, np.nan, 1.0, 3.0, 2.0]])
    np.testing.assert_allclose(seasonal_scale(padded), [1.5])


def test_quantile_scores_by_hand():
    truth = np.array([[1.0, 4.0]])
    levels = (0.1, 0.5, 0.9)
    quantiles = np.array([[[0.0, 1.0]], [[2.0, 3.0]], [[3.0, 4.0]]])  # (Q=3, 1, H=2)
    # pinball (y - q_hat)(q - 1{y < q_hat}):
    # step 0 (y=1): 0.1 * 1, (1-2)(0.5-1) = 0.5, (1-3)(0.9-1) = 0.2
    # step 1 (y=4): 0.1 * 3 = 0.3, 0.5 * 1 = 0.5, 0 (y = q_hat)
    per_level = 2 * np.array([0.1 + 0.3, 0.5 + 0.5, 0.2 + 0.0]) / 5
    score = weighted_quantile_loss(truth, quantiles, levels)
    assert score.overall == pytest.approx(per_level.mean())
    np.testing.assert_allclose(score.per_step,
                               [2 * (0.1 + 0.5 + 0.2) / 3 / 1, 2 * (0.3 + 0.5) / 3 / 4])
    # inside [q_0.1, q_0.9], ends included: step 0 inside (0 <= 1 <= 3), step 1 at the end
    score = coverage(truth, quantiles, levels, interval=0.8)
    assert score.overall == 1.0
    score = coverage([[5.0, 4.0]], quantiles, levels, interval=0.8)
    np.testing.assert_allclose(score.per_step, [0.0, 1.0])


def test_missing_truth_is_left_out():
    truth = np.array([[1.0, np.nan], [3.0, 5.0]])
    point = np.array([[2.0, 100.0], [3.0, 4.0]])
    score = mae(truth, point)
    assert score.overall == pytest.approx(2 / 3)
    np.testing.assert_allclose(score.per_step, [0.5, 1.0])
    all_missing = mae([[np.nan, 1.0]], [[0.0, 1.0]])
    assert np.isnan(all_missing.per_step[0]) and all_missing.overall == 0.0


def test_quantiles_from_samples_matches_numpy():
    samples = np.random.default_rng(0).normal(size=(200, 3, 4))
    quantiles = quantiles_from_samples(samples, (0.1, 0.5, 0.9))
    assert quantiles.shape == (3, 3, 4)
    np.testing.assert_allclose(quantiles[1], np.median(samples, 0))


def test_score_forecasts_gathers_every_score():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(4, 5)) + 10
    samples = truth[None] + rng.normal(size=(300, 4, 5))
    quantiles = quantiles_from_samples(samples, DEFAULT_QUANTILE_LEVELS)
    median = quantiles[DEFAULT_QUANTILE_LEVELS.index(0.5)]
    scores = score_forecasts(truth, point=median, quantiles=quantiles,
                             quantile_levels=DEFAULT_QUANTILE_LEVELS, scale=np.ones(4))
    assert set(scores) == {"mae", "rmse", "smape", "nd", "mase", "wql", "coverage_80",
                           "coverage_95"}
    assert scores["mase"].overall == pytest.approx(scores["mae"].overall)
    wql_rows = [DEFAULT_QUANTILE_LEVELS.index(level) for level in WQL_LEVELS]
    expected = weighted_quantile_loss(truth, quantiles[wql_rows], WQL_LEVELS)
    assert scores["wql"].overall == pytest.approx(expected.overall)
    for name, score in scores.items():
        assert score.per_step.shape == (5,), name
        encoded = score.to_dict()
        assert set(encoded) == {"overall", "per_step"} and len(encoded["per_step"]) == 5
    point_only = score_forecasts(truth, point=median)
    assert set(point_only) == {"mae", "rmse", "smape", "nd"}


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="point has shape"):
        mae(TRUTH, POINT[:, :2])
    with pytest.raises(ValueError, match="quantiles has shape"):
        weighted_quantile_loss(TRUTH, POINT, (0.5,))
    with pytest.raises(ValueError, match="quantile_levels"):
        weighted_quantile_loss(TRUTH, POINT[None], (1.5,))
    with pytest.raises(ValueError, match="quantile level 0.05"):
        coverage(TRUTH, np.stack([POINT, POINT]), (0.1, 0.9), interval=0.9)
    with pytest.raises(ValueError, match="season"):
        seasonal_scale(np.ones(5), season=0)
    with pytest.raises(ValueError, match="too short"):
        seasonal_scale(np.ones(5), season=5)
    with pytest.raises(ValueError, match="scale has shape"):
        mase(TRUTH, POINT, scale=np.ones(3))
    with pytest.raises(ValueError, match="quantile_levels"):
        score_forecasts(TRUTH, point=POINT, quantiles=POINT[None])


# ---------------------------------------------------------------------------------------------
# Against utilsforecast (Nixtla), when the forecast extra brings it
# ---------------------------------------------------------------------------------------------


def test_scores_match_utilsforecast():
    pd = pytest.importorskip("pandas")
    losses = pytest.importorskip("utilsforecast.losses")
    rng = np.random.default_rng(2)
    history = rng.normal(size=(2, 30)).cumsum(-1) + 20
    truth = history[:, -1:] + rng.normal(size=(2, 6)).cumsum(-1)
    point = history[:, -1:] + rng.normal(size=(2, 6))
    levels = (0.1, 0.5, 0.9)
    quantiles = np.stack([point - 1.5, point, point + 1.5])

    def frame(values, **columns):
        ids = np.repeat(["a", "b"], values.shape[1])
        steps = np.tile(np.arange(values.shape[1]), 2)
        return pd.DataFrame({"unique_id": ids, "ds": steps, "y": values.ravel(),
                             **{name: column.ravel() for name, column in columns.items()}})

    steps = history.shape[1]
    forecasts = frame(truth, model=point, **{"q10": quantiles[0], "q50": quantiles[1],
                                             "q90": quantiles[2], "model-lo-80": quantiles[0],
                                             "model-hi-80": quantiles[2]})
    forecasts["ds"] += steps
    train = frame(history)

    def per_series(table):
        return table.sort_values("unique_id")["model"].to_numpy()

    # utilsforecast scores each series; ours pools equal-length series, i.e. their mean
    np.testing.assert_allclose(mae(truth, point).overall,
                               per_series(losses.mae(forecasts, ["model"])).mean())
    np.testing.assert_allclose(
        mase(truth, point, scale=seasonal_scale(history, season=3)).overall,
        per_series(losses.mase(forecasts, ["model"], seasonality=3, train_df=train)).mean())
    # theirs is mean |e| / (|y| + |yhat|): a factor 200 from M4's percent
    np.testing.assert_allclose(smape(truth, point).overall,
                               200 * per_series(losses.smape(forecasts, ["model"])).mean())
    for row in range(2):
        np.testing.assert_allclose(nd(truth[row:row + 1], point[row:row + 1]).overall,
                                   per_series(losses.nd(forecasts, ["model"]))[row])
    np.testing.assert_allclose(
        coverage(truth, quantiles, levels, interval=0.8).overall,
        per_series(losses.coverage(forecasts, ["model"], level=80)).mean())
    # their quantile loss is the mean pinball loss; wQL_q = 2 sum pinball / sum |y|
    for index, level in enumerate(levels):
        pinball = losses.quantile_loss(forecasts, {"model": f"q{round(level * 100)}"}, q=level)
        expected = 2 * per_series(pinball).sum() * truth.shape[1] / np.abs(truth).sum()
        got = weighted_quantile_loss(truth, quantiles[index:index + 1], (level,)).overall
        np.testing.assert_allclose(got, expected)
