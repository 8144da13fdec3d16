"""The fitted preparation of real-valued data: how a table becomes the series a model reads.

A :class:`Preparation` holds everything fitted on the training part and needed again to read new
data the way the model was trained: the input layout (:class:`~seqmodel.data.features.
FeatureSpec`: lags, window scaling, time features, covariates, static categories), the targets'
global normalisation, the head the data was prepared for, and the columns it reads. It is saved
with the model (``to_dict`` / ``from_dict``), so training, ``Forecaster.predict``, backtests and the
command line all turn tables into series through :meth:`Preparation.series`.

:func:`prepare` fits one. Its defaults are one rule for every real-valued source, with or without
a time column (a plain model is the case without calendar features, not a second path):

- head: ``bernoulli`` for 0/1 data, else ``student_t``;
- scaling: for continuous data DeepAR's mean scaling (``mean``), or standard scaling (``std``:
  each window's mean subtracted, then divided by its standard deviation) where the level dwarfs
  the movements (a context's std under 1% of its mean ``|y|``, :func:`default_scaling`); mean
  scaling for counts, none for 0/1 data;
- season: the time column's frequency (a year of monthly data, a week of daily data, ...) when
  the shortest training series holds three of them and the data shows it (a peak of the
  autocorrelation there, :func:`seqmodel.data.calendar.shows_season`), else the period that the
  autocorrelation of the training part shows (:func:`seqmodel.data.calendar.detect_season`),
  else 1;
- lags: 1, 2, 3 and one season back (and the frequency's own extra lags; with 1,000 training
  steps or more also DeepAR's seasonal lags, :func:`rich_lags`), those that fit a third
  of the shortest training series;
- context: at least 32 steps and at least two seasons (so a forecast reads a whole season before
  it starts), at most a third of the shortest training series.

Global normalisation: a continuous target under mean scaling is divided by the training data's
mean ``|y|`` (no shift, so a window's mean scale is about 1); counts (``negbin``) and 0/1 data
stay as they are; otherwise (standard or no scaling) a continuous target is z-scored.

Example::

    table = read_table("sales.csv", time_column="date")
    preparation = prepare(table, train_stops=[len(s) - 12 for s in table.sequences])
    series = preparation.series(table)        # [Series(values (T, d), known (T, K), ...)]
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from seqmodel.data import calendar, features
from seqmodel.data.batching import DataError
from seqmodel.data.normalization import Normalizer
from seqmodel.data.tables import Table

# What the predicted location is relative to by default (resolve_anchor): the season's lag,
# else the last value. Chosen on the tuning suite (seeds 0-2, benchmarks/results/
# forecast_tuning/anchor_*.json): the geometric mean of MASE over seasonal naive 0.709 without
# an anchor, 0.663 with the season's lag only, 0.643 with the last value everywhere, 0.622 with
# this rule; the 80% intervals in 0.72-0.88 on 7 of 9 series against 8 of 9 without.
DEFAULT_ANCHOR = "auto"
# How many of the season's multiples (s, 2s, ...) anchor="seasons" averages where they are fed
# (seasonal_anchor_lags; rich_lags feeds three on long data). An option, not the default: on
# the tuning suite it gained (seeds 0-2, forecast_tuning/mean_anchor.json: the half-hourly
# series' MASE 0.623 +- 0.036 -> 0.551 +- 0.005, level 0.175 -> 0.173, the geometric mean over
# the nine 0.635 -> 0.625), but on the benchmark series it did not hold (one model's geometric
# mean 0.526 -> 0.523, the ensemble's 0.541 -> 0.553: co2 0.584 -> 0.553, taylor 0.367 -> 0.378,
# the ensemble on taylor 0.319 -> 0.391; forecast_real_cpu_2core_mean_anchor.json).
ANCHOR_SEASONS = 3
# Heads whose targets are counts (kept as they are, checked to be counts).
COUNT_HEADS = ("negbin",)
# Heads whose targets are 0/1 (kept as they are, never scaled).
BINARY_HEADS = ("bernoulli",)
DEFAULT_HEAD = "student_t"
REAL_HEADS = ("gaussian", "mdn", "bernoulli", "student_t", "negbin")
# The shortest context a forecast reads by default, and the cap on the seasons it spans.
DEFAULT_CONTEXT = 32
# Standard scaling by default where a context moves by less than this fraction of its level
# (window_spread): mean scaling would hand the network inputs that barely move. Chosen on the
# tuning series (the level-dominated one is at 0.006, heart rate at 0.021, where standard
# scaling lost; the others from 0.09 up).
LEVEL_DOMINATED = 0.01
CONTEXT_SEASONS = 2
# Training steps (summed over the series) from which the default lags add rich_lags. Chosen on
# the tuning suite (seeds 0-2, benchmarks/results/forecast_tuning/rich_lags_*.json): with them the
# 30-series panel gained 9% in MASE, the level-dominated weekly series 6% and the half-hourly
# load 3%, each with 1,300 or more training steps; the series with 700 or fewer lost (El Nino
# 7%, wool 6%, lynx 33%, the weekly series 3%: more inputs than a short series can fit).
RICH_LAGS_OBSERVATIONS = 1000


@dataclasses.dataclass(frozen=True)
class Series:
    """One series ready for windows: ``values`` ``(T, d)`` globally normalised targets (NaN =
    missing), ``known`` ``(T, K)`` known features, ``times`` ``(T,)`` or None, ``name``,
    ``static`` categories."""

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


@dataclasses.dataclass(frozen=True)
class Preparation:
    """What turns tables into series for one model (saved with it).

    Attributes:
      spec: the input layout.
      normalizer: the targets' global normalisation (``(d,)`` mean and scale).
      head: the output distribution the data was prepared for.
      season: the seasonal period in steps (1: none known).
      missing: ``"reject"`` or ``"mask"``: how missing values of new data are treated.
      id_column: the column naming each row's series in files and frames.
    """

    spec: features.FeatureSpec
    normalizer: Normalizer
    head: str = DEFAULT_HEAD
    season: int = 1
    missing: str = "reject"
    id_column: str | None = None

    @property
    def frequency(self) -> calendar.Frequency | None:
        return None if self.spec.frequency is None else calendar.Frequency.parse(
            self.spec.frequency)

    @property
    def columns(self) -> tuple:
        return self.spec.target_columns

    def read_options(self) -> dict:
        """The keyword arguments of :func:`seqmodel.data.readers.read_table` that read a file
        with the columns this preparation declares."""
        spec = self.spec
        return {"missing": self.missing, "time_column": spec.time_column,
                "id_column": self.id_column, "category_columns": spec.static_columns,
                "numeric_columns": spec.target_columns + spec.covariate_columns}

    def check_head(self, head: str) -> None:
        if head != self.head:
            raise DataError(f"--head {head} differs from the head {self.head!r} this data was "
                            "prepared for; load the data with the same head")

    def series(self, table: Table, *, source: str = "the data") -> list[Series]:
        """The :class:`Series` of ``table`` (its columns must hold the targets and covariates;
        its time column advances at the frequency the preparation was fitted on)."""
        spec = self.spec
        if spec.frequency is not None and table.times is not None:
            frequency = calendar.infer_frequency(table.times, lines=table.lines,
                                                 column=table.time_column)
            if frequency.name != spec.frequency:
                raise DataError(f"{source} advances by {frequency.name}, but the model was "
                                f"trained on data that advances by {spec.frequency}")
        try:
            targets = table.select(spec.target_columns, what=source)
            covariates = (table.select(spec.covariate_columns, what=source)
                          if spec.covariate_columns else None)
        except ValueError as error:
            raise DataError(str(error)) from None
        result = []
        for index, name in enumerate(table.names()):
            times = None if table.times is None else table.times[index]
            static = None if not spec.static_columns else tuple(
                table.categories[column][index] for column in spec.static_columns)
            covariate_rows = None if covariates is None else covariates[index]
            known = known_rows(spec, times, covariate_rows, static, len(targets[index]))
            result.append(Series(name, self.normalizer.normalize(targets[index]), known, times,
                                 static))
        return result

    def to_dict(self) -> dict:
        return {"features": self.spec.to_dict(), "normalizer": self.normalizer.to_dict(),
                "head": self.head, "season": self.season, "missing": self.missing,
                "id_column": self.id_column}

    @classmethod
    def from_dict(cls, values: dict) -> "Preparation":
        """The preparation saved by :meth:`to_dict` (or in the metadata of a checkpoint)."""
        spec = features.FeatureSpec.from_dict(values["features"])
        return cls(spec, Normalizer.from_dict(values["normalizer"]),
                   head=values.get("head", DEFAULT_HEAD), season=int(values.get("season", 1)),
                   missing=values.get("missing", "reject"), id_column=values.get("id_column"))


def known_rows(spec: features.FeatureSpec, times, covariates, static, length: int) -> np.ndarray:
    """The known features ``(length, K)`` of one series: :func:`seqmodel.data.features.
    known_features`, or the static one-hot alone repeated ``length`` times."""
    if spec.known_size == 0:
        return np.zeros((length, 0), np.float32)
    if spec.time_features or spec.covariate_columns:
        return features.known_features(spec, times, covariates, static)
    return np.broadcast_to(features.static_one_hot(spec, static),
                           (length, spec.known_size)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def is_binary(sequences: Sequence[np.ndarray]) -> bool:
    """Whether every present value is 0 or 1."""
    for sequence in sequences:
        present = sequence[~np.isnan(sequence)]
        if not np.all((present == 0.0) | (present == 1.0)):
            return False
    return True


def _check_counts(values: list, source: str) -> None:
    for sequence in values:
        present = sequence[np.isfinite(sequence)]
        bad = present[(present < 0) | (present != np.round(present))]
        if bad.size:
            raise DataError(f"--head negbin needs counts (non-negative integers), but "
                            f"{source} holds {bad[0]!r}; use --head student_t or gaussian")


def _target_normalizer(train: list, head: str, scaling: str, normalize: bool | None) -> Normalizer:
    d = train[0].shape[-1]
    if head in COUNT_HEADS + BINARY_HEADS or normalize is False:
        return Normalizer.identity(d)
    if scaling != "mean":
        return Normalizer.fit(train)
    flat = np.abs(np.concatenate([v.reshape(-1, d) for v in train]))
    scale = np.nanmean(flat, axis=0) if np.isfinite(flat).any() else np.ones(d)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return Normalizer((0.0,) * d, tuple(float(s) for s in scale))


def window_spread(train: Sequence[np.ndarray], context_length: int,
                  windows_per_series: int = 256) -> float:
    """How much a context moves against its level: the median, over windows of
    ``context_length`` steps (a quarter of a window apart, at most ``windows_per_series`` evenly
    spread ones a series) and over the features, of ``std / mean |y|`` (NaN skipped); ``inf``
    without a window."""
    ratios = []
    for values in train:
        if len(values) < 2:  # a sequence kept whole for validation has no training steps
            continue
        values = np.asarray(values, np.float64).reshape(len(values), -1)
        length = min(context_length, len(values))
        starts = np.arange(0, len(values) - length + 1, max(1, length // 4))
        if len(starts) > windows_per_series:
            starts = starts[np.linspace(0, len(starts) - 1, windows_per_series).astype(int)]
        windows = values[starts[:, None] + np.arange(length)]  # (n, length, d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows, zero levels
            ratio = np.nanstd(windows, axis=1) / np.nanmean(np.abs(windows), axis=1)
        ratios.append(ratio[np.isfinite(ratio)])
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    return float(np.median(ratios)) if ratios.size else float("inf")


def default_scaling(train: Sequence[np.ndarray], head: str, context_length: int) -> str:
    """``none`` for 0/1 data, ``mean`` for counts; for continuous data ``std`` where the level
    dwarfs the movements (:func:`window_spread` below :data:`LEVEL_DOMINATED`), else ``mean``."""
    if head in BINARY_HEADS:
        return "none"
    if head in COUNT_HEADS:
        return "mean"
    return "std" if window_spread(train, context_length) < LEVEL_DOMINATED else "mean"


def default_lags(frequency: calendar.Frequency | None, season: int,
                 train_lengths: Sequence[int]) -> tuple[int, ...]:
    """1, 2, 3, one season back and the frequency's own extra lags (kept where the data shows
    another season: on the tuning suite's quarterly unemployment, which shows none, dropping lag
    4 lost), those that fit a third of the shortest training series (so windows with every lag
    exist). Where the training data holds :data:`RICH_LAGS_OBSERVATIONS` steps or more and the
    season is over 2, also GluonTS's seasonal lags (:func:`rich_lags`)."""
    lags = set(frequency.default_lags()) if frequency is not None else {1, 2, 3}
    if season > 1:
        lags.add(season)
    if season > 2 and sum(train_lengths) >= RICH_LAGS_OBSERVATIONS:
        lags |= set(rich_lags(season))
    room = max(min(train_lengths) // 3, 1)
    return tuple(sorted(lag for lag in lags if lag <= room)) or (1,)


def rich_lags(season: int) -> tuple[int, ...]:
    """The lags GluonTS's DeepAR feeds for a season of ``season > 2`` steps
    (``get_lags_for_frequency``): 4 to 7 (those under the season's neighbour) and the season's
    first three multiples with a neighbour on each side, ``k s - 1, k s, k s + 1``. Three years of
    the same month let the network average a seasonal profile rather than copy one noisy value,
    and the neighbours let it smooth each."""
    lags = {lag for lag in range(4, 8) if lag < season - 1}
    for multiple in (1, 2, 3):
        lags |= {multiple * season - 1, multiple * season, multiple * season + 1}
    return tuple(sorted(lags))


def resolve_anchor(anchor: int | str | None, *, head: str, season: int,
                   lags: Sequence[int]) -> int:
    """The lag the predicted location is relative to (0: none; ``FeatureSpec.anchor``).

    ``None`` is :data:`DEFAULT_ANCHOR`, ``"auto"``: the season's lag where there is a season and
    the lags hold it, else lag 1 (Box and Jenkins' differencing: seasonal where the data shows a
    season, else first). ``"season"`` is the season's lag where there is one (else none), and
    so is ``"seasons"`` (whose location :func:`prepare` then makes the mean of the season's
    multiples the lags hold), ``"last"`` lag 1, ``"none"`` or 0 none, an integer that lag (which
    must be fed). Counts and 0/1 heads take none: their elements cannot be shifted.

    Raises:
      DataError: an anchor that is not one of these, or a lag that is not fed.
    """
    if anchor is None:
        anchor = DEFAULT_ANCHOR
    if head in COUNT_HEADS + BINARY_HEADS:
        if anchor not in ("auto", "none", 0, "0"):
            raise DataError(f"--anchor {anchor} moves the predicted location, which --head "
                            f"{head} (counts or 0/1 values) does not allow; leave it out")
        return 0
    seasonal = season > 1 and season in lags
    if anchor == "auto":
        return season if seasonal else 1
    if anchor in ("season", "seasons"):
        return season if seasonal else 0
    if anchor == "last":
        return 1
    if anchor == "none":
        return 0
    try:
        lag = int(anchor)
    except (TypeError, ValueError):
        lag = -1
    if lag != 0 and lag not in lags:
        raise DataError(f"--anchor {anchor!r} is invalid: allowed are auto, season, seasons, "
                        f"last, none or one of the lags fed ({', '.join(map(str, lags))})")
    return lag


def seasonal_anchor_lags(anchor: int, season: int, lags: Sequence[int]) -> tuple[int, ...]:
    """``FeatureSpec.anchor_lags`` of ``anchor="seasons"``: the season's first
    :data:`ANCHOR_SEASONS` multiples ``s, 2s, 3s`` that ``lags`` holds, where that is 2 or more
    (the mean of three seasons' values is a seasonal profile with a third of one value's noise
    variance, the network still sees each lag); ``()`` for any other anchor.

    Example::

        seasonal_anchor_lags(48, 48, (1, 47, 48, 49, 95, 96, 97, 143, 144, 145))  # (48, 96, 144)
    """
    if season < 2 or anchor != season:
        return ()
    multiples = tuple(k * season for k in range(1, ANCHOR_SEASONS + 1) if k * season in lags)
    return multiples if len(multiples) > 1 else ()


def default_context(season: int, train_lengths: Sequence[int]) -> int:
    """At least :data:`DEFAULT_CONTEXT` steps and :data:`CONTEXT_SEASONS` seasons, at most a
    third of the shortest training series (and never below 1)."""
    wanted = max(DEFAULT_CONTEXT, CONTEXT_SEASONS * season)
    return max(1, min(wanted, max(min(train_lengths) // 3, 1)))


def prepare(table: Table, *, train_stops: Sequence[int], source: str = "the data",
            head: str | None = None, target_columns: Sequence[str] | None = None,
            covariates: Sequence[str] = (), static_columns: Sequence[str] = (),
            lags: Sequence[int] | None = None, scaling: str | None = None,
            context_length: int | None = None, season: int | None = None,
            normalize: bool | None = None, missing: str = "reject",
            id_column: str | None = None, anchor: int | str | None = None) -> Preparation:
    """Fit a :class:`Preparation` on the steps of ``table`` before ``train_stops`` (one stop per
    series: what training may see). ``None`` settings take the defaults of the module docstring.

    Args:
      head: the output distribution (``negbin`` needs counts, ``bernoulli`` 0/1 data).
      target_columns: the predicted columns (default: every column that is not a covariate).
      covariates: known-future numeric columns fed with every step.
      static_columns: per-series categories fed one-hot (the table's ``categories``).
      lags: lags to feed (1, the element, is always fed).
      scaling: ``"mean"``, ``"std"`` or ``"none"``.
      context_length: steps a forecast reads before its first prediction (and that a window's
        scale comes from).
      season: the seasonal period in steps (default: from the frequency, else detected).
      normalize: ``False`` keeps the targets in their units (no global normalisation).
      anchor: what the predicted location is relative to (:func:`resolve_anchor`):
        ``"season"`` (the season's lag), ``"seasons"`` (the mean of the season's multiples the
        lags hold, :func:`seasonal_anchor_lags`), ``"last"`` (lag 1), ``"none"``, or a lag.

    Raises:
      DataError: one line (a covariate that is every column, counts that are not counts, lags
        longer than the series, ...).
    """
    covariates, static_columns = tuple(covariates), tuple(static_columns)
    frequency = None
    if table.times is not None:
        try:
            frequency = calendar.infer_frequency(table.times, lines=table.lines,
                                                 column=table.time_column)
        except ValueError as error:
            raise DataError(str(error).splitlines()[0]) from None
    if target_columns is None:
        target_columns = tuple(name for name in table.columns if name not in covariates)
        if not target_columns:
            raise DataError(f"{source}: every numeric column is a covariate; leave at least one "
                            "column to forecast")
    target_columns = tuple(target_columns)
    try:
        targets = table.select(target_columns, what=source)
        covariate_values = table.select(covariates, what=source) if covariates else None
    except ValueError as error:
        raise DataError(str(error)) from None
    train = [values[:stop] for values, stop in zip(targets, train_stops)]
    if not train or max(len(values) for values in train) < 2:
        raise DataError(f"{source}: the train part is too short to train on (needs a sequence "
                        "of 2 or more steps); lower --val-fraction or --holdout, or give more data")
    binary = is_binary(train)
    if head is None:
        head = "bernoulli" if binary else DEFAULT_HEAD
    if head not in REAL_HEADS:
        raise DataError(f"--head {head!r} does not fit real-valued data: allowed are "
                        f"{', '.join(REAL_HEADS)}")
    if head in COUNT_HEADS:
        _check_counts(targets, source)
        if scaling == "std":
            raise DataError("--scaling std shifts each window by its mean, which counts "
                            "(--head negbin) do not allow; use --scaling mean or none")
    if head in BINARY_HEADS:
        if not is_binary(targets):
            raise DataError(f"--head bernoulli needs binary (0/1) data, but {source} holds "
                            "other values; use --head student_t, gaussian or mdn")
        if scaling in ("mean", "std"):
            raise DataError(f"--scaling {scaling} does not apply to 0/1 data (--head "
                            "bernoulli); leave it out")
        scaling = "none"
    if scaling is not None and scaling not in features.SCALINGS:
        raise DataError(f"--scaling {scaling!r} is invalid: allowed are "
                        f"{', '.join(features.SCALINGS)}")
    train_lengths = [len(values) for values in train if len(values)]
    if season is None:
        # The frequency's season where the data holds a few of them (a day of 30-second data
        # is 2880 steps) and shows it, else what the autocorrelation shows.
        calendar_season = frequency.season if frequency is not None else 1
        if calendar_season > min(train_lengths) // 3:
            calendar_season = 1
        season = calendar.season_of([v[:, 0] for v in train], calendar_season)
    if lags is None:
        lags = default_lags(frequency, season, train_lengths)
    else:
        lags = features.parse_lags(",".join(str(lag) for lag in lags))
    default_anchor = anchor is None
    averaged = anchor == "seasons"
    anchor = resolve_anchor(anchor, head=head, season=int(season), lags=tuple(lags))
    anchor_lags = seasonal_anchor_lags(anchor, int(season), lags) if averaged else ()
    if context_length is None:
        context_length = default_context(season, train_lengths)
    if scaling is None:
        scaling = default_scaling(train, head, int(context_length))
    normalizer = _target_normalizer(train, head, scaling, normalize)
    normalised = np.concatenate([normalizer.normalize(v).reshape(-1, len(target_columns))
                                 for v in train])
    default_scale = np.ones(len(target_columns))
    if np.isfinite(normalised).any():  # the scale of a window without spread (or values)
        default_scale = (np.nanstd(normalised, axis=0) if scaling == "std"
                         else np.nanmean(np.abs(normalised), axis=0))
    covariate_normalizer = None
    if covariate_values is not None:
        covariate_normalizer = Normalizer.fit([values[:stop] for values, stop in
                                               zip(covariate_values, train_stops)])
    categories = tuple(tuple(sorted(set(table.categories[name]))) for name in static_columns)
    try:
        spec = features.FeatureSpec(
            target_columns=target_columns, lags=tuple(lags), scaling=scaling,
            context_length=int(context_length),
            default_scale=tuple(float(v) if v > 0 else 1.0 for v in default_scale),
            time_column=table.time_column,
            frequency=None if frequency is None else frequency.name,
            time_features=calendar.frequency_cycles(frequency),
            covariate_columns=covariates,
            covariate_mean=() if covariate_normalizer is None else covariate_normalizer.mean,
            covariate_scale=() if covariate_normalizer is None else covariate_normalizer.scale,
            static_columns=static_columns, static_categories=categories, anchor=anchor,
            anchor_lags=anchor_lags)
    except ValueError as error:
        raise DataError(str(error)) from None
    if default_anchor and not spec.conditioned:
        # A plain layout (the element alone, no scaling: the exposure-bias studies' model) keeps
        # the plain model unless an anchor is asked for.
        spec = dataclasses.replace(spec, anchor=0, anchor_lags=())
    longest = max(len(values) for values in targets)
    if spec.max_lag >= longest:
        raise DataError(f"--lags up to {spec.max_lag} need a series longer than "
                        f"{spec.max_lag} steps, but the longest in {source} has {longest}: "
                        "lower --lags")
    return Preparation(spec, normalizer, head=head, season=int(season), missing=missing,
                       id_column=id_column)
