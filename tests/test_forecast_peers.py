"""The forecasting peers' protocol (benchmarks/forecast_peers.py): windows that never see the
future, the request / response round trip, scores and the rows read back. The peers' own
libraries (GluonTS, neuralforecast) are needed only by the slow end-to-end tests, which skip
without them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import bench_forecast_peers, forecast_datasets
from benchmarks.forecast_peers import (PEER_QUANTILE_LEVELS, PeerError, PeerRequest,
                                       PeerResponse, check_response, make_request, read_request,
                                       read_response, rows_of, run_peer, training_values,
                                       window_history, write_request, write_response)


def small_task(lengths=(40, 30), horizon=4, windows=3) -> forecast_datasets.ForecastTask:
    """Series whose value is its step index (plus 1000 per series), so a history's last value
    says how far it reaches; they end together, like the benchmark's panel."""
    series = []
    for index, length in enumerate(lengths):
        times = np.datetime64("2024-12", "M") - length + 1 + np.arange(length)
        series.append((f"s{index}", times, 1000.0 * index + np.arange(length, dtype=float)))
    return forecast_datasets.ForecastTask("small", series, "MS", 4, (4,), horizon, windows)


def test_windows_never_see_the_future():
    task = small_task()
    request = make_request("deepar", task, context_length=8, max_steps=10, seeds=(0, 1))
    assert request.origins == [[28, 32, 36], [18, 22, 26]]
    # The request stops at the last origin: the last window's truth never reaches a worker.
    assert [len(values) for values in request.values] == [36, 26]
    assert [values[-1] % 1000 for values in request.values] == [35, 25]
    assert [values[-1] % 1000 for values in training_values(request)] == [27, 17]
    for window in range(3):
        for series, history in enumerate(window_history(request, window)):
            assert len(history) == request.origins[series][window]
            assert history[-1] % 1000 == request.origins[series][window] - 1
    limited = window_history(request, 2, limit=5)
    assert [len(history) for history in limited] == [5, 5]
    assert limited[0][-1] % 1000 == 35
    # The truth of the windows is what the histories leave out.
    truth = forecast_datasets.truth(task)
    assert truth.shape == (2, 3, 4)
    assert truth[0, 2, 0] % 1000 == 36 and truth[1, 0, 0] % 1000 == 18


def test_a_request_carrying_the_future_is_refused():
    task = small_task()
    request = make_request("auto_ets", task, context_length=8)
    values = [np.concatenate([v, [0.0]]) for v in request.values]
    with pytest.raises(ValueError, match="up to its last origin exactly"):
        PeerRequest(**{**request.__dict__, "values": values})
    with pytest.raises(ValueError, match="model='prophet' is unknown"):
        make_request("prophet", task, context_length=8)


def test_request_and_response_round_trip(tmp_path):
    request = make_request("nhits", small_task(), context_length=8, max_steps=50, seeds=(3, 4),
                           options={"windows_batch_size": 64})
    write_request(tmp_path, request)
    back = read_request(tmp_path)
    assert back.metadata == request.metadata
    for original, read in zip(request.values + request.times, back.values + back.times):
        np.testing.assert_array_equal(original, read)
    rows, levels = len(rows_of(request)), len(PEER_QUANTILE_LEVELS)
    assert rows_of(request)[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    rng = np.random.default_rng(0)
    response = PeerResponse(rng.normal(size=(2, rows, 4)), rng.normal(size=(2, levels, rows, 4)),
                            rng.normal(size=(2, rows, 10, 4)).astype(np.float32), "samples",
                            PEER_QUANTILE_LEVELS, {"seconds": 1.5})
    write_response(tmp_path, response)
    answer = read_response(tmp_path)
    np.testing.assert_array_equal(answer.point, response.point)
    np.testing.assert_array_equal(answer.samples, response.samples)
    assert (answer.distribution, answer.info) == ("samples", {"seconds": 1.5})
    check_response(request, answer)
    wrong = PeerResponse(response.point[:, :-1], response.quantiles, None, "quantiles",
                         PEER_QUANTILE_LEVELS, {})
    with pytest.raises(PeerError, match="point has shape"):
        check_response(request, wrong)


def test_a_failing_worker_says_why(tmp_path):
    request = make_request("auto_ets", small_task(), context_length=8)
    # An interpreter that prints and exits at once: the error carries its code and its log.
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho broken interpreter\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(PeerError, match="exited with 3:\n(.|\n)*broken interpreter"):
        run_peer(request, python=str(broken), folder=tmp_path / "work")


def test_scores_of_a_perfect_and_a_shifted_forecast():
    task = small_task()
    truth = forecast_datasets.truth(task).reshape(6, 4)
    levels = PEER_QUANTILE_LEVELS
    spread = np.linspace(-1, 1, len(levels))[:, None, None]
    perfect = bench_forecast_peers.score_windows(task, truth, truth[None] + spread, levels)
    assert perfect["mase"] == 0 and perfect["coverage_80"] == 1 and perfect["coverage_95"] == 1
    shifted = bench_forecast_peers.score_windows(task, truth + 8, truth[None] + 8 + 0 * spread,
                                                 levels)
    # The seasonal scale of a ramp with season 4 is 4: an error of 8 is a MASE of 2.
    assert shifted["mase"] == pytest.approx(2.0)
    assert shifted["coverage_80"] == 0
    # A point mass: the CRPS is the absolute error, from the quantiles and the normal alike.
    assert shifted["crps"] == pytest.approx(8.0)
    normal = bench_forecast_peers.score_windows(task, truth + 8, truth[None] + 8 + 0 * spread,
                                                levels, distribution="normal")
    assert normal["crps"] == pytest.approx(8.0)


def test_peer_rows_read_the_results(tmp_path):
    path = tmp_path / "peers.json"
    scores = {"mase": {"mean": 0.9, "std": 0.1, "per_seed": [0.8, 1.0]}}
    path.write_text(json.dumps({"results": [{"dataset": "wineind", "methods": {
        "deepar": {"scores": scores, "seeds": [0, 1]},
        "auto_arima": {"scores": scores, "seeds": None, "history_limit": 480},
        "seasonal_naive": {"scores": scores, "seeds": None},
        "nhits": {"error": "boom"}}}]}))
    rows = bench_forecast_peers.peer_rows(path, "wineind")
    assert rows == {"DeepAR (GluonTS), 2 seeds": {"mase": 0.9, "mase_std": 0.1},
                    "AutoARIMA (last 480 steps)": {"mase": 0.9, "mase_std": 0.1}}
    assert "seasonal naive" in bench_forecast_peers.peer_rows(
        path, include_reference=True)["wineind"]


def test_the_windows_are_the_benchmarks():
    """bench_forecast_real's seqmodel arm and the peers load the same series and windows."""
    real = pytest.importorskip("benchmarks.bench_forecast_real")
    assert real.SUITES["benchmark"] is forecast_datasets.DATASETS


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("statsforecast") is None,
                    reason="statsforecast is not installed (the forecast / bench extras)")
def test_a_classical_peer_end_to_end():
    task = small_task(lengths=(60,), windows=2)
    response = run_peer(make_request("seasonal_naive_long", task, context_length=8),
                        timeout=300)
    assert response.point.shape == (1, 2, 4)
    history = forecast_datasets.histories(task)[0]
    np.testing.assert_allclose(response.point[0, 0], history[0][-4:])
    np.testing.assert_allclose(response.point[0, 1], history[1][-4:])
    assert response.distribution == "normal"
    assert response.info["timings"][0]["fits"] == 2


def peers_python(module: str) -> str:
    """The interpreter that runs the deep peers: ``$SEQMODEL_PEERS_PYTHON`` (e.g. a virtual
    environment with the bench extra) or this one; skips when it lacks ``module``."""
    python = os.environ.get("SEQMODEL_PEERS_PYTHON", sys.executable)
    found = subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode
    if found != 0:
        pytest.skip(f"{module} is not installed for {python} (pip install -e '.[bench]', or "
                    "set SEQMODEL_PEERS_PYTHON to an interpreter that has it)")
    return python


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deepar", "nhits", "lstm"])
def test_a_deep_peer_end_to_end(model):
    python = peers_python({"deepar": "gluonts", "nhits": "neuralforecast",
                           "lstm": "neuralforecast"}[model])
    task = small_task(lengths=(60, 48), windows=2)
    response = run_peer(make_request(model, task, context_length=8, max_steps=3, seeds=(0, 1),
                                     num_samples=20), python=python, timeout=600)
    assert response.quantiles.shape == (2, len(PEER_QUANTILE_LEVELS), 4, 4)
    assert np.all(np.diff(response.quantiles, axis=1) >= 0)
    assert [timing["steps"] for timing in response.info["timings"]] == [3, 3]
    assert response.info["torch_threads"] == 1


def test_runs_made_apart_merge_into_one():
    budget = {"training_windows": 64, "seeds": [0]}

    def document(names, command, model="deepar"):
        return {"budget": budget, "runs": [{"command": command}], "history_limits": {},
                "results": [{"dataset": name, "methods": {model: command}} for name in names]}

    merged = bench_forecast_peers.merge([document(["panel"], "b"),
                                         document(["taylor", "wineind"], "a"),
                                         document(["panel"], "c", model="lstm")])
    assert [run["command"] for run in merged["runs"]] == ["b", "a", "c"]
    assert [entry["dataset"] for entry in merged["results"]] == ["wineind", "panel", "taylor"]
    assert merged["results"][1]["methods"] == {"deepar": "b", "lstm": "c"}
    finished = document(["wineind"], "d")
    finished["results"][0]["methods"] = {"lstm": {"scores": {}}}
    stopped = document(["wineind"], "e")
    stopped["results"][0]["methods"] = {"lstm": {"error": "stopped"}}
    merged = bench_forecast_peers.merge([finished, stopped])
    assert merged["results"][0]["methods"]["lstm"] == {"scores": {}}
    other = {**document(["co2"], "c"), "budget": {"training_windows": 32, "seeds": [0]}}
    with pytest.raises(ValueError, match="different budgets"):
        bench_forecast_peers.merge([document(["panel"], "b"), other])


def test_seeds_run_apart_combine():
    def document(seeds, mase):
        method = {"seeds": seeds, "timings": [{"seed": seed} for seed in seeds],
                  "worker_seconds": 10.0, "scores": {"mase": {
                      "mean": float(np.mean(mase)), "std": float(np.std(mase)),
                      "per_seed": mase}}}
        return {"budget": {"training_windows": 64, "seeds": seeds}, "runs": [{}],
                "history_limits": {},
                "results": [{"dataset": "taylor", "methods": {"deepar": method}}]}

    merged = bench_forecast_peers.merge([document([0], [1.0]), document([1, 2], [2.0, 3.0])])
    method = merged["results"][0]["methods"]["deepar"]
    assert merged["budget"]["seeds"] == [0, 1, 2]
    assert method["seeds"] == [0, 1, 2]
    assert method["scores"]["mase"]["per_seed"] == [1.0, 2.0, 3.0]
    assert method["scores"]["mase"]["mean"] == pytest.approx(2.0)
    assert [timing["seed"] for timing in method["timings"]] == [0, 1, 2]
    assert [part["seeds"] for part in method["parts"]] == [[0], [1, 2]]
