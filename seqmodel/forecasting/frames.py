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

import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from seqmodel.configs import SERIES_MODEL_DEFAULTS, series_train_defaults
from seqmodel.data.tables import FRAME_ID, FRAME_TARGET, FRAME_TIME
from seqmodel.forecasting.frame_io import (  # noqa: F401  (predict_frame: the frame answers)
    DEFAULT_LEVELS,
    MODEL_NAME,
    FrameSettings,
    check_frame,
    pandas_module,
    predict_frame,
    with_static,
)

DEFAULT_NUM_SAMPLES = 200
# Settings of fit, by where they go: the model, the data, the training run.
MODEL_SETTINGS = ("cell", "hidden_size", "num_layers", "dropout", "num_mixtures", "embed_size",
                  "input_skip")
DATA_SETTINGS = ("lags", "scaling", "context_length", "season", "anchor", "head", "missing")
TRAIN_SETTINGS = ("steps", "max_time", "batch_size", "seq_len", "learning_rate", "seed",
                  "steps_per_call", "eval_every", "warmup_steps", "weight_decay")
OTHER_SETTINGS = ("ensemble", "heads", "calibrate", "val_fraction", "num_samples", "out_dir",
                  "progress")


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
      settings: the model (``cell``, ``hidden_size``, ``num_layers``, ``dropout``,
        ``input_skip``: a linear path from the inputs to the head, off by default), the data
        (``lags``, ``scaling``, ``context_length``, ``season``, ``anchor``: what the predicted
        location is relative to, default the season's lag else the last value; ``"seasons"``:
        the mean of lags s, 2s, 3s where they are fed, ``head``,
        ``missing``), training
        (``steps``, ``max_time``, ``batch_size``, ``seq_len``, ``learning_rate``, ``seed``,
        ``eval_every``; defaults: ``seqmodel.configs.SERIES_TRAIN_DEFAULTS`` and
        ``SERIES_MODEL_DEFAULTS``, steps from ``series_steps``: 800 for one short series, more
        for many or long ones; the best validation parameters kept), ``ensemble`` (members
        trained with seeds ``seed + k``; default 1), ``heads`` (the heads the members cycle through, e.g.
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
    check_frame(df, id_col, time_col, target_col)
    started = time.perf_counter()
    frame, static_columns = with_static(df, static_df, id_col)
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
    budget_given = "steps" in train_values or "max_time" in train_values
    defaults = series_train_defaults([len(item) for item in dataset.train_series],
                                     budget_given=budget_given)
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
        dataset, train_values.get("steps"))
    return forecaster


def cross_validation(df, *, h: int, n_windows: int = 1, step_size: int | None = None,
                     refit: bool = False, freq: Any = None, static_df=None,
                     id_col: str = FRAME_ID, time_col: str = FRAME_TIME,
                     target_col: str = FRAME_TARGET,
                     level: Sequence[float] | None = DEFAULT_LEVELS,
                     **settings):
    """Rolling-origin cross-validation in statsforecast's shape: ``unique_id``, ``ds``,
    ``cutoff``, ``y``, ``seqmodel`` and the interval columns.

    The last ``n_windows`` windows of ``h`` steps of every series, ``step_size`` (default ``h``)
    apart, each forecast from the history before it (``cutoff`` is the last time stamp of that
    history). With ``refit=False`` the model trains once, on the data before the first window
    (so no window is ever seen in training or validation); ``refit=True`` trains again for every
    window on the data before it. ``settings`` are :func:`fit`'s.
    """
    pd = pandas_module()
    check_frame(df, id_col, time_col, target_col)
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
