"""The residual block that a linear recurrence runs in, and its causal convolution.

``ResidualBlock`` wraps a cell of :mod:`seqmodel.nn.linear` as Griffin's pre-norm residual block
(RMSNorm -> temporal mixing -> residual, gated MLP -> residual) and keeps the cell contract
(``init_carry``, ``project``, ``scan``, ``recur``), so ``SequenceModel`` stacks it like a serial
cell. :func:`causal_conv` is the depthwise causal convolution of the recurrent block, whose last
inputs ride in the carry so that a sequence equals its steps.

Sources: De et al. 2024, "Griffin"; google-deepmind/recurrentgemma ``recurrentgemma/jax/
modules.py`` (``RecurrentBlock``, ``MLPBlock``, ``ResidualBlock``) and ``layers.py``
(``Conv1D``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqmodel.nn import scans
from seqmodel.nn.linear import CELLS, check_sizes

Array = jax.Array


def causal_conv(window: Array, x: Array, kernel: Array, bias: Array) -> tuple[Array, Array]:
    """Depthwise causal convolution over time that carries its last inputs.

    Args:
      window: ``(w - 1, b, d)``, the inputs before ``x`` (zeros at the start of a sequence).
      x: ``(t, b, d)``, time-major (``t = 1`` for one step).
      kernel: ``(w, d)``; ``kernel[w - 1]`` weighs the current input.
      bias: ``(d,)``.

    Returns:
      ``(y (t, b, d), window (w - 1, b, d))``, the window for the next call. The same sum runs for
      any ``t``, so a sequence equals its steps exactly.
    """
    width = kernel.shape[0]
    length = x.shape[0]
    padded = jnp.concatenate([window.astype(x.dtype), x], axis=0)
    y = bias
    for shift in range(width):
        y = y + padded[shift : shift + length] * kernel[shift]
    return y, padded[length:]


class ResidualBlock(nnx.Module):
    """Pre-norm residual block around a linear recurrence, as a layer with the cell contract.

    ``y = r + MLP(RMSNorm(r))`` with ``r = x + Temporal(RMSNorm(x))``, where ``MLP`` is gated
    (``down(gelu(gate(u)) * up(u))``, ``mlp_expansion`` times wider) and ``Temporal`` is

    - ``cell="rglru"``: Griffin's recurrent block (recurrentgemma ``RecurrentBlock``):
      ``out(gelu(W_y u) * RGLRU(conv(W_x u)))`` with a causal convolution of width ``conv_width``
      (default 4), its last ``conv_width - 1`` inputs kept in the carry;
    - ``cell="mingru"`` / ``"minlstm"``: ``out(cell(u))`` (``conv_width`` default 0: none).

    The recurrence is ``expansion * hidden_size`` wide. ``project`` is the identity when
    ``input_size == hidden_size`` and a linear map otherwise (per element either way, so a token
    model may fold it into its embedding table). The carry is ``{"state": (b, E)}`` plus
    ``"window": (b, conv_width - 1, E)`` when there is a convolution.

    Example::

        block = ResidualBlock(16, 16, rngs=nnx.Rngs(0), cell="rglru")
        carry, ys = block.scan(block.init_carry(4), block.project(x))   # x (t, 4, 16) -> (t, 4, 16)
        carry, y = block.recur(carry, block.project(x_t))               # x_t (4, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 cell: str = "rglru", expansion: int = 1, mlp_expansion: int = 3,
                 conv_width: int | None = None, scan: str = "auto",
                 chunk_size: int = scans.DEFAULT_CHUNK_SIZE):
        check_sizes(input_size, hidden_size)
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r} is not a linear recurrence; allowed: "
                             + ", ".join(repr(name) for name in CELLS))
        for name, value in (("expansion", expansion), ("mlp_expansion", mlp_expansion)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        griffin = cell == "rglru"
        conv_width = (4 if griffin else 0) if conv_width is None else conv_width
        if (not isinstance(conv_width, int) or isinstance(conv_width, bool) or conv_width < 0
                or conv_width == 1):
            raise ValueError(
                f"conv_width must be 0 (no convolution) or an integer >= 2 (time steps the "
                f"causal convolution sees), got {conv_width!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.cell_name = cell
        self.conv_width = conv_width
        width = expansion * hidden_size
        self.width = width
        linear = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        norm = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.input_projection = (None if input_size == hidden_size else
                                 nnx.Linear(input_size, hidden_size, **linear))
        self.temporal_norm = nnx.RMSNorm(hidden_size, **norm)
        # Griffin projects into the recurrence's width before the convolution; the min cells'
        # own input projection already does that.
        self.recurrence_input = nnx.Linear(hidden_size, width, **linear) if griffin else None
        conv_features = width if griffin else hidden_size
        if conv_width:
            # recurrentgemma's Conv1D initialisation: variance 0.01 / fan_in over (w, d).
            kernel_init = nnx.initializers.variance_scaling(0.01, "fan_in", "normal")
            self.conv_kernel = nnx.Param(kernel_init(rngs.params(), (conv_width, conv_features),
                                                     param_dtype))
            self.conv_bias = nnx.Param(jnp.zeros((conv_features,), param_dtype))
        self.recurrence = CELLS[cell](conv_features, width, rngs=rngs, dtype=dtype,
                                      param_dtype=param_dtype, scan=scan, chunk_size=chunk_size)
        self.gate = nnx.Linear(hidden_size, width, **linear) if griffin else None
        self.temporal_output = nnx.Linear(width, hidden_size, **linear)
        self.mlp_norm = nnx.RMSNorm(hidden_size, **norm)
        self.mlp_input = nnx.Linear(hidden_size, 2 * mlp_expansion * hidden_size, **linear)
        self.mlp_output = nnx.Linear(mlp_expansion * hidden_size, hidden_size, **linear)

    @property
    def has_window(self) -> bool:
        """True when the block convolves over time (and the carry holds a window)."""
        return self.conv_width > 0

    def init_carry(self, batch_size: int) -> dict[str, Array]:
        """Zero carry: ``{"state": (b, E) float32}`` and ``"window": (b, conv_width - 1, d)``."""
        carry = {"state": self.recurrence.init_carry(batch_size)}
        if self.has_window:
            features = self.conv_kernel.shape[1]
            carry["window"] = jnp.zeros((batch_size, self.conv_width - 1, features), self.dtype)
        return carry

    def project(self, x: Array) -> Array:
        """``(..., input_size)`` -> ``(..., hidden_size)``: identity or one linear map."""
        if self.input_projection is None:
            return x.astype(self.dtype)
        return self.input_projection(x)

    def _temporal(self, carry: dict, normed: Array, *, sequence: bool) -> tuple[dict, Array]:
        """The temporal mixing of ``normed`` ``(t, b, h)`` (``sequence``) or ``(b, h)`` (a step)."""
        new_carry = {}
        features = normed if self.recurrence_input is None else self.recurrence_input(normed)
        if self.has_window:
            window = jnp.swapaxes(carry["window"], 0, 1)
            features, window = causal_conv(window, features if sequence else features[None],
                                           self.conv_kernel[...].astype(self.dtype),
                                           self.conv_bias[...].astype(self.dtype))
            features = features if sequence else features[0]
            new_carry["window"] = jnp.swapaxes(window, 0, 1)
        xp = self.recurrence.project(features)
        run = self.recurrence.scan if sequence else self.recurrence.recur
        new_carry["state"], h = run(carry["state"], xp)
        if self.gate is not None:
            h = h * jax.nn.gelu(self.gate(normed))
        return new_carry, self.temporal_output(h)

    def _block(self, carry: dict, x: Array, *, sequence: bool) -> tuple[dict, Array]:
        carry, mixed = self._temporal(carry, self.temporal_norm(x), sequence=sequence)
        residual = x + mixed
        gate, value = jnp.split(self.mlp_input(self.mlp_norm(residual)), 2, axis=-1)
        return carry, residual + self.mlp_output(jax.nn.gelu(gate) * value)

    def scan(self, carry: dict, xp_sequence: Array) -> tuple[dict, Array]:
        """Training mode: xp ``(t, b, h)`` -> ``(carry, ys (t, b, h))``."""
        return self._block(carry, xp_sequence, sequence=True)

    def recur(self, carry: dict, xp: Array) -> tuple[dict, Array]:
        """One step: xp ``(b, h)`` -> ``(carry, y (b, h))``."""
        return self._block(carry, xp, sequence=False)

    def __call__(self, carry: dict, x: Array) -> tuple[dict, Array]:
        return self.recur(carry, self.project(x))
