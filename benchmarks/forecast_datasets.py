"""The real series of the forecasting benchmark, with their frequency, season and windows.

One definition serves every arm of ``bench_forecast_real`` (seqmodel, the classical baselines)
and of ``bench_forecast_peers`` (DeepAR, NHITS, LSTM, statsforecast), so that each method sees
the very same histories and is scored on the very same windows. Nothing is downloaded: the
series ship inside pmdarima and statsmodels (the ``bench`` extra).

- ``taylor``: half-hourly electricity demand, 12 weeks (pmdarima), season 48 (a day) and 336
  (a week);
- ``wineind``, ``airpassengers``, ``sunspots``: monthly (pmdarima), season 12;
- ``co2``: weekly Mauna Loa CO2 (statsmodels; its 59 missing weeks filled by linear
  interpolation), season 52;
- ``panel``: 40 generated monthly series whose levels span four orders of magnitude, lengths 96
  to 180 months ending together, season 12.

The last ``windows`` windows of ``horizon`` steps of every series are held out: window ``k``
starts at origin ``T_i - (windows - k) horizon`` and a method forecasting it may use
``values[:origin]`` only (:func:`origins`, :func:`histories`). Numpy only: no JAX, no seqmodel.

Example::

    task = load_task("airpassengers")
    task.freq, task.season, task.horizon, task.windows        # 'MS', 12, 12, 3
    origins(task)                                              # [[108, 120, 132]]
    histories(task)[0][0].shape                                # (108,)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ForecastTask:
    """One dataset and its backtest windows.

    Attributes:
      name: the dataset's name.
      series: ``[(id, times (T_i,) datetime64, values (T_i,) float64)]``.
      freq: the pandas frequency alias of the time stamps (``"30min"``, ``"MS"``, ``"W-SAT"``).
      season: the season of MASE's scale and of seasonal naive.
      long_seasons: every seasonal period of the data, longest last (``(48, 336)`` for taylor):
        MSTL's periods, and the season of the long seasonal naive.
      horizon, windows: ``H`` steps per window, ``N`` windows at the end of every series.
    """

    name: str
    series: list
    freq: str
    season: int
    long_seasons: tuple[int, ...]
    horizon: int
    windows: int

    @property
    def lengths(self) -> list[int]:
        return [len(values) for _, _, values in self.series]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to load a dataset and how it is backtested."""

    loader: Callable[[], list]
    freq: str
    season: int
    horizon: int
    windows: int
    long_seasons: tuple[int, ...] = ()


# -- the data -----------------------------------------------------------------------------------


def _monthly(start: str, count: int) -> np.ndarray:
    return np.datetime64(start, "M") + np.arange(count)


def load_taylor():
    from pmdarima import datasets

    values = np.asarray(datasets.load_taylor(), np.float64)
    # Monday 5 June 2000 to Sunday 27 August 2000, every 30 minutes (the series' documentation).
    times = np.datetime64("2000-06-05T00:00") + np.arange(len(values)) * np.timedelta64(30, "m")
    return [("taylor", times, values)]


def load_pmdarima_monthly(name: str, start: str):
    from pmdarima import datasets

    values = np.asarray(getattr(datasets, f"load_{name}")(), np.float64)
    return [(name, _monthly(start, len(values)), values)]


def load_co2():
    import statsmodels.api as statsmodels

    frame = statsmodels.datasets.co2.load_pandas().data["co2"].interpolate()
    times = frame.index.values.astype("datetime64[D]")
    return [("co2", times, frame.to_numpy(np.float64))]


def load_panel(count: int = 40, seed: int = 0):
    """Related monthly series: a shared yearly shape, each with its own level (10^0 to 10^4),
    growth, phase shift and noise, lengths 96 to 180 months ending together."""
    rng = np.random.default_rng(seed)
    end = np.datetime64("2024-12", "M")
    series = []
    for index in range(count):
        length = int(rng.integers(96, 181))
        steps = np.arange(length)
        level = 10 ** rng.uniform(0, 4)
        growth = rng.uniform(-0.002, 0.01)
        shape = 1 + 0.3 * np.sin(2 * np.pi * (steps + rng.integers(3)) / 12) + 0.1 * np.cos(
            4 * np.pi * steps / 12)
        noise = 1 + rng.uniform(0.02, 0.08) * rng.standard_normal(length)
        values = level * np.exp(growth * steps) * shape * noise
        series.append((f"s{index:02d}", end - length + 1 + steps, values))
    return series


# The order is the benchmark's: taylor (the slowest classical fits) last.
DATASETS = {
    "wineind": DatasetSpec(lambda: load_pmdarima_monthly("wineind", "1980-01"), freq="MS",
                           season=12, horizon=12, windows=3),
    "airpassengers": DatasetSpec(lambda: load_pmdarima_monthly("airpassengers", "1949-01"),
                                 freq="MS", season=12, horizon=12, windows=3),
    "sunspots": DatasetSpec(lambda: load_pmdarima_monthly("sunspots", "1749-01"), freq="MS",
                            season=12, horizon=24, windows=5),
    "co2": DatasetSpec(load_co2, freq="W-SAT", season=52, horizon=52, windows=4,
                       long_seasons=(52,)),
    "panel": DatasetSpec(load_panel, freq="MS", season=12, horizon=12, windows=2),
    "taylor": DatasetSpec(load_taylor, freq="30min", season=48, horizon=48, windows=7,
                          long_seasons=(48, 336)),
}


def load_task(name: str) -> ForecastTask:
    """The dataset ``name`` (one of :data:`DATASETS`) with its windows.

    Example::

        load_task("taylor").long_seasons      # (48, 336)
    """
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is unknown: allowed are {', '.join(DATASETS)}")
    spec = DATASETS[name]
    return ForecastTask(name, spec.loader(), spec.freq, spec.season,
                        spec.long_seasons or (spec.season,), spec.horizon, spec.windows)


# -- the windows --------------------------------------------------------------------------------


def window_origins(lengths, *, windows: int, horizon: int) -> list[list[int]]:
    """``[[origin of window k for k < windows] per series]``: ``T_i - (windows - k) horizon``,
    the first forecast step of each window (as
    :func:`seqmodel.forecasting.backtest.origins_of`)."""
    for name, value in (("windows", windows), ("horizon", horizon)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: allowed is a positive integer")
    origins = [[int(length) - (windows - k) * horizon for k in range(windows)]
               for length in lengths]
    for index, row in enumerate(origins):
        if row[0] < 1:
            raise ValueError(f"series {index} has {lengths[index]} steps: {windows} windows of "
                             f"{horizon} leave no history before the first")
    return origins


def origins(task: ForecastTask) -> list[list[int]]:
    """The task's origins, ``[[int] * windows] * series``."""
    return window_origins(task.lengths, windows=task.windows, horizon=task.horizon)


def histories(task: ForecastTask) -> list[list[np.ndarray]]:
    """``histories[i][k]``: the values of series ``i`` before window ``k``'s origin, all that a
    method may see when it forecasts that window."""
    return [[values[:origin] for origin in row]
            for (_, _, values), row in zip(task.series, origins(task))]


def truth(task: ForecastTask) -> np.ndarray:
    """``(n, N, H)`` the held-out values of every window."""
    return np.stack([np.stack([values[origin:origin + task.horizon] for origin in row])
                     for (_, _, values), row in zip(task.series, origins(task))])
