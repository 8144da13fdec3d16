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

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqmodel.nn import remat as rematerialisation
from seqmodel.nn import scans, sequence_parallel
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

    ``remat`` (:mod:`seqmodel.nn.remat`) trades compute for memory in training: ``"scan"``
    recomputes the gates and states of the recurrence in the backward pass, ``"block"`` the
    whole block, one time segment at a time. Under
    :func:`seqmodel.nn.sequence_parallel.split_time` the convolution takes its left context from
    the previous device and the recurrence exchanges chunk summaries.

    Example::

        block = ResidualBlock(16, 16, rngs=nnx.Rngs(0), cell="rglru")
        carry, ys = block.scan(block.init_carry(4), block.project(x))   # x (t, 4, 16) -> (t, 4, 16)
        carry, y = block.recur(carry, block.project(x_t))               # x_t (4, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 cell: str = "rglru", expansion: int = 1, mlp_expansion: int = 3,
                 conv_width: int | None = None, scan: str = "auto",
                 chunk_size: int = scans.DEFAULT_CHUNK_SIZE, remat: str = "none"):
        check_sizes(input_size, hidden_size)
        if remat not in rematerialisation.REMAT_NAMES:
            raise ValueError(f"remat={remat!r} is not a rematerialisation; allowed: "
                             + ", ".join(repr(name) for name in rematerialisation.REMAT_NAMES))
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
        self.remat = remat
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

    # -- the block's parts: per position, the convolution, the recurrence ----------------------

    def _features(self, x: Array) -> Array:
        """Per position: the recurrence's input before the convolution, ``(..., d)``."""
        normed = self.temporal_norm(x)
        return normed if self.recurrence_input is None else self.recurrence_input(normed)

    def _convolve(self, carry: dict, features: Array) -> tuple[Array, Array]:
        """The causal convolution over time-major ``features`` ``(t, b, d)``: ``(y, window)``
        with the carry's window batch-major ``(b, w - 1, d)``; under a time split the left
        context comes from the previous device."""
        window = jnp.swapaxes(carry["window"], 0, 1)
        layout = sequence_parallel.current()
        convolve = (causal_conv if layout is None else
                    functools.partial(sequence_parallel.causal_conv, layout, causal_conv))
        features, window = convolve(window, features, self.conv_kernel[...].astype(self.dtype),
                                    self.conv_bias[...].astype(self.dtype))
        return features, jnp.swapaxes(window, 0, 1)

    def _output(self, x: Array, h: Array) -> Array:
        """Per position, after the recurrence: Griffin's gate branch, the output projection, the
        residual, the gated MLP and its residual. ``x`` the block's input, ``h`` the states."""
        if self.gate is not None:
            h = h * jax.nn.gelu(self.gate(self.temporal_norm(x)))
        residual = x + self.temporal_output(h)
        gate, value = jnp.split(self.mlp_input(self.mlp_norm(residual)), 2, axis=-1)
        return residual + self.mlp_output(jax.nn.gelu(gate) * value)

    # -- the cell contract ---------------------------------------------------------------------

    def scan(self, carry: dict, xp_sequence: Array) -> tuple[dict, Array]:
        """Training mode: xp ``(t, b, h)`` -> ``(carry, ys (t, b, h))``, rematerialised as
        ``remat`` says (:mod:`seqmodel.nn.remat`)."""
        if self.remat == "block":
            return _segmented_block(self, carry, xp_sequence)
        new_carry = {}
        features = self._features(xp_sequence)
        if self.has_window:
            features, new_carry["window"] = self._convolve(carry, features)
        xp = self.recurrence.project(features)
        if self.remat == "scan":
            new_carry["state"], h = _segmented_cell(self.recurrence, carry["state"], xp)
        else:
            new_carry["state"], h = self.recurrence.scan(carry["state"], xp)
        return new_carry, self._output(xp_sequence, h)

    def recur(self, carry: dict, xp: Array) -> tuple[dict, Array]:
        """One step: xp ``(b, h)`` -> ``(carry, y (b, h))``."""
        new_carry = {}
        features = self._features(xp)
        if self.has_window:
            features, new_carry["window"] = self._convolve(carry, features[None])
            features = features[0]
        new_carry["state"], h = self.recurrence.recur(carry["state"],
                                                      self.recurrence.project(features))
        return new_carry, self._output(xp, h)

    def __call__(self, carry: dict, x: Array) -> tuple[dict, Array]:
        return self.recur(carry, self.project(x))


# -- rematerialised scans: time segments in a checkpointed loop (seqmodel.nn.remat) -----------


def _segment_plan(length: int) -> tuple[sequence_parallel.SequenceLayout | None, int, int]:
    """(layout, devices along time, steps per segment) for a sequence of ``length`` steps."""
    layout = sequence_parallel.current()
    devices = 1 if layout is None else layout.size
    if layout is not None:
        layout.check_length(length, what="the block's input")
    return layout, devices, rematerialisation.segment_length(length // devices)


def _pin(array: Array, layout, *leading) -> Array:
    """Keep the devices axis (after ``leading`` axes) split along time and rows along data."""
    if layout is None:
        return array
    spec = jax.sharding.PartitionSpec(*leading, layout.axis, layout.batch_axis)
    return jax.lax.with_sharding_constraint(array, jax.sharding.NamedSharding(layout.mesh, spec))


def _refuse_log_space(cell, devices: int) -> None:
    if devices > 1 and scans.resolve(cell.scan_method) == "log_space":
        raise sequence_parallel.SequenceSplitError(
            f"{type(cell).__name__} with scan='log_space' cannot split time over devices; use "
            f"scan='sequential', 'associative' or 'chunked' (or 'auto')")


def _segmented_cell(cell, carry: Array, xp: Array) -> tuple[Array, Array]:
    """``cell.scan(carry, xp)`` (remat="scan") as checkpointed segments: the backward pass keeps
    ``xp`` and each segment's first state and recomputes the gates and states of one segment at
    a time."""
    layout, devices, steps = _segment_plan(xp.shape[0])
    _refuse_log_space(cell, devices)
    segments = _pin(rematerialisation.to_segments(xp, devices, steps), layout, None, None)
    initial = carry.astype(jnp.promote_types(cell.dtype, jnp.float32))
    with sequence_parallel.split_time(None):  # below, every device works on its own steps
        if devices == 1:
            states = initial[None]
        else:
            states = rematerialisation.incoming_states(
                lambda segment, window: (cell.scan_coefficients(segment), window), segments,
                initial, None, method=scans.resolve(cell.scan_method), chunk_size=cell.chunk_size)
        states = _pin(states, layout)
        states, hidden = rematerialisation.scan_segments(
            lambda state, segment: cell.scan(state, segment), states, segments)
    return states[-1], rematerialisation.from_segments(hidden)


def _segmented_block(block: ResidualBlock, carry: dict, x: Array) -> tuple[dict, Array]:
    """``block.scan(carry, x)`` (remat="block") as checkpointed segments of the whole block: the
    backward pass keeps ``x`` and each segment's first state (and window) and recomputes one
    segment of the block at a time."""
    layout, devices, steps = _segment_plan(x.shape[0])
    cell = block.recurrence
    _refuse_log_space(cell, devices)
    segments = _pin(rematerialisation.to_segments(x, devices, steps), layout, None, None)
    initial = carry["state"].astype(jnp.promote_types(cell.dtype, jnp.float32))
    window = None
    if block.has_window:
        window = jnp.swapaxes(carry["window"], 0, 1)  # (w - 1, b, d)
        if devices > 1:
            # Device d's left context: the convolution inputs of device d - 1's last w - 1 steps.
            context = window.shape[0]
            chunks = x.reshape((devices, x.shape[0] // devices) + x.shape[1:])
            tails = block._features(chunks[:, chunks.shape[1] - context:])  # (devices, w-1, b, d)
            window = jnp.concatenate([window[None], tails[:-1]], axis=0)
            window = _pin(jnp.swapaxes(window, 0, 1), layout, None)
        else:
            window = window[:, None]

    def coefficients_of(segment, window):
        features = block._features(segment)
        if block.has_window:
            features, window = causal_conv(window, features,
                                           block.conv_kernel[...].astype(block.dtype),
                                           block.conv_bias[...].astype(block.dtype))
        return cell.scan_coefficients(cell.project(features)), window

    def step(running, segment):
        state, window = running
        coefficients, window = coefficients_of(segment, window)
        state, h = cell.scan_over_time(state, coefficients)
        return (state, window), block._output(segment, h)

    with sequence_parallel.split_time(None):  # below, every device works on its own steps
        states = initial[None] if devices == 1 else rematerialisation.incoming_states(
            coefficients_of, segments, initial, window, method=scans.resolve(cell.scan_method),
            chunk_size=cell.chunk_size)
        (states, window), outputs = rematerialisation.scan_segments(
            step, (_pin(states, layout), window), segments)
    new_carry = {"state": states[-1]}
    if block.has_window:
        new_carry["window"] = jnp.swapaxes(window[:, -1], 0, 1)
    return new_carry, rematerialisation.from_segments(outputs)
