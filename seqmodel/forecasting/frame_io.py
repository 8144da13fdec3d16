"""Frames in and out for :mod:`seqmodel.forecasting.frames`: what ``fit`` remembers of its frame,
the checks of a long frame, and ``predict`` answering with a frame (``Forecaster.predict`` calls
:func:`predict_frame`; this module imports no forecaster, so both can use it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

MODEL_NAME = "seqmodel"
DEFAULT_LEVELS = (80, 95)


@dataclasses.dataclass
class FrameSettings:
    """What ``fit`` remembers of its frame, so that ``predict`` answers in the same shape."""

    h: int
    freq: Any
    id_col: str
    time_col: str
    target_col: str
    exogenous: tuple
    static_df: Any
    frame: Any
    num_samples: int
    fit_seconds: float
    dataset: Any = None  # the SeriesDataset trained on (its series and splits calibrate)
    train_steps: int | None = None  # each member's training steps (None: a time budget)


def pandas_module():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is part of the forecast extra
        raise ImportError("the DataFrame interface needs pandas: pip install "
                          "'seqmodel[forecast]'") from None
    return pd


def check_frame(df, id_col: str, time_col: str, target_col: str, what: str = "df"):
    pd = pandas_module()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (id_col, time_col, target_col) if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; a long frame has {id_col!r}, "
                         f"{time_col!r} and {target_col!r} (and optional exogenous columns)")


def with_static(df, static_df, id_col: str):
    if static_df is None:
        return df, ()
    if id_col not in static_df.columns:
        raise ValueError(f"static_df lacks the id column {id_col!r}")
    columns = tuple(c for c in static_df.columns if c != id_col)
    return df.drop(columns=[c for c in columns if c in df.columns]).merge(
        static_df, on=id_col, how="left"), columns


def _future_stamps(last, steps: int, freq, preparation):
    """The ``steps`` time stamps after ``last``: by ``freq`` (pandas) when given, else by the
    frequency inferred in training; integers step by one."""
    pd = pandas_module()
    if freq is not None:
        return pd.date_range(pd.Timestamp(last), periods=steps + 1, freq=freq)[1:].to_numpy()
    frequency = preparation.frequency
    if isinstance(last, (int, float, np.integer, np.floating)) or frequency is None:
        return np.asarray(last) + np.arange(1, steps + 1)
    from seqmodel.data import calendar

    return calendar.advance(np.datetime64(last), frequency, steps)


def interval_levels(level) -> tuple[float, ...]:
    """The interval levels of ``predict`` / ``cross_validation`` (statsforecast's ``level``:
    coverages in percent, e.g. ``(80, 95)``), sorted and without repeats; None or empty: none.

    Raises:
      ValueError: a level that is not a number strictly between 0 and 100.
    """
    if level is None:
        return ()
    values = [level] if isinstance(level, (int, float, np.number)) else list(level)
    for value in values:
        if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                or not 0 < value < 100):
            raise ValueError(f"level={value!r} is invalid: allowed are interval coverages in "
                             "percent, numbers strictly between 0 and 100 (e.g. level=(80, 95))")
    return tuple(sorted({float(value) for value in values}))


def predict_frame(forecaster, h: int | None = None, df=None, futr_df=None,
                  level: Sequence[float] | None = DEFAULT_LEVELS, *, num_samples: int | None = None,
                  key=None, calibrated: bool = True):
    """``unique_id``, ``ds``, ``seqmodel``, ``seqmodel-lo-{level}``, ``seqmodel-hi-{level}``:
    forecasts ``h`` steps after the end of every series of ``df`` (default: the frame ``fit``
    trained on)."""
    import jax

    pd = pandas_module()
    settings = forecaster.frame
    if settings is None:
        raise ValueError("this Forecaster was not made by seqmodel.forecasting.fit: call "
                         "predict(history, future, horizon=...) with arrays or files, or give "
                         "it frame settings")
    if h is not None and (isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1):
        raise ValueError(f"h={h!r} is invalid: allowed is a positive integer (at most the "
                         f"h={settings.h} the forecaster was fitted for)")
    h = settings.h if h is None else int(h)
    if h > settings.h and forecaster.calibration is not None and calibrated:
        raise ValueError(f"h={h} is longer than the h={settings.h} the forecaster was fitted "
                         "and calibrated for; fit again with the longer h")
    if df is None:
        df = settings.frame
    else:
        check_frame(df, settings.id_col, settings.time_col, settings.target_col)
        df, _ = with_static(df, settings.static_df, settings.id_col)
    if futr_df is not None:
        futr_df, _ = with_static(futr_df, settings.static_df, settings.id_col)
    elif settings.exogenous:
        raise ValueError(f"the model reads the exogenous columns {list(settings.exogenous)}: "
                         f"give their future values in futr_df ({h} rows per unique_id)")
    levels = interval_levels(level)
    quantile_levels = sorted({0.5} | {round(0.5 - v / 200, 6) for v in levels}
                             | {round(0.5 + v / 200, 6) for v in levels})
    history = forecaster.read(df)
    future = None if futr_df is None else forecaster.read(futr_df, future=True)
    forecast, quantiles = forecaster.predict(
        history, future, horizon=h, num_samples=num_samples or settings.num_samples,
        quantiles=quantile_levels, key=jax.random.key(0) if key is None else key,
        calibrated=calibrated)
    rows = []
    last_stamps = df.groupby(settings.id_col, sort=False)[settings.time_col].max()
    for index, name in enumerate(forecast.names):
        stamps = _future_stamps(last_stamps.loc[_id_key(last_stamps, name)], h, settings.freq,
                                forecaster.preparation)
        part = {settings.id_col: [name] * h, settings.time_col: stamps,
                MODEL_NAME: quantiles[quantile_levels.index(0.5), index, :, 0]}
        for value in levels:
            low = quantile_levels.index(round(0.5 - value / 200, 6))
            high = quantile_levels.index(round(0.5 + value / 200, 6))
            part[f"{MODEL_NAME}-lo-{value:g}"] = quantiles[low, index, :, 0]
            part[f"{MODEL_NAME}-hi-{value:g}"] = quantiles[high, index, :, 0]
        rows.append(pd.DataFrame(part))
    result = pd.concat(rows, ignore_index=True)
    return _restore_id_dtype(result, df, settings.id_col)


def _id_key(index, name: str):
    """The id in ``index`` whose text is ``name`` (ids may be integers in the frame)."""
    for key in index.index:
        if str(key) == name:
            return key
    raise KeyError(name)


def _restore_id_dtype(result, df, id_col: str):
    mapping = {str(value): value for value in df[id_col].unique()}
    result[id_col] = result[id_col].map(mapping)
    return result
