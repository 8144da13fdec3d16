"""Forecasting peers in their own processes: the request, the response and the windows.

A peer (GluonTS's DeepAR, neuralforecast's NHITS and LSTM, statsforecast's AutoETS, AutoARIMA,
MSTL and seasonal naive) runs in a subprocess, ``python -m benchmarks.forecast_peers_worker
FOLDER``, possibly under another interpreter (a virtual environment holding torch, GluonTS and
neuralforecast, apart from seqmodel's). The parent writes a :class:`PeerRequest` into ``FOLDER``
(``request.json`` + ``request.npz``), the worker writes a :class:`PeerResponse` beside it
(``response.json`` + ``response.npz``). Only NumPy and the standard library are imported here, so
both sides share this module.

The protocol is honest by construction:

- the request carries each series only up to its last origin: the last window's truth never
  reaches the worker;
- a model that trains (``refit=False`` semantics) trains once, on :func:`training_values`, the
  values before each series' first origin, and forecasts window ``k`` from
  :func:`window_history` (the values before origin ``k``) without training again;
- a model that fits per window (statsforecast) fits on :func:`window_history` alone.

Shapes: ``r`` forecast rows, one per (series, window), series-major (series 0's windows first);
``H`` the horizon; ``Q`` quantile levels; ``K`` seeds; ``S`` sample paths.

Example::

    request = make_request("nhits", task, max_steps=1000, seeds=(0, 1, 2), context_length=24)
    response = run_peer(request, python="/work/venv-peers/bin/python")
    response.quantiles.shape          # (K, Q, r, H)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

# The levels every peer returns: a uniform grid of 39 levels, 0.025 to 0.975, which holds the
# benchmark's levels (0.025, 0.1 ... 0.9, 0.975) and gives every peer the same quantile CRPS.
PEER_QUANTILE_LEVELS = tuple(round(0.025 * step, 3) for step in range(1, 40))
DEEP_MODELS = ("deepar", "nhits", "lstm")
CLASSICAL_MODELS = ("auto_ets", "auto_arima", "mstl", "seasonal_naive_long")
MODELS = DEEP_MODELS + CLASSICAL_MODELS
WORKER_MODULE = "benchmarks.forecast_peers_worker"
CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


class PeerError(RuntimeError):
    """A peer's worker failed; the message ends with the tail of its log."""


@dataclasses.dataclass(frozen=True)
class PeerRequest:
    """What a peer forecasts.

    Attributes:
      model: one of :data:`MODELS`.
      ids: series names ``(n,)``.
      times: ``[(L_i,) datetime64]`` the time stamps of what is sent (``L_i`` = the last origin).
      values: ``[(L_i,) float64]`` each series up to its last origin, never beyond.
      origins: ``[[int] * N] * n`` the first forecast step of every window.
      freq: the pandas frequency alias of the time stamps.
      horizon, season, long_seasons: ``H``, the main season, all seasonal periods.
      context_length: the steps a deep model reads before forecasting (its input size).
      max_steps: optimizer steps of a deep model (its training budget); None for classical.
      seeds: the deep models train once per seed ``(K,)``; classical models use ``(0,)``.
      num_samples: sample paths per window where the model samples (DeepAR).
      quantile_levels: ``(Q,)`` levels of the returned quantiles.
      history_limit: classical models see at most this many steps before each origin (None:
        all; set only where a full-history fit would take too long, with ``limit_reason``).
      options: model settings beyond these (recorded as given).
    """

    model: str
    ids: list
    times: list
    values: list
    origins: list
    freq: str
    horizon: int
    season: int
    long_seasons: tuple
    context_length: int
    max_steps: int | None = None
    seeds: tuple = (0,)
    num_samples: int = 200
    quantile_levels: tuple = PEER_QUANTILE_LEVELS
    history_limit: int | None = None
    limit_reason: str | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r} is unknown: allowed are {', '.join(MODELS)}")
        for index, (values, row) in enumerate(zip(self.values, self.origins)):
            if list(row) != sorted(row) or row[0] < 1:
                raise ValueError(f"origins of series {index} are {row}: they must increase "
                                 "from at least 1")
            if len(values) != row[-1]:
                raise ValueError(
                    f"series {index} carries {len(values)} values, but its last origin is "
                    f"{row[-1]}: a request holds each series up to its last origin exactly")

    @property
    def metadata(self) -> dict:
        fields = dataclasses.asdict(self)
        for name in ("times", "values"):
            fields.pop(name)
        fields["long_seasons"] = list(self.long_seasons)
        fields["seeds"] = list(self.seeds)
        fields["quantile_levels"] = list(self.quantile_levels)
        return fields


@dataclasses.dataclass(frozen=True)
class PeerResponse:
    """What a peer forecast.

    Attributes:
      point: ``(K, r, H)`` the median of each window's forecast, per seed.
      quantiles: ``(K, Q, r, H)`` at ``quantile_levels``.
      samples: ``(K, r, S, H)`` sample paths where the model draws them (DeepAR), else None.
      distribution: ``"samples"``, ``"normal"`` (statsforecast's intervals) or ``"quantiles"``.
      info: timings per seed (``train_seconds``, ``predict_seconds``, ``steps``), versions,
        the settings the worker used and notes on the protocol.
    """

    point: np.ndarray
    quantiles: np.ndarray
    samples: np.ndarray | None
    distribution: str
    quantile_levels: tuple
    info: dict


def make_request(model: str, task, *, context_length: int, max_steps: int | None = None,
                 seeds: Sequence[int] = (0,), num_samples: int = 200,
                 quantile_levels: Sequence[float] = PEER_QUANTILE_LEVELS,
                 history_limit: int | None = None, limit_reason: str | None = None,
                 options: dict | None = None) -> PeerRequest:
    """The request of ``model`` for a :class:`benchmarks.forecast_datasets.ForecastTask`'s
    windows: each series cut at its last origin."""
    from benchmarks.forecast_datasets import origins as task_origins

    rows = task_origins(task)
    return PeerRequest(
        model=model, ids=[name for name, _, _ in task.series],
        times=[np.asarray(times[:row[-1]]) for (_, times, _), row in zip(task.series, rows)],
        values=[np.asarray(values[:row[-1]], np.float64)
                for (_, _, values), row in zip(task.series, rows)],
        origins=rows, freq=task.freq, horizon=task.horizon, season=task.season,
        long_seasons=tuple(task.long_seasons), context_length=context_length,
        max_steps=max_steps, seeds=tuple(int(seed) for seed in seeds), num_samples=num_samples,
        quantile_levels=tuple(float(level) for level in quantile_levels),
        history_limit=history_limit, limit_reason=limit_reason, options=dict(options or {}))


# -- the windows (both sides) --------------------------------------------------------------------


def training_values(request: PeerRequest) -> list[np.ndarray]:
    """``[(o_i0,)]`` each series before its first origin: all a trained model learns from."""
    return [values[:row[0]] for values, row in zip(request.values, request.origins)]


def window_history(request: PeerRequest, window: int, *, limit: int | None = None
                   ) -> list[np.ndarray]:
    """``[(o_ik,)]`` each series before the origin of window ``window`` (its last ``limit``
    steps when given): what any method may read to forecast that window."""
    histories = []
    for values, row in zip(request.values, request.origins):
        history = values[:row[window]]
        histories.append(history if limit is None else history[-limit:])
    return histories


def window_times(request: PeerRequest, window: int) -> list[np.ndarray]:
    """The time stamps of :func:`window_history` (without a limit)."""
    return [times[:row[window]] for times, row in zip(request.times, request.origins)]


def rows_of(request: PeerRequest) -> list[tuple[int, int]]:
    """``[(series, window)]`` in the order of a response's ``r`` axis."""
    return [(series, window) for series, row in enumerate(request.origins)
            for window in range(len(row))]


# -- files ----------------------------------------------------------------------------------------


def write_request(folder, request: PeerRequest) -> None:
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "request.json").write_text(json.dumps(request.metadata, indent=1))
    arrays = {}
    for index, (times, values) in enumerate(zip(request.times, request.values)):
        arrays[f"times_{index}"] = np.asarray(times, "datetime64[ns]")
        arrays[f"values_{index}"] = np.asarray(values, np.float64)
    np.savez(folder / "request.npz", **arrays)


def read_request(folder) -> PeerRequest:
    folder = pathlib.Path(folder)
    fields = json.loads((folder / "request.json").read_text())
    with np.load(folder / "request.npz") as arrays:
        count = len(fields["ids"])
        times = [arrays[f"times_{index}"] for index in range(count)]
        values = [arrays[f"values_{index}"] for index in range(count)]
    fields["long_seasons"] = tuple(fields["long_seasons"])
    fields["seeds"] = tuple(fields["seeds"])
    fields["quantile_levels"] = tuple(fields["quantile_levels"])
    return PeerRequest(times=times, values=values, **fields)


def write_response(folder, response: PeerResponse) -> None:
    folder = pathlib.Path(folder)
    arrays = {"point": response.point, "quantiles": response.quantiles}
    if response.samples is not None:
        arrays["samples"] = np.asarray(response.samples, np.float32)
    np.savez(folder / "response.npz", **arrays)
    (folder / "response.json").write_text(json.dumps(
        {"distribution": response.distribution,
         "quantile_levels": list(response.quantile_levels), "info": response.info}, indent=1))


def read_response(folder) -> PeerResponse:
    folder = pathlib.Path(folder)
    fields = json.loads((folder / "response.json").read_text())
    with np.load(folder / "response.npz") as arrays:
        samples = arrays["samples"] if "samples" in arrays else None
        return PeerResponse(arrays["point"], arrays["quantiles"], samples,
                            fields["distribution"], tuple(fields["quantile_levels"]),
                            fields["info"])


def check_response(request: PeerRequest, response: PeerResponse) -> None:
    """Raises ``PeerError`` unless the response's shapes fit the request."""
    rows, seeds = len(rows_of(request)), len(request.seeds)
    expected = {"point": (seeds, rows, request.horizon),
                "quantiles": (seeds, len(request.quantile_levels), rows, request.horizon)}
    for name, shape in expected.items():
        actual = getattr(response, name).shape
        if actual != shape:
            raise PeerError(f"{request.model}: {name} has shape {actual}, expected {shape}")
    if not np.all(np.isfinite(response.point)):
        raise PeerError(f"{request.model}: the point forecasts hold NaN or infinity")


# -- the parent side -----------------------------------------------------------------------------


def run_peer(request: PeerRequest, *, python: str | None = None, timeout: float | None = None,
             folder=None) -> PeerResponse:
    """Runs ``request`` in a worker process under ``python`` (default: this interpreter) and
    returns its checked response; ``info["process_seconds"]`` is the worker's wall time,
    imports included. Raises :class:`PeerError` with the tail of the worker's log on failure.

    Example::

        response = run_peer(make_request("auto_ets", task, context_length=24))
    """
    with tempfile.TemporaryDirectory(prefix=f"peer-{request.model}-") as scratch:
        folder = pathlib.Path(folder or scratch)
        write_request(folder, request)
        log_path = folder / "worker.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(CHECKOUT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                code = subprocess.run([python or sys.executable, "-m", WORKER_MODULE,
                                       str(folder)], stdout=log, stderr=subprocess.STDOUT,
                                      env=env, cwd=CHECKOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = f"timed out after {timeout} s"
        seconds = time.perf_counter() - started
        if code != 0 or not (folder / "response.npz").exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise PeerError(f"{request.model}: the worker exited with {code}:\n{tail}")
        response = read_response(folder)
    check_response(request, response)
    response.info["process_seconds"] = round(seconds, 2)
    return response
