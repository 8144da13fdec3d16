"""The feed policy: truth everywhere is teacher forcing; samples everywhere is free running."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.decoding.feed import rollout


@pytest.fixture(scope="module")
def model():
    config = sm.ModelConfig(vocab_size=9, hidden_size=8, num_layers=2, embed_size=4, dropout=0.3)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    model.eval()
    return model


TOKENS = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 0, 1]])


def test_all_truth_is_teacher_forcing(model):
    outputs, carry, fed = rollout(model, TOKENS, jnp.ones(TOKENS.shape, bool), key=jax.random.key(0))
    expected, expected_carry = model(TOKENS)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    np.testing.assert_array_equal(fed, TOKENS)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(expected_carry)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_no_truth_at_temperature_zero_feeds_back_the_argmax(model):
    outputs, _, fed = rollout(model, TOKENS, jnp.zeros(TOKENS.shape, bool), key=jax.random.key(0),
                              temperature=0.0)
    np.testing.assert_array_equal(fed[:, 0], TOKENS[:, 0])  # step 0 always feeds the truth
    np.testing.assert_array_equal(fed[:, 1:], jnp.argmax(outputs[:, :-1], -1))
    # and the outputs are what teacher forcing gives on the sequence actually fed
    np.testing.assert_allclose(outputs, model(fed)[0], atol=1e-5)


def test_mixed_mask_feeds_truth_exactly_where_asked(model):
    mask = jnp.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    outputs, _, fed = rollout(model, TOKENS, mask, key=jax.random.key(3))
    np.testing.assert_array_equal(np.where(mask, fed, -1), np.where(mask, TOKENS, -1))
    np.testing.assert_allclose(outputs, model(fed)[0], atol=1e-5)


def test_mask_shape_is_checked(model):
    with pytest.raises(ValueError, match="teacher_mask"):
        rollout(model, TOKENS, jnp.ones((2, 4), bool), key=jax.random.key(0))
