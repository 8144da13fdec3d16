"""Probabilistic scores: crps_from_samples (fair and energy estimators) against scoringrules."""

import math

import numpy as np
import pytest

from seqmodel.forecasting.scores import crps_from_samples


def reference():
    try:
        import scoringrules
    except ImportError:
        pytest.skip("scoringrules is not installed (a test-only dependency: pip install -e '.[dev]')")
    return scoringrules


def gaussian_crps(mean, sigma, y):
    """CRPS(N(mean, sigma^2), y) = sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))."""
    z = (y - mean) / sigma
    phi = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    return sigma * (z * (2 * cdf - 1) + 2 * phi - 1 / math.sqrt(math.pi))


@pytest.mark.parametrize("estimator, reference_name", [("fair", "fair"), ("energy", "nrg")])
@pytest.mark.parametrize("count", [2, 3, 17])
def test_crps_matches_scoringrules(estimator, reference_name, count):
    scoringrules = reference()
    rng = np.random.default_rng(count)
    samples = rng.normal(size=(3, count, 4, 2))  # (b, S, H, d)
    samples[0, :, 0, 0] = 1.5  # ties
    truth = rng.normal(size=(3, 4, 2))
    ours = crps_from_samples(samples, truth, estimator=estimator)
    # The ensemble axis last, as scoringrules takes it by default in every version.
    theirs = scoringrules.crps_ensemble(truth, np.moveaxis(samples, 1, -1),
                                        estimator=reference_name)
    assert ours.shape == truth.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    # Any sample axis.
    np.testing.assert_allclose(
        crps_from_samples(np.moveaxis(samples, 1, -1), truth, axis=-1, estimator=estimator), ours,
        rtol=1e-12)


def test_fair_is_the_default_and_unbiased_where_energy_is_not():
    rng = np.random.default_rng(0)
    sigma, y, count = 2.0, 1.0, 3
    samples = rng.normal(0.0, sigma, size=(40000, count))  # many forecasts of 3 samples each
    truth = np.full(40000, y)
    exact = gaussian_crps(0.0, sigma, y)
    fair = crps_from_samples(samples, truth).mean()
    energy = crps_from_samples(samples, truth, estimator="energy").mean()
    # E|X - X'| = 2 sigma / sqrt(pi): the energy form overstates CRPS by that over 2S.
    bias = 2 * sigma / math.sqrt(math.pi) / (2 * count)
    assert abs(fair - exact) < 0.02
    assert abs(energy - exact - bias) < 0.02 and bias > 0.3


def test_one_sample_and_bad_arguments():
    one = np.array([[1.0]])
    np.testing.assert_allclose(crps_from_samples(one, np.array([0.3]), estimator="energy"), [0.7])
    with pytest.raises(ValueError, match="estimator='fair' needs at least 2.*estimator='energy'"):
        crps_from_samples(one, np.array([0.3]))
    with pytest.raises(ValueError, match="estimator='pwm' is invalid; allowed: 'fair', 'energy'"):
        crps_from_samples(np.ones((1, 4)), np.ones(1), estimator="pwm")
    with pytest.raises(ValueError, match="must match"):
        crps_from_samples(np.ones((1, 4)), np.ones(2))
