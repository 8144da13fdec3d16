"""Teacher-forced recurrences with a hand-written backward pass (custom VJP), as cuDNN does it.

Automatic differentiation of ``lax.scan(recur)`` puts the recurrent-weight gradient inside the
backward loop: every step adds ``h_{t-1}^T @ dgates_t`` into a ``(h, G)`` accumulator that rides in
the loop carry, and it saves or recomputes whatever the forward step produced. Here

- the forward scan saves exactly what the backward step needs (activated gates, cell states);
- the backward scan carries only ``dh`` (and ``dc``) and does one matmul per step,
  ``dgates_t @ W_h^T``;
- the recurrent-weight gradient is ONE ``(h, t*b) @ (t*b, G)`` matmul after the loop (and the GRU
  recurrent-bias gradient one sum), where a large GEMM runs near the machine's peak.

Without differentiation the functions are a plain ``lax.scan`` over the very same pure steps that
the cells use (``seqmodel.nn.equations.lstm_recur`` ...), so sampling and the teacher-forced path cannot
drift apart. Every function takes time-major sequences and returns ``(final_carry, ys)`` like
``lax.scan``; they are pure JAX (no host callbacks, no device assumptions) and run unchanged on
CPU and GPU. Forward-mode differentiation (``jax.jvp``) is not defined for ``jax.custom_vjp``;
use the plain scan (``ModelConfig(fast_recurrence=False)``) for that.

Example::

    carry, ys = lstm_scan(recurrent_kernel, (c0, h0), xp)   # xp (t, b, 4h) -> ys (t, b, h)

Measured on a 2-core Zen 4 CPU (LSTM h128, b32, t128 train step, CPU time on one core):
this path 32-34 ms against 55 ms for differentiated ``lax.scan``; of it the two loops' small
GEMMs ~11 ms, their elementwise fusions ~9 ms, the ``dW`` GEMM ~5 ms (at the GEMM ceiling), the
head ~4.5 ms. Tried and dropped (no gain or slower): precomputing the backward coefficients
time-parallel (equal), a ``(G, b)`` feature-major layout (1.7x slower: transposes), emitting the
backward coefficients from the forward step (1.4x slower: XLA recomputes the sigmoid per
consumer), ``tanh``-based gate activation (noise), ``unroll=2`` (noise), overwriting the input
buffer in place (3x slower: XLA copies the buffer every step). XLA:CPU runs one device's program
on one thread at a time (small GEMMs are not split, independent loops do not overlap), so the
second core is used by splitting the batch over two CPU devices (``seqmodel train --devices 2``);
the contraction over ``(t, b)`` in :func:`_flat_matmul` keeps that split free of all-gathers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqmodel.nn.equations import elman_recur, gru_recur, lstm_gate_scale, lstm_recur

Array = jax.Array


def _previous(initial: Array, sequence: Array) -> Array:
    """``[initial, sequence[0], ..., sequence[t-2]]``: the state each step started from."""
    return jnp.concatenate([initial[None], sequence[:-1]], axis=0)


def _flat_matmul(left: Array, right: Array) -> Array:
    """``sum_t left[t]^T @ right[t]`` as one GEMM: ``(t, b, m)``, ``(t, b, n)`` -> ``(m, n)``.

    Contracting over ``(t, b)`` directly rather than reshaping to ``(t*b, m)`` keeps a batch split
    across devices representable: each device contracts its own rows and the partial sums are
    all-reduced (a reshape that merges a sharded axis would all-gather the whole sequence)."""
    return jax.lax.dot_general(left, right, (((0, 1), (0, 1)), ((), ())))


# ---------------------------------------------------------------------------------------------
# LSTM (fused gate layout [i, f, o, g], see seqmodel.nn.equations.lstm_activate)
# ---------------------------------------------------------------------------------------------


@jax.custom_vjp
def lstm_scan(recurrent_kernel: Array, carry: tuple[Array, Array], xp: Array):
    """LSTM over a time-major sequence.

    Args:
      recurrent_kernel: ``W_h`` ``(h, 4h)``.
      carry: ``(c, h)``, each ``(b, h)``.
      xp: projected inputs ``x @ W_i + b``, ``(t, b, 4h)``.

    Returns:
      ``((c, h), ys)`` with ``ys`` ``(t, b, h)``, the same as
      ``lax.scan(lambda c, x: lstm_recur(recurrent_kernel, c, x), carry, xp)``.
    """
    return jax.lax.scan(lambda state, x: lstm_recur(recurrent_kernel, state, x), carry, xp)


def _lstm_forward(recurrent_kernel, carry, xp):
    hidden_size = recurrent_kernel.shape[0]
    scale = lstm_gate_scale(hidden_size, xp.dtype)

    def step(state, x):
        c, h = state
        # The same expressions as lstm_recur/lstm_activate, keeping the sigmoid block for backward.
        activated = jax.nn.sigmoid((x + h @ recurrent_kernel) * scale)
        i, f, o, g2 = jnp.split(activated, 4, axis=-1)
        c = f * c + i * (2.0 * g2 - 1.0)
        h = o * jnp.tanh(c)
        return (c, h), (h, activated, c)

    final, (ys, activated, cells) = jax.lax.scan(step, carry, xp)
    residuals = (recurrent_kernel, carry, ys, activated, cells)
    return (final, ys), residuals


def _lstm_backward(residuals, cotangents):
    recurrent_kernel, (c0, h0), ys, activated, cells = residuals
    (dc_final, dh_final), dys = cotangents
    hidden_size = recurrent_kernel.shape[0]
    scale = lstm_gate_scale(hidden_size, ys.dtype)
    kernel_t = recurrent_kernel.T
    # Time-parallel work stays out of the serial loop.
    previous_cells = _previous(c0, cells)
    tanh_cells = jnp.tanh(cells)

    def step(state, inputs):
        dc, dh = state
        dy, a, c_prev, tanh_c = inputs
        i, f, o, g2 = jnp.split(a, 4, axis=-1)
        g = 2.0 * g2 - 1.0
        dh = dh + dy
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        # d/d(activated) of [i, f, o, g2], then through the one scaled sigmoid of the block.
        d_activated = jnp.concatenate([dc * g, dc * c_prev, dh * tanh_c, 2.0 * dc * i], axis=-1)
        dgates = d_activated * a * (1.0 - a) * scale
        return (dc * f, dgates @ kernel_t), dgates

    (dc0, dh0), dgates = jax.lax.scan(
        step, (dc_final, dh_final), (dys, activated, previous_cells, tanh_cells), reverse=True
    )
    dkernel = _flat_matmul(_previous(h0, ys), dgates)
    return dkernel, (dc0, dh0), dgates


lstm_scan.defvjp(_lstm_forward, _lstm_backward)


# ---------------------------------------------------------------------------------------------
# GRU (PyTorch convention, gate order [r, z, n], see seqmodel.nn.equations.gru_recur)
# ---------------------------------------------------------------------------------------------


@jax.custom_vjp
def gru_scan(recurrent_kernel: Array, recurrent_bias: Array, h: Array, xp: Array):
    """GRU over a time-major sequence.

    Args:
      recurrent_kernel: ``W_h`` ``(h, 3h)``; recurrent_bias: ``b_h`` ``(3h,)``.
      h: ``(b, h)``; xp: ``x @ W_i + b`` ``(t, b, 3h)``.

    Returns:
      ``(h, ys)`` with ``ys`` ``(t, b, h)``, as ``lax.scan`` over :func:`gru_recur`.
    """
    return jax.lax.scan(
        lambda state, x: gru_recur(recurrent_kernel, recurrent_bias, state, x), h, xp
    )


def _gru_forward(recurrent_kernel, recurrent_bias, h, xp):
    hidden_size = recurrent_kernel.shape[0]

    def step(state, x):
        hp = state @ recurrent_kernel + recurrent_bias
        rz = jax.nn.sigmoid(x[..., : 2 * hidden_size] + hp[..., : 2 * hidden_size])
        r, z = rz[..., :hidden_size], rz[..., hidden_size:]
        hp_n = hp[..., 2 * hidden_size :]
        n = jnp.tanh(x[..., 2 * hidden_size :] + r * hp_n)
        state = (1.0 - z) * n + z * state
        return state, (state, rz, n, hp_n)

    final, (ys, rz, n, hp_n) = jax.lax.scan(step, h, xp)
    return (final, ys), (recurrent_kernel, h, ys, rz, n, hp_n)


def _gru_backward(residuals, cotangents):
    recurrent_kernel, h0, ys, rz, n, hp_n = residuals
    dh_final, dys = cotangents
    hidden_size = recurrent_kernel.shape[0]
    kernel_t = recurrent_kernel.T
    previous = _previous(h0, ys)

    def step(dh, inputs):
        dy, rz_t, n_t, hp_n_t, h_prev = inputs
        r, z = rz_t[..., :hidden_size], rz_t[..., hidden_size:]
        dh = dh + dy
        dn = dh * (1.0 - z) * (1.0 - n_t * n_t)
        dz = dh * (h_prev - n_t) * z * (1.0 - z)
        dr = dn * hp_n_t * r * (1.0 - r)
        dxp = jnp.concatenate([dr, dz, dn], axis=-1)
        dhp = jnp.concatenate([dr, dz, dn * r], axis=-1)
        return dh * z + dhp @ kernel_t, dxp

    dh0, dxp = jax.lax.scan(step, dh_final, (dys, rz, n, hp_n, previous), reverse=True)
    # The recurrent pre-activation gradient differs from dxp only in the n block (times r).
    r_all = rz[..., :hidden_size]
    dhp = jnp.concatenate([dxp[..., : 2 * hidden_size], dxp[..., 2 * hidden_size :] * r_all], -1)
    dkernel = _flat_matmul(previous, dhp)
    dbias = dhp.sum(axis=(0, 1))
    return dkernel, dbias, dh0, dxp


gru_scan.defvjp(_gru_forward, _gru_backward)


# ---------------------------------------------------------------------------------------------
# Elman
# ---------------------------------------------------------------------------------------------


@jax.custom_vjp
def elman_scan(recurrent_kernel: Array, h: Array, xp: Array):
    """Elman (tanh) recurrence over a time-major sequence: h ``(b, h)``, xp ``(t, b, h)`` ->
    ``(h, ys (t, b, h))``, as ``lax.scan`` over :func:`elman_recur`."""
    return jax.lax.scan(lambda state, x: elman_recur(recurrent_kernel, state, x), h, xp)


def _elman_forward(recurrent_kernel, h, xp):
    final, ys = elman_scan(recurrent_kernel, h, xp)
    return (final, ys), (recurrent_kernel, h, ys)


def _elman_backward(residuals, cotangents):
    recurrent_kernel, h0, ys = residuals
    dh_final, dys = cotangents
    kernel_t = recurrent_kernel.T
    # 1 - tanh^2 of every step at once, outside the serial loop.
    derivative = 1.0 - ys * ys

    def step(dh, inputs):
        dy, slope = inputs
        dpre = (dh + dy) * slope
        return dpre @ kernel_t, dpre

    dh0, dxp = jax.lax.scan(step, dh_final, (dys, derivative), reverse=True)
    return _flat_matmul(_previous(h0, ys), dxp), dh0, dxp


elman_scan.defvjp(_elman_forward, _elman_backward)
