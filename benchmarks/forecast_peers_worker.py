"""The worker of one forecasting peer: ``python -m benchmarks.forecast_peers_worker FOLDER``.

Reads ``FOLDER/request.json`` + ``request.npz`` (:class:`benchmarks.forecast_peers.PeerRequest`),
forecasts every window and writes ``response.json`` + ``response.npz`` beside them. It imports
the peer's library only (torch, GluonTS, neuralforecast or statsforecast), never seqmodel or JAX,
so it runs under an interpreter that holds those (the ``bench`` extra, or a separate virtual
environment).

- ``deepar`` (GluonTS, torch): ``DeepAREstimator`` with its defaults (2 LSTM layers of 40,
  Student-t output, lags and time features from the frequency, mean scaling), the context
  length of the request, the series index as a static category on a panel; trained once, on
  the values before the first origin, for ``max_steps`` steps of 32 windows (GluonTS's epochs of
  50 batches); 200 sample paths per window.
- ``nhits``, ``lstm`` (neuralforecast): ``NHITS`` with a multi-quantile loss at the request's
  levels and ``LSTM`` with a Student-t ``DistributionLoss``, input size the context length,
  robust (median / IQR) scaling of each window, trained once on the values before the first
  origin for ``max_steps`` steps (``options["windows_batch_size"]`` windows each); window ``k``
  is predicted from the history before origin ``k``, without training again.
- ``auto_ets``, ``auto_arima``, ``mstl``, ``seasonal_naive_long`` (statsforecast): fitted anew on
  every window's history (its last ``history_limit`` steps when the request sets one); MSTL
  decomposes at ``long_seasons`` with an AutoETS trend (statsforecast's default), seasonal naive
  repeats the longest season.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings

import numpy as np

from benchmarks.forecast_peers import (DEEP_MODELS, PeerRequest, PeerResponse, read_request,
                                       rows_of, training_values, window_history, window_times,
                                       write_response)


def _versions(*packages: str) -> dict:
    import importlib.metadata

    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _quiet() -> None:
    """Lightning and the libraries print progress and tips on every fit: keep the log short."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric",
                 "gluonts", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer_options(folder: str) -> dict:
    return dict(accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                enable_model_summary=False, default_root_dir=folder)


def _sorted_quantiles(quantiles: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles ``(Q, r, H)`` sorted along the levels (a multi-quantile loss may cross them;
    sorting is the monotone rearrangement of Chernozhukov et al. 2010), and the median."""
    quantiles = np.sort(quantiles, axis=0)
    return quantiles, quantiles[list(levels).index(0.5)]


def _interval(level: float) -> int:
    return int(round(100 * abs(2 * level - 1)))


# -- GluonTS DeepAR ------------------------------------------------------------------------------


def _period_freq(freq: str) -> str:
    # GluonTS indexes by pandas Periods, which know months as "M", not month-start "MS".
    return {"MS": "M"}.get(freq, freq)


def run_deepar(request: PeerRequest, folder: str):
    import lightning.pytorch as lightning
    import pandas as pd
    from gluonts.dataset.common import ListDataset
    from gluonts.torch.model.deepar import DeepAREstimator

    freq = _period_freq(request.freq)
    panel = len(request.ids) > 1
    batches_per_epoch = 50  # GluonTS's default epoch

    def dataset(histories, times):
        entries = []
        for index, (values, stamps) in enumerate(zip(histories, times)):
            entry = {"start": pd.Period(pd.Timestamp(stamps[0]), freq), "target": values}
            if panel:
                entry["feat_static_cat"] = [index]
            entries.append(entry)
        return ListDataset(entries, freq=freq)

    first_times = [times[:len(values)] for times, values in
                   zip(request.times, training_values(request))]
    epochs = max(1, math.ceil(request.max_steps / batches_per_epoch))
    settings = dict(freq=freq, prediction_length=request.horizon,
                    context_length=request.context_length, batch_size=32,
                    num_batches_per_epoch=batches_per_epoch,
                    num_feat_static_cat=1 if panel else 0,
                    cardinality=[len(request.ids)] if panel else None)
    point, quantiles, samples, timings = [], [], [], []
    for seed in request.seeds:
        lightning.seed_everything(seed, verbose=False)
        estimator = DeepAREstimator(**settings, trainer_kwargs=dict(
            max_epochs=epochs, max_steps=request.max_steps, **_trainer_options(folder)))
        started = time.perf_counter()
        predictor = estimator.train(dataset(training_values(request), first_times))
        trained = time.perf_counter()
        windows = len(request.origins[0])
        paths = {}
        for window in range(windows):
            forecasts = predictor.predict(dataset(window_history(request, window),
                                                  window_times(request, window)),
                                          num_samples=request.num_samples)
            for series, forecast in enumerate(forecasts):
                paths[series, window] = np.asarray(forecast.samples, np.float64)  # (S, H)
        stacked = np.stack([paths[row] for row in rows_of(request)])  # (r, S, H)
        sorted_quantiles, median = _sorted_quantiles(
            np.quantile(stacked, request.quantile_levels, axis=1), request.quantile_levels)
        point.append(median)
        quantiles.append(sorted_quantiles)
        samples.append(stacked)
        timings.append({"seed": seed, "train_seconds": round(trained - started, 2),
                        "predict_seconds": round(time.perf_counter() - trained, 2),
                        "steps": request.max_steps, "windows_per_step": 32})
    settings.pop("freq")
    return (np.stack(point), np.stack(quantiles), np.stack(samples), "samples", timings,
            {**settings, "epochs": epochs, "distribution": "StudentT (GluonTS default)",
             "num_samples": request.num_samples})


# -- neuralforecast NHITS / LSTM ----------------------------------------------------------------


def _frame(request: PeerRequest, histories, times):
    import pandas as pd

    return pd.concat([pd.DataFrame({"unique_id": name, "ds": pd.to_datetime(stamps),
                                    "y": values})
                      for name, values, stamps in zip(request.ids, histories, times)],
                     ignore_index=True)


def _column(alias: str, level: float) -> str:
    if abs(level - 0.5) < 1e-9:
        return f"{alias}-median"
    side = "lo" if level < 0.5 else "hi"
    return f"{alias}-{side}-{100 * abs(2 * level - 1):.1f}"


def run_neuralforecast(request: PeerRequest, folder: str):
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import DistributionLoss, MQLoss
    from neuralforecast.models import LSTM, NHITS

    levels = list(request.quantile_levels)
    windows_batch = int(request.options.get("windows_batch_size", 128))
    common = dict(h=request.horizon, input_size=request.context_length,
                  max_steps=request.max_steps, windows_batch_size=windows_batch,
                  scaler_type="robust")
    if request.model == "nhits":
        kind, described = NHITS, "MQLoss at the request's quantile levels"
        make_loss = lambda: MQLoss(quantiles=levels)  # noqa: E731
    else:
        kind, described = LSTM, "DistributionLoss StudentT, quantiles of 1000 samples"
        make_loss = lambda: DistributionLoss("StudentT", quantiles=levels)  # noqa: E731
    train_frame = _frame(request, training_values(request),
                         [times[:len(values)] for times, values in
                          zip(request.times, training_values(request))])
    windows = len(request.origins[0])
    window_frames = [_frame(request, window_history(request, window),
                            window_times(request, window)) for window in range(windows)]
    alias = kind.__name__
    point, quantiles, timings = [], [], []
    for seed in request.seeds:
        model = kind(**common, loss=make_loss(), random_seed=seed, **_trainer_options(folder))
        forecaster = NeuralForecast(models=[model], freq=request.freq)
        started = time.perf_counter()
        forecaster.fit(train_frame)
        trained = time.perf_counter()
        per_row = {}
        for window, frame in enumerate(window_frames):
            predicted = forecaster.predict(df=frame)
            for series, name in enumerate(request.ids):
                rows = predicted[predicted["unique_id"] == name]
                per_row[series, window] = np.stack(
                    [rows[_column(alias, level)].to_numpy(np.float64) for level in levels])
        stacked = np.stack([per_row[row] for row in rows_of(request)], axis=1)  # (Q, r, H)
        sorted_quantiles, median = _sorted_quantiles(stacked, levels)
        point.append(median)
        quantiles.append(sorted_quantiles)
        timings.append({"seed": seed, "train_seconds": round(trained - started, 2),
                        "predict_seconds": round(time.perf_counter() - trained, 2),
                        "steps": request.max_steps, "windows_per_step": windows_batch})
    return (np.stack(point), np.stack(quantiles), None, "quantiles", timings,
            {**common, "loss": described, "batch_size": 32})


# -- statsforecast ------------------------------------------------------------------------------


def _classical_model(request: PeerRequest):
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, SeasonalNaive

    if request.model == "auto_ets":
        return AutoETS(season_length=request.season), f"AutoETS(season_length={request.season})"
    if request.model == "auto_arima":
        return (AutoARIMA(season_length=request.season),
                f"AutoARIMA(season_length={request.season})")
    if request.model == "mstl":
        seasons = list(request.long_seasons)
        return (MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN")),
                f"MSTL(season_length={seasons}, trend_forecaster=AutoETS(model='ZZN'))")
    season = request.long_seasons[-1]
    return SeasonalNaive(season_length=season), f"SeasonalNaive(season_length={season})"


def run_classical(request: PeerRequest, folder: str):
    levels = list(request.quantile_levels)
    intervals = sorted({_interval(level) for level in levels if abs(level - 0.5) > 1e-9})
    windows = len(request.origins[0])
    per_row, fit_seconds = {}, []
    described = None
    for window in range(windows):
        for series, history in enumerate(window_history(request, window,
                                                        limit=request.history_limit)):
            model, described = _classical_model(request)
            started = time.perf_counter()
            result = model.forecast(y=history, h=request.horizon, level=intervals)
            fit_seconds.append(time.perf_counter() - started)
            rows = []
            for level in levels:
                if abs(level - 0.5) < 1e-9:
                    rows.append(result["mean"])
                else:
                    side = "lo" if level < 0.5 else "hi"
                    rows.append(result[f"{side}-{_interval(level)}"])
            per_row[series, window] = np.asarray(rows, np.float64)
    stacked = np.stack([per_row[row] for row in rows_of(request)], axis=1)  # (Q, r, H)
    sorted_quantiles, median = _sorted_quantiles(stacked, levels)
    timing = {"seed": None, "fits": len(fit_seconds),
              "fit_seconds_total": round(sum(fit_seconds), 2),
              "fit_seconds_mean": round(float(np.mean(fit_seconds)), 3),
              "fit_seconds_max": round(float(np.max(fit_seconds)), 3),
              "first_fit_seconds": round(fit_seconds[0], 3)}
    return (median[None], sorted_quantiles[None], None, "normal", [timing],
            {"model": described, "history_limit": request.history_limit,
             "limit_reason": request.limit_reason})


# -- entry point ----------------------------------------------------------------------------------


def serve(folder: str) -> None:
    request = read_request(folder)
    _quiet()
    threads = int(request.options.get("torch_threads", 1))
    if request.model in DEEP_MODELS:
        import torch

        # One thread: on a shared 2-core machine a second spinning thread only slows it down.
        torch.set_num_threads(threads)
    runner = {"deepar": run_deepar, "nhits": run_neuralforecast,
              "lstm": run_neuralforecast}.get(request.model, run_classical)
    started, cpu = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()
    point, quantiles, samples, distribution, timings, settings = runner(request, folder)
    info = {
        "model": request.model, "settings": settings, "timings": timings,
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()]},
        "torch_threads": threads if request.model in DEEP_MODELS else None,
        "python": sys.version.split()[0],
        "versions": _versions("numpy", "pandas", "torch", "lightning", "gluonts",
                              "neuralforecast", "statsforecast"),
        "protocol": ("trained once per seed on the values before each series' first origin; "
                     "window k forecast from the values before origin k without training "
                     "again (refit=False)") if request.model in DEEP_MODELS else (
                         "fitted anew on each window's history before its origin"),
    }
    write_response(folder, PeerResponse(point, quantiles, samples, distribution,
                                        request.quantile_levels, info))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.forecast_peers_worker FOLDER", file=sys.stderr)
        return 2
    serve(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
