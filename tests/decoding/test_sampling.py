"""Sampling controls: temperature -> top-k -> top-p -> draw, as pure functions (no model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqmodel.decoding import sampling
from seqmodel.nn import heads

ROWS, VOCAB = 4, 6
# Small integers make ties common, which is where top-k and top-p usually go wrong.
tied_logits = hnp.arrays(np.float32, (ROWS, VOCAB), elements=st.integers(-3, 3).map(float))
real_logits = hnp.arrays(
    np.float32, (ROWS, VOCAB), elements=st.floats(-5, 5, width=32, allow_subnormal=False)
)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(logits=tied_logits, top_k=st.integers(1, VOCAB))
def test_top_k_keeps_exactly_k_of_the_largest(logits, top_k):
    kept = np.isfinite(np.asarray(sampling.top_k_filter(jnp.asarray(logits), top_k)))
    assert (kept.sum(-1) == top_k).all()
    for row, mask in zip(logits, kept):
        if not mask.all():
            assert row[mask].min() >= row[~mask].max()
    np.testing.assert_array_equal(
        np.asarray(sampling.top_k_filter(jnp.asarray(logits), top_k))[kept], logits[kept]
    )


@FAST
@given(logits=real_logits, top_p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_nucleus(logits, top_p):
    kept = np.isfinite(np.asarray(sampling.top_p_filter(jnp.asarray(logits), top_p)))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
    for row, p, mask in zip(logits, probs, kept):
        assert mask.any()
        assert mask[np.argmax(row)]
        if not mask.all():
            assert row[mask].min() >= row[~mask].max()  # the most likely ones
        assert p[mask].sum() >= top_p - 1e-5  # reaches top_p ...
        assert p[mask].sum() - p[mask].min() < top_p + 1e-5  # ... and no smaller set does


def test_top_p_counts_ties_once():
    logits = jnp.log(jnp.array([0.3, 0.3, 0.3, 0.1]))
    kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, 0.5)))
    np.testing.assert_array_equal(kept, [True, True, False, False])


def test_controls_compose_temperature_then_top_k_then_top_p():
    logits = jnp.array([[3.0, 2.0, 1.0, 0.0, -1.0]])
    temperature, top_k, top_p = 2.0, 3, 0.6
    expected = sampling.top_p_filter(sampling.top_k_filter(logits / temperature, top_k), top_p)
    actual = sampling.filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
    # Top-p acts on the distribution renormalised after top-k and temperature: at T=2 the
    # top-3 probabilities are about (0.51, 0.31, 0.19), so p=0.6 keeps two; top-p first on the
    # raw logits would keep one (0.64 > 0.6).
    assert np.isfinite(np.asarray(actual)).sum() == 2
    assert np.isfinite(np.asarray(sampling.top_p_filter(logits, top_p))).sum() == 1


@settings(max_examples=25, deadline=None)
@given(logits=tied_logits, top_k=st.integers(1, VOCAB), top_p=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_draws_stay_inside_the_filtered_set(logits, top_k, top_p, seed):
    logits = jnp.asarray(logits)
    keys = jax.random.split(jax.random.key(seed), 16)
    draws = jax.vmap(
        lambda key: sampling.sample_logits(key, logits, temperature=0.7, top_k=top_k, top_p=top_p)
    )(keys)  # (16, ROWS)
    allowed = np.isfinite(
        np.asarray(sampling.filter_logits(logits, temperature=0.7, top_k=top_k, top_p=top_p))
    )
    assert np.take_along_axis(allowed, np.asarray(draws).T, axis=-1).all()


@FAST
@given(logits=real_logits, seed=st.integers(0, 2**16))
def test_greedy_and_zero_temperature_are_the_argmax(logits, seed):
    key = jax.random.key(seed)
    argmax = np.argmax(logits, axis=-1)
    for kwargs in (dict(greedy=True), dict(temperature=0), dict(temperature=0.0, top_k=2)):
        np.testing.assert_array_equal(
            np.asarray(sampling.sample_logits(key, jnp.asarray(logits), **kwargs)), argmax
        )


def test_sampling_follows_the_softmax():
    logits = jnp.array([1.0, 0.0, -1.0, 0.5])
    draws = jax.vmap(lambda key: sampling.sample_logits(key, logits, temperature=2.0))(
        jax.random.split(jax.random.key(0), 20000)
    )
    frequencies = np.bincount(np.asarray(draws), minlength=4) / draws.size
    np.testing.assert_allclose(frequencies, jax.nn.softmax(logits / 2.0), atol=0.015)


def test_real_valued_heads_scale_the_spread_and_refuse_token_filters():
    head = heads.Gaussian(4, 2, rngs=nnx.Rngs(0))
    params = heads.GaussianParams(jnp.zeros((20000, 2)), jnp.zeros((20000, 2)))  # scale 1
    draws = sampling.sample_head(head, jax.random.key(1), params, temperature=0.25)
    np.testing.assert_allclose(np.std(np.asarray(draws), axis=0), [0.5, 0.5], atol=0.02)
    np.testing.assert_array_equal(
        np.asarray(sampling.sample_head(head, jax.random.key(1), params, temperature=0)), 0.0
    )
    with pytest.raises(ValueError, match=r"top_k=3 is invalid for a Gaussian head"):
        sampling.sample_head(head, jax.random.key(1), params, top_k=3)
    bernoulli = heads.Bernoulli(4, 3, rngs=nnx.Rngs(0))
    logits = jnp.array([[-0.5, 0.1, 2.0]])
    np.testing.assert_array_equal(
        np.asarray(sampling.sample_head(bernoulli, jax.random.key(0), logits, greedy=True)),
        [[0.0, 1.0, 1.0]],
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sampling.check_temperature(-1.0), r"temperature=-1.0 is invalid.*>= 0"),
        (lambda: sampling.check_temperature(float("nan")), r"temperature=nan is invalid"),
        (lambda: sampling.check_top_k(0, 5), r"top_k=0 is invalid.*>= 1"),
        (lambda: sampling.check_top_k(6, 5), r"top_k=6 is invalid.*vocabulary size 5"),
        (lambda: sampling.check_top_k(2.5, 5), r"top_k=2.5 is invalid"),
        (lambda: sampling.check_top_p(0.0), r"top_p=0.0 is invalid.*\(0, 1\]"),
        (lambda: sampling.check_top_p(1.5), r"top_p=1.5 is invalid"),
        (lambda: sampling.filter_logits(jnp.zeros(3), temperature=0), r"temperature=0"),
    ],
)
def test_bad_controls_name_argument_value_and_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", ["categorical", "gaussian", "mdn", "bernoulli"])
def test_sample_head_draws_what_the_head_itself_draws(name):
    """Generation draws from pre-drawn noise; it must be the heads' own sample for the key."""
    rngs = nnx.Rngs(0)
    head = {
        "categorical": lambda: heads.Categorical(4, 7, rngs=rngs),
        "gaussian": lambda: heads.Gaussian(4, 3, rngs=rngs),
        "mdn": lambda: heads.MixtureGaussian(4, 3, 5, rngs=rngs),
        "bernoulli": lambda: heads.Bernoulli(4, 3, rngs=rngs),
    }[name]()
    params = head(jax.random.normal(jax.random.key(1), (6, 4)) * 3)

    @jax.jit  # one compile instead of many eager ones
    def both(key, temperature):
        return (sampling.sample_head(head, key, params, temperature=temperature),
                head.sample(key, params, temperature=temperature))

    for temperature in (1.0, 0.6):
        for seed in range(3):
            ours, theirs = both(jax.random.key(seed), temperature)
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(sampling.sample_head(head, jax.random.key(0), params, greedy=True)),
        np.asarray(head.mode(params)),
    )


@pytest.mark.parametrize("temperature, top_k, bias", [(1.0, None, None), (0.7, 3, None),
                                                      (1.6, None, True)])
def test_folded_noise_draws_what_sample_with_noise_draws(temperature, top_k, bias):
    """argmax(logits / T + g) = argmax(logits + T g); a constant bias moves into the noise."""
    head = heads.Categorical(16, 9, rngs=nnx.Rngs(0))
    logits = jax.random.normal(jax.random.key(1), (256, 9)) * 3
    noise = sampling.draw_noise(head, jax.random.key(2), (256,))
    offset = jax.random.normal(jax.random.key(3), (9,)) if bias else None
    expected = sampling.sample_with_noise(
        head, noise, logits if offset is None else logits + offset, temperature=temperature,
        top_k=top_k)
    folded = sampling.fold_noise(noise, temperature=temperature, bias=offset)
    np.testing.assert_array_equal(sampling.sample_folded(folded, logits, top_k=top_k), expected)
