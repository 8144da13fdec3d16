"""Heads: log_prob against reference formulas, sampling statistics, the temperature -> 0 limit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqmodel.heads import (
    MIN_SCALE,
    Bernoulli,
    Categorical,
    Gaussian,
    GaussianParams,
    MixtureGaussian,
    MixtureParams,
)


def numpy_normal_log_density(x, mean, scale):
    return -0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)


def test_categorical_log_prob_matches_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
    target = rng.integers(0, 7, size=(3, 4))
    head = Categorical(5, 7, rngs=nnx.Rngs(0))
    shifted = logits - logits.max(-1, keepdims=True)
    reference = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = np.take_along_axis(reference, target[..., None], -1)[..., 0]
    np.testing.assert_allclose(head.log_prob(jnp.asarray(logits), jnp.asarray(target)), expected,
                               atol=1e-5)
    assert head(jnp.ones((2, 3, 5))).shape == (2, 3, 7)


def test_gaussian_log_prob_and_bounded_scale():
    head = Gaussian(4, 3, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    params = head(jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32))
    assert params.mean.shape == (2, 5, 3) and params.log_scale.shape == (2, 5, 3)
    target = rng.normal(size=(2, 5, 3))
    mean, scale = np.asarray(params.mean), np.exp(np.asarray(params.log_scale))
    expected = numpy_normal_log_density(target, mean, scale).sum(-1)
    np.testing.assert_allclose(head.log_prob(params, jnp.asarray(target)), expected, rtol=1e-5)
    # a hugely negative pre-activation cannot collapse the scale below MIN_SCALE
    collapsed = head(jnp.full((1, 4), -1e4))
    assert np.all(np.exp(np.asarray(collapsed.log_scale)) >= MIN_SCALE * 0.999)


def test_mixture_log_prob_matches_reference():
    rng = np.random.default_rng(2)
    k, d = 3, 2
    logits = rng.normal(size=(4, k))
    mean = rng.normal(size=(4, k, d))
    log_scale = rng.normal(size=(4, k, d)) * 0.3
    target = rng.normal(size=(4, d))
    head = MixtureGaussian(4, d, k, rngs=nnx.Rngs(0))
    params = MixtureParams(*(jnp.asarray(a, jnp.float32) for a in (logits, mean, log_scale)))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    densities = np.exp(
        numpy_normal_log_density(target[:, None, :], mean, np.exp(log_scale)).sum(-1)
    )
    expected = np.log((weights * densities).sum(-1))
    np.testing.assert_allclose(head.log_prob(params, jnp.asarray(target, jnp.float32)), expected,
                               rtol=1e-5)
    shapes = jax.tree.map(jnp.shape, head(jnp.ones((2, 6, 4))))
    assert shapes == MixtureParams((2, 6, k), (2, 6, k, d), (2, 6, k, d))


def test_bernoulli_log_prob_is_stable_and_matches_reference():
    head = Bernoulli(4, 3, rngs=nnx.Rngs(0))
    logits = jnp.array([[0.3, -2.0, 50.0]])
    target = jnp.array([[1.0, 0.0, 0.0]])
    p = 1 / (1 + np.exp(-np.array([0.3, -2.0])))
    expected = np.log(p[0]) + np.log(1 - p[1]) - 50.0  # log(1 - sigmoid(50)) ~= -50
    np.testing.assert_allclose(head.log_prob(logits, target), [expected], rtol=1e-5)
    assert np.isfinite(head.log_prob(jnp.array([[1e4, -1e4, 0.0]]), target)).all()


def test_sample_frequencies_match_the_distribution():
    key = jax.random.key(0)
    n = 20000
    logits = jnp.array([1.0, 0.0, -1.0, 0.5])
    tokens = Categorical(2, 4, rngs=nnx.Rngs(0)).sample(key, jnp.broadcast_to(logits, (n, 4)))
    frequencies = np.bincount(np.asarray(tokens), minlength=4) / n
    np.testing.assert_allclose(frequencies, jax.nn.softmax(logits), atol=0.015)

    bernoulli_logits = jnp.array([0.0, 2.0, -1.0])
    draws = Bernoulli(2, 3, rngs=nnx.Rngs(0)).sample(key, jnp.broadcast_to(bernoulli_logits, (n, 3)))
    np.testing.assert_allclose(draws.mean(0), jax.nn.sigmoid(bernoulli_logits), atol=0.015)

    gaussian = GaussianParams(jnp.broadcast_to(jnp.array([1.0, -2.0]), (n, 2)),
                              jnp.broadcast_to(jnp.log(jnp.array([0.5, 2.0])), (n, 2)))
    values = Gaussian(2, 2, rngs=nnx.Rngs(0)).sample(key, gaussian)
    np.testing.assert_allclose(values.mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(values.std(0), [0.5, 2.0], rtol=0.03)
    # temperature scales the variance: std * sqrt(T)
    cooled = Gaussian(2, 2, rngs=nnx.Rngs(0)).sample(key, gaussian, temperature=0.25)
    np.testing.assert_allclose(cooled.std(0), [0.25, 1.0], rtol=0.03)


def test_mixture_samples_pick_components_by_weight():
    n = 20000
    params = MixtureParams(
        jnp.broadcast_to(jnp.log(jnp.array([0.3, 0.7])), (n, 2)),
        jnp.broadcast_to(jnp.array([[-5.0], [5.0]]), (n, 2, 1)),
        jnp.broadcast_to(jnp.log(jnp.array([[0.5], [0.5]])), (n, 2, 1)),
    )
    head = MixtureGaussian(2, 1, 2, rngs=nnx.Rngs(0))
    values = np.asarray(head.sample(jax.random.key(1), params))[:, 0]
    assert abs((values > 0).mean() - 0.7) < 0.015
    np.testing.assert_allclose(values[values > 0].std(), 0.5, rtol=0.05)
    np.testing.assert_allclose(head.mean(params)[0], [0.3 * -5 + 0.7 * 5], atol=1e-5)


@pytest.mark.parametrize("name", ["categorical", "gaussian", "mdn", "bernoulli"])
def test_low_temperature_approaches_the_mode(name):
    rngs = nnx.Rngs(0)
    head = {
        "categorical": lambda: Categorical(4, 6, rngs=rngs),
        "gaussian": lambda: Gaussian(4, 2, rngs=rngs),
        "mdn": lambda: MixtureGaussian(4, 2, 3, rngs=rngs),
        "bernoulli": lambda: Bernoulli(4, 5, rngs=rngs),
    }[name]()
    params = head(jax.random.normal(jax.random.key(3), (64, 4)) * 3.0)
    mode = head.mode(params)
    for temperature in (1e-6, 0.0):
        sample = head.sample(jax.random.key(4), params, temperature=temperature)
        assert sample.shape == mode.shape and sample.dtype == mode.dtype
        np.testing.assert_allclose(np.asarray(sample, float), np.asarray(mode, float), atol=0.02)


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_bad_temperature_names_the_argument(temperature):
    head = Categorical(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="temperature"):
        head.sample(jax.random.key(0), jnp.zeros((3,)), temperature=temperature)
