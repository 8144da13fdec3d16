"""The :class:`Forecaster`: a trained real-valued model and the preparation of its data, which
forecasts new data in original units.

It reads a history the way the model's training data was read (the same columns, time column,
ids, static categories), turns it into series through the saved
:class:`~seqmodel.data.preparation.Preparation`, extends each series' known features over the
horizon (future time stamps from the frequency; future covariates from ``future``) and draws
sample paths with the model's free-running program (:mod:`seqmodel.forecasting.free_running`).
``seqmodel sample``, ``seqmodel eval`` (its horizon report and backtest) and the DataFrame
interface all go through it.

Example::

    forecaster = Forecaster.load("runs/sales")
    forecast = forecaster.predict("sales.csv", horizon=14, num_samples=200)
    forecast.paths                        # (n, 200, 14, d) original units
    forecast.quantiles((0.1, 0.5, 0.9))   # (3, n, 14, d)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from seqmodel.configs import REPORT_NUM_SAMPLES, REPORT_NUM_STARTS
from seqmodel.data import calendar, read_source
from seqmodel.data.batching import DataError
from seqmodel.data.preparation import Preparation, known_rows
from seqmodel.data.readers import DELIMITED_SUFFIXES, column_names
from seqmodel.data.series import SeriesDataset, plain_preparation
from seqmodel.data.tables import Table
from seqmodel.forecasting.free_running import forecast_series
from seqmodel.forecasting.reports import horizon_report

Array = jax.Array
DEFAULT_NUM_SAMPLES = 200


class Forecast(NamedTuple):
    """Sample paths of ``n`` series, ``H`` steps ahead, in original units.

    Attributes:
      paths: ``(n, S, H, d)``.
      names: the series' names (their ids).
      times: per series, the ``(H,)`` time stamps of the forecast steps, or None without a time
        column.
      columns: the ``d`` target columns.
    """

    paths: np.ndarray
    names: list
    times: list | None
    columns: tuple

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """``(Q, n, H, d)``: the empirical quantiles of the paths at ``levels``."""
        return np.quantile(self.paths, np.asarray(levels, np.float64), axis=1)

    @property
    def median(self) -> np.ndarray:
        """``(n, H, d)``: the point forecast."""
        return np.median(self.paths, axis=1)

    @property
    def mean(self) -> np.ndarray:
        return self.paths.mean(axis=1)


class Forecaster:
    """A trained real-valued model (``SequenceModel``) with the preparation of its data.

    Args:
      model: the model, laid out as ``preparation.spec`` says.
      preparation: the fitted :class:`~seqmodel.data.preparation.Preparation`.
      members: more models of the same layout (an ensemble over seeds or heads): forecasts pool
        their sample paths, an equal share of the paths from each.
      seen: what training and validation saw of each series (``dataset.seen()``): backtests
        refuse windows that overlap it.
      calibration: conformal margins of the intervals
        (:class:`~seqmodel.forecasting.conformal.Calibration`), applied to the quantiles that
        :meth:`predict` returns.

    Example::

        forecaster = Forecaster.from_dataset(model, dataset)
        forecast = forecaster.predict(history_array, horizon=24)
    """

    def __init__(self, model, preparation: Preparation, *, members: Sequence = (),
                 seen: Sequence[dict] | None = None, calibration=None):
        for candidate in (model, *members):
            if candidate.config.discrete:
                raise ValueError("a Forecaster needs a real-valued model; this one reads tokens "
                                 f"(vocab_size={candidate.config.vocab_size})")
            if candidate.config.input_size != preparation.spec.input_size:
                raise ValueError(f"the model reads inputs of {candidate.config.input_size} "
                                 f"features, but the preparation lays out "
                                 f"{preparation.spec.input_size}; use the preparation saved "
                                 "with the model")
        self.model, self.preparation = model, preparation
        self.members = list(members)
        self.seen = list(seen or ())
        self.calibration = calibration
        self.frame = None  # the DataFrame settings of seqmodel.forecasting.fit, when it made it

    @property
    def models(self) -> list:
        """Every model of the forecaster: ``model`` and its ensemble ``members``."""
        return [self.model, *self.members]

    # -- building one ----------------------------------------------------------------------------

    @classmethod
    def from_dataset(cls, model, dataset: SeriesDataset) -> "Forecaster":
        """The forecaster of ``model`` trained on ``dataset``."""
        return cls(model, dataset.preparation, seen=dataset.seen())

    @classmethod
    def from_metadata(cls, model, data: dict) -> "Forecaster":
        """The forecaster of ``model`` from the data metadata of its checkpoint (``kind``
        ``series``, or ``numeric`` / ``forecast`` of earlier releases)."""
        kind = data.get("kind")
        if kind == "series":
            return cls(model, Preparation.from_dict(data["preparation"]), seen=data.get("seen"))
        if kind == "forecast":
            saved = {"features": data["features"], "normalizer": data["normalizer"],
                     "head": data.get("head", model.config.head),
                     "missing": data.get("missing", "reject"),
                     "id_column": data.get("id_column")}
            preparation = Preparation.from_dict(saved)
            frequency = preparation.frequency
            return cls(model, Preparation(preparation.spec, preparation.normalizer,
                                          head=preparation.head,
                                          season=frequency.season if frequency else 1,
                                          missing=preparation.missing,
                                          id_column=preparation.id_column))
        if kind == "numeric":
            from seqmodel.data.normalization import Normalizer

            columns = data.get("columns") or [f"feature {i}" for i in
                                              range(model.config.input_size)]
            return cls(model, plain_preparation(
                columns, Normalizer.from_dict(data["normalizer"]), head=model.config.head,
                missing=data.get("missing", "reject"), id_column=data.get("id_column"),
                time_column=data.get("time_column")))
        raise ValueError(f"the checkpoint's data is {kind!r}, not real-valued series")

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, prefer: str = "best") -> "Forecaster":
        """The forecaster saved in a run folder (``seqmodel train --out``), with the ensemble
        members that ``train --ensemble K`` saved in its ``members/`` folder."""
        from seqmodel.training.checkpoint import load_model

        model, metadata = load_model(run_dir, prefer=prefer)
        forecaster = cls.from_metadata(model, metadata.get("data", {}))
        forecaster.members = load_members(run_dir, prefer=prefer)
        return forecaster

    # -- reading data ----------------------------------------------------------------------------

    def read(self, source: Any, *, future: bool = False, what: str | None = None) -> Table:
        """A history (file, array, list of arrays, DataFrame, table) read with the columns the
        model's data declared; a ``future`` holds the covariates (and the time, id and static
        columns where it has them)."""
        if isinstance(source, Table):
            return source
        spec = self.preparation.spec
        what = what or ("future" if future else "history")
        numeric = spec.covariate_columns if future else spec.target_columns + (
            spec.covariate_columns)
        options: dict = {"missing": self.preparation.missing}
        frame = type(source).__name__ == "DataFrame"
        delimited = isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(
            DELIMITED_SUFFIXES)
        if frame or delimited:
            present = (set(map(str, source.columns)) if frame
                       else set(column_names(source)) if os.path.isfile(source) else None)

            def wanted(name, optional=future):  # a future may leave out what it does not need
                if not name or (optional and present is not None and name not in present):
                    return None
                return name

            # A history without the id column is one series.
            options.update(time_column=wanted(spec.time_column),
                           id_column=wanted(self.preparation.id_column, optional=True),
                           static_columns=tuple(c for c in spec.static_columns if wanted(c)))
            options["target_columns" if frame else "numeric_columns"] = numeric
        try:
            table, _ = read_source(source, **options)
        except DataError as error:
            raise DataError(f"{what}: {error}") from None
        if not (frame or delimited):  # unnamed columns: the model's, in order
            if len(table.columns) != len(numeric):
                raise DataError(f"{what}: {len(table.columns)} column(s), but the model reads "
                                f"{len(numeric)} ({', '.join(numeric)})")
            table = dataclasses.replace(table, columns=tuple(numeric))
        return table

    def _future_covariates(self, future: Table | None, names: list[str], horizon: int):
        """Per series, the ``(horizon, c)`` future covariates (matched by id, else in order)."""
        spec = self.preparation.spec
        if not spec.covariate_columns:
            if future is not None:
                raise ValueError("future values apply to models trained with covariates (this "
                                 "one reads none)")
            return [None] * len(names)
        if future is None:
            raise ValueError(f"the model reads the covariates {', '.join(spec.covariate_columns)}"
                             f": give their values over the {horizon} forecast steps (future=)")
        rows = future.select(spec.covariate_columns, what="future")
        future_names = future.names()
        if future.ids and all(name in future_names for name in names):
            order = [future_names.index(name) for name in names]
        elif len(rows) == len(names):
            order = list(range(len(names)))
        else:
            raise ValueError(f"the future holds {len(rows)} series, the history {len(names)}; "
                             "give one future per history series (same ids)")
        result = []
        for name, index in zip(names, order):
            if len(rows[index]) < horizon:
                raise ValueError(f"the future has {len(rows[index])} row(s) for series {name!r}, "
                                 f"fewer than the horizon {horizon}: give the covariates' values "
                                 "for every forecast step")
            result.append(rows[index][:horizon])
        return result

    def inputs(self, history: Table, future: Table | None, horizon: int):
        """``(values, known, names, future_times)`` of each series of ``history``: its
        normalised targets ``(T_i, d)``, known features ``(T_i + H, K)`` and the time stamps of
        its ``H`` forecast steps (None without a time column)."""
        preparation, spec = self.preparation, self.preparation.spec
        series = preparation.series(history, source="the history")
        names = [item.name for item in series]
        covariates = (history.select(spec.covariate_columns, what="the history")
                      if spec.covariate_columns else None)
        future_covariates = self._future_covariates(future, names, horizon)
        frequency = preparation.frequency
        values, known, future_times = [], [], []
        for index, item in enumerate(series):
            times = None
            if item.times is not None and frequency is not None:
                following = calendar.advance(item.times[-1], frequency, horizon)
                times = np.concatenate([item.times, following])
                future_times.append(following)
            covariate_rows = None
            if covariates is not None:
                covariate_rows = np.concatenate([covariates[index], future_covariates[index]])
            values.append(item.values)
            known.append(known_rows(spec, times, covariate_rows, item.static,
                                    len(item) + horizon))
        return values, known, names, (future_times if future_times else None)

    # -- forecasting -----------------------------------------------------------------------------

    def sample(self, values: Sequence[np.ndarray], known: Sequence[np.ndarray] | None, *,
               horizon: int, num_samples: int, key: Array, temperature: float = 1.0
               ) -> np.ndarray:
        """Sample paths ``(n, S, H, d)`` in original units from prepared histories (normalised
        ``values`` ``(T_i, d)``, ``known`` ``(T_i + H, K)``): ``S`` split evenly over the
        models, model ``k`` drawing with ``fold_in(key, k)``."""
        models = self.models
        counts = [num_samples // len(models) + (k < num_samples % len(models))
                  for k in range(len(models))]
        parts = [forecast_series(model, self.preparation.spec, self.preparation.normalizer,
                                 values, known, key=jax.random.fold_in(key, k) if k else key,
                                 horizon=horizon, num_samples=count, temperature=temperature)
                 for k, (model, count) in enumerate(zip(models, counts)) if count]
        return np.concatenate(parts, axis=1)

    def interval_quantiles(self, forecast: Forecast, levels: Sequence[float],
                           histories: Sequence[np.ndarray] | None = None,
                           calibrated: bool = True) -> np.ndarray:
        """``(Q, n, H, d)`` quantiles of ``forecast`` at ``levels``; with a calibration (and
        ``calibrated``), every calibrated central interval moved by its conformal margin times
        the scale of each history (original units ``(T_i, d)``)."""
        from seqmodel.forecasting.conformal import window_scale

        quantiles = forecast.quantiles(levels)
        if self.calibration is None or not calibrated:
            return quantiles
        if histories is None:
            raise ValueError("calibrated quantiles need the histories the forecast started from")
        scale = np.stack([window_scale(h, self.preparation.spec.context_length)
                          for h in histories])
        return self.calibration.adjust(quantiles, levels, scale)

    def predict(self, history: Any = None, future: Any = None, *, horizon: int | None = None,
                num_samples: int = DEFAULT_NUM_SAMPLES, quantiles: Sequence[float] | None = None,
                key: Array | None = None, temperature: float = 1.0, calibrated: bool = True,
                h: int | None = None, df: Any = None, futr_df: Any = None,
                level: Sequence[float] | None = None):
        """Sample paths after the end of every series of ``history``, in original units.

        A forecaster made by :func:`seqmodel.forecasting.fit` also answers in the DataFrame
        shape of statsforecast / neuralforecast: ``predict(h=None, df=None, futr_df=None,
        level=(80, 95))`` (or ``predict()``, or a DataFrame history) returns a frame with
        ``unique_id``, ``ds``, ``seqmodel`` and ``seqmodel-lo-80`` / ``seqmodel-hi-80`` ...
        (:func:`seqmodel.forecasting.frame_io.predict_frame`).

        Args:
          history: a file, a NumPy array ``(t, d)`` / ``(n, t, d)``, a list of arrays, a long
            DataFrame or a :class:`~seqmodel.data.tables.Table`, with the columns of the training
            data (its time column, covariates, static columns).
          future: the covariates over the ``horizon`` steps after each series (same forms; by id
            when the history has ids), for models trained with covariates.
          horizon: ``H`` steps to forecast.
          num_samples: ``S`` paths per series.
          quantiles: when given, return ``(Forecast, quantiles (Q, n, H, d))``; a calibrated
            forecaster's central intervals are conformal (``calibrated=False``: the raw ones).
          key: PRNG key (default ``jax.random.key(0)``); the same key gives the same paths.
          temperature: spread scaling of the head (0: the mode at every step).

        Returns:
          a :class:`Forecast` (and its quantiles when asked).

        Raises:
          ValueError / DataError: one line naming what is wrong with the history or future.
        """
        frame_call = (h is not None or df is not None or futr_df is not None or level is not None
                      or (horizon is None and (history is None
                                               or type(history).__name__ == "DataFrame")))
        if frame_call:
            from seqmodel.forecasting.frame_io import DEFAULT_LEVELS, predict_frame

            return predict_frame(
                self, h=h if h is not None else horizon, df=df if df is not None else history,
                futr_df=futr_df if futr_df is not None else future,
                level=DEFAULT_LEVELS if level is None else level,
                num_samples=None if num_samples == DEFAULT_NUM_SAMPLES else num_samples, key=key,
                calibrated=calibrated)
        if not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon={horizon!r} is invalid: allowed is a positive integer")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} is invalid: allowed is a positive "
                             "integer")
        table = history if isinstance(history, Table) else self.read(history)
        future_table = None if future is None else (
            future if isinstance(future, Table) else self.read(future, future=True))
        values, known, names, times = self.inputs(table, future_table, int(horizon))
        paths = self.sample(values, known, horizon=int(horizon), num_samples=int(num_samples),
                            key=jax.random.key(0) if key is None else key,
                            temperature=temperature)
        forecast = Forecast(paths, names, times, self.preparation.columns)
        if quantiles is not None:
            histories = [self.preparation.normalizer.denormalize(v) for v in values]
            return forecast, self.interval_quantiles(forecast, quantiles, histories, calibrated)
        return forecast

    def report(self, dataset: SeriesDataset, *, horizon: int, key: Array | None = None,
               num_samples: int = REPORT_NUM_SAMPLES, num_starts: int = REPORT_NUM_STARTS,
               temperature: float = 1.0, nll: float | None = None) -> dict:
        """The horizon report (:func:`seqmodel.forecasting.reports.horizon_report`) on the
        validation part of ``dataset``."""
        return horizon_report(self.model, self.preparation, dataset.series, dataset.splits,
                              key=jax.random.key(0) if key is None else key, horizon=horizon,
                              num_samples=num_samples, num_starts=num_starts,
                              temperature=temperature, nll=nll)


MEMBERS_FOLDER = "members"


def member_folders(run_dir: str | os.PathLike) -> list:
    """The run folders of the ensemble members of ``run_dir`` (``members/1``, ``members/2``,
    ...), in order."""
    import pathlib

    folder = pathlib.Path(run_dir) / MEMBERS_FOLDER
    if not folder.is_dir():
        return []
    return sorted((child for child in folder.iterdir() if child.name.isdigit()),
                  key=lambda child: int(child.name))


def load_members(run_dir: str | os.PathLike, *, prefer: str = "best") -> list:
    """The models of the ensemble members saved beside the run in ``run_dir``."""
    from seqmodel.training.checkpoint import load_model

    return [load_model(folder, prefer=prefer)[0] for folder in member_folders(run_dir)]
