"""The DataFrame interface of statsforecast / neuralforecast: ``fit``, ``Forecaster.predict`` and
``cross_validation`` on long frames.

The frame holds one row per series and time step: ``unique_id``, ``ds`` (datetimes or integers),
``y`` and, optionally, exogenous columns (known-future covariates: ``predict`` takes their future
values in ``futr_df``); ``static_df`` holds one row per series with its static columns. Forecasts
come back as a frame with ``unique_id``, ``ds``, a ``seqmodel`` point column (the median of the
sample paths) and ``seqmodel-lo-{level}`` / ``seqmodel-hi-{level}`` interval columns, calibrated
by split-conformal margins (:mod:`seqmodel.forecasting.conformal`) unless ``calibrate=False``.

Example::

    import seqmodel.forecasting as smf
    forecaster = smf.fit(train_df, h=14, steps=800, ensemble=3)
    forecast_df = forecaster.predict(level=(80, 95))          # after the end of train_df
    cv_df = smf.cross_validation(df, h=14, n_windows=4)      # + cutoff, y
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from seqmodel.configs import SERIES_MODEL_DEFAULTS, SERIES_TRAIN_DEFAULTS
from seqmodel.data.tables import FRAME_ID, FRAME_TARGET, FRAME_TIME

MODEL_NAME = "seqmodel"
DEFAULT_LEVELS = (80, 95)
DEFAULT_NUM_SAMPLES = 200
# Settings of fit, by where they go: the model, the data, the training run.
MODEL_SETTINGS = ("cell", "hidden_size", "num_layers", "dropout", "num_mixtures", "embed_size")
DATA_SETTINGS = ("lags", "scaling", "context_length", "season", "head", "missing")
TRAIN_SETTINGS = ("steps", "max_time", "batch_size", "seq_len", "learning_rate", "seed",
                  "steps_per_call", "eval_every", "warmup_steps", "weight_decay")
OTHER_SETTINGS = ("ensemble", "heads", "calibrate", "val_fraction", "num_samples", "out_dir",
                  "progress")


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


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is part of the forecast extra
        raise ImportError("the DataFrame interface needs pandas: pip install "
                          "'seqmodel[forecast]'") from None
    return pd


def _check_frame(df, id_col: str, time_col: str, target_col: str, what: str = "df"):
    pd = _pandas()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (id_col, time_col, target_col) if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; a long frame has {id_col!r}, "
                         f"{time_col!r} and {target_col!r} (and optional exogenous columns)")


def _with_static(df, static_df, id_col: str):
    if static_df is None:
        return df, ()
    if id_col not in static_df.columns:
        raise ValueError(f"static_df lacks the id column {id_col!r}")
    columns = tuple(c for c in static_df.columns if c != id_col)
    return df.drop(columns=[c for c in columns if c in df.columns]).merge(
        static_df, on=id_col, how="left"), columns


def _default_val_fraction(lengths: Sequence[int], h: int) -> float:
    """Enough validation steps for a horizon and a few calibration windows (at least 10%, at
    most 30% of the median series)."""
    median = float(np.median(lengths))
    return float(min(0.3, max(0.1, 1.5 * h / median)))


def fit(df, *, h: int, freq: Any = None, static_df=None, id_col: str = FRAME_ID,
        time_col: str = FRAME_TIME, target_col: str = FRAME_TARGET, **settings):
    """Train seqmodel forecasters on a long frame and return the :class:`Forecaster`.

    Args:
      df: ``unique_id``, ``ds``, ``y`` and optional exogenous (known-future) columns.
      h: the forecast horizon (sets the training windows and the calibration).
      freq: a pandas frequency (``"D"``, ``"W"``, ``"MS"``, ...) for the future ``ds`` of
        ``predict``; default: inferred from ``ds``.
      static_df: one row per ``unique_id`` with its static (categorical) columns.
      settings: the model (``cell``, ``hidden_size``, ``num_layers``, ``dropout``), the data
        (``lags``, ``scaling``, ``context_length``, ``season``, ``head``, ``missing``), training
        (``steps``, ``max_time``, ``batch_size``, ``seq_len``, ``learning_rate``, ``seed``,
        ``eval_every``; defaults: ``seqmodel.configs.SERIES_TRAIN_DEFAULTS`` and
        ``SERIES_MODEL_DEFAULTS``, the best validation parameters kept), ``ensemble`` (members trained with seeds ``seed + k``;
        default 1), ``heads`` (the heads the members cycle through, e.g.
        ``("student_t", "gaussian")``), ``calibrate`` (conformal intervals, default True),
        ``val_fraction``, ``num_samples`` (paths per forecast, default 200), ``out_dir`` (run
        folders: member ``k`` in ``out_dir/member-k``), ``progress``.

    Returns:
      a :class:`~seqmodel.forecasting.forecaster.Forecaster` whose ``predict()`` answers with a
      frame.
    """
    from flax import nnx

    from seqmodel.data import load_dataset
    from seqmodel.forecasting.conformal import calibrate
    from seqmodel.forecasting.forecaster import Forecaster
    from seqmodel.nn.model import ModelConfig, SequenceModel
    from seqmodel.training.checkpoint import load_model
    from seqmodel.training.fitting import fit as fit_model
    from seqmodel.training.optimization import TrainConfig

    allowed = MODEL_SETTINGS + DATA_SETTINGS + TRAIN_SETTINGS + OTHER_SETTINGS
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}: allowed are "
                         f"{', '.join(allowed)}")
    if not isinstance(h, (int, np.integer)) or h < 1:
        raise ValueError(f"h={h!r} is invalid: allowed is a positive integer")
    _check_frame(df, id_col, time_col, target_col)
    started = time.perf_counter()
    frame, static_columns = _with_static(df, static_df, id_col)
    exogenous = tuple(c for c in frame.columns
                      if c not in (id_col, time_col, target_col, *static_columns))
    lengths = frame.groupby(id_col, sort=False).size().to_numpy()
    val_fraction = settings.get("val_fraction") or _default_val_fraction(lengths, int(h))
    data_options = {key: settings[key] for key in DATA_SETTINGS if settings.get(key) is not None}
    dataset = load_dataset(frame, val_fraction=val_fraction, time_column=time_col,
                           id_column=id_col, target_columns=(target_col,),
                           covariates=exogenous, static_columns=static_columns, **data_options)
    ensemble = int(settings.get("ensemble") or 1)
    if ensemble < 1:
        raise ValueError(f"ensemble={ensemble!r} is invalid: allowed is a positive integer")
    heads = tuple(settings.get("heads") or (dataset.head,))
    train_values = {key: settings[key] for key in TRAIN_SETTINGS if settings.get(key) is not None}
    if "steps" in train_values or "max_time" in train_values:
        defaults = {k: v for k, v in SERIES_TRAIN_DEFAULTS.items() if k != "steps"}
    else:
        defaults = SERIES_TRAIN_DEFAULTS
    train_values = {**defaults, **train_values}
    train_values.setdefault("seq_len", dataset.default_seq_len(int(h)))
    seed = int(train_values.pop("seed", 0))
    model_values = {**SERIES_MODEL_DEFAULTS, **{key: settings[key] for key in MODEL_SETTINGS
                                               if settings.get(key) is not None}}
    models = []
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = settings.get("out_dir") or scratch
        for member in range(ensemble):
            head = heads[member % len(heads)]
            fields = {**dataset.model_fields(), "head": head}
            model = SequenceModel(ModelConfig(**fields, **model_values),
                                  rngs=nnx.Rngs(seed + member))
            config = TrainConfig(seed=seed + member, val_fraction=val_fraction,
                                 **train_values)
            folder = os.path.join(out_dir, f"member-{member}")
            fit_model(model, dataset, config, progress=bool(settings.get("progress", False)),
                      out_dir=folder)
            # The parameters of the best validation NLL (early stopping on short series).
            models.append(load_model(folder, prefer="best")[0])
    forecaster = Forecaster(models[0], dataset.preparation, members=models[1:],
                            seen=dataset.seen())
    if settings.get("calibrate", True):
        forecaster.calibration = calibrate(forecaster, dataset.series, dataset.splits,
                                           horizon=int(h))
    forecaster.frame = FrameSettings(
        int(h), freq, id_col, time_col, target_col, exogenous, static_df, frame,
        int(settings.get("num_samples") or DEFAULT_NUM_SAMPLES), time.perf_counter() - started,
        dataset)
    return forecaster


def _future_stamps(last, steps: int, freq, preparation):
    """The ``steps`` time stamps after ``last``: by ``freq`` (pandas) when given, else by the
    frequency inferred in training; integers step by one."""
    pd = _pandas()
    if freq is not None:
        return pd.date_range(pd.Timestamp(last), periods=steps + 1, freq=freq)[1:].to_numpy()
    frequency = preparation.frequency
    if isinstance(last, (int, float, np.integer, np.floating)) or frequency is None:
        return np.asarray(last) + np.arange(1, steps + 1)
    from seqmodel.data import calendar

    return calendar.advance(np.datetime64(last), frequency, steps)


def predict_frame(forecaster, h: int | None = None, df=None, futr_df=None,
                  level: Sequence[int] | None = DEFAULT_LEVELS, *, num_samples: int | None = None,
                  key=None, calibrated: bool = True):
    """``unique_id``, ``ds``, ``seqmodel``, ``seqmodel-lo-{level}``, ``seqmodel-hi-{level}``:
    forecasts ``h`` steps after the end of every series of ``df`` (default: the frame ``fit``
    trained on)."""
    import jax

    pd = _pandas()
    settings = forecaster.frame
    if settings is None:
        raise ValueError("this Forecaster was not made by seqmodel.forecasting.fit: call "
                         "predict(history, future, horizon=...) with arrays or files, or give "
                         "it frame settings")
    h = settings.h if h is None else int(h)
    if h > settings.h and forecaster.calibration is not None and calibrated:
        raise ValueError(f"h={h} is longer than the h={settings.h} the forecaster was fitted "
                         "and calibrated for; fit again with the longer h")
    if df is None:
        df = settings.frame
    else:
        _check_frame(df, settings.id_col, settings.time_col, settings.target_col)
        df, _ = _with_static(df, settings.static_df, settings.id_col)
    if futr_df is not None:
        futr_df, _ = _with_static(futr_df, settings.static_df, settings.id_col)
    elif settings.exogenous:
        raise ValueError(f"the model reads the exogenous columns {list(settings.exogenous)}: "
                         f"give their future values in futr_df ({h} rows per unique_id)")
    levels = tuple(sorted(int(v) for v in (level or ())))
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
            part[f"{MODEL_NAME}-lo-{value}"] = quantiles[low, index, :, 0]
            part[f"{MODEL_NAME}-hi-{value}"] = quantiles[high, index, :, 0]
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


def cross_validation(df, *, h: int, n_windows: int = 1, step_size: int | None = None,
                     refit: bool = False, freq: Any = None, static_df=None,
                     id_col: str = FRAME_ID, time_col: str = FRAME_TIME,
                     target_col: str = FRAME_TARGET, level: Sequence[int] | None = DEFAULT_LEVELS,
                     **settings):
    """Rolling-origin cross-validation in statsforecast's shape: ``unique_id``, ``ds``,
    ``cutoff``, ``y``, ``seqmodel`` and the interval columns.

    The last ``n_windows`` windows of ``h`` steps of every series, ``step_size`` (default ``h``)
    apart, each forecast from the history before it (``cutoff`` is the last time stamp of that
    history). With ``refit=False`` the model trains once, on the data before the first window
    (so no window is ever seen in training or validation); ``refit=True`` trains again for every
    window on the data before it. ``settings`` are :func:`fit`'s.
    """
    pd = _pandas()
    _check_frame(df, id_col, time_col, target_col)
    step_size = h if step_size is None else int(step_size)
    if not isinstance(n_windows, (int, np.integer)) or n_windows < 1:
        raise ValueError(f"n_windows={n_windows!r} is invalid: allowed is a positive integer")
    if step_size < 1:
        raise ValueError(f"step_size={step_size!r} is invalid: allowed is a positive integer")
    frame = df.sort_values([id_col, time_col], kind="stable").reset_index(drop=True)
    position = frame.groupby(id_col, sort=False).cumcount()
    length = frame.groupby(id_col, sort=False)[time_col].transform("size")
    from_end = length - position  # 1 for the last row of a series
    span = h + (n_windows - 1) * step_size
    short = frame.loc[length < span + 2, id_col].unique()
    if len(short):
        raise ValueError(f"series {short[0]!r} is shorter than {n_windows} windows of {h} "
                         f"steps {step_size} apart plus 2 steps of history; lower n_windows or h")
    results = []
    forecaster = None
    for window in range(n_windows):
        # The window's first step is `span - window * step_size` rows from the end.
        start = span - window * step_size
        history = frame[from_end > start]
        future = frame[(from_end <= start) & (from_end > start - h)]
        if forecaster is None or refit:
            forecaster = fit(history, h=h,
                             freq=freq, static_df=static_df, id_col=id_col, time_col=time_col,
                             target_col=target_col, **settings)
        exogenous = forecaster.frame.exogenous
        futr_df = future[[id_col, time_col, *exogenous]] if exogenous else None
        forecast = predict_frame(forecaster, h=h, df=history, futr_df=futr_df, level=level)
        cutoffs = history.groupby(id_col, sort=False)[time_col].max().rename("cutoff")
        forecast = forecast.merge(cutoffs, left_on=id_col, right_index=True)
        truth = future[[id_col, time_col, target_col]]
        merged = forecast.drop(columns=[time_col]).assign(
            _step=forecast.groupby(id_col, sort=False).cumcount()).merge(
            truth.assign(_step=truth.groupby(id_col, sort=False).cumcount()),
            on=[id_col, "_step"], how="left").drop(columns=["_step"])
        results.append(merged)
    result = pd.concat(results[::-1], ignore_index=True)
    columns = [id_col, time_col, "cutoff", target_col, MODEL_NAME] + [
        c for c in result.columns if c.startswith(f"{MODEL_NAME}-")]
    return result[columns].sort_values([id_col, "cutoff", time_col], kind="stable").reset_index(
        drop=True)
