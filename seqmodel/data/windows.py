"""The batching policies of prepared series: random windows, whole sequences, lanes.

- :class:`WindowIterator`: random windows of ``seq_len`` inputs from a zero carry, each with its
  own mean scale (DeepAR's sampling).
- :class:`SequenceIterator`: whole sequences from their first step with every lag, padded,
  bucketed by length.
- :class:`SeriesLaneIterator`: one unscaled series without lags cut into contiguous lanes, the carry
  passed on (the text streams' lanes over the values and a presence column).

Every iterator is endless and resumable by its ``position``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seqmodel.data import features
from seqmodel.data.batching import Batch, DataError, make_batch_iterator
from seqmodel.data.padding import bucketed_batches
from seqmodel.data.preparation import Series


def window_arrays(spec: features.FeatureSpec, series: Series, start: int, length: int):
    """``(inputs (length, input_size), targets (length, d), mask (length,))`` of the window whose
    inputs are steps ``start .. start + length - 1``; its location and scale come from its first
    ``context_length`` elements. Missing targets get mask 0 (and value 0)."""
    context = series.values[start : start + min(spec.context_length, length)]
    loc, scale = features.window_scale(context, spec)
    inputs = features.window_inputs(spec, series.values, series.known, start=start,
                                    length=length, scale=scale, loc=loc)
    targets = series.values[start + 1 : start + length + 1]
    mask = np.isfinite(targets).all(-1)
    return inputs, np.nan_to_num(targets, nan=0.0).astype(np.float32), mask.astype(np.float32)


def padded_batch(rows: list, batch_size: int, length: int, spec: features.FeatureSpec,
            reset: np.ndarray | None = None) -> Batch:
    inputs = np.zeros((batch_size, length, spec.input_size), np.float32)
    targets = np.zeros((batch_size, length, spec.target_size), np.float32)
    mask = np.zeros((batch_size, length), np.float32)
    for row, (row_inputs, row_targets, row_mask) in enumerate(rows):
        inputs[row, : len(row_inputs)] = row_inputs
        targets[row, : len(row_targets)] = row_targets
        mask[row, : len(row_mask)] = row_mask
    return Batch(inputs, targets, mask, np.ones((batch_size,), bool) if reset is None else reset)


def _check_shape(batch_size, seq_len) -> None:
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DataError(f"{name}={value!r} is invalid: must be a positive integer")


class WindowIterator:
    """Endless training batches of ``batch_size`` random windows of ``seq_len`` inputs.

    A window starts anywhere from the first step with every lag (``max_lag - 1``) to the last
    start that leaves ``seq_len`` targets, uniformly over all series' starts (long series give
    more windows); a series too short for a whole window gives one shorter, padded window.
    Every row starts from a zero carry. Batch ``n`` is drawn from ``default_rng((seed, n))``, so
    ``position`` (``{"batching": "windows", "index": n}``) resumes batch for batch.
    """

    batching = "windows"

    def __init__(self, series: Sequence[Series], spec: features.FeatureSpec, *, batch_size: int,
                 seq_len: int, seed: int = 0, position: dict | None = None):
        _check_shape(batch_size, seq_len)
        first = spec.max_lag - 1
        self._series, self._low, self._count = [], [], []
        for item in series:
            last = len(item) - 1 - seq_len
            if len(item) - 1 - first < 1:
                continue  # no step with every lag and a target after it
            self._series.append(item)
            self._low.append(first)
            self._count.append(max(last - first + 1, 1))
        if not self._series:
            longest = max((len(item) for item in series), default=0)
            raise DataError(
                f"--lags up to {spec.max_lag} need a train series longer than {spec.max_lag} "
                f"steps, but the longest has {longest}: lower --lags (or give longer series)")
        self._weights = np.asarray(self._count, np.float64) / sum(self._count)
        self.spec, self.batch_size, self.seq_len, self.seed = spec, batch_size, seq_len, int(seed)
        self.index = int((position or {}).get("index", 0))

    @property
    def position(self) -> dict:
        return {"batching": self.batching, "index": self.index}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng((self.seed, self.index))
        self.index += 1
        picks = rng.choice(len(self._series), size=self.batch_size, p=self._weights)
        rows = []
        for pick in picks:
            series, low = self._series[pick], self._low[pick]
            start = low + int(rng.integers(self._count[pick]))
            length = min(self.seq_len, len(series) - 1 - start)
            rows.append(window_arrays(self.spec, series, start, length))
        return padded_batch(rows, self.batch_size, self.seq_len, self.spec)


class SequenceIterator:
    """Training batches over whole sequences: each from its first step with every lag, cut into
    pieces of at most ``seq_len`` inputs (consecutive pieces of one sequence share a step), padded
    and masked, bucketed by length so that compiled shapes stay few.

    Each epoch shuffles (seeded by ``(seed, epoch)``) batches of similar length; a batch is padded
    to ``min(bucket, seq_len)`` steps and to ``batch_size`` rows (extra rows fully masked). Every
    row starts from a zero carry. ``position`` (``{"batching", "epoch", "index"}``) resumes
    batch for batch.
    """

    batching = "sequences"

    def __init__(self, series: Sequence[Series], spec: features.FeatureSpec, *, batch_size: int,
                 seq_len: int, seed: int = 0, position: dict | None = None,
                 what: str = "the train part"):
        _check_shape(batch_size, seq_len)
        first = spec.max_lag - 1
        self._pieces = []  # (series index, start, length): inputs start .. start + length - 1
        for index, item in enumerate(series):
            for start in range(first, len(item) - 1, seq_len):
                self._pieces.append((index, start, min(seq_len, len(item) - 1 - start)))
        if not self._pieces:
            raise DataError(f"{what} has no sequence with 2 or more steps (after the first "
                            f"{first} that only feed lags) to train on")
        self._series, self.spec = list(series), spec
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, int(seed)
        position = position or {}
        self.epoch = int(position.get("epoch", 0))
        self.index = int(position.get("index", 0))
        self._plan = self._plan_epoch(self.epoch)
        if not 0 <= self.index < len(self._plan):
            raise DataError(f"data position {position!r} does not fit this data "
                            f"({len(self._plan)} batches per epoch)")

    def _plan_epoch(self, epoch: int):
        rng = np.random.default_rng((self.seed, epoch))
        lengths = [length + 1 for _, _, length in self._pieces]
        return bucketed_batches(lengths, self.batch_size, rng=rng)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    @property
    def position(self) -> dict:
        return {"batching": self.batching, "epoch": self.epoch, "index": self.index}

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        indices, bucket = self._plan[self.index]
        steps = min(bucket, self.seq_len + 1) - 1
        self.index += 1
        if self.index == len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = self._plan_epoch(self.epoch)
        rows = [window_arrays(self.spec, self._series[series], start, length)
                for series, start, length in (self._pieces[i] for i in indices)]
        return padded_batch(rows, self.batch_size, max(steps, 1), self.spec)


class SeriesLaneIterator:
    """Lanes of one unscaled series with no lags (the carry passed on): the text streams' lane
    iterator over the values and a presence column, split back into values and a mask."""

    def __init__(self, values: np.ndarray, *, batch_size: int, seq_len: int, batching: str,
                 seed: int, position: dict | None, what: str):
        present = np.isfinite(values).all(-1, keepdims=True)
        stream = np.concatenate([np.nan_to_num(values, nan=0.0), present], axis=-1)
        self._inner = make_batch_iterator(stream.astype(np.float32), batch_size=batch_size,
                                          seq_len=seq_len, batching=batching, seed=seed,
                                          position=position, what=what)

    @property
    def position(self) -> dict:
        return self._inner.position

    def __getattr__(self, name):  # batches_per_epoch, ... of the stream iterator
        return getattr(self._inner, name)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return split_presence(next(self._inner))


def split_presence(batch: Batch) -> Batch:
    present = batch.targets[..., -1]
    mask = present if batch.mask is None else batch.mask * present
    return Batch(batch.inputs[..., :-1], batch.targets[..., :-1], mask.astype(np.float32),
                 batch.reset)
