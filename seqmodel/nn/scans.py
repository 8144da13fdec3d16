"""Scans of the elementwise linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

Every function here is pure and works on time-major arrays: ``a`` and ``b`` are ``(t, ...)``
(usually ``(t, b, h)``), ``initial`` is ``h_0`` ``(...)``, and each returns
``(final, states)``: ``h_T`` ``(...)`` and every ``h_t`` ``(t, ...)`` (``h_1 .. h_T``), the
``(carry, ys)`` pair that ``lax.scan`` returns. They compute the same numbers up to rounding and
differ only in their *serial depth*, the number of dependent steps of the program (what a
parallel machine cannot hide), given by :func:`serial_depth`:

============== ========================================= ===================================
method         how                                       serial depth
============== ========================================= ===================================
sequential     ``lax.scan``, one step per element        ``T``
associative    ``lax.associative_scan`` on ``(a, b)``    about ``2 log2 T``
chunked        associative inside chunks of ``C``,       about ``T / C + 2 log2 C``
               sequential across the chunk ends
log_space      Heinsen's prefix sums in log space        about ``4 log2 T`` (two prefix sums)
============== ========================================= ===================================

The associative form combines ``(a_i, b_i)`` then ``(a_j, b_j)`` into
``(a_j a_i, a_j b_i + b_j)``: every partial product of ``a`` only shrinks (``0 <= a <= 1`` for the
cells of :mod:`seqmodel.nn.linear`), so it underflows to 0 over long spans, which is its true value
to float precision, and never overflows. :func:`log_space` is the form of Heinsen (2023, "Efficient
parallelization of a ubiquitous sequential computation") used by minGRU / minLSTM (Feng et al.
2024): it needs ``b > 0`` and takes ``log a`` and ``log b``.

All accumulation runs in the dtype of the inputs; callers pass float32 (the cells of
:mod:`seqmodel.nn.linear` do, also for bfloat16 models, as recurrentgemma does).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

METHODS = ("sequential", "associative", "chunked", "log_space")

# What "auto" means on each backend: the one table to change after measuring (the benchmark
# benchmarks/bench_linear.py prints tokens/s per scan). CPU: the sequential scan does the least
# work and a CPU has little parallelism to spend on the associative tree: on 2 cores the scan
# alone, forward and backward, cost 0.4-0.7 us/token sequential against 4.2-4.9 associative and
# 6.5-7.1 chunked (docs/linear.md); a whole 8M model step 2-12% more. Accelerators: the sequential scan is T dependent tiny
# kernels, so the log-depth forms should win; chunked keeps the extra work of the tree bounded.
AUTO_SCAN = {"cpu": "sequential", "gpu": "chunked", "tpu": "chunked"}

DEFAULT_CHUNK_SIZE = 64


def resolve(method: str, *, backend: str | None = None) -> str:
    """The concrete method for ``method`` (``"auto"`` looks up :data:`AUTO_SCAN`).

    Example::

        resolve("auto", backend="cpu")     # 'sequential'
    """
    if method == "auto":
        backend = jax.default_backend() if backend is None else backend
        return AUTO_SCAN.get(backend, "sequential")
    if method not in METHODS:
        raise ValueError(
            f"scan={method!r} is not a scan method; allowed: 'auto', "
            + ", ".join(repr(name) for name in METHODS)
        )
    return method


def serial_depth(method: str, length: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Number of dependent steps of one scan over ``length`` elements.

    ``sequential``: ``T``; ``associative``: ``2 ceil(log2 T)`` (the up and down sweeps of the
    prefix tree); ``chunked``: ``ceil(T / C) + 2 ceil(log2 C) + 1`` (the tree inside a chunk, the
    serial walk over chunk ends, one broadcast update); ``log_space``: ``4 ceil(log2 T)`` (a
    prefix sum, then a prefix log-sum-exp that depends on it). Lengths of 1 count 1.

    Example::

        serial_depth("chunked", 2048, chunk_size=64)    # 32 + 12 + 1 = 45
    """
    method = resolve(method)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    levels = math.ceil(math.log2(length)) if length > 1 else 0
    if method == "sequential":
        return length
    if method == "associative":
        return max(1, 2 * levels)
    if method == "log_space":
        return max(1, 4 * levels)
    check_chunk_size(chunk_size)
    chunk = min(chunk_size, length)
    chunk_levels = math.ceil(math.log2(chunk)) if chunk > 1 else 0
    return math.ceil(length / chunk) + 2 * chunk_levels + 1


def check_chunk_size(chunk_size) -> None:
    """Raise a ValueError unless ``chunk_size`` is a positive integer."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer (time steps per chunk), got {chunk_size!r}"
        )


def _check_shapes(a: Array, b: Array, initial: Array) -> None:
    if a.shape != b.shape or a.ndim < 1 or a.shape[1:] != initial.shape:
        raise ValueError(
            "a and b must both be (t, ...) and initial (...) with the same trailing shape; got "
            f"a {a.shape}, b {b.shape}, initial {initial.shape}"
        )


def sequential(a: Array, b: Array, initial: Array, *, unroll: int = 1,
               reverse: bool = False) -> tuple[Array, Array]:
    """``h_t = a_t * h_{t-1} + b_t`` by ``lax.scan``; serial depth ``T``.

    Args:
      a, b: ``(t, ...)`` coefficients and inputs.
      initial: ``h_0`` ``(...)``.
      unroll: passed to ``lax.scan`` (steps per loop iteration).
      reverse: run from the last element to the first (``h_t = a_t h_{t+1} + b_t`` with
        ``h_{T+1} = initial``; the backward pass of the forward recurrence is one).

    Returns:
      ``(h_T (...), h (t, ...))`` (with ``reverse``: ``(h_1, h)``).

    Example::

        final, states = sequential(jnp.full((5, 2), 0.5), jnp.ones((5, 2)), jnp.zeros(2))
    """
    _check_shapes(a, b, initial)

    def step(h, coefficients):
        a_t, b_t = coefficients
        h = a_t * h + b_t
        return h, h

    return jax.lax.scan(step, initial, (a, b), unroll=unroll, reverse=reverse)


def _combine(earlier: tuple[Array, Array], later: tuple[Array, Array]) -> tuple[Array, Array]:
    """Compose two affine maps ``h -> a h + b``: first ``earlier``, then ``later``."""
    a_i, b_i = earlier
    a_j, b_j = later
    return a_j * a_i, a_j * b_i + b_j


def _prefix(a: Array, b: Array, axis: int) -> tuple[Array, Array]:
    """Inclusive prefix compositions along ``axis``: ``(prod a, h with h_0 = 0)``."""
    return jax.lax.associative_scan(_combine, (a, b), axis=axis)


def associative(a: Array, b: Array, initial: Array) -> tuple[Array, Array]:
    """``h_t = a_t * h_{t-1} + b_t`` by ``lax.associative_scan``; serial depth ``~2 log2 T``.

    ``h_0`` is folded into the first input (``b_1 + a_1 h_0``), which is exact and cheaper than
    prepending an element. Shapes as :func:`sequential`.

    Example::

        final, states = associative(jnp.full((5, 2), 0.5), jnp.ones((5, 2)), jnp.zeros(2))
    """
    _check_shapes(a, b, initial)
    b = b.at[0].add(a[0] * initial)
    _, states = _prefix(a, b, axis=0)
    return states[-1], states


def chunked(a: Array, b: Array, initial: Array, *,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Array, Array]:
    """Associative inside chunks of ``chunk_size`` steps, sequential across chunks.

    Serial depth ``~T / C + 2 log2 C``: every chunk's prefix products and zero-start states come
    from one associative scan over all chunks at once; then a ``lax.scan`` over the ``T / C``
    chunk ends carries ``h`` from chunk to chunk, and one broadcast update
    ``h = prod_a * h_in + state`` fills in every step. A length that ``C`` does not divide is
    padded with the identity ``(a, b) = (1, 0)``. Shapes as :func:`sequential`.

    Example::

        final, states = chunked(jnp.full((100, 2), 0.5), jnp.ones((100, 2)), jnp.zeros(2),
                                chunk_size=16)
    """
    _check_shapes(a, b, initial)
    check_chunk_size(chunk_size)
    length = a.shape[0]
    chunk = min(chunk_size, length)
    chunks = -(-length // chunk)
    padding = chunks * chunk - length
    if padding:
        pad = [(0, padding)] + [(0, 0)] * (a.ndim - 1)
        a = jnp.pad(a, pad, constant_values=1)
        b = jnp.pad(b, pad)
    shape = (chunks, chunk) + a.shape[1:]
    products, zero_start = _prefix(a.reshape(shape), b.reshape(shape), axis=1)

    def across(h, chunk_end):
        product, state = chunk_end
        h = product * h + state
        return h, h

    # Each chunk's incoming state: h_0, then the state after every chunk but the last.
    final, ends = jax.lax.scan(across, initial, (products[:, -1], zero_start[:, -1]))
    incoming = jnp.concatenate([initial[None], ends[:-1]], axis=0)
    states = products * incoming[:, None] + zero_start
    return final, states.reshape((chunks * chunk,) + a.shape[1:])[:length]


def log_space(log_a: Array, log_b: Array, initial: Array) -> tuple[Array, Array]:
    """Heinsen's log-space scan: ``h_t = a_t h_{t-1} + b_t`` from ``log a`` and ``log b``.

    With ``s_t = sum_{k <= t} log a_k``:
    ``h_t = exp(s_t) h_0 + exp(s_t + logcumsumexp_{k <= t}(log b_k - s_k))``.
    Every term stays finite however long the sequence (``exp`` of large negative numbers goes to
    0, never to inf), which is why minGRU / minLSTM use it; ``b`` must be positive (the paper's
    ``g()`` activation ensures it). ``h_0`` enters linearly, so it may have any sign.

    The price is precision: ``s_t`` and the log-sum-exp grow like ``t`` and nearly cancel, so the
    relative error grows with the length, about float32 epsilon times ``|s_T|`` (measured on
    minGRU-like coefficients: 1e-5 at T = 64, 5e-4 at 2048, 2e-2 at 65,536, where the three
    scans above stay near 2e-7). In JAX the associative form needs no logs to stay finite.

    Args:
      log_a, log_b: ``(t, ...)``, the logs of the coefficients and of the (positive) inputs.
      initial: ``h_0`` ``(...)``.

    Returns:
      ``(h_T (...), h (t, ...))``. Serial depth ``~4 log2 T``.

    Example::

        half = jnp.full((5, 2), jnp.log(0.5))
        final, states = log_space(half, jnp.zeros((5, 2)), jnp.zeros(2))   # b = 1
    """
    _check_shapes(log_a, log_b, initial)
    decay = jnp.cumsum(log_a, axis=0)
    accumulated = jax.lax.cumlogsumexp(log_b - decay, axis=0)
    states = jnp.exp(decay) * initial + jnp.exp(decay + accumulated)
    return states[-1], states


SCANS: dict[str, Callable] = {
    "sequential": sequential,
    "associative": associative,
    "chunked": chunked,
}
"""The scans that take ``(a, b, initial)``; :func:`log_space` takes logs and stands apart."""


def scan(method: str, a: Array, b: Array, initial: Array, *,
         chunk_size: int = DEFAULT_CHUNK_SIZE, reverse: bool = False) -> tuple[Array, Array]:
    """Run the linear recurrence with ``method`` (``"auto"``, ``"sequential"``, ``"associative"``
    or ``"chunked"``). Shapes as :func:`sequential`; ``reverse`` runs it from the last element
    to the first (as :func:`sequential` does).

    Example::

        final, states = scan("auto", a, b, h0)
    """
    method = resolve(method)
    if method == "log_space":
        raise ValueError(
            "scan='log_space' needs log a and log b: call linear_scan.log_space(log_a, log_b, "
            "initial) instead"
        )
    if method == "sequential":
        return sequential(a, b, initial, reverse=reverse)
    if reverse:
        # The parallel scans read time forwards; flipping costs two copies, small next to them.
        final, states = scan(method, jnp.flip(a, 0), jnp.flip(b, 0), initial,
                             chunk_size=chunk_size)
        return final, jnp.flip(states, 0)
    if method == "chunked":
        return chunked(a, b, initial, chunk_size=chunk_size)
    return SCANS[method](a, b, initial)


def summary(method: str, a: Array, b: Array, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
            reverse: bool = False) -> tuple[Array, Array]:
    """The whole span as one affine map ``h -> A h + B``: ``A = prod a`` and ``B`` the last state
    from ``h_0 = 0``, both ``(...)``; what a device tells the others about its chunk of time.

    The sequential form keeps no states (``lax.scan`` without outputs); the parallel forms take
    ``B`` from their scan. Shapes as :func:`sequential`.

    Example::

        product, offset = summary("sequential", a, b)     # a, b (t, b, h) -> (b, h) each
    """
    zeros = jnp.zeros_like(b[0])
    if resolve(method) != "sequential":
        return jnp.prod(a, axis=0), scan(method, a, b, zeros, chunk_size=chunk_size,
                                         reverse=reverse)[0]

    def step(running, coefficients):
        product, offset = running
        a_t, b_t = coefficients
        return (a_t * product, a_t * offset + b_t), None

    (product, offset), _ = jax.lax.scan(step, (jnp.ones_like(zeros), zeros), (a, b),
                                        reverse=reverse)
    return product, offset


def combine(earlier: tuple[Array, Array], later: tuple[Array, Array]) -> tuple[Array, Array]:
    """Compose two affine maps ``h -> a h + b`` given as ``(a, b)``: ``earlier``, then ``later``."""
    return _combine(earlier, later)


def prefix(a: Array, b: Array, *, axis: int = 0) -> tuple[Array, Array]:
    """Inclusive prefix compositions of the maps ``(a, b)`` along ``axis`` by
    ``lax.associative_scan``: ``(prod a, h from h_0 = 0)`` at every position."""
    return _prefix(a, b, axis)
