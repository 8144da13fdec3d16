"""The custom-VJP recurrences compute the same loss and gradients as differentiating lax.scan.

Checked for every cell, with and without the embedding fold, length 1, two layers, real-valued
inputs and a non-zero initial carry whose final value enters the loss, so that every cotangent
path (outputs, final carry, initial carry, weights, recurrent bias) is exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.nn.cells import elman_recur, gru_recur, lstm_recur
from seqmodel.nn.recurrence import elman_scan, gru_scan, lstm_scan

CELLS = ["lstm", "gru", "elman"]
ATOL = RTOL = 2e-5


def _config(**overrides) -> sm.ModelConfig:
    base = dict(vocab_size=7, cell="lstm", hidden_size=6, embed_size=5, num_layers=1)
    base.update(overrides)
    return sm.ModelConfig(**base)


def _random_carry(model, batch: int, seed: int):
    """A non-zero initial carry, so that the gradient with respect to it is not trivial."""
    carry = model.init_carry(batch)
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _loss_and_grads(config: sm.ModelConfig, inputs, targets, carry):
    """Loss (mean NLL + a term on the final carry) and its gradients w.r.t. params and carry."""
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, carry, inputs, targets):
        model = nnx.merge(graphdef, params, rest)
        outputs, final = model(inputs, carry)
        nll = -jnp.mean(model.head.log_prob(outputs, targets))
        return nll + 0.1 * sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))

    # Inputs are arguments, not closed-over constants: the model's range check skips tracers only.
    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(params, carry, inputs, targets)


def _assert_same(fast, plain):
    (loss_fast, grads_fast), (loss_plain, grads_plain) = fast, plain
    np.testing.assert_allclose(loss_fast, loss_plain, atol=ATOL, rtol=RTOL)
    flat_fast = jax.tree_util.tree_leaves_with_path(grads_fast)
    flat_plain = jax.tree.leaves(grads_plain)
    assert len(flat_fast) == len(flat_plain) > 0
    for (path, a), b in zip(flat_fast, flat_plain):
        assert a.shape == b.shape, path
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL, err_msg=jax.tree_util.keystr(path))


def _compare(batch=3, length=4, seed=0, **overrides):
    config = _config(**overrides)
    key_inputs, key_targets = jax.random.split(jax.random.key(seed))
    if config.discrete:
        inputs = jax.random.randint(key_inputs, (batch, length), 0, config.vocab_size)
        targets = jax.random.randint(key_targets, (batch, length), 0, config.vocab_size)
    else:
        inputs = jax.random.normal(key_inputs, (batch, length, config.input_size))
        targets = jax.random.normal(key_targets, (batch, length, config.input_size))
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    carry = _random_carry(model, batch, seed + 1)
    fast = _loss_and_grads(config.__class__(**{**config.to_dict(), "fast_recurrence": True}),
                           inputs, targets, carry)
    plain = _loss_and_grads(config.__class__(**{**config.to_dict(), "fast_recurrence": False}),
                            inputs, targets, carry)
    _assert_same(fast, plain)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_fast_equals_plain_folded_two_layers(cell):
    _compare(cell=cell, fold_embedding=True, num_layers=2, length=4)


@pytest.mark.parametrize("cell", CELLS)
def test_fast_equals_plain_unfolded_length_one(cell):
    _compare(cell=cell, fold_embedding=False, num_layers=1, length=1, seed=3)


def test_fast_equals_plain_real_valued_inputs():
    _compare(vocab_size=None, input_size=2, head="gaussian", cell="lstm", num_layers=2, seed=7)


def test_default_is_fast_and_cells_dispatch():
    """The default model uses the custom-VJP scan; the flag reaches every layer's cell."""
    assert sm.ModelConfig(vocab_size=5).fast_recurrence is True
    model = sm.SequenceModel(_config(num_layers=2, fast_recurrence=False), rngs=nnx.Rngs(0))
    assert [cell.fast_recurrence for cell in model.cells] == [False, False]
    jaxpr = jax.make_jaxpr(lambda x: sm.SequenceModel(_config(), rngs=nnx.Rngs(0))(x)[0])(
        jnp.zeros((2, 3), jnp.int32))
    assert "custom_vjp_call" in str(jaxpr)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_scan_functions_values_and_vjp(cell):
    """Direct check of the pure functions: values, and the VJP of random output cotangents."""
    batch, hidden, length = 2, 3, 5
    gates = {"lstm": 4, "gru": 3, "elman": 1}[cell]
    keys = jax.random.split(jax.random.key(11), 6)
    kernel = 0.7 * jax.random.normal(keys[0], (hidden, gates * hidden))
    bias = 0.3 * jax.random.normal(keys[1], (gates * hidden,))
    xp = jax.random.normal(keys[2], (length, batch, gates * hidden))
    h0 = jax.random.normal(keys[3], (batch, hidden))
    if cell == "lstm":
        carry = (jax.random.normal(keys[4], (batch, hidden)), h0)
        fast = lambda w, c, x: lstm_scan(w, c, x)  # noqa: E731
        plain = lambda w, c, x: jax.lax.scan(lambda s, v: lstm_recur(w, s, v), c, x)  # noqa: E731
    elif cell == "gru":
        carry = h0
        fast = lambda w, c, x: gru_scan(w, bias, c, x)  # noqa: E731
        plain = lambda w, c, x: jax.lax.scan(  # noqa: E731
            lambda s, v: gru_recur(w, bias, s, v), c, x)
    else:
        carry = h0
        fast = lambda w, c, x: elman_scan(w, c, x)  # noqa: E731
        plain = lambda w, c, x: jax.lax.scan(lambda s, v: elman_recur(w, s, v), c, x)  # noqa: E731
    out_fast, vjp_fast = jax.vjp(fast, kernel, carry, xp)
    out_plain, vjp_plain = jax.vjp(plain, kernel, carry, xp)
    for a, b in zip(jax.tree.leaves(out_fast), jax.tree.leaves(out_plain)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    leaves, tree = jax.tree.flatten(out_fast)
    cot_keys = jax.random.split(keys[5], len(leaves))
    cotangent = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(cot_keys, leaves)])
    for a, b in zip(jax.tree.leaves(vjp_fast(cotangent)), jax.tree.leaves(vjp_plain(cotangent))):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
def test_gru_recurrent_bias_gradient():
    """The GRU recurrent bias gradient (one sum after the loop) matches autodiff."""
    batch, hidden, length = 2, 3, 4
    keys = jax.random.split(jax.random.key(2), 4)
    kernel = 0.7 * jax.random.normal(keys[0], (hidden, 3 * hidden))
    bias = jax.random.normal(keys[1], (3 * hidden,))
    xp = jax.random.normal(keys[2], (length, batch, 3 * hidden))
    h0 = jax.random.normal(keys[3], (batch, hidden))

    def loss(scan):
        return lambda b: jnp.sum(jnp.cos(scan(kernel, b, h0, xp)[1]))

    plain_scan = lambda w, b, h, x: jax.lax.scan(lambda s, v: gru_recur(w, b, s, v), h, x)  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss(gru_scan))(bias), jax.grad(loss(plain_scan))(bias),
                               atol=ATOL, rtol=RTOL)


def test_no_recompile_across_batches():
    """A jitted train-style gradient compiles once for a run's batches of one shape."""
    config = _config()
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params, inputs):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            outputs, _ = model(inputs[:, :-1])
            return -jnp.mean(model.head.log_prob(outputs, inputs[:, 1:]))

        return jax.grad(loss_fn)(params)

    for seed in range(3):
        batch = jax.random.randint(jax.random.key(seed), (2, 5), 0, config.vocab_size)
        jax.block_until_ready(grad(params, batch))
    assert grad._cache_size() == 1
