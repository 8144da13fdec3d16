"""Forecasting peers on the real series of ``bench_forecast_real``: DeepAR, NHITS, LSTM and
statsforecast's AutoETS, AutoARIMA, MSTL and long seasonal naive, on the same windows.

Each peer runs in its own process (:mod:`benchmarks.forecast_peers`), under ``--python`` (an
interpreter with the ``bench`` extra: torch, GluonTS, neuralforecast, statsforecast). The deep
models train once per seed on the values before each series' first origin and forecast every
window from the history before its origin without training again (``refit=False``); the
classical models fit anew on each window's history, all of it unless
:data:`HISTORY_LIMITS` says otherwise (with its reason). Every method is scored here with
:mod:`seqmodel.forecasting.scores` on the windows of :mod:`benchmarks.forecast_datasets`: MASE
(scale: the seasonal-naive MAE of each window's history), wQL, sMAPE, coverage of the central
80% and 95% intervals, and CRPS (:data:`CRPS_FROM`).

Training budget: ``--training-windows`` windows seen in training for every deep model, i.e.
``windows / batch`` steps: DeepAR 32 windows a step (GluonTS's default batch, seqmodel's), NHITS
and LSTM ``--windows-batch`` (128, neuralforecast's LSTM default; NHITS's default is 1024).

    python -m benchmarks.bench_forecast_peers --python /work/venv-peers/bin/python \\
        --json benchmarks/results/forecast_peers_cpu_2core.json \\
        --markdown benchmarks/results/forecast_peers_cpu_2core.md
    python -m benchmarks.bench_forecast_peers --quick     # a few steps: runs end to end

:func:`peer_rows` reads the JSON back as table rows for ``bench_forecast_real --peers``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import forecast_datasets as datasets  # noqa: E402
from benchmarks.environment import installed_versions  # noqa: E402
from benchmarks.forecast_peers import (CLASSICAL_MODELS, DEEP_MODELS, PeerError,  # noqa: E402
                                       make_request, run_peer)

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "forecast_peers_cpu_2core.json"
METRICS = ("mase", "wql", "smape", "crps", "coverage_80", "coverage_95", "crps_quantile_grid")
LABELS = {"deepar": "DeepAR (GluonTS)", "nhits": "NHITS (neuralforecast)",
          "lstm": "LSTM (neuralforecast)", "auto_ets": "AutoETS (full history)",
          "auto_arima": "AutoARIMA (full history)", "mstl": "MSTL",
          "seasonal_naive_long": "seasonal naive (long season)",
          "seasonal_naive": "seasonal naive"}
CRPS_FROM = {
    "samples": "the fair CRPS of the sample paths (as seqmodel's)",
    "normal": "the normal distribution whose spread the 10% and 90% quantiles give (as the "
              "benchmark's baselines)",
    "quantiles": "2 x the mean pinball loss over the 39 levels 0.025..0.975",
}
# (dataset, model) -> (steps of history, why): where a full-history fit takes too long. The
# limits are bench_forecast_real's (3 years of co2, 3 days of taylor).
HISTORY_LIMITS: dict[tuple[str, str], tuple[int, str]] = {
    ("co2", "auto_arima"): (156, "seasonal AutoARIMA (season 52) on the full history (2076 "
                            "steps before the first origin): one fit of the four had not "
                            "finished after 600 s (3.5 CPU-minutes) on this machine; with 6 "
                            "years the four windows took over 15 minutes"),
    ("taylor", "auto_arima"): (144, "seasonal AutoARIMA (season 48) on the full history (3696 "
                               "steps before the first origin): one fit of the seven had not "
                               "finished after 4.5 minutes (1.4 CPU-minutes) when stopped; "
                               "with one week it stalled"),
}


# -- scores -------------------------------------------------------------------------------------


def quantile_crps(truth: np.ndarray, quantiles: np.ndarray, levels) -> np.ndarray:
    """CRPS approximated from quantiles ``(Q, ..., H)`` at ``levels``: ``2 mean_q rho_q`` with
    the pinball loss ``rho_q = (y - yhat_q)(q - 1{y < yhat_q})`` -> ``(..., H)``."""
    shaped = np.asarray(levels, np.float64).reshape((-1,) + (1,) * truth.ndim)
    error = truth[None] - quantiles
    return 2.0 * np.mean(error * (shaped - (error < 0)), axis=0)


def score_windows(task, point, quantiles, levels, *, samples=None, distribution="quantiles"
                  ) -> dict[str, float]:
    """Every metric of one forecast of the task's windows: point ``(r, H)``, quantiles
    ``(Q, r, H)``, samples ``(r, S, H)`` (rows series-major)."""
    from seqmodel.forecasting import scores
    from seqmodel.forecasting.backtest import normal_crps

    truth = datasets.truth(task)  # (n, N, H)
    n, windows, horizon = truth.shape
    point = np.asarray(point, np.float64).reshape(n, windows, horizon)
    quantiles = np.asarray(quantiles, np.float64).reshape(len(levels), n, windows, horizon)
    scale = np.array([[scores.seasonal_scale(history, season=task.season) for history in row]
                      for row in datasets.histories(task)])  # (n, N)
    found = scores.score_forecasts(truth, point=point, quantiles=quantiles,
                                   quantile_levels=levels, scale=scale)
    result = {name: float(score.overall) for name, score in found.items()}
    grid = quantile_crps(truth, quantiles, levels)
    result["crps_quantile_grid"] = float(grid.mean())
    if distribution == "samples":
        paths = np.asarray(samples, np.float64)  # (r, S, H)
        crps = scores.crps_from_samples(paths, truth.reshape(n * windows, horizon), axis=1)
    elif distribution == "normal":
        levels = list(levels)
        spread = (quantiles[levels.index(0.9)] - quantiles[levels.index(0.1)]) / (2 * 1.2815516)
        crps = normal_crps(truth, point, spread)
    else:
        crps = grid
    result["crps"] = float(np.mean(crps))
    return result


def summarise(per_seed: list[dict]) -> dict:
    """``{metric: {"mean", "std", "per_seed"}}`` over the seeds (std 0 for one seed)."""
    return {metric: {"mean": float(np.mean([s[metric] for s in per_seed])),
                     "std": float(np.std([s[metric] for s in per_seed])),
                     "per_seed": [round(s[metric], 6) for s in per_seed]}
            for metric in per_seed[0]}


# -- one dataset --------------------------------------------------------------------------------


def models_for(task, chosen) -> list[str]:
    """The deep models and AutoETS / AutoARIMA everywhere; MSTL and the long seasonal naive
    where the season is over 24 (statsforecast's AutoETS drops such a season)."""
    long_only = ("mstl", "seasonal_naive_long")
    return [model for model in chosen if model not in long_only or task.season > 24]


def run_dataset(name: str, args) -> dict:
    from seqmodel.forecasting import baselines

    task = datasets.load_task(name)
    context = 2 * task.horizon  # seqmodel's context length in bench_forecast_real
    entry = {"dataset": name, "series": len(task.series), "steps": int(sum(task.lengths)),
             "freq": task.freq, "season": task.season, "long_seasons": list(task.long_seasons),
             "horizon": task.horizon, "windows": task.windows, "context_length": context,
             "origins": datasets.origins(task), "methods": {}}
    # The benchmark's seasonal naive, as a reference row computed here.
    levels = (0.025,) + tuple(round(0.1 * k, 1) for k in range(1, 10)) + (0.975,)
    forecasts = [baselines.seasonal_naive(history, task.horizon, season=task.season,
                                          quantile_levels=levels)
                 for row in datasets.histories(task) for history in row]
    reference = score_windows(task, np.stack([f.point for f in forecasts]),
                              np.stack([f.quantiles for f in forecasts], axis=1), levels,
                              distribution="normal")
    entry["methods"]["seasonal_naive"] = {"scores": summarise([reference]), "seeds": None}
    for model in models_for(task, args.models):
        deep = model in DEEP_MODELS
        batch = 32 if model == "deepar" else args.windows_batch
        limit, reason = HISTORY_LIMITS.get((name, model), (None, None))
        request = make_request(
            model, task, context_length=context,
            max_steps=max(1, args.training_windows // batch) if deep else None,
            seeds=args.seeds if deep else (0,), num_samples=args.num_samples,
            history_limit=limit, limit_reason=reason,
            options={"windows_batch_size": args.windows_batch, "torch_threads": args.threads})
        started = time.perf_counter()
        try:
            response = run_peer(request, python=args.python, timeout=args.timeout)
        except PeerError as error:
            print(f"{name} {model}: failed\n{error}", file=sys.stderr, flush=True)
            entry["methods"][model] = {"error": str(error)[-2000:]}
            continue
        per_seed = [score_windows(task, response.point[k], response.quantiles[k],
                                  response.quantile_levels,
                                  samples=None if response.samples is None else
                                  response.samples[k], distribution=response.distribution)
                    for k in range(len(response.point))]
        info = response.info
        entry["methods"][model] = {
            "scores": summarise(per_seed), "seeds": list(request.seeds) if deep else None,
            "max_steps": request.max_steps, "crps_from": CRPS_FROM[response.distribution],
            "history_limit": limit, "limit_reason": reason,
            "settings": info["settings"], "timings": info["timings"],
            "worker_seconds": info["seconds"], "worker_cpu_seconds": info["cpu_seconds"],
            "process_seconds": info["process_seconds"], "load_average": info["load_average"],
            "torch_threads": info["torch_threads"], "protocol": info["protocol"],
            "versions": info["versions"]}
        means = {metric: round(entry["methods"][model]["scores"][metric]["mean"], 4)
                 for metric in ("mase", "wql", "coverage_80", "coverage_95")}
        print(f"{name} {model}: {means} in {time.perf_counter() - started:.0f} s "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    return entry


# -- reading the results back ----------------------------------------------------------------------


def peer_rows(path=RESULTS, dataset: str | None = None, *, include_reference: bool = False
              ) -> dict:
    """The committed peers' scores as table rows: ``{dataset: {label: {metric: mean}}}`` (only
    ``dataset``'s rows when given), labels such as ``"DeepAR (GluonTS), 3 seeds"``; each row
    also holds ``"<metric>_std"`` over the seeds. Failed peers are left out, and so is the
    reference seasonal naive (the benchmark's own row) unless ``include_reference``.

    Example::

        rows = peer_rows()["airpassengers"]
        rows["NHITS (neuralforecast), 3 seeds"]["mase"]
    """
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)["results"]
    table = {}
    for entry in results:
        if dataset is not None and entry["dataset"] != dataset:
            continue
        rows = {}
        for model, method in entry["methods"].items():
            if "scores" not in method or (model == "seasonal_naive" and not include_reference):
                continue
            label = LABELS.get(model, model)
            if method.get("seeds"):
                label += f", {len(method['seeds'])} seeds"
            limit = method.get("history_limit")
            if limit:
                label = label.replace("full history", f"last {limit} steps")
            rows[label] = {metric: value["mean"] for metric, value in method["scores"].items()}
            rows[label].update({f"{metric}_std": value["std"]
                                for metric, value in method["scores"].items()})
        table[entry["dataset"]] = rows
    return table if dataset is None else table.get(dataset, {})


def markdown(document: dict) -> str:
    budget = document["budget"]
    loads = ", ".join(f"{run['load_average']['start'][0]:.1f} to "
                      f"{run['load_average'].get('end', [float('nan')])[0]:.1f}"
                      for run in document["runs"])
    lines = [f"Deep models: {budget['training_windows']} training windows each "
             f"(steps: {budget['steps']}), seeds {budget['seeds']}, mean (std) over seeds; "
             f"trained once before the first origin (refit=False). Machine: "
             f"{document['machine']['cpu_count']} cores, load average (1 min) {loads}.", ""]
    lines += [f"- {note}" for note in document.get("notes", [])] + (
        [""] if document.get("notes") else [])
    columns = ("mase", "wql", "smape", "crps", "coverage_80", "coverage_95")
    for entry in document["results"]:
        lines += [f"### {entry['dataset']}", "",
                  f"{entry['series']} series, {entry['steps']} steps, freq {entry['freq']}; last "
                  f"{entry['windows']} windows of {entry['horizon']}, season {entry['season']} "
                  f"(periods {entry['long_seasons']}), context {entry['context_length']}.", "",
                  "| method | " + " | ".join(columns) + " | seconds |",
                  "|---" * (len(columns) + 2) + "|"]
        for model, method in entry["methods"].items():
            if "scores" not in method:
                lines.append(f"| {LABELS.get(model, model)} | failed |")
                continue
            cells = []
            for column in columns:
                score = method["scores"][column]
                cells.append(f"{score['mean']:.4g}" + (f" ({score['std']:.2g})"
                                                        if method.get("seeds") else ""))
            seconds = method.get("worker_seconds", "")
            label = LABELS.get(model, model)
            if method.get("history_limit"):
                label = label.replace("full history", f"last {method['history_limit']} steps")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds} |")
        lines.append("")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    parser.add_argument("--models", default=",".join(DEEP_MODELS + CLASSICAL_MODELS))
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the deep models")
    parser.add_argument("--training-windows", type=int, default=64000,
                        help="windows each deep model sees in training (steps x batch)")
    parser.add_argument("--windows-batch", type=int, default=128,
                        help="windows per step of NHITS and LSTM")
    parser.add_argument("--num-samples", type=int, default=200, help="DeepAR's sample paths")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a worker")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the workers (with the bench extra)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    parser.add_argument("--quick", action="store_true", help="a few training steps: checks "
                        "that everything runs, not how well")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--append", action="store_true", help="add to the results already in "
                        "--json (a dataset run again replaces its entry)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="write the results of runs "
                        "made apart (same budget, e.g. datasets in parallel) as one to --json "
                        "and --markdown; runs nothing")
    parser.add_argument("--note", action="append", default=[],
                        help="with --merge: a note on how the runs were made (repeatable)")
    args = parser.parse_args(argv)
    if args.merge:
        documents = []
        for path in args.merge:
            with open(path, encoding="utf-8") as handle:
                documents.append(json.load(handle))
        try:
            merged = merge(documents)
            merged["notes"] = merged.get("notes", []) + args.note
            write(args, merged)
        except ValueError as error:
            parser.error(f"--merge: {error}")
        return 0
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in datasets.DATASETS]
    if unknown:
        parser.error(f"--datasets {unknown}: allowed {', '.join(datasets.DATASETS)}")
    args.models = [model.strip() for model in args.models.split(",") if model.strip()]
    wrong = [model for model in args.models if model not in DEEP_MODELS + CLASSICAL_MODELS]
    if wrong:
        parser.error(f"--models {wrong}: allowed {', '.join(DEEP_MODELS + CLASSICAL_MODELS)}")
    args.seeds = tuple(int(seed) for seed in args.seeds.split(","))
    if args.quick:
        args.training_windows = min(args.training_windows, 640)
    command = "python -m benchmarks.bench_forecast_peers " + " ".join(
        sys.argv[1:] if argv is None else argv)
    run = {"command": command, "started": datetime.datetime.now(
               datetime.timezone.utc).isoformat(timespec="seconds"),
           "datasets": names, "load_average": {"start": list(os.getloadavg())}}
    document = {
        "runs": [],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "worker_python": args.python,
        "driver_versions": installed_versions("numpy", "seqmodel", "statsforecast"),
        "budget": {"training_windows": args.training_windows, "seeds": list(args.seeds),
                   "steps": {"deepar": max(1, args.training_windows // 32),
                             "nhits": max(1, args.training_windows // args.windows_batch),
                             "lstm": max(1, args.training_windows // args.windows_batch)},
                   "windows_per_step": {"deepar": 32, "nhits": args.windows_batch,
                                        "lstm": args.windows_batch},
                   "torch_threads": args.threads},
        "history_limits": {f"{d}/{m}": {"steps": s, "reason": r}
                           for (d, m), (s, r) in HISTORY_LIMITS.items()},
        "crps_from": CRPS_FROM,
        "results": [],
    }
    if args.append and args.json and os.path.exists(args.json):
        with open(args.json, encoding="utf-8") as handle:
            earlier = json.load(handle)
        if earlier["budget"] != document["budget"]:
            parser.error(f"--append: {args.json} was run with the budget {earlier['budget']}, "
                         f"not {document['budget']}")
        document["runs"] = earlier["runs"]
        document["results"] = [entry for entry in earlier["results"]
                               if entry["dataset"] not in names]
    document["runs"].append(run)
    for name in names:
        started = time.perf_counter()
        document["results"].append(run_dataset(name, args))
        run["load_average"]["end"] = list(os.getloadavg())
        print(markdown({**document, "results": document["results"][-1:]}), flush=True)
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
        write(args, document)  # what is done so far survives an interruption
    return 0


def combine_seeds(first: dict, second: dict) -> dict:
    """One model's results from runs with other seeds (the same budget), as one: the seeds and
    per-seed scores joined, mean and std over all, each run's timings kept."""
    seeds = first["seeds"] + second["seeds"]
    scores = {}
    for metric, score in first["scores"].items():
        values = score["per_seed"] + second["scores"][metric]["per_seed"]
        scores[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                          "per_seed": values}
    parts = first.get("parts") or [{key: first[key] for key in PART_FIELDS if key in first}]
    return {**first, "seeds": seeds, "scores": scores, "timings": first["timings"] +
            second["timings"], "parts": parts + [{key: second[key] for key in PART_FIELDS
                                                  if key in second}]}


# What each worker of a model run in parts measured (combine_seeds keeps them all).
PART_FIELDS = ("seeds", "worker_seconds", "worker_cpu_seconds", "process_seconds",
               "load_average")


def merge(documents: list[dict]) -> dict:
    """One document of runs made apart with the same budget: their runs in order, their
    results in the benchmark's dataset order. A dataset in several runs: the union of its
    models; a deep model in several runs with other seeds: their seeds combined
    (:func:`combine_seeds`); the same model and seeds twice: the last run's, unless it failed
    where an earlier one did not."""
    def budget_of(document):
        return {key: value for key, value in document["budget"].items() if key != "seeds"}

    budgets = {json.dumps(budget_of(document), sort_keys=True) for document in documents}
    if len(budgets) != 1:
        raise ValueError(f"the runs have different budgets: {sorted(budgets)}")
    merged = {**documents[0], "runs": [run for d in documents for run in d["runs"]]}
    merged["budget"] = {**documents[0]["budget"], "seeds": sorted(
        {seed for d in documents for seed in d["budget"]["seeds"]})}
    merged["history_limits"] = {key: value for d in documents
                                for key, value in d["history_limits"].items()}
    found = {}
    for document in documents:
        for entry in document["results"]:
            if entry["dataset"] not in found:
                found[entry["dataset"]] = {**entry, "methods": dict(entry["methods"])}
                continue
            methods = found[entry["dataset"]]["methods"]
            for model, method in entry["methods"].items():
                earlier = methods.get(model)
                if isinstance(earlier, dict) and "scores" in earlier and "scores" not in method:
                    continue  # a run whose worker was stopped does not undo one that finished
                if (isinstance(earlier, dict) and earlier.get("seeds") and method.get("seeds")
                        and not set(earlier["seeds"]) & set(method["seeds"])):
                    methods[model] = combine_seeds(earlier, method)
                else:
                    methods[model] = method
    merged["results"] = [found[name] for name in datasets.DATASETS if name in found]
    return merged


def write(args, document: dict) -> None:
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown(document) + "\n")


if __name__ == "__main__":
    sys.exit(main())
