"""Time split over devices: the ``sequence`` mesh axis, for the linear recurrences.

With a :class:`SequenceLayout` in force (:func:`split_time`, which the train step of a
``sequence`` mesh enters while it is traced), a time-major array ``(t, b, ...)`` lives on the
mesh as ``t / S`` contiguous steps per device (``S`` devices along the axis; rows along the
data axis as usual). What crosses time is the only thing that needs the other devices:

- :func:`linear_recurrence` (``h_t = a_t h_{t-1} + b_t``): each device describes its chunk as one
  affine map ``h -> A h + B`` (:func:`seqmodel.nn.scans.summary`), the ``S`` summaries are
  all-gathered (``2 b h`` numbers per device) and composed by a log-depth prefix
  (:func:`seqmodel.nn.scans.prefix`), and each device rescans its chunk from the state that
  arrives. The backward pass is the same recurrence run from the right (a custom VJP), so its
  exchange is one more all-gather, and it keeps only ``a`` and the states for the backward.
- :func:`causal_conv` (a window of ``w`` steps): each device receives the last ``w - 1`` inputs
  of its left neighbour (one ``ppermute``); the first device reads the carry's window.

Everything per position (norms, projections, the MLP, heads, the loss) needs nothing: XLA keeps
it split as the inputs are. Without a layout (or with ``S = 1``) every function here is the
one-device computation, so the same code runs both ways and the results agree to float rounding
(the carry that enters a chunk is composed in another order: about 1e-7 relative).

Example::

    layout = SequenceLayout(mesh)               # mesh axes ("data", "sequence")
    with split_time(layout):
        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)   # traced here
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from seqmodel.errors import UserError
from seqmodel.nn import scans

Array = jax.Array

SEQUENCE_AXIS = "sequence"


class SequenceSplitError(UserError):
    """A model or shape that cannot run with its time axis split over devices (a ``ValueError``);
    the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """Where time and rows live on a mesh.

    Attributes:
      mesh: the :class:`jax.sharding.Mesh`.
      axis: the mesh axis that splits time (``"sequence"``).
      batch_axis: the mesh axis that splits rows (``"data"``), or None when rows are not split.
    """

    mesh: Mesh
    axis: str = SEQUENCE_AXIS
    batch_axis: str | None = "data"

    @property
    def size(self) -> int:
        """Devices along the time axis."""
        return int(self.mesh.shape[self.axis])

    @property
    def time_major(self) -> PartitionSpec:
        """``(t, b, ...)``: time along :attr:`axis`, rows along :attr:`batch_axis`."""
        return PartitionSpec(self.axis, self.batch_axis)

    @property
    def rows(self) -> PartitionSpec:
        """``(b, ...)`` (a carry): rows split, the same on every device along time."""
        return PartitionSpec(self.batch_axis)

    def check_length(self, length: int, *, at_least: int = 1, what: str = "the sequence") -> int:
        """The steps of each device's chunk of ``length``; a :class:`SequenceSplitError` unless
        ``length`` splits evenly into chunks of at least ``at_least`` steps."""
        if length % self.size or length // self.size < at_least:
            raise SequenceSplitError(
                f"{what} has {length} time steps, which do not split over {self.size} devices "
                f"of the {self.axis!r} axis into equal chunks of at least {at_least} step(s): use "
                f"a length that is a multiple of {self.size} (and at least "
                f"{self.size * at_least})")
        return length // self.size


_LAYOUT: contextvars.ContextVar[SequenceLayout | None] = contextvars.ContextVar(
    "seqmodel_sequence_layout", default=None)


@contextlib.contextmanager
def split_time(layout: SequenceLayout | None) -> Iterator[None]:
    """Within the block, functions traced split their time axis as ``layout`` says (None: not).

    The layout is read while JAX traces: enter it around the first call of a jitted function (or
    around its Python body), not around later calls of an already compiled one."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def current() -> SequenceLayout | None:
    """The layout in force, or None when time is not split (no layout, or one device)."""
    layout = _LAYOUT.get()
    return layout if layout is not None and layout.size > 1 else None


def refuse_serial(cell_name: str) -> None:
    """Raise :class:`SequenceSplitError` when time is split: a serial cell (LSTM, GRU, Elman)
    needs ``h_{t-1}`` before step ``t``, so its chunks cannot run at the same time."""
    layout = current()
    if layout is not None:
        raise SequenceSplitError(
            f"cell={cell_name!r} is a serial recurrence and cannot split time over the "
            f"{layout.axis!r} axis ({layout.size} devices): each step needs the previous one. "
            f"Use a linear recurrence (cell='mingru', 'minlstm' or 'rglru') or no sequence "
            f"parallelism (sequence=1, --sequence-parallel 1)")


# ---------------------------------------------------------------------------------------------
# The linear recurrence
# ---------------------------------------------------------------------------------------------


def linear_recurrence(method: str, a: Array, b: Array, initial: Array, *,
                      chunk_size: int = scans.DEFAULT_CHUNK_SIZE,
                      layout: SequenceLayout | None = None) -> tuple[Array, Array]:
    """``h_t = a_t h_{t-1} + b_t`` over time-major ``a``, ``b`` ``(t, b, h)`` from ``initial``
    ``(b, h)``, with ``method`` (a scan of :mod:`seqmodel.nn.scans` other than ``log_space``)
    inside each chunk, and its time axis split over ``layout`` when one is given.

    Returns ``(h_T (b, h), states (t, b, h))`` as :func:`seqmodel.nn.scans.scan` does.
    Differentiable (custom VJP): the backward pass is the reverse recurrence
    ``G_t = dy_t + a_{t+1} G_{t+1}`` by the same method, then ``da_t = G_t h_{t-1}``,
    ``db_t = G_t``; it keeps ``a`` and the states (which the caller holds anyway), not the
    scan's inner values.

    Example::

        final, states = linear_recurrence("sequential", a, b, h0)
    """
    if scans.resolve(method) == "log_space":
        raise SequenceSplitError(
            "scan='log_space' takes log a and log b and has no linear_recurrence form; use "
            "seqmodel.nn.scans.log_space, or scan='sequential', 'associative' or 'chunked'")
    scans.check_chunk_size(chunk_size)
    if layout is not None and layout.size == 1:
        layout = None
    if layout is not None:
        layout.check_length(a.shape[0], what="the linear recurrence's input")
    return _recurrence(scans.resolve(method), chunk_size, layout, a, b, initial)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(method, chunk_size, layout, a, b, initial):
    return _forward(method, chunk_size, layout, a, b, initial)[0]


def _forward(method, chunk_size, layout, a, b, initial):
    if layout is None:
        final, states = scans.scan(method, a, b, initial, chunk_size=chunk_size)
    else:
        local = functools.partial(_local_forward, method, chunk_size, layout.axis)
        final, states = _on_mesh(layout, local, (layout.time_major, layout.time_major,
                                                 layout.rows), (layout.rows, layout.time_major)
                                 )(a, b, initial)
    return (final, states), (a, states, initial)


def _backward(method, chunk_size, layout, residuals, cotangents):
    a, states, initial = residuals
    final_cotangent, state_cotangents = cotangents
    local = functools.partial(_local_backward, method, chunk_size,
                              None if layout is None else layout.axis)
    if layout is None:
        return local(a, states, initial, final_cotangent, state_cotangents)
    time, rows = layout.time_major, layout.rows
    return _on_mesh(layout, local, (time, time, rows, rows, time), (time, time, rows))(
        a, states, initial, final_cotangent, state_cotangents)


_recurrence.defvjp(_forward, _backward)


def _on_mesh(layout: SequenceLayout, function: Callable, in_specs, out_specs) -> Callable:
    # No automatic differentiation passes through these maps (the custom VJP above has its own
    # backward map), so the replication checker can stay off: the values given as replicated
    # along time (the final state, the initial cotangent) are computed alike on every device.
    return jax.shard_map(function, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)


def _incoming(axis: str, product: Array, offset: Array, initial: Array, *,
              from_right: bool = False) -> tuple[Array, Array]:
    """Inside a map over ``axis``: each device's chunk is the map ``h -> product h + offset``.
    Returns ``(the state entering this device's chunk, the state after the last chunk)``,
    composing the all-gathered maps with a log-depth prefix (from the right with
    ``from_right``: the order of the backward pass)."""
    products = jax.lax.all_gather(product, axis)  # (S, b, h)
    offsets = jax.lax.all_gather(offset, axis)
    position = jax.lax.axis_index(axis)
    if from_right:
        products, offsets = jnp.flip(products, 0), jnp.flip(offsets, 0)
        position = products.shape[0] - 1 - position
    offsets = offsets.at[0].add(products[0] * initial)
    _, after = scans.prefix(products, offsets, axis=0)
    before = jnp.concatenate([initial[None], after[:-1]], axis=0)
    return before[position], after[-1]


def _local_forward(method, chunk_size, axis, a, b, initial):
    product, offset = scans.summary(method, a, b, chunk_size=chunk_size)
    incoming, final = _incoming(axis, product, offset, initial)
    _, states = scans.scan(method, a, b, incoming, chunk_size=chunk_size)
    return final, states


def _local_backward(method, chunk_size, axis, a, states, initial, final_cotangent,
                    state_cotangents):
    """Cotangents of ``(a, b, initial)``; ``axis`` None: the whole sequence on one device."""
    last = jnp.ones_like(a[:1])
    previous_last = initial[None]
    if axis is not None:
        size, position = jax.lax.axis_size(axis), jax.lax.axis_index(axis)
        # The coefficient that carries the cotangent into this chunk's last step is the first
        # a of the next device (1 after the last step of all); the state before this chunk's
        # first step is the last state of the previous device (initial on the first).
        from_next = jax.lax.ppermute(a[:1], axis, [(i + 1, i) for i in range(size - 1)])
        last = jnp.where(position == size - 1, last, from_next)
        from_previous = jax.lax.ppermute(states[-1:], axis, [(i, i + 1) for i in range(size - 1)])
        previous_last = jnp.where(position == 0, previous_last, from_previous)
    coefficients = jnp.concatenate([a[1:], last], axis=0)
    incoming = final_cotangent
    if axis is not None:
        product, offset = scans.summary(method, coefficients, state_cotangents,
                                        chunk_size=chunk_size, reverse=True)
        incoming, _ = _incoming(axis, product, offset, final_cotangent, from_right=True)
    _, totals = scans.scan(method, coefficients, state_cotangents, incoming,
                           chunk_size=chunk_size, reverse=True)
    previous = jnp.concatenate([previous_last, states[:-1]], axis=0)
    initial_cotangent = a[0] * totals[0]
    if axis is not None:
        initial_cotangent = jax.lax.psum(
            jnp.where(position == 0, initial_cotangent, jnp.zeros_like(initial_cotangent)), axis)
    return totals * previous, totals, initial_cotangent


# ---------------------------------------------------------------------------------------------
# The causal convolution's left context
# ---------------------------------------------------------------------------------------------


def causal_conv(layout: SequenceLayout, convolve: Callable, window: Array, x: Array,
                kernel: Array, bias: Array) -> tuple[Array, Array]:
    """``convolve(window, x, kernel, bias) -> (y, window)`` (a causal convolution over time-major
    ``x`` ``(t, b, d)`` whose ``window`` ``(w - 1, b, d)`` holds the inputs before ``x``) with
    time split over ``layout``: each device convolves its chunk with the last ``w - 1`` inputs of
    the previous device (the first device: ``window``). Returns ``(y (t, b, d), the last w - 1
    inputs)``, equal to ``convolve`` on one device."""
    context = window.shape[0]
    layout.check_length(x.shape[0], at_least=max(context, 1),
                        what="the causal convolution's input")
    if context == 0:
        return convolve(window, x, kernel, bias)

    def local(window, x, kernel, bias):
        size, position = jax.lax.axis_size(layout.axis), jax.lax.axis_index(layout.axis)
        tail = x[-context:]
        from_previous = jax.lax.ppermute(tail, layout.axis, [(i, i + 1) for i in range(size - 1)])
        left = jnp.where(position == 0, window, from_previous)
        y, _ = convolve(left, x, kernel, bias)
        last = jax.lax.psum(jnp.where(position == size - 1, tail, jnp.zeros_like(tail)),
                            layout.axis)
        return y, last

    window_spec = PartitionSpec(None, layout.batch_axis)
    # Differentiated by JAX (ppermute and psum have transposes), so the checker stays on.
    return jax.shard_map(local, mesh=layout.mesh,
                         in_specs=(window_spec, layout.time_major, PartitionSpec(),
                                   PartitionSpec()),
                         out_specs=(layout.time_major, window_spec))(window, x, kernel, bias)
