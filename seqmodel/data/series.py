"""Series with forecasting features: what ``--data`` becomes with ``--lags``, ``--time-column``,
``--covariates``, ``--static-columns``, ``--scaling`` or ``--head negbin``.

The pieces:

- :class:`Series`: one series ready for windows: targets ``(T, d)`` in globally normalised units
  (NaN = missing), known features ``(T, K)`` (:func:`seqmodel.data.features.known_features`), its
  times, id and static categories.
- :class:`WindowIterator`: training batches of random windows of ``seq_len`` inputs from a zero
  carry (DeepAR's sampling), each with its own mean scale; resumable by ``position``.
- :class:`ForecastDataset`: the dataset protocol of :mod:`seqmodel.data`; validation is the last
  ``val_fraction`` of the steps of every series (each scored with its own past as context).
- :func:`load_forecast_dataset`: a file (or a checkpoint's metadata) -> a dataset.

Global normalisation under the mean scaling: a continuous target is divided by the training
data's mean ``|y|`` (no shift, so that the mean scale of a window is about 1 and ``log s`` about
0); counts (``negbin``) and 0/1 data (``bernoulli``) stay as they are; without mean scaling a
continuous target is z-scored as in :class:`~seqmodel.data.numeric.NumericDataset`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from seqmodel.data import features
from seqmodel.data.batching import Batch, DataError
from seqmodel.data.numeric import Normalizer, load_sequences

# Heads whose targets are counts (kept as they are, checked to be counts).
COUNT_HEADS = ("negbin",)
# Heads whose targets are 0/1 (kept as they are, never scaled).
BINARY_HEADS = ("bernoulli",)
DEFAULT_HEAD = "student_t"


@dataclasses.dataclass(frozen=True)
class Series:
    """One series: ``values`` ``(T, d)`` globally normalised targets (NaN = missing), ``known``
    ``(T, K)`` known features, ``times`` ``(T,)`` or None, ``name``, ``static`` categories."""

    name: str
    values: np.ndarray
    known: np.ndarray
    times: np.ndarray | None = None
    static: tuple | None = None

    def __len__(self) -> int:
        return len(self.values)

    def head_part(self, stop: int) -> "Series":
        """The first ``stop`` steps (known features too)."""
        return dataclasses.replace(
            self, values=self.values[:stop], known=self.known[:stop],
            times=None if self.times is None else self.times[:stop])


def window_arrays(spec: features.FeatureSpec, series: Series, start: int, length: int):
    """``(inputs (length, input_size), targets (length, d), mask (length,))`` of the window whose
    inputs are steps ``start .. start + length - 1``; its scale comes from its first
    ``context_length`` elements. Missing targets get mask 0 (and value 0)."""
    context = series.values[start : start + min(spec.context_length, length)]
    scale = features.mean_scale(context, spec)
    inputs = features.window_inputs(spec, series.values, series.known, start=start,
                                    length=length, scale=scale)
    targets = series.values[start + 1 : start + length + 1]
    mask = np.isfinite(targets).all(-1)
    return inputs, np.nan_to_num(targets, nan=0.0).astype(np.float32), mask.astype(np.float32)


def _padded(rows: list, batch_size: int, length: int, spec: features.FeatureSpec) -> Batch:
    inputs = np.zeros((batch_size, length, spec.input_size), np.float32)
    targets = np.zeros((batch_size, length, spec.target_size), np.float32)
    mask = np.zeros((batch_size, length), np.float32)
    for row, (row_inputs, row_targets, row_mask) in enumerate(rows):
        inputs[row, : len(row_inputs)] = row_inputs
        targets[row, : len(row_targets)] = row_targets
        mask[row, : len(row_mask)] = row_mask
    return Batch(inputs, targets, mask, np.ones((batch_size,), bool))


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
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise DataError(f"{name}={value!r} is invalid: must be a positive integer")
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
        position = position or {}
        self.index = int(position.get("index", 0))

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
        return _padded(rows, self.batch_size, self.seq_len, self.spec)


def split_point(length: int, val_fraction: float) -> int:
    """The first validation step of a series of ``length`` steps."""
    return length - int(round(length * val_fraction))


class ForecastDataset:
    """Series with forecasting features, split in time: the last ``val_fraction`` of every
    series' steps is validation. Implements the dataset protocol of :mod:`seqmodel.data`.

    Attributes: ``spec`` (:class:`~seqmodel.data.features.FeatureSpec`), ``normalizer`` (the targets'
    global normalisation), ``head``, ``series`` (whole :class:`Series`), ``frequency``.

    Example::

        dataset = load_forecast_dataset("sales.csv", time_column="date", lags=(1, 12))
        batch = next(dataset.train_batches(batch_size=32, seq_len=48))
        # inputs (32, 48, dataset.input_size), targets (32, 48, 1)
    """

    kind = "forecast"

    def __init__(self, series: Sequence[Series], *, spec: features.FeatureSpec,
                 normalizer: Normalizer, head: str, name: str = "forecast",
                 val_fraction: float = 0.1, missing: str = "reject",
                 id_column: str | None = None):
        if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
            raise DataError(f"val_fraction={val_fraction!r} is invalid: must be in [0, 1)")
        self.series = list(series)
        self.spec, self.normalizer, self.head = spec, normalizer, head
        self.name, self.val_fraction, self.missing = name, float(val_fraction), missing
        self.id_column = id_column
        self.splits = [split_point(len(item), self.val_fraction) for item in self.series]
        self.train_series = [item.head_part(split) for item, split in zip(self.series, self.splits)]
        self.frequency = None if spec.frequency is None else features.Frequency.parse(
            spec.frequency)

    # -- what the model needs -----------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def columns(self) -> tuple:
        return self.spec.target_columns

    def model_fields(self) -> dict:
        return {**self.spec.model_fields(), "head": self.head}

    @property
    def default_head(self) -> str:
        return self.head

    def check_head(self, head: str) -> None:
        if head != self.head:
            raise DataError(f"--head {head} differs from the head {self.head!r} this data was "
                            "prepared for; load the data with the same head")

    @property
    def bits_per_unit(self) -> str | None:
        return None

    @property
    def season(self) -> int:
        """Seasonal period of the data (1 without a time column)."""
        return 1 if self.frequency is None else self.frequency.season

    @property
    def val_sequences(self) -> list:
        """The validation part of every series in original units (for reports)."""
        return [self.normalizer.denormalize(item.values[split:])
                for item, split in zip(self.series, self.splits) if split < len(item)]

    def metadata(self) -> dict:
        return {"kind": self.kind, "name": self.name, "features": self.spec.to_dict(),
                "normalizer": self.normalizer.to_dict(), "head": self.head,
                "columns": list(self.columns), "val_fraction": self.val_fraction,
                "missing": self.missing, "time_column": self.spec.time_column,
                "id_column": self.id_column}

    # -- batches ---------------------------------------------------------------------------------

    def train_batches(self, *, batch_size: int, seq_len: int, batching: str = "windows",
                      seed: int = 0, position: dict | None = None) -> WindowIterator:
        """Random windows (``batching`` is ignored: per-window scales rule out lanes that pass
        the carry on)."""
        return WindowIterator(self.train_series, self.spec, batch_size=batch_size,
                              seq_len=seq_len, seed=seed, position=position)

    def validation_batches(self, *, batch_size: int, seq_len: int) -> list:
        """Every validation target once, after ``context_length`` steps of context: windows of
        ``max(seq_len, context_length + 1)`` inputs, each scoring the targets after its
        context."""
        spec = self.spec
        length = max(seq_len, spec.context_length + 1)
        stride = length - spec.context_length
        rows = []
        for item, split in zip(self.series, self.splits):
            if split >= len(item):
                continue
            scored = split
            while scored < len(item):
                start = max(scored - 1 - spec.context_length, spec.max_lag - 1)
                if start > len(item) - 2:
                    break
                scored = max(scored, start + 1)
                window_length = min(length, len(item) - 1 - start)
                inputs, targets, mask = window_arrays(spec, item, start, window_length)
                steps = start + 1 + np.arange(window_length)  # the step each target is
                keep = (steps >= scored) & (steps < scored + stride)
                rows.append((inputs, targets, mask * keep))
                # Past this window's end when the lags pushed its start later than asked.
                scored = min(scored + stride, start + 1 + window_length)
        batches = []
        for first in range(0, len(rows), batch_size):
            group = rows[first : first + batch_size]
            batches.append(_padded(group, min(batch_size, len(rows)), length, spec))
        return batches

    @property
    def num_validation_targets(self) -> int:
        return int(sum(len(item) - split for item, split in zip(self.series, self.splits)))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check_counts(values: np.ndarray, name: str) -> None:
    present = values[np.isfinite(values)]
    bad = present[(present < 0) | (present != np.round(present))]
    if bad.size:
        raise DataError(f"--head negbin needs counts (non-negative integers), but --data "
                        f"{name!r} holds {bad[0]!r}; use --head student_t or gaussian")


def _target_normalizer(values: list, head: str, scaling: str) -> Normalizer:
    d = values[0].shape[-1]
    if head in COUNT_HEADS + BINARY_HEADS:
        return Normalizer.identity(d)
    if scaling == "none":
        return Normalizer.fit(values)
    flat = np.abs(np.concatenate([v.reshape(-1, d) for v in values]))
    scale = np.nanmean(flat, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return Normalizer((0.0,) * d, tuple(float(s) for s in scale))


def known_rows(spec: features.FeatureSpec, times, covariates, static, length: int) -> np.ndarray:
    """The known features ``(length, K)`` of one series: :func:`seqmodel.data.features.
    known_features`, or the static one-hot alone repeated ``length`` times."""
    if spec.known_size == 0:
        return np.zeros((length, 0), np.float32)
    if spec.time_features or spec.covariate_columns:
        return features.known_features(spec, times, covariates, static)
    return np.broadcast_to(features.static_one_hot(spec, static),
                           (length, spec.known_size)).astype(np.float32)


def build_series(spec: features.FeatureSpec, normalizer: Normalizer, table) -> list[Series]:
    """The :class:`Series` of a loaded :class:`~seqmodel.data.numeric.NumericTable` whose
    columns hold ``spec``'s targets and covariates."""
    columns = list(table.columns)
    target_index = [columns.index(name) for name in spec.target_columns]
    covariate_index = [columns.index(name) for name in spec.covariate_columns]
    result = []
    for index, sequence in enumerate(table.sequences):
        times = None if table.times is None else table.times[index]
        static = None if not spec.static_columns else tuple(
            table.categories[name][index] for name in spec.static_columns)
        covariates = sequence[:, covariate_index] if covariate_index else None
        values = normalizer.normalize(sequence[:, target_index])
        known = known_rows(spec, times, covariates, static, len(sequence))
        name = table.ids[index] if table.ids else f"series {index}"
        result.append(Series(str(name), values, known, times, static))
    return result


def _choose_lags(lags, frequency, train_lengths: list[int]) -> tuple[int, ...]:
    if lags is not None:
        return features.parse_lags(",".join(str(lag) for lag in lags))
    default = features.Frequency.default_lags(frequency) if frequency else (1, 2, 3)
    # Default lags keep a third of the shortest train series for windows with every lag.
    room = max(min(train_lengths) // 3, 1)
    return tuple(lag for lag in default if lag <= room) or (1,)


def load_forecast_dataset(source: str, *, val_fraction: float = 0.1,
                          metadata: dict | None = None, missing: str | None = None,
                          time_column: str | None = None, id_column: str | None = None,
                          target_columns: Sequence[str] | None = None,
                          covariates: Sequence[str] = (), static_columns: Sequence[str] = (),
                          lags: Sequence[int] | None = None, scaling: str = "mean",
                          context_length: int = 32, head: str | None = None) -> ForecastDataset:
    """Read ``source`` (``.csv``/``.tsv``/``.npy``) into a :class:`ForecastDataset`.

    Args:
      metadata: a checkpoint's ``dataset.metadata()``: reuse its feature layout and
        normalisation (the file must have the same columns) instead of building new ones.
      time_column: timestamps: the frequency is inferred (irregular rows are an error naming
        the line) and its calendar cycles are fed as time features.
      id_column: the column naming each row's series (default ``sequence_id`` when present).
      target_columns: the predicted columns (default: every numeric column that is not a
        covariate).
      covariates: known-future numeric covariates, fed with every step.
      static_columns: per-series categories, fed one-hot.
      lags: lags to feed (1, the element, is always fed); default from the frequency, the ones
        that fit a third of the shortest train series.
      scaling: ``"mean"`` (DeepAR's mean scaling) or ``"none"``; 0/1 data is never scaled.
      context_length: steps a forecast reads before its first prediction (and that a window's
        scale comes from).
      head: the output distribution the data is prepared for (default ``student_t``);
        ``negbin`` needs counts.

    Raises:
      DataError: one line (a missing or non-numeric covariate, NaN without ``missing="mask"``,
        an irregular time column, lags longer than the series, ...).

    Example::

        dataset = load_forecast_dataset("sales.csv", time_column="date",
                                        covariates=("price",), static_columns=("store",))
    """
    saved = None
    if metadata is not None:
        saved = features.FeatureSpec.from_dict(metadata["features"])
        source = source or metadata.get("name")
        missing = missing or metadata.get("missing", "reject")
        head = metadata.get("head", head)
        time_column, static_columns = saved.time_column, saved.static_columns
        covariates, target_columns = saved.covariate_columns, saved.target_columns
        id_column = id_column if id_column is not None else metadata.get("id_column")
    missing = missing or "reject"
    head = head or DEFAULT_HEAD
    covariates, static_columns = tuple(covariates), tuple(static_columns)
    try:
        table = load_sequences(source, missing=missing, time_column=time_column,
                               id_column=id_column, category_columns=static_columns,
                               numeric_columns=covariates + tuple(target_columns or ()))
        frequency = None
        if table.times is not None:
            frequency = features.infer_frequency(table.times, lines=table.lines,
                                                 column=table.time_column)
    except FileNotFoundError as error:
        raise DataError(str(error)) from None
    except ValueError as error:
        raise DataError(str(error).splitlines()[0]) from None
    if target_columns is None:
        target_columns = tuple(name for name in table.columns if name not in covariates)
        if not target_columns:
            raise DataError(f"--data {source!r}: every numeric column is a covariate; leave at "
                            "least one column to forecast")
    target_columns = tuple(target_columns)
    targets = [sequence[:, [list(table.columns).index(n) for n in target_columns]]
               for sequence in table.sequences]
    if head in COUNT_HEADS:
        for values in targets:
            _check_counts(values, source)
    if head in BINARY_HEADS:
        present = np.concatenate([values[np.isfinite(values)] for values in targets])
        if not np.all((present == 0.0) | (present == 1.0)):
            raise DataError(f"--head bernoulli needs binary (0/1) data, but --data {source!r} "
                            "holds other values; use --head student_t, gaussian or mdn")
        scaling = "none"
    if saved is not None:
        spec = saved
        if saved.frequency is not None and frequency is not None and (
                frequency.name != saved.frequency):
            raise DataError(f"--data {source!r} advances by {frequency.name}, but the model was "
                            f"trained on data that advances by {saved.frequency}")
        normalizer = Normalizer.from_dict(metadata["normalizer"])
    else:
        if scaling not in features.SCALINGS:
            raise DataError(f"--scaling {scaling!r} is invalid: allowed are "
                            f"{', '.join(features.SCALINGS)}")
        train = [values[: split_point(len(values), val_fraction)] for values in targets]
        normalizer = _target_normalizer(train, head, scaling)
        train_lengths = [len(values) for values in train]
        chosen_lags = _choose_lags(lags, frequency, train_lengths)
        normalised = [normalizer.normalize(values) for values in train]
        flat = np.abs(np.concatenate(normalised))
        default_scale = np.nanmean(flat, axis=0) if np.isfinite(flat).any() else np.ones(
            len(target_columns))
        covariate_normalizer = None
        if covariates:
            index = [list(table.columns).index(n) for n in covariates]
            covariate_normalizer = Normalizer.fit(
                [s[: split_point(len(s), val_fraction), index] for s in table.sequences])
        categories = tuple(tuple(sorted(set(table.categories[name]))) for name in static_columns)
        try:
            spec = features.FeatureSpec(
                target_columns=target_columns, lags=chosen_lags, scaling=scaling,
                context_length=context_length,
                default_scale=tuple(float(v) if v > 0 else 1.0 for v in default_scale),
                time_column=table.time_column,
                frequency=None if frequency is None else frequency.name,
                time_features=features.frequency_cycles(frequency),
                covariate_columns=covariates,
                covariate_mean=() if covariate_normalizer is None else covariate_normalizer.mean,
                covariate_scale=() if covariate_normalizer is None else covariate_normalizer.scale,
                static_columns=static_columns, static_categories=categories)
        except ValueError as error:
            raise DataError(str(error)) from None
    if spec.max_lag >= max(len(values) for values in targets):
        raise DataError(f"--lags up to {spec.max_lag} need a series longer than "
                        f"{spec.max_lag} steps, but the longest in {source!r} has "
                        f"{max(len(v) for v in targets)}: lower --lags")
    series = build_series(spec, normalizer, table)
    return ForecastDataset(series, spec=spec, normalizer=normalizer, head=head, name=source,
                           val_fraction=val_fraction, missing=missing,
                           id_column=id_column)
