"""Rematerialisation: what the backward pass of a linear recurrence's block recomputes.

``ModelConfig(remat=...)`` picks one of :data:`REMAT_NAMES`; :class:`seqmodel.nn.blocks.
ResidualBlock` applies it. Both forms cut time into segments of :func:`segment_length` steps and
run a ``lax.scan`` over them whose body is ``jax.checkpoint``-ed, carrying the recurrence's
state (and the convolution's window) from segment to segment: the backward pass keeps each
segment's input and the state at its start, and recomputes one segment at a time.

========= =================================================== ================================
remat     one segment recomputes                              kept for the backward pass
========= =================================================== ================================
``none``  nothing                                             every activation of every block
``scan``  the recurrence: gates, coefficients and states      the projected inputs ``xp``, the
                                                              rest of the block's activations
``block`` the whole block (norms, projections, convolution,   the block's input ``x``
          recurrence, gate, MLP)
========= =================================================== ================================

Why a loop and not ``jax.checkpoint`` around the block: XLA:CPU removes the optimisation
barriers that keep a rematerialised computation apart and merges it back into the forward pass
by common-subexpression elimination (measured: a checkpointed block kept as much memory as a
plain one). A computation inside a loop body cannot be merged with one outside it, so the
segments keep their promise on every backend.

With time split over devices (:mod:`seqmodel.nn.sequence_parallel`) each device runs its own
segments; the state entering a device's first segment comes from a first pass that reduces each
device's chunk to one affine map ``h -> A h + B`` (:func:`incoming_states`), composed across the
devices. Sources: the chunked scan of Mamba-2 ("state passing") and Griffin's blocked scan.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from seqmodel.nn import scans

Array = jax.Array

REMAT_NAMES = ("none", "scan", "block")
"""``ModelConfig.remat``: see the module docstring."""

# Time steps of one segment (per row, per device): large enough that a segment's matmuls run
# near the GEMM rate, small enough that its activations (a block: ~40 h floats a step) are a few
# megabytes to tens of megabytes.
SEGMENT = 4096


def segment_length(length: int, target: int | None = None) -> int:
    """Steps of a segment of ``length`` steps: ``length`` itself when it is at most ``target``,
    else the largest divisor of ``length`` in ``[target / 8, target]``, else ``length`` (one
    segment: a length with no such divisor is not cut).

    Example: ``segment_length(1_048_576) == 4096``; ``segment_length(1000) == 1000``."""
    target = SEGMENT if target is None else target
    if length <= target:
        return length
    for steps in range(target, max(target // 8, 1) - 1, -1):
        if length % steps == 0:
            return steps
    return length


def to_segments(array: Array, devices: int, steps: int) -> Array:
    """Time-major ``(t, ...)`` -> ``(count, steps, devices, ...)``: device ``d`` holds steps
    ``[d t / devices, (d + 1) t / devices)``, cut into ``count`` segments of ``steps``; a segment's
    devices sit on an axis of their own, so a time split stays a split of that axis."""
    length = array.shape[0]
    count = length // devices // steps
    array = array.reshape((devices, count, steps) + array.shape[1:])
    return jnp.moveaxis(array, 0, 2)


def from_segments(array: Array) -> Array:
    """The inverse of :func:`to_segments`: ``(count, steps, devices, ...)`` -> ``(t, ...)``."""
    count, steps, devices = array.shape[:3]
    return jnp.moveaxis(array, 2, 0).reshape((devices * count * steps,) + array.shape[3:])


def scan_segments(step: Callable, carry, segments):
    """``lax.scan`` of ``step(carry, segment) -> (carry, outputs)`` over the leading axis of
    ``segments``, each call rematerialised (its backward recomputes it from its inputs)."""
    return jax.lax.scan(jax.checkpoint(step), carry, segments)


def incoming_states(coefficients_of: Callable, segments, initial: Array, window, *,
                    method: str, chunk_size: int = scans.DEFAULT_CHUNK_SIZE) -> Array:
    """The state entering each device's chunk of time, ``(devices, ...)``.

    ``coefficients_of(segment, window) -> ((a, b), window)`` gives the recurrence's coefficients
    ``(steps, devices, ...)`` of one segment (``window``: what a convolution carries, or None).
    Each device's chunk is reduced to ``h -> A h + B`` segment by segment (nothing of a segment is
    kept: the summary pass is rematerialised too), the ``devices`` maps are composed by a prefix
    starting from ``initial`` ``(...)``, and device ``d`` receives the state after ``d`` chunks.
    ``window`` is each device's initial window, ``(w - 1, devices, ...)``.
    """
    devices = jax.tree.leaves(segments)[0].shape[2]
    shape = (devices,) + initial.shape

    def summarize(running, segment):
        product, offset, window = running
        (a, b), window = coefficients_of(segment, window)
        segment_product, segment_offset = scans.summary(method, a, b, chunk_size=chunk_size)
        return (segment_product * product, segment_product * offset + segment_offset,
                window), None

    start = (jnp.ones(shape, initial.dtype), jnp.zeros(shape, initial.dtype), window)
    (products, offsets, _), _ = scan_segments(summarize, start, segments)
    offsets = offsets.at[0].add(products[0] * initial)
    _, after = scans.prefix(products, offsets, axis=0)
    return jnp.concatenate([initial[None], after[:-1]], axis=0)
