"""Ragged sets of sequences as padded arrays: masks, bucket lengths, next-step pairs, windows."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bucket_length(length: int, *, minimum: int = 8) -> int:
    """Round ``length`` up to the next power of two (at least ``minimum``): padded shapes take
    ``log2`` distinct values, so a ragged set compiles a handful of programs, not one per length.

    Example::

        bucket_length(37)   # 64
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    return max(minimum, 1 << (int(length) - 1).bit_length())


def pad_sequences(sequences: Sequence[np.ndarray], *, length: int | None = None,
                  dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a ragged set into ``values (n, T, d)`` and ``mask (n, T)``.

    ``mask`` is 1 on real steps and 0 on padding and on steps with a missing (NaN) feature; NaN
    becomes 0 in ``values`` (padded steps hold 0 too, so no NaN ever reaches the model). ``T``
    is ``length`` or the longest sequence.

    Example::

        values, mask = pad_sequences([np.ones((3, 2)), np.ones((5, 2))])   # (2, 5, 2), (2, 5)
    """
    if not sequences:
        raise ValueError("sequences is empty; pad_sequences needs at least one sequence")
    longest = max(len(s) for s in sequences)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest} steps)")
    features = np.shape(sequences[0])[-1]
    values = np.zeros((len(sequences), length, features), dtype)
    mask = np.zeros((len(sequences), length), dtype)
    for row, sequence in enumerate(sequences):
        sequence = np.asarray(sequence)
        present = ~np.isnan(sequence)
        values[row, : len(sequence)] = np.where(present, sequence, 0.0)
        mask[row, : len(sequence)] = present.all(-1)
    return values, mask


def next_step_batch(values: np.ndarray, mask: np.ndarray):
    """``values (b, T, d)``, ``mask (b, T)`` -> ``(inputs (b, T-1, d), targets (b, T-1, d),
    target_mask (b, T-1))``: the model reads ``values[:, i]`` and predicts ``values[:, i + 1]``.
    A target step counts only when it is real (not padding, not missing)."""
    return values[:, :-1], values[:, 1:], mask[:, 1:]


def windows(series: np.ndarray, length: int, *, stride: int | None = None) -> list[np.ndarray]:
    """Cut a ``(t, d)`` series into windows of ``length`` steps every ``stride`` (default
    ``length - 1``, so consecutive windows share one step and every target is predicted once).
    A short tail becomes a last, shorter window."""
    if length < 2:
        raise ValueError(f"window length must be >= 2 (one input, one target), got {length}")
    stride = length - 1 if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    starts = range(0, max(1, len(series) - 1), stride)
    pieces = [series[start : start + length] for start in starts]
    return [piece for piece in pieces if len(piece) >= 2]


def bucketed_batches(lengths: Sequence[int], batch_size: int, *, rng: np.random.Generator | None = None,
                     minimum: int = 8) -> list[tuple[np.ndarray, int]]:
    """Group sequence indices into batches of similar length.

    Sorts by length, cuts the order into batches of ``batch_size``, and gives each batch the
    bucket length of its longest member; with ``rng`` the order of the batches is shuffled (and
    ties in length broken at random). Returns ``[(indices (<= batch_size,), padded_length), ...]``.
    """
    lengths = np.asarray(lengths)
    noise = rng.random(len(lengths)) if rng is not None else np.zeros(len(lengths))
    order = np.lexsort((noise, lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    result = [(batch, bucket_length(int(lengths[batch].max()), minimum=minimum)) for batch in batches]
    if rng is not None:
        result = [result[i] for i in rng.permutation(len(result))]
    return result
