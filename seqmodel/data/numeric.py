"""Real-valued sequences: CSV / TSV / ``.npy`` loading, per-feature normalisation, padding with masks.

A numeric source is a list of sequences, each ``(t_i, d)`` float (rows = time steps, columns =
features): one long series is a list of one. The pieces:

- :func:`load_csv`, :func:`load_npy`, :func:`load_sequences`: files -> ``[(t_i, d), ...]``,
  with clear errors (bad cell: its line and column; a column of words that is neither the
  declared ``time_column`` nor the id column; no numeric column; too few rows). Nothing is
  dropped silently: every row and every column is data, a header, or an error.
- :class:`Normalizer`: per-feature ``(x - mean) / scale`` fitted on the training part only and
  saved with the model (``to_dict`` / ``from_dict``), so samples come back in original units. A
  constant feature gets scale 1 (never a division by zero).
- :func:`pad_sequences` / :func:`bucket_length`: a ragged set -> ``values (n, T, d)`` and
  ``mask (n, T)`` with ``T`` rounded up to a few bucket lengths, so compiled shapes stay few.
- :func:`next_step_batch`: ``(values, mask)`` -> ``(inputs, targets, target_mask)`` for the
  teacher-forced next-step loss; padded and missing targets get mask 0.
- :class:`NumericDataset` / :func:`load_numeric_dataset`: the dataset protocol of
  :mod:`seqmodel.data` (what ``--data series.csv`` resolves to): train/validation split, the
  normaliser fitted on the train part, resumable batch iterators, metadata for checkpoints.

Missing values (empty CSV cells, ``nan``, ``NA``) are rejected by default with an error naming
their line and column; ``missing="mask"`` keeps them out of the loss instead (the step whose
target has a missing feature is masked; as an input the missing feature reads the training mean).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import os
from typing import Sequence

import numpy as np

SEQUENCE_ID_COLUMN = "sequence_id"
# File suffixes read as delimited text by load_csv; with .npy, the files --data routes to the
# numeric loader (seqmodel.data.load_dataset uses this very list). Other suffixes, .txt included,
# are text corpora.
DELIMITED_SUFFIXES = (".csv", ".tsv", ".tab")
NUMERIC_SUFFIXES = DELIMITED_SUFFIXES + (".npy",)
_TAB_SUFFIXES = (".tsv", ".tab")
MISSING_POLICIES = ("reject", "mask")
_MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})

# Spread below this (relative to the feature's magnitude) counts as constant: dividing by it would
# blow rounding noise up to unit variance, or divide by zero.
_CONSTANT_RELATIVE_SPREAD = 1e-8


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NumericTable:
    """What a file held.

    - ``sequences``: list of ``(t_i, d)`` float64 arrays, NaN where a value is missing;
    - ``columns``: the ``d`` feature names;
    - ``times``: ``None``, or one ``(t_i,)`` array per sequence read from the declared time
      column: ``datetime64[us]`` for ISO 8601 dates and times (UTC when they carry an offset),
      float64 when the column holds numbers (step counts, epoch seconds);
    - ``time_column``: the name of that column, or ``None``;
    - ``lines``: one ``(t_i,)`` int array per sequence, the file line of each row (CSV only);
    - ``categories``: ``{column: [one value per sequence]}`` for the declared
      ``category_columns`` (per-sequence labels such as a store or a product group);
    - ``ids``: the id of each sequence (values of the id column), or ``None``.
    """

    sequences: list
    columns: tuple
    times: list | None = None
    time_column: str | None = None
    lines: list | None = None
    categories: dict | None = None
    ids: list | None = None

    @property
    def num_features(self) -> int:
        return len(self.columns)


def _parse_number(cell: str) -> float | None:
    """float, NaN for a missing-value marker, None when the cell is not a number."""
    text = cell.strip()
    if text.lower() in _MISSING_TOKENS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _is_word(cell: str) -> bool:
    """Neither a number nor a missing-value marker: a name, a date, a label."""
    return _parse_number(cell) is None


def _column_kind(cells: Sequence[str]) -> str:
    """``"numbers"`` when most of the non-missing cells are numbers (a stray word is then a bad
    cell, reported with its line, not a reason to drop the column); ``"missing"`` when every cell
    is missing; else ``"words"`` (dates, labels)."""
    parsed = [_parse_number(cell) for cell in cells]
    present = [value for value in parsed if value is None or not math.isnan(value)]
    if not present:
        return "missing"
    return "numbers" if 2 * sum(value is not None for value in present) > len(present) else "words"


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of every non-blank row. ``.tsv`` / ``.tab``: tab-separated;
    otherwise the delimiter (comma, semicolon or tab) is sniffed from the start of the file."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        if os.path.splitext(path)[1].lower() in _TAB_SUFFIXES:
            dialect = csv.excel_tab
        else:
            try:
                dialect = csv.Sniffer().sniff(handle.read(65536), delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            handle.seek(0)
        return [
            (line_number, row)
            for line_number, row in enumerate(csv.reader(handle, dialect), start=1)
            if row and any(cell.strip() for cell in row)
        ]


def _has_header(rows: list[tuple[int, list[str]]]) -> bool:
    """The first row is a header when a column that holds numbers in the rows below it holds a
    word in the first row. Columns of words (dates, labels) do not decide, so a header-less file
    whose first column is a date keeps its first row as data."""
    first = rows[0][1]
    below = rows[1:]
    if not below:
        return any(_is_word(cell) for cell in first)
    numeric = [i for i in range(len(first))
               if _column_kind([row[i] for _, row in below]) == "numbers"]
    if not numeric:  # nothing to decide by; only the error message (no numeric column) uses it
        return any(_is_word(cell) for cell in first)
    return any(_is_word(first[i]) for i in numeric)


def _find_column(names: Sequence[str], name: str, argument: str, path: str) -> int:
    if not isinstance(name, str) or name not in names:
        raise ValueError(
            f"{argument}={name!r} is not a column of {path!r}; its columns are "
            f"{', '.join(repr(n) for n in names)} (a file without a header names them "
            "'column 1', 'column 2', ...)"
        )
    return list(names).index(name)


def _parse_times(cells: Sequence[str], lines: Sequence[int], name: str, path: str) -> np.ndarray:
    """The time column: numbers -> float64; ISO 8601 dates / times -> ``datetime64[us]`` (an
    offset, e.g. ``+02:00`` or ``Z``, is converted to UTC)."""
    numbers = [_parse_number(cell) for cell in cells]
    if all(value is not None and not math.isnan(value) for value in numbers):
        return np.array(numbers, np.float64)
    stamps = []
    for line, cell in zip(lines, cells):
        try:
            stamp = datetime.datetime.fromisoformat(cell.strip())
        except ValueError:
            raise ValueError(
                f"{path}: line {line}, time column {name!r}: {cell!r} is not an ISO 8601 date or "
                "time (e.g. 2024-01-31 or 2024-01-31T12:30:00) nor a number; write the times in "
                "one of those forms"
            ) from None
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        stamps.append(stamp)
    return np.array(stamps, dtype="datetime64[us]")


def column_names(path: str | os.PathLike) -> list[str]:
    """The column names of a delimited file as :func:`load_csv` names them (``"column 1"``, ...
    without a header).

    Example::

        "date" in column_names("future.csv")
    """
    rows = _read_rows(os.fspath(path))
    if not rows:
        return []
    first = rows[0][1]
    if _has_header(rows):
        return [cell.strip() or f"column {i + 1}" for i, cell in enumerate(first)]
    return [f"column {i + 1}" for i in range(len(first))]


def load_csv(path: str | os.PathLike, *, missing: str = "reject", time_column: str | None = None,
             id_column: str | None = None, category_columns: Sequence[str] = (),
             numeric_columns: Sequence[str] = ()) -> NumericTable:
    """Read a delimited file (``.csv``, ``.tsv``) of time steps (rows) by features (columns).

    Nothing is dropped or invented silently:

    - The first row is a header when a column of numbers has a word in it; columns of dates or
      labels do not count, so a header-less file starting ``2024-01-01,1.5`` keeps every row.
    - Every column is a feature (numbers; a stray word in it is an error naming its line and
      column), the declared ``time_column``, or the id column (``id_column``, by default a
      column named ``sequence_id``). Any other column of words is an error that names it.
    - The id column splits the rows into sequences: all rows with the same id, in file order,
      sequences in order of first appearance.

    Args:
      path: the file. ``.tsv`` / ``.tab`` are tab-separated; otherwise the delimiter (comma,
        semicolon or tab) is detected.
      missing: ``"reject"`` (empty / ``nan`` / ``NA`` cells raise ``ValueError`` naming the line
        and column) or ``"mask"`` (kept as NaN, to be masked out of the loss).
      time_column: the name of the column that holds each row's time (ISO 8601 dates / times,
        or numbers); it is parsed into ``NumericTable.times`` and is not a feature. A file
        without a header names its columns ``"column 1"``, ``"column 2"``, ...
      id_column: the name of the column whose values say which sequence a row belongs to;
        default ``"sequence_id"`` when the header has it (any case).
      category_columns: columns of labels (words or numbers) that hold one value per
        sequence, read into ``NumericTable.categories``; not features. A label that changes
        within a sequence is an error naming its line.
      numeric_columns: columns that must be numeric features (e.g. covariates): one that is
        missing or holds words is an error naming it.

    Returns:
      a :class:`NumericTable`; each sequence is ``(t_i, d)`` float64.

    Raises:
      ValueError: one line naming the line / column at fault and what to do.

    Example::

        table = load_csv("prices.csv", time_column="date")   # date,open,close
        table.columns                                        # ('open', 'close')
        series, times = table.sequences[0], table.times[0]   # (t, 2), (t,) datetime64[us]
    """
    _check_missing(missing)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file {path!r} does not exist")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"CSV file {path!r} is empty: it needs at least two rows of numbers")
    first_line, first = rows[0]
    width = len(first)
    for line_number, row in rows:
        if len(row) != width:
            raise ValueError(
                f"{path}: line {line_number} has {len(row)} cells, but the first row (line "
                f"{first_line}) has {width}; every row needs the same number of cells"
            )

    has_header = _has_header(rows)
    names = [cell.strip() or f"column {i + 1}" for i, cell in enumerate(first)] if has_header else [
        f"column {i + 1}" for i in range(width)
    ]
    body = rows[1:] if has_header else rows
    if not body:
        raise ValueError(f"CSV file {path!r} has a header but no data rows")
    lines = [line for line, _ in body]
    cells = [[row[i] for _, row in body] for i in range(width)]  # per column

    if id_column is not None:
        id_index = _find_column(names, id_column, "id_column", path)
    else:
        id_index = next((i for i, name in enumerate(names)
                         if has_header and name.lower() == SEQUENCE_ID_COLUMN), None)
    time_index = None if time_column is None else _find_column(names, time_column, "time_column",
                                                               path)
    if time_index is not None and time_index == id_index:
        raise ValueError(f"time_column={time_column!r} is also the id column; one column cannot "
                         "be both")
    category_indices = {}
    for name in category_columns:
        index = _find_column(names, name, "category_columns", path)
        if index == time_index:
            raise ValueError(f"category column {name!r} is also the time column; one column "
                             "cannot be both")
        category_indices[name] = index
    for name in numeric_columns:
        index = _find_column(names, name, "numeric_columns", path)
        if index in (id_index, time_index) or index in category_indices.values():
            raise ValueError(f"column {name!r} is declared numeric and also as the time, id or "
                             "a category column; one column cannot be both")
        if _column_kind(cells[index]) == "words":
            line, example = next((line, cell) for line, cell in zip(lines, cells[index])
                                 if _is_word(cell))
            raise ValueError(f"{path}: column {name!r} must hold numbers, but holds words (e.g. "
                             f"{example!r} on line {line}); encode it as numbers")

    numeric, refused = [], []
    for i in range(width):
        if i in (id_index, time_index) or i in category_indices.values():
            continue
        kind = _column_kind(cells[i])
        if kind == "words":
            refused.append(i)
        elif kind == "numbers" or any(cell.strip() for cell in cells[i]) or (
                has_header and first[i].strip()):
            # A named column whose every cell is missing is a feature for the missing policy to
            # judge; one with no name and no cell (a delimiter ending every row) is no column.
            numeric.append(i)
    if not numeric:
        raise ValueError(
            f"CSV file {path!r} has no numeric columns (columns: {', '.join(names)}); each "
            "feature needs a column of numbers"
        )
    if refused:
        column = refused[0]
        line, example = next((line, cell) for line, cell in zip(lines, cells[column])
                             if _is_word(cell))
        listed = ", ".join(repr(names[i]) for i in refused)
        which = f"column {listed} holds" if len(refused) == 1 else f"columns {listed} hold"
        raise ValueError(
            f"{path}: {which} words, not numbers (e.g. {example!r} on line "
            f"{line}); declare a time column (time_column={names[column]!r}) or an id column "
            f"(id_column={names[column]!r}), or remove {'it' if len(refused) == 1 else 'them'} "
            "from the file"
        )
    parsed = {i: [_parse_number(cell) for cell in cells[i]] for i in numeric}
    for i in numeric:
        for line_number, cell, value in zip(lines, cells[i], parsed[i]):
            if value is None:
                raise ValueError(
                    f"{path}: line {line_number}, column {names[i]!r}: {cell!r} is not a number"
                )
    values = np.array([parsed[i] for i in numeric], dtype=np.float64).T  # (rows, d)
    columns = tuple(names[i] for i in numeric)
    if missing == "reject":
        _reject_missing(values, path, lines, columns)

    times = None
    if time_index is not None:
        for line_number, cell in zip(lines, cells[time_index]):
            if not cell.strip():
                raise ValueError(f"{path}: line {line_number}, time column "
                                 f"{names[time_index]!r} is empty; every row needs its time")
        times = _parse_times(cells[time_index], lines, names[time_index], path)
    line_array = np.asarray(lines, np.int64)
    ids = None
    if id_index is None:
        sequences = [values]
        times = None if times is None else [times]
        line_groups = [line_array]
        selections = [np.ones(len(lines), bool)]
    else:
        ids = [cell.strip() for cell in cells[id_index]]
        for line_number, sequence_id in zip(lines, ids):
            if not sequence_id:
                raise ValueError(f"{path}: line {line_number}, id column {names[id_index]!r} is "
                                 "empty; every row needs the id of its sequence")
        id_array = np.array(ids, dtype=object)
        ids = list(dict.fromkeys(ids))
        selections = [id_array == sequence_id for sequence_id in ids]
        sequences = [values[selection] for selection in selections]
        times = None if times is None else [times[selection] for selection in selections]
        line_groups = [line_array[selection] for selection in selections]
    categories = {}
    for name, index in category_indices.items():
        labels = np.array([cell.strip() for cell in cells[index]], dtype=object)
        per_sequence = []
        for selection, group_lines in zip(selections, line_groups):
            group = labels[selection]
            changed = np.flatnonzero(group != group[0])
            if not group[0] or len(changed):
                row = int(changed[0]) if len(changed) else 0
                raise ValueError(
                    f"{path}: line {group_lines[row]}, category column {name!r}: {group[row]!r} "
                    f"differs from {group[0]!r} on line {group_lines[0]} of the same sequence "
                    "(or is empty); a per-sequence category holds one value per sequence")
            per_sequence.append(str(group[0]))
        categories[name] = per_sequence
    _check_lengths(sequences, path)
    return NumericTable(sequences, columns, times,
                        None if time_index is None else names[time_index], line_groups,
                        categories or None, ids)


def load_npy(path: str | os.PathLike, *, missing: str = "reject") -> NumericTable:
    """Read a ``.npy`` array: ``(t,)`` (one feature), ``(t, d)`` (one series) or ``(n, t, d)``
    (``n`` sequences). In ``(n, t, d)``, trailing rows that are all NaN are padding: sequence
    ``i`` ends before them, so ragged sets can be stored as one array.

    Example::

        np.save("walks.npy", np.cumsum(rng.normal(size=(100, 50, 2)), axis=1))
        table = load_npy("walks.npy")               # 100 sequences (50, 2)
    """
    _check_missing(missing)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f".npy file {path!r} does not exist")
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ValueError(f"{path}: array dtype {array.dtype} is not numeric")
    array = array.astype(np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim == 2:
        sequences = [array]
    elif array.ndim == 3:
        sequences = []
        for row in array:
            present = ~np.all(np.isnan(row), axis=-1)
            length = int(np.nonzero(present)[0][-1]) + 1 if present.any() else 0
            sequences.append(row[:length])
    else:
        raise ValueError(
            f"{path}: array shape {array.shape} is not supported; expected (t,), (t, d) or (n, t, d)"
        )
    columns = tuple(f"feature {i}" for i in range(array.shape[-1]))
    if missing == "reject":
        for index, sequence in enumerate(sequences):
            where = np.argwhere(np.isnan(sequence))
            if where.size:
                step, feature = where[0]
                prefix = f"sequence {index}, " if array.ndim == 3 else ""
                raise ValueError(
                    f"{path}: {prefix}row {step}, column {feature} is missing (NaN); fill it, or "
                    "for training data pass missing='mask' (--missing mask) to keep it out of "
                    "the loss"
                )
    if np.isinf(array).any():
        raise ValueError(f"{path}: the array holds inf; only finite numbers (or NaN) are allowed")
    _check_lengths(sequences, path)
    return NumericTable(sequences, columns)


def load_sequences(path: str | os.PathLike, *, missing: str = "reject",
                   time_column: str | None = None, id_column: str | None = None,
                   category_columns: Sequence[str] = (),
                   numeric_columns: Sequence[str] = ()) -> NumericTable:
    """Read a numeric file by its suffix: :data:`DELIMITED_SUFFIXES` (``.csv``, ``.tsv``,
    ``.tab``) -> :func:`load_csv`, ``.npy`` -> :func:`load_npy`.

    ``time_column``, ``id_column`` and ``category_columns`` name columns of a delimited file
    (see :func:`load_csv`); ``numeric_columns`` must be features.

    Example::

        table = load_sequences("walks.npy")          # or "prices.tsv", time_column="date"
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".npy":
        for name, value in (("time_column", time_column), ("id_column", id_column),
                            ("category_columns", tuple(category_columns) or None)):
            if value is not None:
                raise ValueError(f"{name}={value!r} applies to delimited files "
                                 f"({', '.join(DELIMITED_SUFFIXES)}), not to the .npy file "
                                 f"{os.fspath(path)!r}; leave it out")
        table = load_npy(path, missing=missing)
        for name in numeric_columns:
            _find_column(table.columns, name, "numeric_columns", os.fspath(path))
        return table
    if suffix in DELIMITED_SUFFIXES:
        return load_csv(path, missing=missing, time_column=time_column, id_column=id_column,
                        category_columns=category_columns, numeric_columns=numeric_columns)
    raise ValueError(
        f"numeric file {os.fspath(path)!r}: suffix {suffix!r} is not supported; use "
        f"{', '.join(NUMERIC_SUFFIXES)}"
    )


def _check_missing(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r} is invalid; allowed: {', '.join(MISSING_POLICIES)}")


def _reject_missing(values: np.ndarray, path: str, lines: Sequence[int], columns) -> None:
    where = np.argwhere(np.isnan(values))
    if where.size:
        row, feature = where[0]
        raise ValueError(
            f"{path}: line {lines[row]}, column {columns[feature]!r} is missing (empty or NaN); "
            f"{len(where)} missing cell(s) in all. Fill them, or for "
            "training data pass missing='mask' (--missing mask) to keep them out of the loss"
        )


def _check_lengths(sequences: list, path: str) -> None:
    if not sequences or max(len(s) for s in sequences) < 2:
        raise ValueError(
            f"{path}: every sequence has fewer than 2 rows; next-step prediction needs at least "
            "2 time steps (one input, one target)"
        )


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-feature affine map ``normalize(x) = (x - mean) / scale`` and its inverse.

    Fit it on the training part only, save it with the model (``to_dict`` is JSON-ready), and
    map samples back with ``denormalize``. ``mean`` and ``scale`` are ``(d,)``.

    Example::

        normalizer = Normalizer.fit(train_sequences)     # list of (t_i, d) or an array (..., d)
        z = normalizer.normalize(x)                       # (..., d)
        x_again = normalizer.denormalize(z)
    """

    mean: tuple
    scale: tuple

    @classmethod
    def fit(cls, values, *, mask: np.ndarray | None = None) -> "Normalizer":
        """Mean and standard deviation per feature over every step, ignoring NaN (missing) and
        steps where ``mask`` is 0. ``values``: an array ``(..., d)`` or a list of ``(t_i, d)``.
        A constant feature gets scale 1, so it normalises to 0 instead of NaN."""
        if isinstance(values, (list, tuple)):
            flat = np.concatenate([np.asarray(v, np.float64).reshape(-1, np.shape(v)[-1])
                                   for v in values])
        else:
            array = np.asarray(values, np.float64)
            if mask is not None:
                array = np.where(np.asarray(mask, bool)[..., None], array, np.nan)
            flat = array.reshape(-1, array.shape[-1])
        counts = np.sum(~np.isnan(flat), axis=0)
        if np.any(counts == 0):
            empty = [int(i) for i in np.nonzero(counts == 0)[0]]
            raise ValueError(f"cannot fit a Normalizer: feature(s) {empty} have no values")
        mean = np.nanmean(flat, axis=0)
        spread = np.nanstd(flat, axis=0)
        constant = spread <= _CONSTANT_RELATIVE_SPREAD * np.maximum(1.0, np.abs(mean))
        scale = np.where(constant, 1.0, spread)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in scale))

    @classmethod
    def identity(cls, num_features: int) -> "Normalizer":
        """mean 0, scale 1: for binary data (Bernoulli head), which must stay 0/1."""
        return cls((0.0,) * num_features, (1.0,) * num_features)

    @property
    def num_features(self) -> int:
        return len(self.mean)

    def _arrays(self, like):
        # The values' own float dtype (no host copy of a device array just to read it).
        dtype = getattr(like, "dtype", np.float64)
        dtype = dtype if np.issubdtype(dtype, np.floating) else np.float32
        return np.asarray(self.mean, dtype), np.asarray(self.scale, dtype)

    def normalize(self, values):
        """``(..., d)`` original units -> normalised (NaN stays NaN)."""
        self._check(values)
        mean, scale = self._arrays(values)
        return (values - mean) / scale

    def denormalize(self, values):
        """``(..., d)`` normalised -> original units. Works on numpy and JAX arrays."""
        self._check(values)
        mean, scale = self._arrays(values)
        return values * scale + mean

    def log_scale_sum(self) -> float:
        """``sum(log scale)``: add it to a per-step NLL in normalised units to get the NLL in
        original units (the density changes by the Jacobian of the affine map)."""
        return float(np.sum(np.log(self.scale)))

    def _check(self, values) -> None:
        if np.shape(values)[-1] != self.num_features:
            raise ValueError(
                f"values have {np.shape(values)[-1]} features (shape {np.shape(values)}), but "
                f"the Normalizer was fitted on {self.num_features}"
            )

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, values: dict) -> "Normalizer":
        return cls(tuple(float(m) for m in values["mean"]), tuple(float(s) for s in values["scale"]))


# ---------------------------------------------------------------------------------------------
# Padding, masks and buckets
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The dataset (protocol of seqmodel.data.Dataset)
# ---------------------------------------------------------------------------------------------


def _is_binary(sequences: Sequence[np.ndarray]) -> bool:
    for sequence in sequences:
        present = sequence[~np.isnan(sequence)]
        if not np.all((present == 0.0) | (present == 1.0)):
            return False
    return True


class SequenceSetIterator:
    """Training batches over a set of sequences: padded, masked, bucketed by length.

    Sequences longer than ``seq_len + 1`` steps are cut into windows (:func:`windows`). Each epoch
    shuffles (seeded by ``(seed, epoch)``) batches of similar length; a batch is padded to
    ``min(bucket, seq_len)`` steps (powers of two: few compiled shapes) and to ``batch_size`` rows
    (extra rows fully masked). Every row starts from a zero carry (``reset`` all True).

    ``position`` (``{"batching", "epoch", "index"}``) resumes batch for batch.
    """

    batching = "sequences"

    def __init__(self, sequences: Sequence[np.ndarray], *, batch_size: int, seq_len: int,
                 seed: int = 0, position: dict | None = None, what: str = "the train part"):
        from seqmodel.data.batching import DataError

        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise DataError(f"{name}={value!r} is invalid: must be a positive integer")
        self._pieces = [piece for sequence in sequences for piece in windows(sequence, seq_len + 1)]
        if not self._pieces:
            raise DataError(f"{what} has no sequence with 2 or more steps to train on")
        self._lengths = [len(piece) for piece in self._pieces]
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
        return bucketed_batches(self._lengths, self.batch_size, rng=rng)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    @property
    def position(self) -> dict:
        return {"batching": self.batching, "epoch": self.epoch, "index": self.index}

    def __iter__(self):
        return self

    def __next__(self):
        from seqmodel.data.batching import Batch

        indices, bucket = self._plan[self.index]
        steps = min(bucket, self.seq_len) + 1
        values, mask = pad_sequences([self._pieces[i] for i in indices], length=steps)
        if len(indices) < self.batch_size:  # constant row count: one compiled shape per bucket
            extra = self.batch_size - len(indices)
            values = np.concatenate([values, np.zeros((extra,) + values.shape[1:], values.dtype)])
            mask = np.concatenate([mask, np.zeros((extra, steps), mask.dtype)])
        self.index += 1
        if self.index == len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = self._plan_epoch(self.epoch)
        inputs, targets, target_mask = next_step_batch(values, mask)
        return Batch(inputs, targets, target_mask, np.ones((self.batch_size,), bool))


class _MaskedStreamIterator:
    """A stream iterator (lanes / random windows) over ``values`` with a presence column, split
    back into values and a mask on the targets: missing steps (NaN) stay out of the loss."""

    def __init__(self, inner):
        self._inner = inner

    @property
    def position(self) -> dict:
        return self._inner.position

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __iter__(self):
        return self

    def __next__(self):
        return _split_presence(next(self._inner))


def _with_presence(stream: np.ndarray) -> np.ndarray:
    """``(n, d)`` with NaN -> ``(n, d + 1)``: NaN filled by 0 (the training mean after
    normalisation), last column 1 where every feature of the step is present."""
    present = ~np.isnan(stream).any(-1, keepdims=True)
    return np.concatenate([np.nan_to_num(stream, nan=0.0), present], axis=-1).astype(np.float32)


def _split_presence(batch):
    from seqmodel.data.batching import Batch

    present = batch.targets[..., -1]
    mask = present if batch.mask is None else batch.mask * present
    return Batch(batch.inputs[..., :-1], batch.targets[..., :-1], mask.astype(np.float32),
                 batch.reset)


class NumericDataset:
    """Real-valued sequences split into train and validation, normalised per feature.

    - One long series: validation is its last ``val_fraction`` of steps; batches are contiguous
      lanes with the carry passed along (``batching="lanes"``) or random windows, as for text.
    - A set of sequences: validation is the last ``val_fraction`` of the sequences (at least one);
      batches are padded and masked, bucketed by length (:class:`SequenceSetIterator`).

    The :class:`Normalizer` is fitted on the training part only (binary 0/1 data is left as it
    is, so a Bernoulli head sees 0/1) and stored in ``metadata()``. Batches hold normalised
    float32 values; ``train_sequences`` / ``val_sequences`` keep the original units.
    Implements the dataset protocol of :mod:`seqmodel.data`.

    Example::

        dataset = NumericDataset(synthetic.sine(), name="sine", val_fraction=0.1)
        batch = next(dataset.train_batches(batch_size=32, seq_len=64))  # inputs (32, t, 1)
    """

    kind = "numeric"

    def __init__(self, sequences: Sequence[np.ndarray], *, name: str = "numeric",
                 columns: Sequence[str] | None = None, val_fraction: float = 0.1,
                 normalizer: Normalizer | None = None, normalize: bool | None = None,
                 missing: str = "reject", time_column: str | None = None,
                 id_column: str | None = None):
        from seqmodel.data.batching import DataError

        if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
            raise DataError(f"val_fraction={val_fraction!r} is invalid: must be in [0, 1)")
        _check_missing(missing)
        sequences = [np.asarray(s, np.float64).reshape(len(s), -1) for s in sequences]
        if not sequences:
            raise DataError(f"--data {name!r} holds no sequences")
        features = sequences[0].shape[-1]
        if any(s.shape[-1] != features for s in sequences):
            raise DataError(f"--data {name!r}: sequences have different feature counts")
        self.name = name
        self.columns = tuple(columns) if columns else tuple(f"feature {i}" for i in range(features))
        self.val_fraction = float(val_fraction)
        self.missing = missing
        # Kept for metadata(): data read again for this model declares the same columns.
        self.time_column, self.id_column = time_column, id_column
        self.single_series = len(sequences) == 1
        if self.single_series:
            series = sequences[0]
            split = len(series) - int(round(len(series) * self.val_fraction))
            self.train_sequences = [series[:split]]
            self.val_sequences = [series[split:]] if split < len(series) else []
        else:
            count = int(round(len(sequences) * self.val_fraction))
            count = max(count, 1) if self.val_fraction > 0 else 0
            self.train_sequences = sequences[: len(sequences) - count]
            self.val_sequences = sequences[len(sequences) - count :]
        if not self.train_sequences or max(len(s) for s in self.train_sequences) < 2:
            raise DataError(
                f"--data {name!r}: the train part is too short to train on (needs a sequence "
                f"of 2 or more steps); lower --val-fraction or give more data"
            )
        self.binary = _is_binary(self.train_sequences)
        if normalizer is None:
            if normalize is False or (normalize is None and self.binary):
                normalizer = Normalizer.identity(features)
            else:
                normalizer = Normalizer.fit(self.train_sequences)
        if normalizer.num_features != features:
            raise DataError(
                f"--data {name!r} has {features} feature(s), but the checkpoint's normaliser "
                f"was fitted on {normalizer.num_features}"
            )
        self.normalizer = normalizer
        self._train = [normalizer.normalize(s).astype(np.float32) for s in self.train_sequences]
        self._val = [normalizer.normalize(s).astype(np.float32) for s in self.val_sequences]

    # -- what the model needs -----------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return len(self.columns)

    def model_fields(self) -> dict:
        """The :class:`seqmodel.ModelConfig` fields this data fixes."""
        return {"input_size": self.input_size}

    @property
    def default_head(self) -> str:
        """``"bernoulli"`` for 0/1 data, else ``"gaussian"``."""
        return "bernoulli" if self.binary else "gaussian"

    def check_head(self, head: str) -> None:
        """A Bernoulli head needs 0/1 data; raise a clear error otherwise."""
        from seqmodel.data.batching import DataError

        if head == "bernoulli" and not self.binary:
            raise DataError(
                f"--head bernoulli needs binary (0/1) data, but --data {self.name!r} holds other "
                "values; use --head gaussian or --head mdn"
            )
        if head == "categorical":
            raise DataError(f"--data {self.name!r} is real-valued: use --head gaussian, mdn or "
                            "bernoulli")

    @property
    def bits_per_unit(self) -> str | None:
        return None

    def metadata(self) -> dict:
        """What a checkpoint keeps to rebuild the data side (JSON-compatible)."""
        return {"kind": self.kind, "name": self.name, "normalizer": self.normalizer.to_dict(),
                "columns": list(self.columns), "val_fraction": self.val_fraction,
                "missing": self.missing, "binary": self.binary,
                "time_column": self.time_column, "id_column": self.id_column}

    # -- batches ---------------------------------------------------------------------------------

    def train_batches(self, *, batch_size: int, seq_len: int, batching: str = "lanes",
                      seed: int = 0, position: dict | None = None):
        """Endless, resumable iterator of training :class:`~seqmodel.data.Batch` es: a stream
        iterator for one long series, a :class:`SequenceSetIterator` for a set."""
        from seqmodel.data.batching import make_batch_iterator

        what = f"the train part of {self.name!r}"
        if not self.single_series:
            return SequenceSetIterator(self._train, batch_size=batch_size, seq_len=seq_len,
                                       seed=seed, position=position, what=what)
        return _MaskedStreamIterator(make_batch_iterator(
            _with_presence(self._train[0]), batch_size=batch_size, seq_len=seq_len,
            batching=batching, seed=seed, position=position, what=what,
        ))

    def validation_batches(self, *, batch_size: int, seq_len: int) -> list:
        """Every validation target once, masked; the carry is passed along each sequence (each
        sequence is a lane cut into windows of ``seq_len``; ``reset`` on its first window)."""
        from seqmodel.data.batching import Batch, evaluation_batches

        if not self._val:
            return []
        if self.single_series:
            return [_split_presence(batch) for batch in evaluation_batches(
                _with_presence(self._val[0]), batch_size=batch_size, seq_len=seq_len)]
        order = sorted(range(len(self._val)), key=lambda i: len(self._val[i]))
        rows = min(batch_size, len(order))
        batches = []
        for first in range(0, len(order), rows):
            group = [self._val[i] for i in order[first : first + rows]]
            pairs = max(len(s) for s in group) - 1
            if pairs < 1:
                continue
            steps = -(-pairs // seq_len) * seq_len + 1
            values, mask = pad_sequences(group + [group[0][:0]] * (rows - len(group)), length=steps)
            inputs, targets, target_mask = next_step_batch(values, mask)
            for start in range(0, steps - 1, seq_len):
                part = slice(start, start + seq_len)
                batches.append(Batch(inputs[:, part], targets[:, part], target_mask[:, part],
                                     np.full((rows,), start == 0)))
        return batches

    @property
    def num_validation_targets(self) -> int:
        return int(sum(max(len(s) - 1, 0) for s in self.val_sequences))


def load_numeric_dataset(source: str | None, *, val_fraction: float = 0.1,
                         metadata: dict | None = None, missing: str | None = None,
                         normalize: bool | None = None, time_column: str | None = None,
                         id_column: str | None = None) -> NumericDataset:
    """Resolve a numeric ``--data SOURCE``: a built-in name (``sine``, ``bimodal``,
    ``binary-patterns``), a delimited file (``.csv``, ``.tsv``, ``.tab``) or a ``.npy`` file.

    Args:
      metadata: a checkpoint's ``dataset.metadata()``: reuse its normaliser (and ``missing``
        policy, declared columns, and ``source`` when ``None``) instead of fitting a new one.
      missing: ``"reject"`` (default) or ``"mask"``, see the module docstring.
      normalize: ``None`` fits a normaliser unless the data is binary; ``False`` never does.
      time_column, id_column: columns of a delimited file that are not features (see
        :func:`load_csv`).

    Example::

        dataset = load_numeric_dataset("sine", val_fraction=0.1)
        dataset = load_numeric_dataset("prices.csv", time_column="date")
    """
    from seqmodel.data import synthetic
    from seqmodel.data.batching import DataError

    normalizer = None
    if metadata is not None:
        source = source or metadata.get("name")
        normalizer = Normalizer.from_dict(metadata["normalizer"])
        missing = missing or metadata.get("missing", "reject")
        time_column = time_column if time_column is not None else metadata.get("time_column")
        id_column = id_column if id_column is not None else metadata.get("id_column")
    missing = missing or "reject"
    if not source:
        raise DataError("no numeric --data source given")
    try:
        if source in synthetic.SOURCES:
            for name, value in (("time_column", time_column), ("id_column", id_column)):
                if value is not None:
                    raise DataError(f"{name}={value!r} applies to delimited files, not to the "
                                    f"built-in source {source!r}; leave it out")
            sequences = synthetic.load_synthetic(source, seed=0)
            columns = None
        else:
            table = load_sequences(source, missing=missing, time_column=time_column,
                                   id_column=id_column)
            sequences, columns = table.sequences, table.columns
    except FileNotFoundError as error:
        raise DataError(str(error)) from None
    except DataError:
        raise
    except ValueError as error:
        raise DataError(str(error)) from None
    return NumericDataset(sequences, name=source, columns=columns, val_fraction=val_fraction,
                          normalizer=normalizer, normalize=normalize, missing=missing,
                          time_column=time_column, id_column=id_column)
