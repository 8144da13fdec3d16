"""Forecasting inputs: the features a model reads after each element, built the same way for
teacher-forced training windows and for free-running forecasts.

A model with conditioning features (``ModelConfig.target_size < input_size``) reads at step ``t``
the input row (DeepAR's layout, Salinas et al. 2020)::

    [ y_t / s | log s | y_(t+1-k) / s for each lag k >= 2 | known features of step t + 1 ]
      element   (input_scaling only)   lagged targets          time features, covariates, static

and predicts ``y_(t+1)``. ``y`` is the target (``d`` features, after the global normalisation);
``s`` (``(d,)``) is the window's **mean scale**: the mean of ``|y|`` over its first
``context_length`` elements (GluonTS's ``MeanScaler``), so a trending series looks the same to
the network at every level; the model multiplies its distribution back by ``s``
(``ModelConfig.input_scaling``). Lag 1 is the element itself. Known features belong to the step
being predicted: its time features (smooth sin/cos encodings of the time of day, day of week,
day of year, month, from the time column's inferred :class:`Frequency`), its known-future
covariates (z-scored), and the series' static categories (one-hot).

One function, :func:`assemble`, lays a row out, for NumPy arrays (training windows,
:func:`window_inputs`) and for traced JAX arrays (one step of a forecast,
:mod:`seqmodel.forecasting.forecaster`), so the two paths cannot drift apart.

Example::

    frequency = infer_frequency([times])                     # e.g. Frequency("month")
    spec = FeatureSpec(target_columns=("sales",), lags=(1, 12), scaling="mean",
                       context_length=24, time_features=frequency_cycles(frequency),
                       frequency=frequency.name)
    known = known_features(spec, times, covariates=None, static=None)   # (T, K)
    scale = mean_scale(values[start : start + 24], spec)                # (d,)
    inputs = window_inputs(spec, values, known, start=start, length=36, scale=scale)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

SCALINGS = ("mean", "none")

# A window whose context holds no non-zero value gets the scale of the training data instead
# (in globally normalised units about 1); a scale never falls below this.
MINIMUM_SCALE = 1e-10


# ---------------------------------------------------------------------------------------------
# Frequency
# ---------------------------------------------------------------------------------------------

_FIXED_UNITS = {  # unit -> length in seconds
    "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400,
}
_CALENDAR_UNITS = {"month": 1, "quarter": 3, "year": 12}  # unit -> months
UNITS = tuple(_FIXED_UNITS) + tuple(_CALENDAR_UNITS) + ("step",)


@dataclasses.dataclass(frozen=True)
class Frequency:
    """How far apart consecutive rows are: ``multiple`` ``unit`` s (``"step"``: a numeric
    time column, no calendar).

    Example::

        Frequency("minute", 30).season        # 48 steps a day
        Frequency.parse("30 minute")          # the same, from Frequency.name
    """

    unit: str
    multiple: int = 1

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"Frequency.unit={self.unit!r} is invalid: allowed are "
                             f"{', '.join(UNITS)}")
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"Frequency.multiple={self.multiple!r} is invalid: allowed is a "
                             "positive integer")

    @property
    def name(self) -> str:
        """``"month"``, ``"30 minute"``: what :meth:`parse` reads back."""
        return self.unit if self.multiple == 1 else f"{self.multiple} {self.unit}"

    @classmethod
    def parse(cls, name: str) -> "Frequency":
        parts = str(name).split()
        if len(parts) == 1:
            return cls(parts[0])
        return cls(parts[1], int(parts[0]))

    @property
    def seconds(self) -> int | None:
        """Length of a step in seconds (None for calendar units and numeric steps)."""
        unit = _FIXED_UNITS.get(self.unit)
        return None if unit is None else unit * self.multiple

    @property
    def season(self) -> int:
        """The seasonal period in steps that forecasters use by default: a day of sub-daily
        data, a week of daily data, a year of weekly, monthly and quarterly data, else 1
        (the convention of statsforecast / GluonTS)."""
        if self.seconds is not None and self.seconds < 86400:
            steps, rest = divmod(86400, self.seconds)
            return steps if rest == 0 else 1
        if self.unit == "day" and self.multiple == 1:
            return 7
        if self.unit == "week" and self.multiple == 1:
            return 52
        if self.unit in ("month", "quarter"):
            months = _CALENDAR_UNITS[self.unit] * self.multiple
            return 12 // months if 12 % months == 0 and months < 12 else 1
        return 1

    def default_lags(self) -> tuple[int, ...]:
        """Lags fed by default (lag 1 is the element): the last few steps, one season back and,
        for sub-daily data, one week back (GluonTS's ``get_lags_for_frequency``, shortened)."""
        lags = {1, 2, 3}
        season = self.season
        if season > 1:
            lags.add(season)
        if self.seconds is not None and self.seconds < 86400 and season > 1:
            lags.add(7 * season)
        if self.unit == "day" and self.multiple == 1:
            lags.add(14)
        return tuple(sorted(lags))


def _describe_gap(gap) -> str:
    """``2 days``, ``30 minutes``."""
    if not isinstance(gap, np.timedelta64):
        return repr(gap)
    frequency = _fixed_frequency(gap)
    return f"{frequency.multiple} {frequency.unit}{'s' if frequency.multiple != 1 else ''}"


def _describe_time(stamp) -> str:
    """A date alone at midnight, else the time to the second."""
    if not isinstance(stamp, np.datetime64):
        return repr(stamp)
    day = stamp.astype("datetime64[D]")
    return str(day) if stamp == day else str(stamp.astype("datetime64[s]"))


def _fixed_frequency(step: np.timedelta64) -> Frequency:
    seconds = int(step / np.timedelta64(1, "s"))
    for unit in ("week", "day", "hour", "minute", "second"):
        size = _FIXED_UNITS[unit]
        if seconds % size == 0 and (unit != "week" or seconds == size):
            return Frequency(unit, seconds // size)
    return Frequency("second", max(seconds, 1))


def _calendar_frequency(times: np.ndarray) -> Frequency | None:
    """Monthly, quarterly or yearly rows (stamped on the same day of the month, or each on its
    month's last day), else None."""
    months = times.astype("datetime64[M]")
    steps = np.diff(months.astype(np.int64))
    if len(steps) == 0 or steps[0] < 1 or np.any(steps != steps[0]):
        return None
    day = times.astype("datetime64[D]")
    offset = day - months.astype("datetime64[D]")
    month_end = (day + np.timedelta64(1, "D")).astype("datetime64[M]") != months
    same_day = np.all(offset == offset[0]) and np.all(times - day == (times - day)[0])
    if not (same_day or np.all(month_end)):
        return None
    count = int(steps[0])
    if count % 12 == 0:
        return Frequency("year", count // 12)
    if count % 3 == 0:
        return Frequency("quarter", count // 3)
    return Frequency("month", count)


def _first_irregular_row(times: np.ndarray) -> int:
    """Index of the first row whose gap to the row before differs from the first gap."""
    gaps = np.diff(times)
    bad = np.flatnonzero(gaps != gaps[0])
    return int(bad[0]) + 1 if len(bad) else 1


def infer_frequency(times: Sequence[np.ndarray], *, lines: Sequence[np.ndarray] | None = None,
                    column: str = "time") -> Frequency | None:
    """The one step between consecutive rows, shared by every sequence.

    Args:
      times: one array ``(t_i,)`` per sequence: ``datetime64`` (calendar steps: fixed lengths
        of seconds to weeks, or months / quarters / years) or float (a numeric time column:
        ``Frequency("step")``, no calendar).
      lines: the file line of each row (for the error message), same shapes.
      column: the column's name (for the error message).

    Returns:
      the :class:`Frequency`, or None when no sequence has two rows.

    Raises:
      ValueError: one line naming the row (file line) where the rows stop advancing by one
        fixed step, or go backwards.

    Example::

        infer_frequency([np.array(["2024-01-31", "2024-02-29"], "datetime64[us]")])  # month
    """
    found = None
    for index, stamps in enumerate(times):
        stamps = np.asarray(stamps)
        if len(stamps) < 2:
            continue
        rows_lines = None if lines is None else lines[index]

        def where(row: int, sequence: int = index, rows_lines=rows_lines) -> str:
            if rows_lines is not None:
                return f"line {rows_lines[row]}"
            return f"sequence {sequence}, row {row}"

        gaps = np.diff(stamps)
        backwards = np.flatnonzero(gaps <= gaps.dtype.type(0))
        if len(backwards):
            row = int(backwards[0]) + 1
            raise ValueError(
                f"time column {column!r}, {where(row)}: {_describe_time(stamps[row])} does not "
                f"come after {_describe_time(stamps[row - 1])}; sort the rows by time (one row "
                "per time step)")
        if np.issubdtype(stamps.dtype, np.datetime64):
            stamps = stamps.astype("datetime64[us]")
            if np.all(gaps == gaps[0]):
                frequency = _fixed_frequency(gaps[0])
                if frequency.unit == "day" and frequency.multiple in (28, 29, 30, 31):
                    frequency = _calendar_frequency(stamps) or frequency
            else:
                frequency = _calendar_frequency(stamps)
                if frequency is None:
                    row = _first_irregular_row(stamps)
                    raise ValueError(
                        f"time column {column!r}, {where(row)}: "
                        f"{_describe_time(stamps[row - 1])} -> {_describe_time(stamps[row])} is "
                        f"a step of {_describe_gap(gaps[row - 1])}, but the "
                        f"first step is {_describe_gap(gaps[0])}; the rows must advance by one "
                        "fixed step (fill missing rows with empty cells and --missing mask)")
        else:
            if not np.allclose(gaps, gaps[0], rtol=1e-9, atol=0.0):
                row = _first_irregular_row(stamps)
                raise ValueError(
                    f"time column {column!r}, {where(row)}: {stamps[row - 1]!r} -> "
                    f"{stamps[row]!r} is a step of {gaps[row - 1]!r}, but the first step is "
                    f"{gaps[0]!r}; the rows must advance by one fixed step")
            frequency = Frequency("step")
        if found is not None and frequency != found:
            raise ValueError(
                f"time column {column!r}: sequence {index} advances by {frequency.name}, the "
                f"sequences before it by {found.name}; every sequence needs the same step")
        found = frequency
    return found


def advance(last, frequency: Frequency, steps: int) -> np.ndarray:
    """The ``steps`` times after ``last`` (a ``datetime64`` or a number): ``(steps,)``.

    Example::

        advance(np.datetime64("2024-01-31"), Frequency("month"), 2)   # Feb 29, Mar 31
    """
    count = np.arange(1, steps + 1)
    if frequency.unit == "step" or not isinstance(last, np.datetime64):
        raise ValueError("future times of a numeric time column are not defined; give them "
                         "in the future file's time column")
    last = np.datetime64(last, "us")
    if frequency.seconds is not None:
        return last + count * np.timedelta64(frequency.seconds, "s")
    months = _CALENDAR_UNITS[frequency.unit] * frequency.multiple
    month = last.astype("datetime64[M]")
    day = last.astype("datetime64[D]")
    within = last - day
    targets = month + count * months
    at_end = (day + np.timedelta64(1, "D")).astype("datetime64[M]") != month
    if at_end:
        result = (targets + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
    else:
        offset = day - month.astype("datetime64[D]")
        result = targets.astype("datetime64[D]") + offset
    return result.astype("datetime64[us]") + within


# ---------------------------------------------------------------------------------------------
# Time features
# ---------------------------------------------------------------------------------------------

CYCLES = ("time_of_day", "day_of_week", "day_of_year", "month_of_year")


def frequency_cycles(frequency: Frequency | None) -> tuple[str, ...]:
    """The calendar cycles longer than one step of ``frequency``, each encoded as a sin/cos pair
    (GluonTS's ``time_features_from_frequency_str``, as smooth encodings)."""
    if frequency is None or frequency.unit == "step":
        return ()
    seconds = frequency.seconds
    if seconds is not None:
        cycles = []
        if seconds < 86400:
            cycles.append("time_of_day")
        if seconds < 7 * 86400:
            cycles.append("day_of_week")
        cycles.append("day_of_year")
        return tuple(cycles)
    if frequency.unit in ("month", "quarter"):
        return ("month_of_year",)
    return ()


def _cycle_position(name: str, times: np.ndarray) -> np.ndarray:
    """Where in its cycle each time falls, in ``[0, 1)``."""
    stamps = times.astype("datetime64[us]")
    day = stamps.astype("datetime64[D]")
    time_of_day = (stamps - day) / np.timedelta64(1, "D")
    if name == "time_of_day":
        return time_of_day
    if name == "day_of_week":  # 1970-01-01 was a Thursday: Monday is 0
        return ((day.astype(np.int64) + 3) % 7 + time_of_day) / 7.0
    year = stamps.astype("datetime64[Y]")
    if name == "day_of_year":
        start = year.astype("datetime64[D]")
        length = ((year + 1).astype("datetime64[D]") - start).astype(np.float64)
        return ((day - start).astype(np.float64) + time_of_day) / length
    if name == "month_of_year":
        return (stamps.astype("datetime64[M]").astype(np.int64) % 12) / 12.0
    raise ValueError(f"time feature {name!r} is unknown: allowed are {', '.join(CYCLES)}")


def time_features(times: np.ndarray, cycles: Sequence[str]) -> np.ndarray:
    """``(t,)`` ``datetime64`` -> ``(t, 2 * len(cycles))`` float64: ``sin(2 pi p), cos(2 pi p)``
    of each cycle's position ``p``.

    Example::

        time_features(times, ("day_of_week",))        # (t, 2)
    """
    times = np.asarray(times)
    if not cycles:
        return np.zeros((len(times), 0))
    angles = [2 * np.pi * _cycle_position(name, times) for name in cycles]
    return np.stack([f(angle) for angle in angles for f in (np.sin, np.cos)], axis=-1)


# ---------------------------------------------------------------------------------------------
# The layout of an input row
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a forecasting model reads after each element, and how (saved with the model).

    Attributes:
      target_columns: names of the ``d`` predicted features.
      lags: sorted lags, 1 (the element itself) first: ``(1, 2, 12)`` also feeds
        ``y_(t-1)`` and ``y_(t-11)`` with the input of step ``t`` (one season before the target).
      scaling: ``"mean"`` (DeepAR's mean scaling, ``log s`` fed) or ``"none"``.
      context_length: elements a forecast reads before its first prediction; the mean scale of
        a window comes from its first ``context_length`` elements.
      default_scale: ``(d,)`` the scale of a window whose context is all zero (the training
        data's mean ``|y|``).
      time_column, frequency: the time column and the name of its :class:`Frequency`.
      time_features: the calendar cycles fed (:data:`CYCLES`), each as a sin/cos pair.
      covariate_columns: known-future covariates (z-scored with ``covariate_mean`` /
        ``covariate_scale``); a forecast needs their future values.
      static_columns: per-series categorical columns; ``static_categories`` holds each one's
        categories seen in training, fed one-hot (an unseen category is all zeros). The first
        layer's input matrix then holds a learned embedding of each category.
    """

    target_columns: tuple
    lags: tuple = (1,)
    scaling: str = "mean"
    context_length: int = 32
    default_scale: tuple = ()
    time_column: str | None = None
    frequency: str | None = None
    time_features: tuple = ()
    covariate_columns: tuple = ()
    covariate_mean: tuple = ()
    covariate_scale: tuple = ()
    static_columns: tuple = ()
    static_categories: tuple = ()

    def __post_init__(self):
        def bad(field: str, allowed: str):
            raise ValueError(f"FeatureSpec.{field}={getattr(self, field)!r} is invalid: "
                             f"{allowed}")

        if not self.target_columns:
            bad("target_columns", "name at least one target column")
        lags = self.lags
        if (not lags or any(not isinstance(lag, int) or lag < 1 for lag in lags)
                or list(lags) != sorted(set(lags)) or lags[0] != 1):
            bad("lags", "give distinct positive integers in increasing order, starting with 1 "
                "(the element itself)")
        if self.scaling not in SCALINGS:
            bad("scaling", f"allowed are {', '.join(SCALINGS)}")
        if not isinstance(self.context_length, int) or self.context_length < 1:
            bad("context_length", "must be a positive integer")
        if self.default_scale and len(self.default_scale) != self.target_size:
            bad("default_scale", f"give one scale per target column ({self.target_size})")
        for name in self.time_features:
            if name not in CYCLES:
                bad("time_features", f"allowed cycles are {', '.join(CYCLES)}")
        if len(self.covariate_mean) != len(self.covariate_columns) or len(
                self.covariate_scale) != len(self.covariate_columns):
            bad("covariate_mean", "give one mean and one scale per covariate column")
        if len(self.static_categories) != len(self.static_columns):
            bad("static_categories", "give one tuple of categories per static column")

    # -- sizes -------------------------------------------------------------------------------

    @property
    def target_size(self) -> int:
        return len(self.target_columns)

    @property
    def max_lag(self) -> int:
        return self.lags[-1]

    @property
    def extra_lags(self) -> tuple[int, ...]:
        """The lags beyond the element (``>= 2``)."""
        return self.lags[1:]

    @property
    def known_size(self) -> int:
        """Known features per step: time features, covariates, static one-hots."""
        return (2 * len(self.time_features) + len(self.covariate_columns)
                + sum(len(categories) for categories in self.static_categories))

    @property
    def input_size(self) -> int:
        d = self.target_size
        return d * (1 + (self.scaling == "mean") + len(self.extra_lags)) + self.known_size

    @property
    def conditioned(self) -> bool:
        """True when inputs carry anything beyond the element."""
        return self.input_size > self.target_size

    def model_fields(self) -> dict:
        """The :class:`seqmodel.ModelConfig` fields this layout fixes."""
        if not self.conditioned:
            return {"input_size": self.input_size}
        return {"input_size": self.input_size, "target_size": self.target_size,
                "input_scaling": self.scaling == "mean"}

    # -- saving ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["static_categories"] = [list(c) for c in self.static_categories]
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in values.items()}

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureSpec":
        values = dict(values)
        for field in dataclasses.fields(cls):
            if isinstance(values.get(field.name), list):
                values[field.name] = tuple(values[field.name])
        values["static_categories"] = tuple(tuple(c) for c in values.get("static_categories", ()))
        values["lags"] = tuple(int(lag) for lag in values.get("lags", (1,)))
        return cls(**values)


def parse_lags(text: str) -> tuple[int, ...]:
    """``"1,2,52"`` -> ``(1, 2, 52)``: sorted, distinct, 1 added (the element is always fed).

    Example::

        parse_lags("12,1,2")      # (1, 2, 12)
    """
    try:
        lags = {int(part) for part in str(text).split(",") if part.strip()}
    except ValueError:
        raise ValueError(f"--lags {text!r} is not a comma-separated list of integers; give "
                         "e.g. --lags 1,2,12") from None
    if not lags or min(lags) < 1:
        raise ValueError(f"--lags {text!r}: lags are positive step counts (1 is the last "
                         "value); give e.g. --lags 1,2,12")
    return tuple(sorted(lags | {1}))


# ---------------------------------------------------------------------------------------------
# Building rows
# ---------------------------------------------------------------------------------------------


def known_features(spec: FeatureSpec, times: np.ndarray | None, covariates: np.ndarray | None,
                   static: Sequence[str] | None) -> np.ndarray:
    """The known features of every step of one series: ``(T, spec.known_size)`` float32.

    Args:
      times: ``(T,)`` ``datetime64`` (needed when ``spec.time_features``).
      covariates: ``(T, c)`` covariates in original units (z-scored here; NaN -> 0, the mean).
      static: the series' category in each static column.
    """
    length = None
    parts = []
    if spec.time_features:
        if times is None:
            raise ValueError(f"the model reads time features of the time column "
                             f"{spec.time_column!r}, but no times were given")
        parts.append(time_features(times, spec.time_features))
        length = len(times)
    if spec.covariate_columns:
        if covariates is None:
            raise ValueError(f"the model reads the covariates "
                             f"{', '.join(spec.covariate_columns)}, but none were given")
        covariates = np.asarray(covariates, np.float64).reshape(len(covariates), -1)
        scaled = (covariates - np.asarray(spec.covariate_mean)) / np.asarray(spec.covariate_scale)
        parts.append(np.nan_to_num(scaled, nan=0.0))
        length = len(covariates)
    if length is None and spec.static_columns:
        raise ValueError("known_features needs times or covariates to know the length; "
                         "use static_one_hot for the static part alone")
    if spec.static_columns:
        one_hot = static_one_hot(spec, static)
        parts.append(np.broadcast_to(one_hot, (length, len(one_hot))))
    if not parts:
        return np.zeros((0 if length is None else length, 0), np.float32)
    return np.concatenate(parts, axis=-1).astype(np.float32)


def static_one_hot(spec: FeatureSpec, static: Sequence[str] | None) -> np.ndarray:
    """One-hot of the series' category in each static column, concatenated: ``(k,)``. A category
    not seen in training gives zeros for its column."""
    if not spec.static_columns:
        return np.zeros((0,), np.float32)
    if static is None or len(static) != len(spec.static_columns):
        raise ValueError(f"the model reads the static columns {', '.join(spec.static_columns)};"
                         f" give one category per column, got {static!r}")
    parts = []
    for value, categories in zip(static, spec.static_categories):
        part = np.zeros(len(categories), np.float32)
        if str(value) in categories:
            part[categories.index(str(value))] = 1.0
        parts.append(part)
    return np.concatenate(parts)


def mean_scale(values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The mean scale of a context: ``mean |y|`` over its elements ``(n, d)`` (NaN skipped) per
    feature, ``(d,)``; ``spec.default_scale`` where the context has no non-zero value. Ones
    when ``spec.scaling == "none"``."""
    d = spec.target_size
    if spec.scaling == "none":
        return np.ones((d,), np.float64)
    values = np.abs(np.asarray(values, np.float64).reshape(-1, d))
    present = np.isfinite(values)
    total = np.where(present, values, 0.0).sum(0)
    count = present.sum(0)
    scale = np.divide(total, count, out=np.zeros(d), where=count > 0)
    default = np.asarray(spec.default_scale or (1.0,) * d, np.float64)
    return np.maximum(np.where(scale > 0, scale, default), MINIMUM_SCALE)


def _namespace(*arrays):
    """``jax.numpy`` when an argument is a JAX array (a traced forecast step), else NumPy."""
    for array in arrays:
        if type(array).__module__.startswith("jax"):
            import jax.numpy as jnp

            return jnp
    return np


def assemble(spec: FeatureSpec, element, lagged, known, scale):
    """One input row per leading index, laid out as the module docstring says.

    Args:
      element: ``(..., d)`` the element ``y_t`` (globally normalised units, NaN filled by 0).
      lagged: ``(..., len(spec.extra_lags), d)`` ``y_(t+1-k)`` for the lags ``k >= 2``.
      known: ``(..., spec.known_size)`` the known features of step ``t + 1``.
      scale: ``(..., d)`` the window's mean scale (ones without scaling).

    Returns:
      ``(..., spec.input_size)``, NumPy or JAX like the arguments.
    """
    xp = _namespace(element, lagged, known, scale)
    lagged_scaled = lagged / scale[..., None, :]
    parts = [element / scale]
    if spec.scaling == "mean":
        parts.append(xp.log(scale))
    parts.append(lagged_scaled.reshape(lagged_scaled.shape[:-2] + (-1,)))
    parts.append(known)
    return xp.concatenate([xp.asarray(part, xp.float32) for part in parts], axis=-1)


def window_inputs(spec: FeatureSpec, values: np.ndarray, known: np.ndarray, *, start: int,
                  length: int, scale: np.ndarray) -> np.ndarray:
    """The teacher-forced inputs of steps ``start .. start + length - 1`` of one series:
    ``(length, spec.input_size)`` float32. Row ``j`` predicts ``values[start + j + 1]``.

    Args:
      values: ``(T, d)`` targets (globally normalised; NaN = missing, fed as 0).
      known: ``(T', K)`` known features, ``T' >= start + length + 1`` (the step after the last
        input is the last one predicted).
      start: ``>= spec.max_lag - 1``, so every lag of the first row exists.
      scale: ``(d,)`` from :func:`mean_scale`.

    Example::

        inputs = window_inputs(spec, values, known, start=11, length=36, scale=scale)
    """
    if start < spec.max_lag - 1:
        raise ValueError(f"start={start} is before the first step with every lag "
                         f"({spec.max_lag - 1} for lags up to {spec.max_lag})")
    if start + length > len(values) or start + length + 1 > len(known) and spec.known_size:
        raise ValueError(f"steps {start}..{start + length - 1} do not fit a series of "
                         f"{len(values)} steps with {len(known)} known rows")
    filled = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
    steps = np.arange(start, start + length)
    lagged = filled[steps[:, None] + 1 - np.asarray(spec.extra_lags, int)[None, :]] \
        if spec.extra_lags else np.zeros((length, 0, spec.target_size))
    known_rows = (known[steps + 1] if spec.known_size
                  else np.zeros((length, 0), np.float32))
    scale = np.broadcast_to(np.asarray(scale, np.float64), (length, spec.target_size))
    return assemble(spec, filled[steps], lagged, known_rows, scale)
