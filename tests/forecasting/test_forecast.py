"""Forecast metrics (CRPS, quantiles, horizon means), start points, sample paths and plots."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.data.normalization import Normalizer
from seqmodel.forecasting import paths as forecast
from seqmodel.forecasting import plots, reports, scores


def brute_force_crps(samples, truth):
    """``mean|x - y| - 0.5 mean|x - x'|`` over all sample pairs, for (S,) samples."""
    samples = np.asarray(samples, np.float64)
    pairwise = np.abs(samples[:, None] - samples[None, :]).mean()
    return np.abs(samples - truth).mean() - 0.5 * pairwise


def test_crps_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 17, 4, 2))  # (b, S, H, d)
    truth = rng.normal(size=(3, 4, 2))
    # The pairwise mean over all S^2 pairs is the energy form (the fair form: tests/test_scores.py).
    fast = scores.crps_from_samples(samples, truth, estimator="energy")
    assert fast.shape == (3, 4, 2)
    for index in np.ndindex(3, 4, 2):
        b, h, d = index
        assert math.isclose(fast[index], brute_force_crps(samples[b, :, h, d], truth[index]),
                            rel_tol=1e-10, abs_tol=1e-12)


def test_crps_of_one_sample_is_absolute_error_and_gaussian_closed_form():
    np.testing.assert_allclose(scores.crps_from_samples(np.array([[1.0]]), np.array([0.3]),
                                                          estimator="energy"), [0.7])
    # CRPS(N(mu, sigma), y) = sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)), z = (y - mu)/sigma
    sigma, y = 2.0, 1.0
    z = y / sigma
    phi = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    exact = sigma * (z * (2 * cdf - 1) + 2 * phi - 1 / math.sqrt(math.pi))
    samples = np.random.default_rng(1).normal(0.0, sigma, size=(1, 20000))
    estimate = scores.crps_from_samples(samples, np.array([y]))
    assert abs(estimate[0] - exact) < 0.02
    with pytest.raises(ValueError, match="must match"):
        scores.crps_from_samples(samples, np.array([1.0, 2.0]))


def test_crps_prefers_the_right_forecast():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(50, 1, 1))
    sharp_right = truth[:, None] + 0.1 * rng.normal(size=(50, 64, 1, 1))
    wide = truth[:, None] + 3.0 * rng.normal(size=(50, 64, 1, 1))
    biased = truth[:, None] + 1.0 + 0.1 * rng.normal(size=(50, 64, 1, 1))
    crps = [scores.crps_from_samples(p, truth).mean() for p in (sharp_right, wide, biased)]
    assert crps[0] < crps[1] and crps[0] < crps[2]


def test_quantiles_and_horizon_mean():
    paths = np.broadcast_to(np.arange(101.0)[None, :, None, None], (2, 101, 3, 1))
    q = scores.sample_quantiles(paths, (0.1, 0.5, 0.9))
    assert q.shape == (3, 2, 3, 1)
    np.testing.assert_allclose(q[:, 0, 0, 0], [10, 50, 90])
    errors = np.array([[[1.0], [2.0]], [[3.0], [100.0]]])  # (b=2, H=2, d=1)
    np.testing.assert_allclose(scores.horizon_mean(errors), [2.0, 51.0])
    np.testing.assert_allclose(scores.horizon_mean(errors, np.array([[1, 1], [1, 0]])), [2, 2])


def test_parse_quantiles_of_the_command_line():
    from seqmodel.cli import parse_quantiles

    assert parse_quantiles("0.1, 0.5,0.9") == (0.1, 0.5, 0.9)
    for bad in ("", "0.1,x", "1.5"):
        with pytest.raises(ValueError, match="--quantiles"):
            parse_quantiles(bad)


def test_horizon_report_starts_and_naive_errors_by_hand():
    import dataclasses

    from seqmodel.data import DataError
    from seqmodel.data.preparation import Series
    from seqmodel.data.series import plain_preparation

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=30), rng.normal(size=20)
    second[9] = np.nan  # a missing last context value rules out the start right after it
    preparation = plain_preparation(("y",), Normalizer.identity(1), head="gaussian")
    preparation = dataclasses.replace(preparation, season=4, spec=dataclasses.replace(
        preparation.spec, context_length=8))
    series = [Series(name, values[:, None], np.zeros((len(values), 0), np.float32))
              for name, values in (("a", first), ("b", second))]
    model = sm.SequenceModel(sm.ModelConfig(input_size=1, head="gaussian", hidden_size=8),
                             rngs=nnx.Rngs(0))
    report = reports.horizon_report(model, preparation, series, [10, 12], key=jax.random.key(0),
                                    horizon=5, num_samples=4, num_starts=100, min_context=11)
    starts = [(0, o) for o in range(11, 26)] + [(1, o) for o in range(12, 16)]
    assert report["num_starts"] == len(starts) == 19 and report["season"] == 4
    whole = [first, second]
    for h in range(5):
        persistence = np.mean([abs(whole[r][o + h] - whole[r][o - 1]) for r, o in starts])
        seasonal = np.nanmean([abs(whole[r][o + h] - whole[r][o - 4 + h % 4]) for r, o in starts])
        assert report["persistence_mae"][h] == pytest.approx(persistence, abs=1e-5)
        assert report["seasonal_naive_mae"][h] == pytest.approx(seasonal, abs=1e-5)
    assert len(report["mae"]) == len(report["teacher_forced_crps"]) == 5
    assert report["min_context"] == 8  # the context the model reads: its context_length
    with pytest.raises(DataError, match="no start point fits"):
        reports.horizon_report(model, preparation, series, [10, 12], key=jax.random.key(0),
                               horizon=25, num_samples=4)


@pytest.fixture(scope="module")
def tiny_model():
    config = sm.ModelConfig(input_size=2, head="mdn", num_mixtures=3, hidden_size=8)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    model.eval()
    return model


def test_sample_paths_follow_their_own_context(tiny_model):
    """Ragged contexts: a row's paths equal those of the same row given alone; same key, same
    paths; the first step's draws follow the teacher-forced one-step distribution."""
    rng = np.random.default_rng(0)
    context = rng.normal(size=(2, 6, 2)).astype(np.float32)
    lengths = np.array([6, 4])
    key = jax.random.key(3)
    paths = forecast.sample_paths(tiny_model, context, key=key, horizon=5, num_samples=3,
                                  context_lengths=lengths)
    assert paths.shape == (2, 3, 5, 2)
    again = forecast.sample_paths(tiny_model, context, key=key, horizon=5, num_samples=3,
                                  context_lengths=lengths)
    np.testing.assert_array_equal(paths, again)
    other = forecast.sample_paths(tiny_model, context, key=jax.random.key(4), horizon=5,
                                  num_samples=3, context_lengths=lengths)
    assert not np.allclose(paths, other)
    # Padding past a row's length must not matter.
    padded = context.copy()
    padded[1, 4:] = 1e3
    moved = forecast.sample_paths(tiny_model, padded, key=key, horizon=5, num_samples=3,
                                  context_lengths=lengths)
    np.testing.assert_allclose(moved, paths, atol=1e-5)


def test_forecast_original_units_and_report(tiny_model, tmp_path):
    normalizer = Normalizer(mean=(100.0, -5.0), scale=(10.0, 0.5))
    rng = np.random.default_rng(1)
    history = normalizer.denormalize(rng.normal(size=(12, 2)))
    paths = forecast.forecast(tiny_model, normalizer, history, key=jax.random.key(0), horizon=4,
                              num_samples=64)
    assert paths.shape == (64, 4, 2)
    # Samples land around the original scale, not the normalised one.
    assert 50 < np.median(paths[..., 0]) < 150 and -8 < np.median(paths[..., 1]) < -2
    with pytest.raises(ValueError, match=r"context must have shape \(p, 2\)"):
        forecast.forecast(tiny_model, normalizer, history[:, :1], key=jax.random.key(0),
                          horizon=4, num_samples=2)

    sequences = [normalizer.denormalize(rng.normal(size=(n, 2))) for n in (20, 14)]
    report = reports.exposure_bias_report(tiny_model, sequences, normalizer,
                                           key=jax.random.key(0), horizon=3, num_samples=8,
                                           num_starts=6, min_context=5, max_context=8)
    for name in ("mae", "crps", "persistence_mae", "teacher_forced_mae", "teacher_forced_crps"):
        assert len(report[name]) == 3 and all(np.isfinite(report[name]))
    assert report["num_starts"] == 6 and np.isfinite(report["nll"])
    with pytest.raises(ValueError, match="max_context must be >= 1"):
        reports.exposure_bias_report(tiny_model, sequences, normalizer, key=jax.random.key(0),
                                      horizon=3, max_context=0)
    assert math.isclose(report["nll_original_units"],
                        report["nll"] + math.log(10.0) + math.log(0.5), rel_tol=1e-6)
    # Free running at horizon 1 draws from the very distribution teacher forcing scores.
    assert abs(report["mae"][0] - report["teacher_forced_mae"][0]) < 0.5 * report["mae"][0]
    fan = plots.plot_fan(history, paths, tmp_path / "fan.png", truth=history[:4])
    chart = plots.plot_report(report, tmp_path / "report.png")
    for name in (fan, chart):
        with open(name, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_runs_in_eval_mode_and_leaves_the_callers_mode():
    config = sm.ModelConfig(input_size=2, head="gaussian", hidden_size=8, num_layers=2,
                            dropout=0.5)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    model.train()
    normalizer = Normalizer(mean=(0.0, 0.0), scale=(1.0, 1.0))
    sequences = [np.random.default_rng(2).normal(size=(16, 2))]
    options = dict(key=jax.random.key(0), horizon=2, num_samples=4, num_starts=3, min_context=4)
    first = reports.exposure_bias_report(model, sequences, normalizer, **options)
    second = reports.exposure_bias_report(model, sequences, normalizer, **options)
    assert first["nll"] == second["nll"]  # no dropout noise in the teacher-forced pass
    assert not model.dropout.deterministic  # the caller's model is still in training mode
