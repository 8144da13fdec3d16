"""Readers of real-valued files: CSV / TSV (delimiter and header detected) and ``.npy``.

- :func:`load_csv`, :func:`load_npy`, :func:`read_table`: a file -> a :class:`~seqmodel.data.
  tables.Table`, with clear errors (bad cell: its line and column; a column of words that is
  neither the declared ``time_column`` nor the id column; no numeric column; too few rows).
  Nothing is dropped silently: every row and every column is data, a header, or an error.

Missing values (empty CSV cells, ``nan``, ``NA``) are rejected by default with an error naming
their line and column; ``missing="mask"`` keeps them as NaN, to be masked out of the loss.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
from typing import Sequence

import numpy as np

from seqmodel.data.tables import MISSING_POLICIES, Table, check_lengths, check_missing_policy  # noqa: F401

SEQUENCE_ID_COLUMN = "sequence_id"
# File suffixes read as delimited text by load_csv; with .npy, the files --data routes to the
# numeric loader (seqmodel.data.load_dataset uses this very list). Other suffixes, .txt included,
# are text corpora.
DELIMITED_SUFFIXES = (".csv", ".tsv", ".tab")
NUMERIC_SUFFIXES = DELIMITED_SUFFIXES + (".npy",)
_TAB_SUFFIXES = (".tsv", ".tab")
_MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


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
             numeric_columns: Sequence[str] = ()) -> Table:
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
        or numbers); it is parsed into ``Table.times`` and is not a feature. A file
        without a header names its columns ``"column 1"``, ``"column 2"``, ...
      id_column: the name of the column whose values say which sequence a row belongs to;
        default ``"sequence_id"`` when the header has it (any case).
      category_columns: columns of labels (words or numbers) that hold one value per
        sequence, read into ``Table.categories``; not features. A label that changes
        within a sequence is an error naming its line.
      numeric_columns: columns that must be numeric features (e.g. covariates): one that is
        missing or holds words is an error naming it.

    Returns:
      a :class:`Table`; each sequence is ``(t_i, d)`` float64.

    Raises:
      ValueError: one line naming the line / column at fault and what to do.

    Example::

        table = load_csv("prices.csv", time_column="date")   # date,open,close
        table.columns                                        # ('open', 'close')
        series, times = table.sequences[0], table.times[0]   # (t, 2), (t,) datetime64[us]
    """
    check_missing_policy(missing)
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
    check_lengths(sequences, path)
    return Table(sequences, columns, times,
                 None if time_index is None else names[time_index], line_groups,
                 categories or None, ids, None if id_index is None else names[id_index])


def load_npy(path: str | os.PathLike, *, missing: str = "reject") -> Table:
    """Read a ``.npy`` array: ``(t,)`` (one feature), ``(t, d)`` (one series) or ``(n, t, d)``
    (``n`` sequences). In ``(n, t, d)``, trailing rows that are all NaN are padding: sequence
    ``i`` ends before them, so ragged sets can be stored as one array.

    Example::

        np.save("walks.npy", np.cumsum(rng.normal(size=(100, 50, 2)), axis=1))
        table = load_npy("walks.npy")               # 100 sequences (50, 2)
    """
    check_missing_policy(missing)
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
    check_lengths(sequences, path)
    return Table(sequences, columns)


def read_table(path: str | os.PathLike, *, missing: str = "reject",
                   time_column: str | None = None, id_column: str | None = None,
                   category_columns: Sequence[str] = (),
                   numeric_columns: Sequence[str] = ()) -> Table:
    """Read a numeric file by its suffix: :data:`DELIMITED_SUFFIXES` (``.csv``, ``.tsv``,
    ``.tab``) -> :func:`load_csv`, ``.npy`` -> :func:`load_npy`.

    ``time_column``, ``id_column`` and ``category_columns`` name columns of a delimited file
    (see :func:`load_csv`); ``numeric_columns`` must be features.

    Example::

        table = read_table("walks.npy")          # or "prices.tsv", time_column="date"
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


def _reject_missing(values: np.ndarray, path: str, lines: Sequence[int], columns) -> None:
    where = np.argwhere(np.isnan(values))
    if where.size:
        row, feature = where[0]
        raise ValueError(
            f"{path}: line {lines[row]}, column {columns[feature]!r} is missing (empty or NaN); "
            f"{len(where)} missing cell(s) in all. Fill them, or for "
            "training data pass missing='mask' (--missing mask) to keep them out of the loss"
        )


