"""Heads: log_prob against reference formulas, sampling statistics, the temperature -> 0 limit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqmodel.nn.heads import (
    HEAD_CLASSES,
    HEADS,
    MIN_SCALE,
    Bernoulli,
    Categorical,
    Gaussian,
    GaussianParams,
    MixtureGaussian,
    MixtureParams,
    NegativeBinomial,
    NegativeBinomialParams,
    StudentT,
    StudentTParams,
)

stats = pytest.importorskip("scipy.stats")


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


@pytest.mark.parametrize("name", HEADS)
def test_low_temperature_approaches_the_mode(name):
    rngs = nnx.Rngs(0)
    head = {
        "categorical": lambda: Categorical(4, 6, rngs=rngs),
        "gaussian": lambda: Gaussian(4, 2, rngs=rngs),
        "mdn": lambda: MixtureGaussian(4, 2, 3, rngs=rngs),
        "bernoulli": lambda: Bernoulli(4, 5, rngs=rngs),
        "student_t": lambda: StudentT(4, 2, rngs=rngs),
        "negbin": lambda: NegativeBinomial(4, 2, rngs=rngs),
    }[name]()
    params = head(jax.random.normal(jax.random.key(3), (64, 4)) * 3.0)
    mode = head.mode(params)
    # 1e-8: sqrt(T) = 1e-4 keeps even a Student-t's heavy-tailed draws within atol.
    # 1e-8 is compiled (eager sampling loops are slow); 0 takes sample's own mode branch
    cool = jax.jit(lambda key, params: head.sample(key, params, temperature=1e-8))
    for sample in (cool(jax.random.key(4), params),
                   head.sample(jax.random.key(4), params, temperature=0.0)):
        assert sample.shape == mode.shape and sample.dtype == mode.dtype
        np.testing.assert_allclose(np.asarray(sample, float), np.asarray(mode, float), atol=0.02)


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_bad_temperature_names_the_argument(temperature):
    head = Categorical(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="temperature"):
        head.sample(jax.random.key(0), jnp.zeros((3,)), temperature=temperature)


# ---------------------------------------------------------------------------------------------
# Student-t and negative binomial against scipy; quantiles of every real-valued head
# ---------------------------------------------------------------------------------------------

# (loc, scale, df): light to very heavy tails, and a df where float32 lgamma sums would lose digits
STUDENT_T_CASES = [(0.5, 2.0, 2.05), (-1.0, 0.3, 3.0), (2.0, 1.0, 10.0), (0.0, 5.0, 150.0),
                   (1.0, 0.5, 1e5)]
# (mu, alpha): small and large means, over- and nearly Poisson dispersion
NEGBIN_CASES = [(0.3, 0.5), (5.0, 0.1), (5.0, 2.0), (100.0, 0.01), (2000.0, 0.3), (30.0, 1e-5)]


def student_t_params(loc, scale, df, shape=(1, 1)):
    return StudentTParams(*(jnp.full(shape, value, jnp.float32)
                            for value in (loc, math.log(scale), df)))


def negbin_params(mu, alpha, shape=(1, 1)):
    return NegativeBinomialParams(jnp.full(shape, mu, jnp.float32),
                                  jnp.full(shape, alpha, jnp.float32))


def scipy_negbin(mu, alpha):
    return stats.nbinom(1.0 / alpha, 1.0 / (1.0 + alpha * mu))


def test_registry_lists_every_head_once():
    assert len(HEADS) == len(set(HEADS)) == len(HEAD_CLASSES)
    assert {"student_t", "negbin"} <= set(HEADS)


@pytest.mark.parametrize("name,cls", [("student_t", StudentT), ("negbin", NegativeBinomial)])
def test_new_heads_are_built_from_the_model_config(name, cls):
    from seqmodel.nn.model import ModelConfig, SequenceModel

    model = SequenceModel(ModelConfig(input_size=2, head=name, hidden_size=8), rngs=nnx.Rngs(0))
    assert isinstance(model.head, cls)
    outputs, _ = model(jnp.ones((2, 3, 2)))
    assert all(leaf.shape == (2, 3, 2) for leaf in jax.tree.leaves(outputs))
    with pytest.raises(ValueError, match="student_t"):
        ModelConfig(input_size=2, head="categorical")


def test_student_t_parameters_are_bounded():
    head = StudentT(4, 3, rngs=nnx.Rngs(0))
    params = head(jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)) * 1e3, jnp.float32))
    assert np.all(np.asarray(params.df) >= 2.0)  # 2 + softplus rounds to 2 in float32
    assert np.all(np.exp(np.asarray(params.log_scale)) >= MIN_SCALE * 0.999)
    negbin = NegativeBinomial(4, 3, rngs=nnx.Rngs(0))(jnp.ones((5, 4)))
    assert np.all(np.asarray(negbin.mean) > 0) and np.all(np.asarray(negbin.dispersion) > 0)


# One compiled program per head for all the cases below (same shapes), instead of eager loops.
student_t_head = StudentT(2, 1, rngs=nnx.Rngs(0))
negbin_head = NegativeBinomial(2, 1, rngs=nnx.Rngs(0))
student_t_log_prob = jax.jit(student_t_head.log_prob)
student_t_quantile = jax.jit(student_t_head.quantile)
negbin_log_prob = jax.jit(negbin_head.log_prob)
negbin_quantile = jax.jit(negbin_head.quantile)


@pytest.mark.parametrize("loc,scale,df", STUDENT_T_CASES)
def test_student_t_log_prob_mean_and_quantile_match_scipy(loc, scale, df):
    targets = np.array([-40.0, loc - scale, loc, loc + 0.3, 25.0])
    params = student_t_params(loc, scale, df, shape=(5, 1))
    reference = stats.t(float(np.float32(df)), loc, scale)
    np.testing.assert_allclose(student_t_log_prob(params, jnp.asarray(targets[:, None], jnp.float32)),
                               reference.logpdf(targets), rtol=2e-6, atol=2e-5)
    np.testing.assert_allclose(student_t_head.mean(params)[:, 0], reference.mean(), rtol=1e-6)
    levels = np.array([0.0, 1e-6, 0.025, 0.1, 0.5, 0.8, 0.975, 0.999, 1.0], np.float32)
    quantiles = student_t_quantile(student_t_params(loc, scale, df), levels)
    assert quantiles.shape == (9, 1, 1)  # the ends are -inf and inf, as scipy's
    np.testing.assert_allclose(quantiles[:, 0, 0], reference.ppf(levels.astype(np.float64)),
                               rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("mu,alpha", NEGBIN_CASES)
def test_negbin_log_prob_mean_and_quantile_match_scipy(mu, alpha):
    reference = scipy_negbin(mu, alpha)
    counts = np.concatenate([[0.0, 1.0, 7.0], np.round(reference.ppf([0.3, 0.9, 0.999]))])
    params = negbin_params(mu, alpha, shape=(len(counts), 1))
    np.testing.assert_allclose(negbin_log_prob(params, jnp.asarray(counts[:, None], jnp.float32)),
                               reference.logpmf(counts), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(negbin_head.mean(params)[:, 0], reference.mean(), rtol=1e-6)
    # the mode is a most likely count
    mode = float(negbin_head.mode(negbin_params(mu, alpha))[0, 0])
    assert reference.pmf(mode) >= reference.pmf(np.arange(int(3 * mu) + 5)).max() * (1 - 1e-4)
    levels = np.array([0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 0.99, 1.0])
    quantiles = np.asarray(negbin_quantile(negbin_params(mu, alpha), levels))[:, 0, 0]
    assert quantiles[0] == 0 and quantiles[-1] == np.inf
    levels, quantiles = levels[1:-1], quantiles[1:-1]
    # the smallest count whose CDF reaches the level, up to float32's CDF error
    tolerance = 2e-4
    assert np.all(quantiles == np.round(quantiles)) and np.all(quantiles >= 0)
    assert np.all(reference.cdf(quantiles) >= levels - tolerance)
    assert np.all(reference.cdf(quantiles - 1) < levels + tolerance)


def test_negbin_log_prob_holds_for_large_counts_and_near_poisson_dispersion():
    # A plain lgamma sum loses ~0.1 nat in float32 at these values.
    for mu, alpha, count in [(1e5, 0.5, 1.2e5), (3.0, 1e-6, 5.0), (1e6, 1e-3, 1e6)]:
        got = negbin_log_prob(negbin_params(mu, alpha), jnp.full((1, 1), count))
        np.testing.assert_allclose(got, scipy_negbin(mu, alpha).logpmf(count), atol=2e-3)


def test_log_prob_gradients_are_finite_at_extreme_parameters():
    counts = jnp.array([[0.0], [3.0], [1e5]])
    negbin_gradient = jax.jit(jax.grad(lambda p: negbin_head.log_prob(p, counts).sum()))
    for mu, alpha in [(0.01, 1e-7), (1e4, 50.0), (1e5, 1e-4)]:
        grads = negbin_gradient(negbin_params(mu, alpha, (3, 1)))
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    student_gradient = jax.jit(jax.grad(lambda p: student_t_head.log_prob(p, counts).sum()))
    for df in (2.0001, 7.9, 8.0, 1e6):
        grads = student_gradient(student_t_params(0.0, 1.0, df, (3, 1)))
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_gaussian_and_bernoulli_quantiles_match_scipy():
    params = GaussianParams(jnp.array([[1.0, -2.0]]), jnp.log(jnp.array([[0.5, 3.0]])))
    levels = np.array([0.025, 0.2, 0.5, 0.9])
    got = Gaussian(2, 2, rngs=nnx.Rngs(0)).quantile(params, levels)
    assert got.shape == (4, 1, 2)
    expected = stats.norm.ppf(levels[:, None], [1.0, -2.0], [0.5, 3.0])
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5)
    logits = jnp.array([[0.0, 2.0, -1.0]])
    got = Bernoulli(2, 3, rngs=nnx.Rngs(0)).quantile(logits, levels)
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0])))
    np.testing.assert_array_equal(got[:, 0], stats.bernoulli.ppf(levels[:, None], p))


def test_mixture_quantile_inverts_the_mixture_cdf():
    params = MixtureParams(jnp.array([0.2, -1.0, 0.5]),
                           jnp.array([[0.0, 1.0], [3.0, -2.0], [-1.0, 10.0]]),
                           jnp.log(jnp.array([[1.0, 0.5], [0.3, 2.0], [2.0, 0.1]])))
    levels = np.array([0.01, 0.3, 0.5, 0.95])
    got = np.asarray(MixtureGaussian(2, 2, 3, rngs=nnx.Rngs(0)).quantile(params, levels))
    assert got.shape == (4, 2)
    weights = np.asarray(jax.nn.softmax(params.logits))
    means, scales = np.asarray(params.mean), np.exp(np.asarray(params.log_scale))
    for feature in range(2):
        cdf = sum(weights[k] * stats.norm.cdf(got[:, feature], means[k, feature],
                                              scales[k, feature]) for k in range(3))
        np.testing.assert_allclose(cdf, levels, atol=1e-6)


def test_quantile_shapes_and_bad_levels():
    head = Gaussian(2, 3, rngs=nnx.Rngs(0))
    params = head(jnp.ones((4, 5, 2)))
    assert head.quantile(params, 0.5).shape == (4, 5, 3)
    assert head.quantile(params, [0.1, 0.9]).shape == (2, 4, 5, 3)
    np.testing.assert_allclose(head.quantile(params, 0.5), params.mean, rtol=1e-6)
    for bad in (1.5, [0.1, -0.2], [[0.5]]):
        with pytest.raises(ValueError, match="q"):
            head.quantile(params, bad)


def within_standard_errors(draws, mean, variance, excess_kurtosis, count=4.0):
    n = draws.size
    assert abs(draws.mean() - mean) < count * math.sqrt(variance / n)
    variance_error = variance * math.sqrt((2.0 + excess_kurtosis) / n)
    assert abs(draws.var() - variance) < count * variance_error


def sampler(head):
    """A compiled ``(noise, params, temperature) -> draws`` for ``head``."""
    return jax.jit(lambda noise, params, temperature: head.sample_from_noise(
        noise, params, temperature=temperature))


N_DRAWS = 20000
# One program per head for every draw below (same shapes).
student_t_draw = sampler(student_t_head)
negbin_draw = sampler(negbin_head)


@pytest.mark.slow
def test_student_t_and_negbin_draw_the_right_moments():
    noise = student_t_head.draw_noise(jax.random.key(5), (N_DRAWS,))
    draws = np.asarray(student_t_draw(noise, student_t_params(1.0, 0.5, 9.0, (N_DRAWS, 1)), 1.0))
    mean, variance, _, kurtosis = stats.t.stats(9.0, 1.0, 0.5, moments="mvsk")
    within_standard_errors(draws, mean, variance, kurtosis)
    # temperature scales the spread: variance * T
    cooled = np.asarray(student_t_draw(noise, student_t_params(1.0, 0.5, 9.0, (N_DRAWS, 1)), 0.25))
    within_standard_errors(cooled, mean, variance * 0.25, kurtosis)
    # heavy tails (df = 3, infinite kurtosis): compare the empirical CDF instead
    heavy = np.asarray(student_t_draw(noise, student_t_params(0.0, 1.0, 3.0, (N_DRAWS, 1)), 1.0))
    for point in (-3.0, -1.0, 0.5, 4.0):
        p = stats.t.cdf(point, 3.0)
        assert abs((heavy <= point).mean() - p) < 4 * math.sqrt(p * (1 - p) / N_DRAWS)

    for mu, alpha in [(5.0, 0.1), (40.0, 0.5), (0.5, 2.0)]:
        counts = np.asarray(negbin_draw(noise, negbin_params(mu, alpha, (N_DRAWS, 1)), 1.0))
        assert np.all(counts == np.round(counts)) and counts.min() >= 0
        mean, variance, _, kurtosis = scipy_negbin(mu, alpha).stats(moments="mvsk")
        within_standard_errors(counts, mean, variance, kurtosis)


def test_noise_determines_the_draw():
    # typed and raw uint32 keys give the same per-element keys
    typed = negbin_head.draw_noise(jax.random.key(0), (N_DRAWS,))
    raw = negbin_head.draw_noise(jax.random.PRNGKey(0), (N_DRAWS,))
    assert typed.shape == (N_DRAWS,)
    np.testing.assert_array_equal(jax.random.key_data(typed), jax.random.key_data(raw))
    other = negbin_head.draw_noise(jax.random.key(1), (N_DRAWS,))
    for draw, params in [(student_t_draw, student_t_params(0.0, 1.0, 4.0, (N_DRAWS, 1))),
                         (negbin_draw, negbin_params(9.0, 0.3, (N_DRAWS, 1)))]:
        first = np.asarray(draw(typed, params, 1.0))
        np.testing.assert_array_equal(first, draw(typed, params, 1.0))
        assert not np.array_equal(first, np.asarray(draw(other, params, 1.0)))


# -- rescale: the distribution in units `scale` times larger (DeepAR's mean scaling) ----------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gaussian", "mdn", "student_t"])
def test_rescale_is_the_distribution_of_the_scaled_variable(name):
    """``rescale(p, s)`` is the law of ``s X``: its density is ``p(y / s) / s`` and its quantiles
    are ``s`` times the quantiles of ``p``."""
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    head = {"gaussian": Gaussian(4, 2, rngs=nnx.Rngs(0)),
            "mdn": MixtureGaussian(4, 2, 3, rngs=nnx.Rngs(0)),
            "student_t": StudentT(4, 2, rngs=nnx.Rngs(0))}[name]
    params = head(hidden)
    scale = jnp.asarray([[2.0, 0.5], [10.0, 1.0], [1e3, 3.0]], jnp.float32)
    scaled = head.rescale(params, scale)
    target = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)), jnp.float32)
    np.testing.assert_allclose(head.log_prob(scaled, target * scale),
                               head.log_prob(params, target) - jnp.log(scale).sum(-1),
                               rtol=1e-5, atol=1e-5)
    levels = [0.1, 0.5, 0.9]
    np.testing.assert_allclose(head.quantile(scaled, levels), head.quantile(params, levels) * scale,
                               rtol=2e-4, atol=1e-5)


def test_negbin_rescale_is_deepars():
    params = negbin_params(4.0, 0.5, shape=(2, 1))
    scale = jnp.asarray([[1.0], [16.0]], jnp.float32)
    scaled = NegativeBinomial(4, 1, rngs=nnx.Rngs(0)).rescale(params, scale)
    np.testing.assert_allclose(scaled.mean[:, 0], [4.0, 64.0])
    np.testing.assert_allclose(scaled.dispersion[:, 0], [0.5, 0.125])
    with pytest.raises(ValueError, match="cannot be scaled"):
        Bernoulli(4, 1, rngs=nnx.Rngs(0)).rescale(jnp.zeros((1, 1)), jnp.ones((1, 1)))
