"""Cells against hand-written NumPy references of their equations."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqmodel.nn.cells import ElmanCell, GRUCell, LSTMCell


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(cell, carry, x):
    wi, wh, b = (np.asarray(v[...]) for v in (cell.input_kernel, cell.recurrent_kernel, cell.bias))
    c, h = (np.asarray(a) for a in carry)
    z = x @ wi + b + h @ wh
    i, f, o, g = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return (c, h), h


def numpy_gru(cell, h, x):
    wi, wh, b, bh = (
        np.asarray(v[...])
        for v in (cell.input_kernel, cell.recurrent_kernel, cell.bias, cell.recurrent_bias)
    )
    h = np.asarray(h)
    xi_r, xi_z, xi_n = np.split(x @ wi + b, 3, axis=-1)
    hh_r, hh_z, hh_n = np.split(h @ wh + bh, 3, axis=-1)
    r = sigmoid(xi_r + hh_r)
    z = sigmoid(xi_z + hh_z)
    n = np.tanh(xi_n + r * hh_n)
    h = (1 - z) * n + z * h
    return h, h


def numpy_elman(cell, h, x):
    wi, wh, b = (np.asarray(v[...]) for v in (cell.input_kernel, cell.recurrent_kernel, cell.bias))
    h = np.tanh(x @ wi + b + np.asarray(h) @ wh)
    return h, h


REFERENCES = {LSTMCell: numpy_lstm, GRUCell: numpy_gru, ElmanCell: numpy_elman}


def random_carry(cell, rng, batch):
    carry = cell.init_carry(batch)
    return tuple(jnp.asarray(rng.normal(size=c.shape), jnp.float32) for c in carry) if isinstance(
        carry, tuple
    ) else jnp.asarray(rng.normal(size=carry.shape), jnp.float32)


@pytest.mark.parametrize("cell_class", [LSTMCell, GRUCell, ElmanCell])
def test_cell_matches_numpy_reference_over_several_steps(cell_class):
    rng = np.random.default_rng(0)
    cell = cell_class(5, 6, rngs=nnx.Rngs(1))
    if isinstance(cell, GRUCell):  # a non-zero recurrent bias exercises where r multiplies it
        cell.recurrent_bias[...] = jnp.asarray(rng.normal(size=18), jnp.float32)
    carry = random_carry(cell, rng, 3)
    reference_carry = carry
    for _ in range(3):
        x = rng.normal(size=(3, 5)).astype(np.float32)
        carry, y = cell(carry, jnp.asarray(x))
        reference_carry, reference_y = REFERENCES[cell_class](cell, reference_carry, x)
        np.testing.assert_allclose(y, reference_y, atol=1e-5)
    for leaf, reference in zip(
        carry if isinstance(carry, tuple) else (carry,),
        reference_carry if isinstance(reference_carry, tuple) else (reference_carry,),
    ):
        np.testing.assert_allclose(leaf, reference, atol=1e-5)


@pytest.mark.parametrize("cell_class", [LSTMCell, GRUCell, ElmanCell])
def test_scan_equals_repeated_recur_and_call_equals_recur_of_project(cell_class):
    rng = np.random.default_rng(2)
    cell = cell_class(4, 5, rngs=nnx.Rngs(0))
    xs = jnp.asarray(rng.normal(size=(6, 2, 4)), jnp.float32)  # time-major
    carry = cell.init_carry(2)
    scanned_carry, ys = cell.scan(carry, cell.project(xs))
    stepped = []
    for x in xs:
        carry, y = cell(carry, x)
        stepped.append(y)
    np.testing.assert_allclose(ys, jnp.stack(stepped), atol=1e-6)
    np.testing.assert_allclose(cell.output(scanned_carry), stepped[-1], atol=1e-6)


@pytest.mark.parametrize("cell_class", [LSTMCell, GRUCell, ElmanCell])
def test_initialisation_orthogonal_recurrent_blocks(cell_class):
    cell = cell_class(3, 8, rngs=nnx.Rngs(0))
    kernel = np.asarray(cell.recurrent_kernel[...])
    for block in np.split(kernel, cell.num_gates, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    carry = cell.init_carry(4)
    assert cell.output(carry).shape == (4, 8)


def test_lstm_forget_gate_bias_is_one():
    cell = LSTMCell(3, 4, rngs=nnx.Rngs(0))
    bias = np.asarray(cell.bias[...])
    np.testing.assert_array_equal(bias[4:8], 1.0)
    np.testing.assert_array_equal(np.delete(bias, range(4, 8)), 0.0)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(3, 0, rngs=nnx.Rngs(0))
