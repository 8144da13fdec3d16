"""Recurrent cells split into a time-parallel input half and a serial recurrent half.

Every cell follows one contract (see docs/ARCHITECTURE.md):

- ``init_carry(batch_size)`` -> carry (a pytree of ``(b, h)`` arrays)
- ``project(x)``: ``(..., in)`` -> ``(..., G)``, the input half ``x @ W_i + b`` for all gates at
  once. It has no time dependence, so the teacher-forced path runs it over a whole sequence in one
  matmul (as cuDNN does).
- ``recur(carry, xp)`` -> ``(carry, y)``: the serial half, the signature ``lax.scan`` wants.
- ``scan(carry, xp_sequence)``: ``recur`` over a time-major ``(t, b, G)`` sequence.
- ``__call__(carry, x) = recur(carry, project(x))``.

The recurrent math lives in pure functions (:mod:`seqmodel.nn.equations`: ``lstm_recur`` ...) that take the recurrent weights as
an argument, so the teacher-forced scan, the one-step sampler and the custom-VJP fast path
(``seqmodel.nn.recurrence``) all evaluate the very same expressions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqmodel.nn.equations import (  # noqa: F401  (re-exported: the cells' equations)
    elman_recur,
    gru_recur,
    lstm_activate,
    lstm_gate_scale,
    lstm_recur,
)
from seqmodel.nn.recurrence import elman_scan, gru_scan, lstm_scan

Array = jax.Array
Carry = Any

_input_init = nnx.initializers.lecun_normal()


def _orthogonal_blocks(key: Array, hidden_size: int, num_gates: int, dtype: Any) -> Array:
    """A ``(h, num_gates * h)`` recurrent kernel whose every gate block is orthogonal."""
    keys = jax.random.split(key, num_gates)
    init = nnx.initializers.orthogonal()
    return jnp.concatenate([init(k, (hidden_size, hidden_size), dtype) for k in keys], axis=1)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class _Cell(nnx.Module):
    """Shared parameters and plumbing; subclasses set ``num_gates`` and the recurrence."""

    num_gates: int = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        fast_recurrence: bool = True,
    ):
        if input_size < 1 or hidden_size < 1:
            raise ValueError(
                f"input_size and hidden_size must be >= 1, got input_size={input_size}, "
                f"hidden_size={hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        # True: ``scan`` runs the custom-VJP recurrence of seqmodel.nn.recurrence (same numbers,
        # faster backward); False: plain ``lax.scan`` over ``recur`` differentiated by JAX.
        self.fast_recurrence = fast_recurrence
        width = self.num_gates * hidden_size
        self.input_kernel = nnx.Param(_input_init(rngs.params(), (input_size, width), param_dtype))
        self.recurrent_kernel = nnx.Param(
            _orthogonal_blocks(rngs.params(), hidden_size, self.num_gates, param_dtype)
        )
        self.bias = nnx.Param(self._initial_bias(param_dtype))

    @property
    def gate_width(self) -> int:
        """Width ``G`` of the projected input: ``num_gates * hidden_size``."""
        return self.num_gates * self.hidden_size

    def _initial_bias(self, param_dtype: Any) -> Array:
        return jnp.zeros((self.gate_width,), param_dtype)

    def project(self, x: Array) -> Array:
        """Input half for any leading axes: ``(..., in)`` -> ``(..., G)``."""
        kernel = self.input_kernel[...].astype(self.dtype)
        return x.astype(self.dtype) @ kernel + self.bias[...].astype(self.dtype)

    def recurrence(self):
        """The pure step ``(carry, xp) -> (carry, y)`` with this cell's weights bound."""
        raise NotImplementedError

    def recur(self, carry: Carry, xp: Array):
        """Serial half: carry, xp ``(b, G)`` -> ``(carry, y (b, h))``."""
        return self.recurrence()(carry, xp)

    def scan(self, carry: Carry, xp_sequence: Array):
        """Recurrence over a time-major sequence: xp ``(t, b, G)`` -> ``(carry, ys (t, b, h))``.

        With ``fast_recurrence`` it calls the custom-VJP scan of :mod:`seqmodel.nn.recurrence`,
        which computes the same values and gradients as ``lax.scan(recur)`` faster."""
        if self.fast_recurrence:
            return self.fast_scan(carry, xp_sequence)
        return jax.lax.scan(self.recurrence(), carry, xp_sequence)

    def fast_scan(self, carry: Carry, xp_sequence: Array):
        """The custom-VJP scan of :mod:`seqmodel.nn.recurrence` for this cell."""
        raise NotImplementedError

    def __call__(self, carry: Carry, x: Array):
        return self.recur(carry, self.project(x))

    def output(self, carry: Carry) -> Array:
        """The hidden state ``(b, h)`` that the next layer (or head) sees."""
        return carry


class LSTMCell(_Cell):
    """Long short-term memory cell; carry ``(c, h)``, gates ``[i, f, o, g]``, forget bias 1."""

    num_gates = 4

    def _initial_bias(self, param_dtype: Any) -> Array:
        h = self.hidden_size
        return jnp.zeros((4 * h,), param_dtype).at[h : 2 * h].set(1.0)

    def init_carry(self, batch_size: int) -> tuple[Array, Array]:
        zeros = jnp.zeros((batch_size, self.hidden_size), self.dtype)
        return (zeros, zeros)

    def recurrence(self):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        return lambda carry, xp: lstm_recur(kernel, carry, xp)

    def fast_scan(self, carry, xp_sequence):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        return lstm_scan(kernel, carry, xp_sequence.astype(self.dtype))

    def output(self, carry: tuple[Array, Array]) -> Array:
        return carry[1]


class GRUCell(_Cell):
    """Gated recurrent unit (PyTorch convention: reset gate applied after ``W_hn h + b_hn``)."""

    num_gates = 3

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(input_size, hidden_size, rngs=rngs, **kwargs)
        self.recurrent_bias = nnx.Param(jnp.zeros((3 * hidden_size,), self.bias[...].dtype))

    def init_carry(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.hidden_size), self.dtype)

    def recurrence(self):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        bias = self.recurrent_bias[...].astype(self.dtype)
        return lambda h, xp: gru_recur(kernel, bias, h, xp)

    def fast_scan(self, carry, xp_sequence):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        bias = self.recurrent_bias[...].astype(self.dtype)
        return gru_scan(kernel, bias, carry, xp_sequence.astype(self.dtype))


class ElmanCell(_Cell):
    """Elman network cell with tanh: ``h' = tanh(x W_i + b + h W_h)``."""

    num_gates = 1

    def init_carry(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.hidden_size), self.dtype)

    def recurrence(self):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        return lambda h, xp: elman_recur(kernel, h, xp)

    def fast_scan(self, carry, xp_sequence):
        kernel = self.recurrent_kernel[...].astype(self.dtype)
        return elman_scan(kernel, carry, xp_sequence.astype(self.dtype))



CELLS = {"lstm": LSTMCell, "gru": GRUCell, "elman": ElmanCell}
