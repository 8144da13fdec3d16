"""A :class:`Table`: real-valued data read once, from a file or from memory.

Every real-valued source ends up here before anything is fitted: files through
:mod:`seqmodel.data.readers`, in-memory data through :func:`from_arrays`, :func:`from_sequences`
and :func:`from_frame` (a long pandas DataFrame). The checks and their error messages are the same
for every source: each sequence has at least 2 steps, values are finite numbers (or NaN when
``missing="mask"``), columns are named.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

MISSING_POLICIES = ("reject", "mask")
# The long DataFrame format of statsforecast / neuralforecast: series id, time stamp, target.
FRAME_ID, FRAME_TIME, FRAME_TARGET = "unique_id", "ds", "y"


@dataclasses.dataclass(frozen=True)
class Table:
    """Real-valued data read once: the sequences and what the source said about them.

    - ``sequences``: list of ``(t_i, d)`` float64 arrays, NaN where a value is missing;
    - ``columns``: the ``d`` feature names;
    - ``times``: ``None``, or one ``(t_i,)`` array per sequence read from the declared time
      column: ``datetime64[us]`` for ISO 8601 dates and times (UTC when they carry an offset),
      float64 when the column holds numbers (step counts, epoch seconds);
    - ``time_column``: the name of that column, or ``None``;
    - ``lines``: one ``(t_i,)`` int array per sequence, the file line of each row (CSV only);
    - ``categories``: ``{column: [one value per sequence]}`` for the declared
      ``category_columns`` (per-sequence labels such as a store or a product group);
    - ``ids``: the id of each sequence (values of the id column), or ``None``;
    - ``id_column``: the name of that column, or ``None``.
    """

    sequences: list
    columns: tuple
    times: list | None = None
    time_column: str | None = None
    lines: list | None = None
    categories: dict | None = None
    ids: list | None = None
    id_column: str | None = None

    @property
    def num_features(self) -> int:
        return len(self.columns)

    def select(self, names: Sequence[str], *, what: str) -> list[np.ndarray]:
        """The columns ``names`` of every sequence: ``[(t_i, len(names)), ...]``; a name the
        table lacks is a ValueError naming ``what`` (a flag or argument) and the columns it has."""
        index = []
        for name in names:
            if name not in self.columns:
                raise ValueError(f"{what}: no column {name!r}; the data has "
                                 f"{', '.join(map(repr, self.columns))}")
            index.append(self.columns.index(name))
        return [sequence[:, index] for sequence in self.sequences]

    def names(self) -> list[str]:
        """One name per sequence: its id, else ``"series i"``."""
        return [str(name) for name in self.ids] if self.ids else [
            f"series {index}" for index in range(len(self.sequences))]


def check_missing_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r} is invalid; allowed: {', '.join(MISSING_POLICIES)}")


def check_lengths(sequences: list, source: str) -> None:
    """At least one sequence of 2 or more steps (one input, one target)."""
    if not sequences or max(len(s) for s in sequences) < 2:
        raise ValueError(
            f"{source}: every sequence has fewer than 2 rows; next-step prediction needs at least "
            "2 time steps (one input, one target)"
        )


def check_values(sequences: list, source: str, *, missing: str, where=None) -> None:
    """Finite numbers, or NaN where ``missing="mask"``: a ValueError naming the first bad cell
    (``where(sequence, row, column)`` words it; default: sequence, row and column indices)."""
    check_missing_policy(missing)
    for index, sequence in enumerate(sequences):
        bad = np.argwhere(np.isinf(sequence) | (np.isnan(sequence) & (missing == "reject")))
        if bad.size:
            row, column = (int(v) for v in bad[0])
            place = (where(index, row, column) if where else
                     f"sequence {index}, row {row}, column {column}")
            kind = "infinite" if np.isinf(sequence[row, column]) else "missing (NaN)"
            advice = ("only finite numbers (or NaN) are allowed" if kind == "infinite" else
                      "fill it, or for training data pass missing='mask' (--missing mask) to "
                      "keep it out of the loss")
            raise ValueError(f"{source}: {place} is {kind}; {advice}")


def _as_float_sequence(array: Any, source: str, index: int | None) -> np.ndarray:
    name = source if index is None else f"{source}[{index}]"
    values = np.asarray(array)
    if values.dtype == object or not (np.issubdtype(values.dtype, np.number)
                                      or values.dtype == np.bool_):
        raise ValueError(f"{name}: dtype {values.dtype} is not numeric; give numbers "
                         "(float or int arrays)")
    values = values.astype(np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"{name}: shape {values.shape} is not supported; a sequence is (t,) or "
                         "(t, d)")
    return values


def _columns(columns: Sequence[str] | None, features: int, source: str) -> tuple:
    if columns is None:
        return tuple(f"feature {i}" for i in range(features))
    columns = tuple(str(name) for name in columns)
    if len(columns) != features:
        raise ValueError(f"{source}: columns={list(columns)} names {len(columns)} column(s), "
                         f"but the data has {features} feature(s)")
    return columns


def from_sequences(sequences: Sequence[Any], *, columns: Sequence[str] | None = None,
                   ids: Sequence[str] | None = None, missing: str = "reject",
                   source: str = "sequences") -> Table:
    """A list of variable-length sequences, each ``(t_i,)`` or ``(t_i, d)``, as a :class:`Table`.

    Example::

        table = from_sequences([np.random.randn(50, 2), np.random.randn(80, 2)])
    """
    if isinstance(sequences, np.ndarray) or not isinstance(sequences, (list, tuple)):
        raise ValueError(f"{source}: give a list of arrays, got {type(sequences).__name__}")
    if not sequences:
        raise ValueError(f"{source} holds no sequences")
    arrays = [_as_float_sequence(s, source, i) for i, s in enumerate(sequences)]
    features = arrays[0].shape[-1]
    for index, array in enumerate(arrays):
        if array.shape[-1] != features:
            raise ValueError(f"{source}[{index}] has {array.shape[-1]} feature(s), "
                             f"{source}[0] {features}: every sequence needs the same features")
    check_values(arrays, source, missing=missing)
    check_lengths(arrays, source)
    if ids is not None and len(ids) != len(arrays):
        raise ValueError(f"{source}: ids names {len(ids)} series, but there are {len(arrays)}")
    return Table(arrays, _columns(columns, features, source),
                 ids=None if ids is None else [str(name) for name in ids])


def from_arrays(array: Any, *, columns: Sequence[str] | None = None, missing: str = "reject",
                source: str = "array") -> Table:
    """A NumPy array as a :class:`Table`: ``(t,)`` (one feature), ``(t, d)`` (one series) or
    ``(n, t, d)`` (``n`` sequences; trailing all-NaN rows are padding, so a ragged set can be
    one array).

    Example::

        table = from_arrays(np.cumsum(rng.normal(size=(100, 50, 2)), axis=1))   # 100 series
    """
    values = np.asarray(array)
    if values.ndim == 3:
        sequences = []
        for row in _as_float_sequence(values.reshape(-1, values.shape[-1]), source, None).reshape(
                values.shape):
            present = ~np.all(np.isnan(row), axis=-1)
            length = int(np.nonzero(present)[0][-1]) + 1 if present.any() else 0
            sequences.append(row[:length])
    elif values.ndim in (1, 2):
        sequences = [_as_float_sequence(values, source, None)]
    else:
        raise ValueError(f"{source}: array shape {values.shape} is not supported; expected (t,), "
                         "(t, d) or (n, t, d)")
    features = sequences[0].shape[-1]
    check_values(sequences, source, missing=missing)
    check_lengths(sequences, source)
    return Table(sequences, _columns(columns, features, source))


def from_frame(frame: Any, *, id_column: str | None = None, time_column: str | None = None,
               target_columns: Sequence[str] | None = None, static_columns: Sequence[str] = (),
               missing: str = "reject", source: str = "DataFrame") -> Table:
    """A long pandas DataFrame (one row per series and time step) as a :class:`Table`.

    The columns default to the statsforecast / neuralforecast names: ``unique_id`` (the
    series), ``ds`` (the time stamp) and every other numeric column a feature (``y`` first).
    Rows are sorted by time within each series; series keep the order of first appearance.
    ``static_columns`` hold one label per series (a label that changes within a series is an
    error naming it).

    Example::

        table = from_frame(df)        # df: unique_id, ds, y, price
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is part of the forecast extra
        raise ImportError("DataFrames need pandas: pip install 'seqmodel[forecast]'") from None
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    names = [str(name) for name in frame.columns]
    if id_column is None and FRAME_ID in names:
        id_column = FRAME_ID
    if time_column is None and FRAME_TIME in names:
        time_column = FRAME_TIME
    for argument, name in (("id_column", id_column), ("time_column", time_column),
                           *(("static_columns", n) for n in static_columns)):
        if name is not None and name not in names:
            raise ValueError(f"{source}: {argument}={name!r} is not a column; the columns are "
                             f"{', '.join(map(repr, names))}")
    reserved = {id_column, time_column, *static_columns}
    if target_columns is None:
        candidates = [n for n in names if n not in reserved]
        words = [n for n in candidates if not pd.api.types.is_numeric_dtype(frame[n])]
        if words:
            raise ValueError(f"{source}: column {words[0]!r} is not numeric; name it as "
                             "id_column, time_column or in static_columns, or drop it")
        value_columns = sorted(candidates, key=lambda n: n != FRAME_TARGET)
    else:
        value_columns = list(target_columns)
        for name in value_columns:
            if name not in names:
                raise ValueError(f"{source}: no column {name!r}; the columns are "
                                 f"{', '.join(map(repr, names))}")
    if not value_columns:
        raise ValueError(f"{source}: no numeric column to model besides "
                         f"{', '.join(sorted(n for n in reserved if n))}")
    data = frame.reset_index(drop=True)
    if id_column is None:
        groups = [(None, data)]
    else:
        groups = list(data.groupby(id_column, sort=False))
    sequences, times, ids, categories = [], [] if time_column else None, [], {
        name: [] for name in static_columns}
    for name, group in groups:
        if time_column is not None:
            stamps = group[time_column]
            if pd.api.types.is_datetime64_any_dtype(stamps):
                if getattr(stamps.dt, "tz", None) is not None:
                    stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
                stamps = stamps.to_numpy().astype("datetime64[us]")
            elif pd.api.types.is_numeric_dtype(stamps):
                stamps = stamps.to_numpy(np.float64)
            else:
                raise ValueError(f"{source}: time_column {time_column!r} holds "
                                 f"{stamps.dtype} values; give datetimes or numbers "
                                 "(pandas.to_datetime converts strings)")
            order = np.argsort(stamps, kind="stable")
            group = group.iloc[order]
            times.append(stamps[order])
        for static in static_columns:
            labels = group[static].astype(str).unique()
            if len(labels) > 1:
                raise ValueError(f"{source}: static column {static!r} changes within series "
                                 f"{name!r} ({labels[0]!r}, {labels[1]!r}); a static column "
                                 "holds one label per series")
            categories[static].append(str(labels[0]))
        try:
            values = group[value_columns].to_numpy(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: the columns {value_columns} must hold numbers") from None
        sequences.append(values)
        ids.append(str(name))
    check_values(sequences, source, missing=missing,
                 where=lambda s, r, c: f"series {ids[s]!r}, row {r}, column {value_columns[c]!r}")
    check_lengths(sequences, source)
    return Table(sequences, tuple(value_columns), times, time_column,
                 categories=categories or None, ids=ids if id_column is not None else None,
                 id_column=id_column)
