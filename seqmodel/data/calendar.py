"""Time: the frequency of a time column (inferred, with irregular rows named), stepping a time
forward, the seasonal period, and calendar features (sin/cos of the time of day, day of week, day
of year, month).

Example::

    frequency = infer_frequency([times])          # Frequency("month")
    frequency.season                              # 12
    future = advance(times[-1], frequency, 24)    # the next 24 time stamps
    rows = time_features(times, frequency_cycles(frequency))   # (T, 2 * cycles)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


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
# A season without a calendar
# ---------------------------------------------------------------------------------------------

# A peak of the pooled autocorrelation must reach this to count as a season (a sine under noise
# of its own size reaches about 0.5; white noise stays near 0).
SEASON_THRESHOLD = 0.3
# Peaks this close to the highest count as the highest (the shortest of them wins).
SEASON_PEAK_RATIO = 0.8
# The longest season looked for is a third of the shortest series used, and at most this.
MAX_DETECTED_SEASON = 400


def _autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """``(max_lag + 1,)`` autocorrelation of a 1-D series (NaN skipped as zeros), by FFT."""
    centred = np.nan_to_num(values - np.nanmean(values))
    size = 1 << (2 * len(centred) - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 1]
    # Unbiased by the number of pairs at each lag, normalised by the variance.
    correlation = correlation / (len(centred) - np.arange(max_lag + 1))
    return correlation / correlation[0] if correlation[0] > 0 else np.zeros(max_lag + 1)


def _detrended(values: np.ndarray) -> np.ndarray:
    """``values`` less their least-squares line (NaN kept)."""
    steps = np.arange(len(values), dtype=np.float64)
    present = np.isfinite(values)
    slope, intercept = np.polyfit(steps[present], values[present], 1)
    return values - (slope * steps + intercept)


def _pooled_autocorrelation(sequences: Sequence[np.ndarray]) -> np.ndarray | None:
    """The autocorrelation up to a third of the shortest usable series (at most
    :data:`MAX_DETECTED_SEASON`) of each series less its linear trend, averaged over the series
    weighted by length; None where no series has 8 values or the lags would be under 3."""
    usable = [_detrended(np.asarray(s, np.float64).reshape(-1)) for s in sequences
              if np.isfinite(s).sum() >= 8]
    if not usable:
        return None
    max_lag = min(MAX_DETECTED_SEASON, min(len(s) for s in usable) // 3)
    if max_lag < 3:
        return None
    weights = np.asarray([len(s) for s in usable], np.float64)
    return sum(w * _autocorrelation(s, max_lag) for w, s in zip(weights, usable)) / weights.sum()


def _shows(pooled: np.ndarray | None, period: int) -> bool:
    """Whether ``pooled`` (from :func:`_pooled_autocorrelation`) peaks at ``period``; True where
    it cannot tell (no autocorrelation, or ``period`` beyond its lags)."""
    if pooled is None or not 1 < period < len(pooled) - 1:
        return True
    return bool(pooled[period] > pooled[period - 1] and pooled[period] >= pooled[period + 1])


def _strongest_season(pooled: np.ndarray | None, threshold: float) -> int:
    """The shortest lag ``>= 2`` whose local peak of ``pooled`` reaches ``threshold`` and is
    within :data:`SEASON_PEAK_RATIO` of the highest peak; else 1."""
    if pooled is None:
        return 1
    lags = np.arange(2, len(pooled) - 1)
    peaks = lags[(pooled[lags] > pooled[lags - 1]) & (pooled[lags] >= pooled[lags + 1])
                 & (pooled[lags] >= threshold)]
    if not len(peaks):
        return 1
    # Multiples of a season peak about as high as the season itself: the shortest peak within
    # SEASON_PEAK_RATIO of the highest is the season.
    strong = peaks[pooled[peaks] >= SEASON_PEAK_RATIO * pooled[peaks].max()]
    return int(strong[0])


def detect_season(sequences: Sequence[np.ndarray], *, threshold: float = SEASON_THRESHOLD) -> int:
    """The seasonal period that the data shows, for series without a time column: the shortest
    lag ``>= 2`` whose local peak of the autocorrelation (of each series less its linear trend,
    averaged over the series, weighted by length) reaches ``threshold`` and is within
    :data:`SEASON_PEAK_RATIO` of the highest peak; else 1.

    Example::

        detect_season([np.sin(2 * np.pi * np.arange(300) / 12)])    # 12
    """
    return _strongest_season(_pooled_autocorrelation(sequences), threshold)


def shows_season(sequences: Sequence[np.ndarray], period: int) -> bool:
    """Whether the data shows ``period`` as a season: the pooled autocorrelation (as
    :func:`detect_season` reads it) has a local peak there. A calendar's season that the data
    does not show (monthly sunspots: high autocorrelation at 12 months only because the 11-year
    cycle is slow) is no season; like statsforecast's seasonality test before a seasonal model.
    True where the series are too short to tell.

    Example::

        shows_season([np.sin(2 * np.pi * np.arange(300) / 12)], 12)    # True
    """
    return _shows(_pooled_autocorrelation(sequences), period)


def season_of(sequences: Sequence[np.ndarray], calendar_season: int = 1) -> int:
    """``calendar_season`` (a time column's, > 1) where the data shows it (:func:`shows_season`),
    else the season it shows (:func:`detect_season`): one autocorrelation for both.

    Example::

        season_of([monthly_sunspots], 12)      # 123: no yearly season, an 11-year cycle
    """
    pooled = _pooled_autocorrelation(sequences)
    if calendar_season > 1 and _shows(pooled, calendar_season):
        return calendar_season
    return _strongest_season(pooled, SEASON_THRESHOLD)
