"""The one dataset of real-valued data: prepared series, held out in time or by sequence, batched
by a policy.

- :class:`SeriesDataset`: the dataset protocol of :mod:`seqmodel.data` over the
  :class:`~seqmodel.data.preparation.Series` of a :class:`~seqmodel.data.preparation.Preparation`.
  Validation is the last ``val_fraction`` of every series' steps (``validation="time"``, the
  forecasting split) or the last ``val_fraction`` of the sequences (``validation="sequences"``,
  a set of separate sequences). ``holdout=N`` keeps the last ``N`` steps of every series out of
  training and validation both (for a backtest on the same data afterwards), and ``metadata()``
  records the last step (and time stamp) of every series that training or validation saw.
- Batching policies (:mod:`seqmodel.data.windows`): ``windows`` (random windows of ``seq_len``
  inputs from a zero carry, each with its own location and scale: DeepAR's sampling), ``sequences``
  (whole sequences from their first step, padded, bucketed by length) and ``lanes`` (one
  unscaled series cut into contiguous lanes, the carry passed on).
- :class:`NumericDataset`: the plain case built from sequences directly (z-scored, no lags, no
  mean scaling), as the earlier releases did.

"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from seqmodel.data import features
from seqmodel.data.batching import DataError, evaluation_batches
from seqmodel.data.normalization import Normalizer
from seqmodel.data.preparation import (  # noqa: F401  (Series re-exported: the unit of this module)
    BINARY_HEADS,
    COUNT_HEADS,
    DEFAULT_HEAD,
    Preparation,
    Series,
    is_binary,
    prepare,
)
from seqmodel.data.tables import Table, from_sequences
from seqmodel.data.windows import (  # noqa: F401  (window_arrays re-exported for forecasting)
    SeriesLaneIterator,
    SequenceIterator,
    WindowIterator,
    padded_batch,
    split_presence,
    window_arrays,
)

VALIDATIONS = ("time", "sequences")
SERIES_BATCHINGS = ("windows", "sequences", "lanes")
# How much context a plain model (no lags, no scaling) reads before the validation steps it
# scores: its carry holds the past, so more context only costs time.
PLAIN_CONTEXT = 1024


def split_point(length: int, val_fraction: float) -> int:
    """The first validation step of a series of ``length`` steps."""
    return length - int(round(length * val_fraction))


def _check_fraction(val_fraction) -> None:
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise DataError(f"val_fraction={val_fraction!r} is invalid: must be in [0, 1)")


def _time_text(stamp) -> str | float:
    if isinstance(stamp, np.datetime64):
        return str(stamp.astype("datetime64[s]"))
    return float(stamp)


class SeriesDataset:
    """Prepared series split into train and validation. Implements the dataset protocol of
    :mod:`seqmodel.data`.

    Attributes: ``preparation`` (with ``spec``, ``normalizer``, ``head``, ``season``),
    ``series`` (whole :class:`Series`, holdout removed), ``splits`` (each series' first
    validation step: ``len`` for a training-only sequence, 0 for a validation sequence),
    ``validation``, ``batching``, ``holdout``.

    Example::

        dataset = load_dataset("sales.csv", time_column="date")      # a SeriesDataset
        batch = next(dataset.train_batches(batch_size=32, seq_len=48))
        # inputs (32, 48, dataset.input_size), targets (32, 48, 1)
    """

    kind = "series"

    def __init__(self, series: Sequence[Series], preparation: Preparation, *,
                 name: str = "series", val_fraction: float = 0.1, validation: str = "time",
                 batching: str = "windows", holdout: int = 0):
        _check_fraction(val_fraction)
        if validation not in VALIDATIONS:
            raise DataError(f"validation={validation!r} is invalid: allowed are "
                            f"{', '.join(VALIDATIONS)}")
        if batching not in SERIES_BATCHINGS:
            raise DataError(f"batching={batching!r} is invalid for real-valued data: allowed are "
                            f"{', '.join(SERIES_BATCHINGS)}")
        if not isinstance(holdout, (int, np.integer)) or isinstance(holdout, bool) or holdout < 0:
            raise DataError(f"--holdout {holdout!r} is invalid: give a number of steps >= 0")
        series = list(series)
        if holdout and min(len(item) for item in series) - holdout < 2:
            raise DataError(f"--holdout {holdout} leaves fewer than 2 steps of the shortest "
                            f"series ({min(len(item) for item in series)} steps); lower it")
        self.full_series = series
        self.series = [item.head_part(len(item) - holdout) for item in series]
        self.preparation, self.name = preparation, name
        self.val_fraction, self.validation = float(val_fraction), validation
        self.batching, self.holdout = batching, int(holdout)
        if validation == "time":
            self.splits = [split_point(len(item), self.val_fraction) for item in self.series]
        else:
            count = int(round(len(self.series) * self.val_fraction))
            count = max(count, 1) if self.val_fraction > 0 and len(self.series) > 1 else 0
            self.splits = [len(item) for item in self.series[: len(self.series) - count]]
            self.splits += [0] * count
        self.train_series = [item.head_part(split) for item, split in zip(self.series, self.splits)
                             if split >= 2]
        if not self.train_series:
            raise DataError(f"--data {name!r}: the train part is too short to train on (needs a "
                            "sequence of 2 or more steps); lower --val-fraction or --holdout")
        if batching == "lanes" and (len(self.series) != 1 or self.spec.conditioned):
            raise DataError("batching='lanes' needs one series fed as it is (no lags, no "
                            "scaling, no known features); use 'windows' or 'sequences'")

    # -- what the model needs -----------------------------------------------------------------

    @property
    def spec(self) -> features.FeatureSpec:
        return self.preparation.spec

    @property
    def normalizer(self) -> Normalizer:
        return self.preparation.normalizer

    @property
    def head(self) -> str:
        return self.preparation.head

    @property
    def season(self) -> int:
        return self.preparation.season

    @property
    def frequency(self):
        return self.preparation.frequency

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
        self.preparation.check_head(head)

    @property
    def bits_per_unit(self) -> str | None:
        return None

    @property
    def val_sequences(self) -> list:
        """The validation part of every series in original units (for reports)."""
        return [self.normalizer.denormalize(item.values[split:])
                for item, split in zip(self.series, self.splits) if split < len(item)]

    @property
    def train_sequences(self) -> list:
        """The training part of every series in original units."""
        return [self.normalizer.denormalize(item.values) for item in self.train_series]

    def default_seq_len(self, horizon: int | None = None) -> int:
        """Training windows as long as a forecast reads and predicts: the context plus
        ``horizon`` (default: a season, at least 16 steps), within the longest training series
        (DeepAR's context plus prediction length)."""
        spec = self.spec
        ahead = horizon if horizon is not None else max(self.season, 16)
        longest = max(len(item) for item in self.train_series)
        return int(max(8, min(spec.context_length + ahead, longest - spec.max_lag)))

    def seen(self) -> list[dict]:
        """What training and validation saw of each series: its name, the number of steps
        and the last step's time stamp (ISO 8601, or the numeric time) when it has one."""
        result = []
        for item in self.series:
            entry = {"name": item.name, "steps": len(item)}
            if item.times is not None and len(item):
                entry["last_time"] = _time_text(item.times[-1])
            result.append(entry)
        return result

    def metadata(self) -> dict:
        return {"kind": self.kind, "name": self.name,
                "preparation": self.preparation.to_dict(), "columns": list(self.columns),
                "val_fraction": self.val_fraction, "validation": self.validation,
                "batching": self.batching, "holdout": self.holdout, "seen": self.seen()}

    # -- batches ---------------------------------------------------------------------------------

    def train_batches(self, *, batch_size: int, seq_len: int, batching: str | None = None,
                      seed: int = 0, position: dict | None = None):
        """Endless, resumable training batches by the dataset's policy (``batching`` here is
        the text streams' setting: only ``"random"`` is read, as random windows of a lane
        dataset)."""
        policy = self.batching
        if policy == "lanes":
            saved = (position or {}).get("batching")
            stream = "random" if (saved or batching) == "random" else "lanes"
            return SeriesLaneIterator(self.train_series[0].values, batch_size=batch_size,
                                 seq_len=seq_len, batching=stream, seed=seed, position=position,
                                 what=f"the train part of {self.name!r}")
        if policy == "sequences":
            return SequenceIterator(self.train_series, self.spec, batch_size=batch_size,
                                    seq_len=seq_len, seed=seed, position=position,
                                    what=f"the train part of {self.name!r}")
        return WindowIterator(self.train_series, self.spec, batch_size=batch_size,
                              seq_len=seq_len, seed=seed, position=position)

    def validation_batches(self, *, batch_size: int, seq_len: int) -> list:
        """Every validation target once. A plain single series with lanes: the validation
        stream in lanes, the carry passed along (exact NLL). Otherwise: windows of
        ``max(seq_len, context_length + 1)`` inputs, each scoring the targets after its
        ``context_length`` steps of context (from the series' own past)."""
        spec = self.spec
        if self.batching == "lanes":
            values = self.series[0].values[self.splits[0]:]
            if len(values) < 2:
                return []
            present = np.isfinite(values).all(-1, keepdims=True)
            stream = np.concatenate([np.nan_to_num(values, nan=0.0), present], axis=-1)
            return [split_presence(batch) for batch in evaluation_batches(
                stream.astype(np.float32), batch_size=batch_size, seq_len=seq_len)]
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
            batches.append(padded_batch(group, min(batch_size, len(rows)), length, spec))
        return batches

    @property
    def num_validation_targets(self) -> int:
        if self.batching == "lanes":
            return max(len(self.series[0]) - self.splits[0] - 1, 0)
        first = self.spec.max_lag
        return int(sum(len(item) - max(split, first) for item, split in
                       zip(self.series, self.splits) if split < len(item)))


def build_dataset(table: Table, *, name: str, val_fraction: float = 0.1,
                  validation: str | None = None, batching: str | None = None, holdout: int = 0,
                  preparation: Preparation | None = None, **settings) -> SeriesDataset:
    """A :class:`SeriesDataset` of ``table``: ``preparation`` (a checkpoint's) reads it as the
    model was trained; otherwise one is fitted on the training part with ``settings`` (the
    keywords of :func:`seqmodel.data.preparation.prepare`).

    ``validation`` defaults to ``"sequences"`` for a set of several sequences with neither
    time stamps nor ids, else ``"time"``; ``batching`` to ``"sequences"`` with sequence
    validation, else ``"windows"``.
    """
    _check_fraction(val_fraction)
    if validation is None:
        separate = len(table.sequences) > 1 and table.times is None and table.ids is None
        validation = "sequences" if separate else "time"
    if batching is None:
        batching = "sequences" if validation == "sequences" else "windows"
    if validation not in VALIDATIONS:
        raise DataError(f"validation={validation!r} is invalid: allowed are "
                        f"{', '.join(VALIDATIONS)}")
    if preparation is None:
        lengths = [len(sequence) - holdout for sequence in table.sequences]
        if validation == "time":
            stops = [split_point(length, val_fraction) for length in lengths]
        else:
            count = int(round(len(lengths) * val_fraction))
            count = max(count, 1) if val_fraction > 0 and len(lengths) > 1 else 0
            stops = lengths[: len(lengths) - count] + [0] * count
        preparation = prepare(table, train_stops=stops, source=f"--data {name!r}", **settings)
    series = preparation.series(table, source=f"--data {name!r}")
    return SeriesDataset(series, preparation, name=name, val_fraction=val_fraction,
                         validation=validation, batching=batching, holdout=holdout)


def plain_preparation(columns: Sequence[str], normalizer: Normalizer, *, head: str,
                      missing: str = "reject", id_column: str | None = None,
                      time_column: str | None = None) -> Preparation:
    """The preparation of a plain model: the element alone (no lags, no scaling, no known
    features), normalised by ``normalizer``."""
    spec = features.FeatureSpec(target_columns=tuple(columns), lags=(1,), scaling="none",
                                context_length=PLAIN_CONTEXT, time_column=time_column)
    return Preparation(spec, normalizer, head=head, missing=missing, id_column=id_column)


class NumericDataset(SeriesDataset):
    """The plain case built from sequences: z-scored per feature (0/1 data left as it is), the
    element alone as input (no lags, no window scaling), default head ``gaussian`` (``bernoulli``
    for 0/1 data).

    - One long series: validation is its last ``val_fraction`` of steps; batches are contiguous
      lanes with the carry passed along, or random windows (``batching="random"``).
    - A set of sequences: validation is the last ``val_fraction`` of the sequences (at least
      one); batches are whole sequences, padded and masked, bucketed by length.

    Example::

        dataset = NumericDataset(synthetic.sine(), name="sine", val_fraction=0.1)
        batch = next(dataset.train_batches(batch_size=32, seq_len=64))  # inputs (32, t, 1)
    """

    def __init__(self, sequences: Sequence[np.ndarray], *, name: str = "numeric",
                 columns: Sequence[str] | None = None, val_fraction: float = 0.1,
                 normalizer: Normalizer | None = None, normalize: bool | None = None,
                 missing: str = "reject", time_column: str | None = None,
                 id_column: str | None = None):
        _check_fraction(val_fraction)
        try:
            table = from_sequences(list(sequences), columns=columns, missing=missing,
                                   source=f"--data {name!r}")
        except ValueError as error:
            raise DataError(str(error)) from None
        single = len(table.sequences) == 1
        lengths = [len(sequence) for sequence in table.sequences]
        if single:
            stops = [split_point(lengths[0], val_fraction)]
        else:
            count = max(int(round(len(lengths) * val_fraction)), 1 if val_fraction > 0 else 0)
            stops = lengths[: len(lengths) - count] + [0] * count
        train = [sequence[:stop] for sequence, stop in zip(table.sequences, stops) if stop]
        binary = is_binary(train) if train else False
        if normalizer is None:
            if not train or max(len(s) for s in train) < 2:
                raise DataError(f"--data {name!r}: the train part is too short to train on "
                                "(needs a sequence of 2 or more steps); lower --val-fraction "
                                "or give more data")
            normalizer = (Normalizer.identity(len(table.columns))
                          if normalize is False or (normalize is None and binary)
                          else Normalizer.fit(train))
        if normalizer.num_features != len(table.columns):
            raise DataError(f"--data {name!r} has {len(table.columns)} feature(s), but the "
                            f"checkpoint's normaliser was fitted on {normalizer.num_features}")
        preparation = plain_preparation(table.columns, normalizer,
                                        head="bernoulli" if binary else "gaussian",
                                        missing=missing, id_column=id_column,
                                        time_column=time_column)
        self.binary, self.single_series = binary, single
        super().__init__(preparation.series(table, source=f"--data {name!r}"), preparation,
                         name=name, val_fraction=val_fraction,
                         validation="time" if single else "sequences",
                         batching="lanes" if single else "sequences")

    def check_head(self, head: str) -> None:
        """A Bernoulli head needs 0/1 data; a categorical head needs tokens."""
        if head == "bernoulli" and not self.binary:
            raise DataError(
                f"--head bernoulli needs binary (0/1) data, but --data {self.name!r} holds other "
                "values; use --head gaussian or --head mdn")
        if head == "categorical":
            raise DataError(f"--data {self.name!r} is real-valued: use --head gaussian, mdn or "
                            "bernoulli")

    def model_fields(self) -> dict:
        return {"input_size": self.input_size}


def series_dataset_from_metadata(table: Table, metadata: dict, *, name: str,
                                 val_fraction: float | None = None) -> SeriesDataset:
    """Rebuild the dataset a checkpoint was trained on from its metadata (``kind`` ``series``;
    ``numeric`` and ``forecast`` of earlier releases too) over a freshly read ``table``."""
    kind = metadata.get("kind")
    fraction = metadata.get("val_fraction", 0.1) if val_fraction is None else val_fraction
    saved = metadata.get("columns")
    unnamed = all(column == f"feature {i}" for i, column in enumerate(table.columns))
    if saved and unnamed and kind != "forecast" and len(table.columns) != len(saved):
        raise DataError(f"--data {name!r} has {len(table.columns)} feature(s), but the "
                        f"checkpoint's model was trained on {len(saved)}")
    if kind == "numeric":  # an earlier release's plain dataset: its normaliser, its split
        return NumericDataset(table.sequences, name=name, columns=table.columns,
                              val_fraction=fraction,
                              normalizer=Normalizer.from_dict(metadata["normalizer"]),
                              missing=metadata.get("missing", "reject"),
                              time_column=metadata.get("time_column"),
                              id_column=metadata.get("id_column"))
    if kind == "forecast":
        saved = {"features": metadata["features"], "normalizer": metadata["normalizer"],
                 "head": metadata.get("head", DEFAULT_HEAD),
                 "missing": metadata.get("missing", "reject"),
                 "id_column": metadata.get("id_column")}
        preparation = Preparation.from_dict(saved)
        preparation = dataclasses.replace(
            preparation, season=preparation.frequency.season if preparation.frequency else 1)
        return build_dataset(table, name=name, val_fraction=fraction, validation="time",
                             batching="windows", preparation=preparation)
    preparation = Preparation.from_dict(metadata["preparation"])
    return build_dataset(table, name=name, val_fraction=fraction,
                         validation=metadata.get("validation", "time"),
                         batching=metadata.get("batching", "windows"),
                         holdout=int(metadata.get("holdout", 0)), preparation=preparation)
