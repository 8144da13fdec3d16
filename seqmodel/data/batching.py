"""Batches for truncated backpropagation through time.

A :class:`Batch` is what a train or eval step consumes. Two ways to cut a stream into batches:

- **lanes** (char-rnn / torch-rnn): the stream is cut into ``b`` contiguous lanes; batch ``i`` holds
  window ``i`` of every lane, so row ``r`` of batch ``i + 1`` continues row ``r`` of batch ``i`` and the
  carry is passed along. The first batch of every epoch has ``reset`` set: the carry never crosses
  the wrap-around from the end of a lane back to its start.
- **random** windows (nanoGPT): ``b`` windows at random offsets, each starting from a zero carry.

Iterators are resumable: ``iterator.position`` (a small JSON-compatible dict) is stored in
checkpoints, and ``make_batch_iterator(..., position=...)`` continues from it, batch for batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from seqmodel.configs import BATCHINGS  # noqa: F401  (the names live with the configs)
from seqmodel.errors import UserError


class DataError(UserError):
    """Bad data or data options; the message is one line meant for the user."""


class Batch(NamedTuple):
    """One step's data. ``b`` rows, ``t`` steps, ``d`` features.

    Attributes:
      inputs: ``(b, t)`` token ids or ``(b, t, d)`` values fed to the model.
      targets: ``(b, t)`` / ``(b, t, d)``: ``targets[:, i]`` is the element after ``inputs[:, i]``.
      mask: ``(b, t)`` float32 weights (1 = real, 0 = padding / missing), or ``None`` when every
        element counts. The loss is ``-sum(mask * log_prob) / sum(mask)``.
      reset: ``(b,)`` bool. True: this row starts from a zero carry (a new sequence, a random window,
        a new epoch). False: it continues the previous batch's row, so the carry is passed on.

    Example::

        Batch(inputs=x[:, :-1], targets=x[:, 1:], mask=None, reset=np.ones(b, bool))
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    reset: np.ndarray


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise DataError(f"{name}={value!r} is invalid: must be a positive integer")


class LaneIterator:
    """Consecutive windows of ``batch_size`` contiguous lanes (carry passed between batches).

    Shapes: each batch has inputs/targets ``(batch_size, seq_len)`` in the stream's dtype."""

    batching = "lanes"

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int,
                 position: dict | None = None, what: str = "the stream"):
        _check_positive("batch_size", batch_size)
        _check_positive("seq_len", seq_len)
        lane_length = (len(tokens) - 1) // batch_size
        if lane_length < seq_len:
            raise DataError(
                f"{what} has {len(tokens)} elements, fewer than batch_size * seq_len + 1 = "
                f"{batch_size * seq_len + 1} needed for one batch of lanes; lower --batch-size "
                f"or --seq-len, or give more data"
            )
        used = batch_size * lane_length
        # Views, not copies: lane r is tokens[r * L : (r + 1) * L], its targets shifted by one.
        lanes_shape = (batch_size, lane_length) + tokens.shape[1:]  # (b, L) or (b, L, d)
        self._inputs = tokens[:used].reshape(lanes_shape)
        self._targets = tokens[1 : used + 1].reshape(lanes_shape)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.batches_per_epoch = lane_length // seq_len
        position = position or {}
        self.epoch = int(position.get("epoch", 0))
        self.index = int(position.get("index", 0))
        if not 0 <= self.index < self.batches_per_epoch:
            raise DataError(f"data position {position!r} does not fit this data "
                            f"({self.batches_per_epoch} batches per epoch)")

    @property
    def position(self) -> dict:
        """Where the next batch comes from: ``{"epoch": e, "index": i}``."""
        return {"batching": self.batching, "epoch": self.epoch, "index": self.index}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        start = self.index * self.seq_len
        window = slice(start, start + self.seq_len)
        reset = np.full((self.batch_size,), self.index == 0)
        batch = Batch(np.ascontiguousarray(self._inputs[:, window]),
                      np.ascontiguousarray(self._targets[:, window]), None, reset)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch


class RandomWindowIterator:
    """``batch_size`` windows at random offsets, each from a zero carry (``reset`` all True).

    Batch ``i`` is drawn from ``numpy.random.default_rng((seed, i))``, so a resumed iterator
    continues with the very batches an uninterrupted one would have drawn."""

    batching = "random"

    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int = 0,
                 position: dict | None = None, what: str = "the stream"):
        _check_positive("batch_size", batch_size)
        _check_positive("seq_len", seq_len)
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"{what} has {len(tokens)} elements, fewer than seq_len + 1 = {seq_len + 1} "
                f"needed for one window; lower --seq-len or give more data"
            )
        self._tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.batches_per_epoch = max(1, (len(tokens) - 1) // (batch_size * seq_len))
        self.index = int((position or {}).get("index", 0))
        self._offsets = np.arange(seq_len + 1)

    @property
    def epoch(self) -> int:
        return self.index // self.batches_per_epoch

    @property
    def position(self) -> dict:
        return {"batching": self.batching, "epoch": self.epoch, "index": self.index}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        generator = np.random.default_rng((self.seed, self.index))
        starts = generator.integers(0, len(self._tokens) - self.seq_len, size=self.batch_size)
        windows = self._tokens[starts[:, None] + self._offsets]  # (b, t + 1)
        self.index += 1
        return Batch(windows[:, :-1], windows[:, 1:], None, np.ones((self.batch_size,), bool))


BatchIterator = LaneIterator | RandomWindowIterator


def make_batch_iterator(tokens: np.ndarray, *, batch_size: int, seq_len: int,
                        batching: str = "lanes", seed: int = 0, position: dict | None = None,
                        what: str = "the stream") -> BatchIterator:
    """Training batches over a ``(n,)`` or ``(n, d)`` stream; see the module docstring."""
    if batching not in BATCHINGS:
        raise DataError(f"--batching {batching!r} is invalid; allowed: {', '.join(BATCHINGS)}")
    if position and position.get("batching", batching) != batching:
        raise DataError(f"the checkpoint's data position is for --batching "
                        f"{position['batching']!r}, not {batching!r}")
    if batching == "lanes":
        return LaneIterator(tokens, batch_size=batch_size, seq_len=seq_len, position=position,
                            what=what)
    return RandomWindowIterator(tokens, batch_size=batch_size, seq_len=seq_len, seed=seed,
                                position=position, what=what)


def evaluation_batches(stream: np.ndarray, *, batch_size: int, seq_len: int) -> list[Batch]:
    """Every target of ``stream`` exactly once, as masked lanes with the carry passed along.

    The ``n - 1`` (input, target) pairs of a ``(n,)`` / ``(n, d)`` stream are cut into
    ``min(batch_size, n - 1)`` contiguous lanes, padded at the end (``mask`` 0) to whole windows of
    ``seq_len``. Each lane starts from a zero carry (``reset`` on the first batch) and carries it
    through its windows, so the masked mean over all batches is the exact NLL of the stream given
    ``batch_size`` starts from zero. Returns ``[]`` for a stream with fewer than 2 elements.
    """
    _check_positive("batch_size", batch_size)
    _check_positive("seq_len", seq_len)
    pairs = len(stream) - 1
    if pairs < 1:
        return []
    lanes = min(batch_size, pairs)
    lane_length = math.ceil(pairs / lanes)
    windows = math.ceil(lane_length / seq_len)
    padded = lanes * windows * seq_len

    def lay_out(values: np.ndarray) -> np.ndarray:
        # Fill lane by lane up to lane_length, then pad every lane to whole windows.
        feature_shape = values.shape[1:]  # () for tokens and the mask, (d,) for real values
        out = np.zeros((lanes, windows * seq_len) + feature_shape, dtype=values.dtype)
        flat = np.zeros((lanes * lane_length,) + feature_shape, dtype=values.dtype)
        flat[: len(values)] = values
        out[:, :lane_length] = flat.reshape((lanes, lane_length) + feature_shape)
        return out

    inputs = lay_out(stream[:-1])
    targets = lay_out(stream[1:])
    mask = lay_out(np.ones((pairs,), np.float32))
    assert mask.sum() == pairs and padded >= pairs
    batches = []
    for window in range(windows):
        part = slice(window * seq_len, (window + 1) * seq_len)
        batches.append(Batch(inputs[:, part], targets[:, part], mask[:, part],
                             np.full((lanes,), window == 0)))
    return batches
