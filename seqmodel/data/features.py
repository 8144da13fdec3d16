"""Forecasting inputs: the features a model reads after each element, built the same way for
teacher-forced training windows and for free-running forecasts.

A model with conditioning features (``ModelConfig.target_size < input_size``) reads at step ``t``
the input row (DeepAR's layout, Salinas et al. 2020)::

    [ (y_t - m) / s | log s | m | (y_(t+1-k) - m) / s for each lag k >= 2 | known of step t + 1 ]
      element         scaling    std    lagged targets                         time features,
                      only       only                                          covariates, static

and predicts ``y_(t+1)``. ``y`` is the target (``d`` features, after the global normalisation);
``m`` and ``s`` (``(d,)`` each) are the window's location and scale, from its first
``context_length`` elements (missing ones skipped):

- ``scaling="std"``: ``m`` = the mean, ``s`` = the standard deviation (GluonTS's
  ``StdScaler``, RevIN), so the network sees a window's movements whatever its level, even where
  the level dwarfs them (a CO2 record: level 360, yearly swing 1.5%);
- ``scaling="mean"``: ``m = 0``, ``s`` = the mean of ``|y|`` (DeepAR, GluonTS's
  ``MeanScaler``), a scale that keeps counts counts;
- ``scaling="none"``: ``m = 0``, ``s = 1``, neither fed.

The model moves and scales its distribution back (``ModelConfig.input_scaling`` and
``input_location``). Lag 1 is the element itself; a missing element is fed as ``m`` (0 after
scaling). Known features belong to the step
being predicted: its time features (smooth sin/cos encodings of the time of day, day of week,
day of year, month, from the time column's inferred :class:`Frequency`), its known-future
covariates (z-scored), and the series' static categories (one-hot).

One function, :func:`assemble`, lays a row out, for NumPy arrays (training windows,
:func:`window_inputs`) and for traced JAX arrays (one step of a forecast,
:mod:`seqmodel.forecasting.forecaster`), so the two paths cannot drift apart.

Example::

    frequency = infer_frequency([times])                     # e.g. Frequency("month")
    spec = FeatureSpec(target_columns=("sales",), lags=(1, 12), scaling="std",
                       context_length=24, time_features=frequency_cycles(frequency),
                       frequency=frequency.name)
    known = known_features(spec, times, covariates=None, static=None)   # (T, K)
    loc, scale = window_scale(values[start : start + 24], spec)         # (d,) each
    inputs = window_inputs(spec, values, known, start=start, length=36, scale=scale, loc=loc)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from seqmodel.data.calendar import CYCLES, time_features

SCALINGS = ("std", "mean", "none")

# A window whose context holds no non-zero value gets the scale of the training data instead
# (in globally normalised units about 1); a scale never falls below this.
MINIMUM_SCALE = 1e-10
# A standard scale never falls below this fraction of the training data's: a near-constant
# context would otherwise blow the first change after it up to thousands of scaled units.
MINIMUM_STD_FRACTION = 1e-2


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
      scaling: ``"std"`` (standard scaling, ``log s`` and ``m`` fed), ``"mean"`` (DeepAR's
        mean scaling, ``log s`` fed) or ``"none"``.
      context_length: elements a forecast reads before its first prediction; the location and
        scale of a window come from its first ``context_length`` elements.
      default_scale: ``(d,)`` the scale of a window whose context has no spread (mean scaling:
        the training data's mean ``|y|``; standard scaling: its standard deviation).
      time_column, frequency: the time column and the name of its :class:`Frequency`.
      time_features: the calendar cycles fed (:data:`CYCLES`), each as a sin/cos pair.
      covariate_columns: known-future covariates (z-scored with ``covariate_mean`` /
        ``covariate_scale``); a forecast needs their future values.
      static_columns: per-series categorical columns; ``static_categories`` holds each one's
        categories seen in training, fed one-hot (an unseen category is all zeros). The first
        layer's input matrix then holds a learned embedding of each category.
      anchor: a lag in ``lags`` whose value the model's predicted location is relative to (0:
        none). With the season's lag the network predicts how the next step differs from the
        same step a season earlier (seasonal differencing, as SARIMA's and ES-RNN's
        deseasonalising do, learned end to end); with 1, how it differs from the last one.
        :attr:`anchor_index` is where that value sits in an input row
        (``ModelConfig.anchor_index``).
      anchor_lags: lags in ``lags``, ``anchor`` first, whose mean the location is relative to
        instead (the season's multiples ``s, 2s, 3s``: a seasonal profile averaged over three
        seasons rather than one noisy season); empty: ``anchor`` alone.
        :attr:`anchor_indices` are where they sit (``ModelConfig.anchor_indices``).
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
    anchor: int = 0
    anchor_lags: tuple = ()

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
        if self.anchor != 0 and self.anchor not in self.lags:
            bad("anchor", f"give 0 (none) or one of the lags {', '.join(map(str, self.lags))}")
        if self.anchor_lags and (len(self.anchor_lags) < 2 or self.anchor_lags[0] != self.anchor
                                 or len(set(self.anchor_lags)) != len(self.anchor_lags)
                                 or any(lag not in self.lags for lag in self.anchor_lags)):
            bad("anchor_lags", f"give () or 2 or more distinct lags, the anchor ({self.anchor}) "
                f"first, all among the lags {', '.join(map(str, self.lags))}")

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
    def scaling_blocks(self) -> int:
        """Blocks of ``d`` scaling features after the element: ``log s`` (mean and std) and
        ``m`` (std)."""
        return (self.scaling != "none") + (self.scaling == "std")

    @property
    def input_size(self) -> int:
        d = self.target_size
        return d * (1 + self.scaling_blocks + len(self.extra_lags)) + self.known_size

    def lag_index(self, lag: int) -> int:
        """Where lag ``lag``'s ``d`` values start in an input row: the element for lag 1, else
        the lag's block after the element and the scalings."""
        if lag == 1:
            return 0
        return self.target_size * (1 + self.scaling_blocks + self.extra_lags.index(lag))

    @property
    def anchor_index(self) -> int | None:
        """Where the anchor lag's ``d`` values start in an input row (None without an anchor)."""
        return self.lag_index(self.anchor) if self.anchor else None

    @property
    def anchor_indices(self) -> tuple[int, ...]:
        """Where each of :attr:`anchor_lags` starts in an input row (empty without them)."""
        return tuple(self.lag_index(lag) for lag in self.anchor_lags)

    @property
    def conditioned(self) -> bool:
        """True when inputs carry anything beyond the element."""
        return self.input_size > self.target_size

    def model_fields(self) -> dict:
        """The :class:`seqmodel.ModelConfig` fields this layout fixes."""
        anchor = {} if self.anchor_index is None else {"anchor_index": self.anchor_index}
        if self.anchor_lags:
            anchor["anchor_indices"] = self.anchor_indices
        if not self.conditioned:
            return {"input_size": self.input_size, **anchor}
        return {"input_size": self.input_size, "target_size": self.target_size,
                "input_scaling": self.scaling != "none",
                "input_location": self.scaling == "std", **anchor}

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
        values["anchor_lags"] = tuple(int(lag) for lag in values.get("anchor_lags", ()))
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


def window_scale(values: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """The location and scale ``(m (d,), s (d,))`` of a context ``(n, d)`` under
    ``spec.scaling`` (the module docstring), NaN skipped. Standard scaling: a context without
    spread gets ``spec.default_scale``, and the scale never falls below
    :data:`MINIMUM_STD_FRACTION` of it; a context without values gets location 0 (the training
    data's mean) and the default scale."""
    d = spec.target_size
    if spec.scaling != "std":
        return np.zeros((d,), np.float64), mean_scale(values, spec)
    values = np.asarray(values, np.float64).reshape(-1, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature without values: NaN -> 0
        loc = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(d)
        std = np.nan_to_num(np.nanstd(values, axis=0)) if len(values) else np.zeros(d)
    default = np.asarray(spec.default_scale or (1.0,) * d, np.float64)
    scale = np.where(std > 0, std, default)
    return loc, np.maximum(scale, np.maximum(MINIMUM_STD_FRACTION * default, MINIMUM_SCALE))


def fill_missing(values: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """``values`` ``(..., d)`` float64 with each missing (NaN) element replaced by the window's
    location ``loc`` ``(d,)``: what a model is fed for it (0 once scaled)."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values), values, loc)


def _namespace(*arrays):
    """``jax.numpy`` when an argument is a JAX array (a traced forecast step), else NumPy."""
    for array in arrays:
        if type(array).__module__.startswith("jax"):
            import jax.numpy as jnp

            return jnp
    return np


def assemble(spec: FeatureSpec, element, lagged, known, scale, loc=None):
    """One input row per leading index, laid out as the module docstring says.

    Args:
      element: ``(..., d)`` the element ``y_t`` (globally normalised units, a missing one
        filled by ``loc``).
      lagged: ``(..., len(spec.extra_lags), d)`` ``y_(t+1-k)`` for the lags ``k >= 2``.
      known: ``(..., spec.known_size)`` the known features of step ``t + 1``.
      scale: ``(..., d)`` the window's scale (ones without scaling).
      loc: ``(..., d)`` the window's location (standard scaling; zeros when None).

    Returns:
      ``(..., spec.input_size)``, NumPy or JAX like the arguments.
    """
    xp = _namespace(element, lagged, known, scale, loc)
    loc = xp.zeros_like(scale) if loc is None else loc
    lagged_scaled = (lagged - loc[..., None, :]) / scale[..., None, :]
    parts = [(element - loc) / scale]
    if spec.scaling != "none":
        parts.append(xp.log(scale))
    if spec.scaling == "std":
        parts.append(loc)
    parts.append(lagged_scaled.reshape(lagged_scaled.shape[:-2] + (-1,)))
    parts.append(known)
    return xp.concatenate([xp.asarray(part, xp.float32) for part in parts], axis=-1)


def window_inputs(spec: FeatureSpec, values: np.ndarray, known: np.ndarray, *, start: int,
                  length: int, scale: np.ndarray, loc: np.ndarray | None = None) -> np.ndarray:
    """The teacher-forced inputs of steps ``start .. start + length - 1`` of one series:
    ``(length, spec.input_size)`` float32. Row ``j`` predicts ``values[start + j + 1]``.

    Args:
      values: ``(T, d)`` targets (globally normalised; NaN = missing, fed as ``loc``).
      known: ``(T', K)`` known features, ``T' >= start + length + 1`` (the step after the last
        input is the last one predicted).
      start: ``>= spec.max_lag - 1``, so every lag of the first row exists.
      scale, loc: ``(d,)`` from :func:`window_scale` (``loc`` None: zeros).

    Example::

        loc, scale = window_scale(values[11 : 11 + spec.context_length], spec)
        inputs = window_inputs(spec, values, known, start=11, length=36, scale=scale, loc=loc)
    """
    if start < spec.max_lag - 1:
        raise ValueError(f"start={start} is before the first step with every lag "
                         f"({spec.max_lag - 1} for lags up to {spec.max_lag})")
    if start + length > len(values) or start + length + 1 > len(known) and spec.known_size:
        raise ValueError(f"steps {start}..{start + length - 1} do not fit a series of "
                         f"{len(values)} steps with {len(known)} known rows")
    d = spec.target_size
    loc = np.zeros((d,), np.float64) if loc is None else np.asarray(loc, np.float64)
    filled = fill_missing(values, loc)
    steps = np.arange(start, start + length)
    lagged = filled[steps[:, None] + 1 - np.asarray(spec.extra_lags, int)[None, :]] \
        if spec.extra_lags else np.zeros((length, 0, spec.target_size))
    known_rows = (known[steps + 1] if spec.known_size
                  else np.zeros((length, 0), np.float32))
    scale = np.broadcast_to(np.asarray(scale, np.float64), (length, d))
    return assemble(spec, filled[steps], lagged, known_rows, scale,
                    np.broadcast_to(loc, (length, d)))
