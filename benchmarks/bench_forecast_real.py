"""Forecasting real series: seqmodel against seasonal naive, AutoETS, AutoARIMA and the peers.

The series ship inside installed packages (nothing is downloaded; ``benchmarks/forecast_datasets
.py``). Two suites:

- ``benchmark`` (default): taylor, wineind, airpassengers, sunspots, co2 and a 40-series panel:
  the series the figures in the README and docs/forecasting.md come from. Nobody tunes on them.
- ``tuning``: other series (El Nino monthly sea temperatures, quarterly wool production, US
  quarterly unemployment, yearly lynx trappings, heart rate, a weekly series with a yearly
  season, a weekly series whose level dwarfs its movements, a 30-series panel from the
  benchmark panel's generator with another seed, twelve weeks of a synthetic half-hourly load
  with a daily and a weekly season): where seqmodel's defaults
  (``seqmodel.configs.SERIES_*_DEFAULTS``, the preparation's rules) were chosen.

For each dataset the last ``windows`` windows of ``horizon`` steps are held out.
:func:`seqmodel.forecasting.fit` trains on the data before the first window (cross-validation
with ``refit=False``: no window is ever seen in training or validation) for a fixed number of
steps, the best validation parameters kept, and its intervals calibrated by split conformal on
the validation part; :func:`seqmodel.forecasting.backtest.backtest` scores every window next to
the baselines, which see the same histories. Two seqmodel arms, each over ``--seeds`` (mean and
standard deviation):

- ``seqmodel``: one model with the defaults;
- ``seqmodel ensemble``: ``--ensemble`` models (seeds ``3 s, 3 s + 1, ...``, heads alternating
  Student-t and Gaussian) pooled at the sample level. Its first member is the ``seqmodel`` arm's
  model of the same seed, so the two arms cost one ensemble a seed.

    python benchmarks/bench_forecast_real.py --json benchmarks/results/forecast_real_cpu_2core.json \\
        --markdown benchmarks/results/forecast_real_cpu_2core.md --peers
    python benchmarks/bench_forecast_real.py --suite tuning --json tuning.json
    python benchmarks/bench_forecast_real.py --quick        # runs end to end in a few minutes

The same run for one dataset from the command line (airpassengers as a CSV with a date column)::

    seqmodel train --data air.csv --time-column date --holdout 36 --out runs/air
    seqmodel eval --checkpoint runs/air --backtest 3 --horizon 12 --json --plot backtest.png
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import forecast_datasets  # noqa: E402
from benchmarks.environment import installed_versions  # noqa: E402
from seqmodel.forecasting import baselines  # noqa: E402
from seqmodel.forecasting.backtest import MODEL_METHOD, backtest  # noqa: E402
from seqmodel.forecasting.conformal import calibrate  # noqa: E402
from seqmodel.forecasting.forecaster import Forecaster  # noqa: E402

COLUMNS = ("mase", "wql", "smape", "crps", "coverage_80", "coverage_95")
HEADS = ("student_t", "gaussian")


# -- the tuning series ----------------------------------------------------------------------------


def _yearly(start: int, count: int) -> np.ndarray:
    return np.datetime64(str(start), "Y") + np.arange(count)


def _quarterly(start: str, count: int) -> np.ndarray:
    return np.datetime64(start, "M") + 3 * np.arange(count)


def load_elnino():
    import statsmodels.api as statsmodels

    frame = statsmodels.datasets.elnino.load_pandas().data
    values = frame.drop(columns=["YEAR"]).to_numpy(np.float64).reshape(-1)
    return [("elnino", np.datetime64("1950-01", "M") + np.arange(len(values)), values)]


def load_woolyrnq():
    from pmdarima import datasets

    values = np.asarray(datasets.load_woolyrnq(), np.float64)
    return [("woolyrnq", _quarterly("1965-01", len(values)), values)]


def load_unemployment():
    import statsmodels.api as statsmodels

    values = statsmodels.datasets.macrodata.load_pandas().data["unemp"].to_numpy(np.float64)
    return [("unemployment", _quarterly("1959-01", len(values)), values)]


def load_lynx():
    from pmdarima import datasets

    values = np.asarray(datasets.load_lynx(), np.float64)
    return [("lynx", _yearly(1821, len(values)), values)]


def load_heartrate():
    from pmdarima import datasets

    values = np.asarray(datasets.load_heartrate(), np.float64).reshape(-1)
    times = np.datetime64("2000-01-01T00:00") + np.arange(len(values)) * np.timedelta64(30, "s")
    return [("heartrate", times, values)]


def load_weekly(length: int = 520, seed: int = 7):
    """Ten years of a weekly series: a trend, a yearly season with a sharp peak, noise."""
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    season = np.exp(2 * np.cos(2 * np.pi * steps / 52)) + 0.5 * np.sin(4 * np.pi * steps / 52)
    values = 50 + 0.03 * steps + 6 * season + rng.normal(0, 1.5, length)
    return [("weekly", np.datetime64("2010-01-02") + 7 * steps, values)]


def load_level(length: int = 1500, seed: int = 11):
    """A weekly series whose level dwarfs its movements (as atmospheric CO2 does): 300 plus a
    slow trend, a yearly season of 1% of the level, noise."""
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    values = 300 + 0.03 * steps + 3 * np.sin(2 * np.pi * steps / 52) + rng.normal(0, 0.3, length)
    return [("level", np.datetime64("1990-01-06") + 7 * steps, values)]


def load_halfhourly(weeks: int = 12, seed: int = 5):
    """Twelve weeks of a half-hourly load: a daily profile with morning and evening peaks,
    quieter weekends, a slow drift and AR(1) noise (the shape of electricity demand: a day and a
    week as seasons, few weeks of history)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(weeks * 336)
    hour = (steps % 48) / 2
    profile = (np.exp(-((hour - 8.5) ** 2) / 4) + 1.3 * np.exp(-((hour - 18.5) ** 2) / 6)
               + 0.3 * np.sin(2 * np.pi * hour / 24))
    weekend = (steps // 48) % 7 >= 5
    noise = np.zeros(len(steps))
    shocks = rng.normal(0, 60, len(steps))
    for index in range(1, len(steps)):
        noise[index] = 0.9 * noise[index - 1] + shocks[index]
    values = (3000 + 2 * steps / 48 + 1500 * profile * np.where(weekend, 0.7, 1.0)
              - 300 * weekend + noise)
    times = np.datetime64("2015-01-05T00:00") + steps * np.timedelta64(30, "m")
    return [("halfhourly", times, values)]


def load_tuning_panel():
    """The benchmark panel's generator with another seed and 30 series: where the defaults of a
    global model (many related series) are chosen; the benchmark panel (seed 0) stays unseen."""
    return forecast_datasets.load_panel(count=30, seed=1)


Spec = forecast_datasets.DatasetSpec
TUNING = {
    "elnino": Spec(load_elnino, "MS", 12, horizon=12, windows=4),
    "woolyrnq": Spec(load_woolyrnq, "QS", 4, horizon=8, windows=2),
    "unemployment": Spec(load_unemployment, "QS", 4, horizon=8, windows=3),
    "lynx": Spec(load_lynx, "YS", 10, horizon=10, windows=2),
    "heartrate": Spec(load_heartrate, "30s", 1, horizon=10, windows=3),
    "weekly": Spec(load_weekly, "W-SAT", 52, horizon=26, windows=3),
    "level": Spec(load_level, "W-SAT", 52, horizon=52, windows=3),
    "panel30": Spec(load_tuning_panel, "MS", 12, horizon=12, windows=2),
    "halfhourly": Spec(load_halfhourly, "30min", 48, horizon=48, windows=7,
                       long_seasons=(48, 336)),
}
SUITES = {"benchmark": forecast_datasets.DATASETS, "tuning": TUNING}
# AutoETS / AutoARIMA see at most this many steps before each origin where a long seasonal
# history makes AutoARIMA take minutes a fit (the statsforecast peers of bench_forecast_peers
# run them on the full history).
BASELINE_HISTORY = {"sunspots": 480, "co2": 156, "taylor": 144}


def load(suite: str, name: str) -> forecast_datasets.ForecastTask:
    spec = SUITES[suite][name]
    return forecast_datasets.ForecastTask(name, spec.loader(), spec.freq, spec.season,
                                          spec.long_seasons or (spec.season,), spec.horizon,
                                          spec.windows)


def frame_of(task, *, drop_last: int = 0):
    """The long frame (``unique_id``, ``ds``, ``y``) of ``task``'s series."""
    import pandas as pd

    parts = []
    for name, times, values in task.series:
        stop = len(values) - drop_last
        parts.append(pd.DataFrame({"unique_id": name,
                                   "ds": np.asarray(times[:stop]).astype("datetime64[ns]"),
                                   "y": np.asarray(values[:stop], np.float64)}))
    return pd.concat(parts, ignore_index=True)


def held_out_windows(task, forecaster) -> tuple[list, list[tuple[int, int]]]:
    """``(series, windows)``: every series of ``task`` whole, as ``forecaster`` reads them
    (globally normalised), and the ``(series, origin)`` pairs of its held-out windows (the last
    ``task.windows`` windows of ``task.horizon`` steps of each series)."""
    series = forecaster.preparation.series(forecaster.read(frame_of(task)), source=task.name)
    windows = [(row, len(item) - (task.windows - window) * task.horizon)
               for row, item in enumerate(series) for window in range(task.windows)]
    return series, windows


# -- one dataset --------------------------------------------------------------------------------


def train_ensemble(task, args, group: int):
    """``(forecaster, seconds)``: the ensemble of seed group ``group``, every member trained on
    the data before the first window."""
    import seqmodel.forecasting as smf

    train = frame_of(task, drop_last=task.windows * task.horizon)
    settings = dict(num_samples=args.num_samples, **args.settings)
    if args.steps:  # else the library's default (seqmodel.configs.series_steps)
        settings["steps"] = args.steps
    started = time.perf_counter()
    forecaster = smf.fit(train, h=task.horizon, ensemble=args.ensemble, heads=HEADS,
                         seed=args.ensemble * group, **settings)
    seconds = time.perf_counter() - started
    return forecaster, seconds


def score(task, forecaster, models, calibration, *, methods, args, seed: int):
    full, _ = held_out_windows(task, forecaster)
    return backtest(models[0], forecaster.preparation.spec, forecaster.preparation.normalizer,
                    full, windows=task.windows, horizon=task.horizon, season=task.season,
                    key=jax.random.key(seed), num_samples=args.num_samples, methods=methods,
                    members=models[1:], calibration=calibration, seen=forecaster.seen,
                    baseline_history=BASELINE_HISTORY.get(task.name))


def _summary(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every overall score."""
    metrics = runs[0]["overall"].keys()
    return {metric: {"mean": round(float(np.mean([r["overall"][metric] for r in runs])), 5),
                     "std": round(float(np.std([r["overall"][metric] for r in runs])), 5)}
            for metric in metrics}


def run_dataset(task, args) -> dict:
    methods = ("persistence", "seasonal_naive")
    if baselines.statsforecast_available() and not args.no_statsforecast:
        methods += baselines.STATSFORECAST_BASELINES
    arms = {"seqmodel": [], f"seqmodel ensemble of {args.ensemble}": []}
    reference, training = None, []
    for group in args.seeds:
        forecaster, seconds = train_ensemble(task, args, group)
        training.append({"seed_group": group, "seconds": round(seconds, 1),
                         "members": args.ensemble,
                         "train_steps": forecaster.frame.train_steps,
                         "season": forecaster.preparation.season,
                         "lags": list(forecaster.preparation.spec.lags),
                         "context_length": forecaster.preparation.spec.context_length,
                         "calibration_windows": forecaster.calibration.windows})
        # The single model is the ensemble's first member, calibrated on its own paths.
        single = Forecaster(forecaster.model, forecaster.preparation, seen=forecaster.seen)
        trained_on = forecaster.frame.dataset
        single_calibration = calibrate(single, trained_on.series, trained_on.splits,
                                       horizon=task.horizon)
        for arm, models, calibration in (
                ("seqmodel", [forecaster.model], single_calibration),
                (f"seqmodel ensemble of {args.ensemble}", forecaster.models,
                 forecaster.calibration)):
            outcome = score(task, forecaster, models, calibration,
                            methods=(MODEL_METHOD,) + (methods if reference is None else ()),
                            args=args, seed=group)
            if reference is None:
                reference = {method: outcome.to_dict()["methods"][method] for method in methods}
            arms[arm].append({"seed_group": group, "calibration": outcome.calibration,
                              "overall": {metric: round(value["overall"], 5) for metric, value in
                                          outcome.to_dict()["methods"][MODEL_METHOD].items()}})
    overall = {arm: {metric: value["mean"] for metric, value in _summary(runs).items()}
               for arm, runs in arms.items()}
    spread = {arm: {metric: value["std"] for metric, value in _summary(runs).items()}
              for arm, runs in arms.items()}
    overall.update({method: {metric: round(value["overall"], 5)
                             for metric, value in scores.items()}
                    for method, scores in reference.items()})
    return {"dataset": task.name, "series": len(task.series),
            "steps": int(sum(task.lengths)), "horizon": task.horizon, "windows": task.windows,
            "season": task.season, "training": training, "seeds": list(args.seeds),
            "train_steps": training[0]["train_steps"], "ensemble": args.ensemble, "runs": arms,
            "overall": overall, "spread_over_seeds": spread}


# -- tables --------------------------------------------------------------------------------------


def markdown(results: list[dict], args) -> str:
    lines = []
    for result in results:
        seconds = np.mean([entry["seconds"] for entry in result["training"]])
        first = result["training"][0]
        lines += [
            f"### {result['dataset']}",
            "",
            f"{result['series']} series, {result['steps']} steps; backtest: last "
            f"{result['windows']} windows of {result['horizon']} steps, MASE season "
            f"{result['season']}; seqmodel defaults (season {first['season']}, lags "
            f"{','.join(map(str, first['lags']))}, context {first['context_length']}), "
            f"{result['train_steps']} steps a model, {seconds:.0f} s an ensemble of "
            f"{result['ensemble']} on this machine; mean (std) over seeds "
            f"{','.join(map(str, result['seeds']))}.",
            "",
            "| method | " + " | ".join(COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        for method, scores in result["overall"].items():
            spread = result["spread_over_seeds"].get(method, {})
            spread = spread or {metric: scores.get(f"{metric}_std") for metric in COLUMNS}
            cells = [f"{scores[c]:.4g}" + (f" ({spread[c]:.2g})" if spread.get(c) else "")
                     for c in COLUMNS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for arm, runs in result["runs"].items():
            before = np.mean([r["calibration"]["coverage_80_before"] for r in runs])
            before95 = np.mean([r["calibration"]["coverage_95_before"] for r in runs])
            lines.append(f"\n{arm}: coverage before conformal calibration 80% {before:.2f}, "
                         f"95% {before95:.2f}.")
        lines.append("")
    return "\n".join(lines)


def verdict(results: list[dict]) -> list[str]:
    """The targets: MASE below seasonal naive everywhere, below the best classical method on 4
    of 6, at or below DeepAR and NHITS on 4 of 6; 80% coverage 0.72-0.88, 95% 0.90-0.98."""
    notes = []
    for result in results:
        overall = result["overall"]
        for arm in (name for name in overall if name.startswith("seqmodel")):
            model = overall[arm]
            line = [f"{result['dataset']} {arm}: MASE {model['mase']:.3f}"]
            for method, scores in overall.items():
                if method.startswith("seqmodel") or "mase" not in scores:
                    continue
                better = model["mase"] <= scores["mase"]
                line.append(f"{'<=' if better else '>'} {method} {scores['mase']:.3f}")
            line.append(f"coverage 80% {model['coverage_80']:.2f}, 95% "
                        f"{model['coverage_95']:.2f}")
            notes.append("; ".join(line))
    return notes


def add_peer_rows(result: dict, path: str) -> None:
    """Appends the peers' rows of ``result``'s dataset (scored on the same windows by
    ``bench_forecast_peers``; deep models: the mean over seeds) to its table."""
    from benchmarks.bench_forecast_peers import RESULTS, peer_rows

    rows = peer_rows(RESULTS if path == "default" else path, result["dataset"])
    result["overall"].update({f"peer: {label}": {metric: round(value, 5)
                                                 for metric, value in scores.items()}
                              for label, scores in rows.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="benchmark")
    parser.add_argument("--datasets", help="comma-separated (default: the suite's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps a model (default: the library's, "
                        "seqmodel.configs.series_steps: 800 for one short series, more for "
                        "many or long ones)")
    parser.add_argument("--seeds", default="0,1,2", help="seed groups (one ensemble each)")
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of seqmodel.forecasting.fit (hidden_size=32, ...)")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="small models and few steps: "
                        "checks that the script runs, not how well")
    parser.add_argument("--no-statsforecast", action="store_true",
                        help="leave AutoETS and AutoARIMA out")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--tables-from", metavar="JSON", help="no training: the tables of this "
                        "result file (with --peers: the peers' rows added) to --markdown")
    parser.add_argument("--peers", nargs="?", const="default", help="add the rows of the "
                        "forecasting peers (DeepAR, NHITS, LSTM, MSTL...) from this JSON of "
                        "bench_forecast_peers (default: the committed results)")
    args = parser.parse_args(argv)
    if args.tables_from:
        return tables_from(args)
    suite = SUITES[args.suite]
    names = [n.strip() for n in (args.datasets or ",".join(suite)).split(",") if n.strip()]
    unknown = [name for name in names if name not in suite]
    if unknown:
        parser.error(f"--datasets {unknown}: allowed {', '.join(suite)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            args.settings[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string
            args.settings[key] = value
    if args.quick:
        args.steps, args.num_samples, args.seeds = args.steps or 40, 50, args.seeds[:1]
        args.settings.setdefault("hidden_size", 16)
    results, started_all = [], time.perf_counter()
    for name in names:
        started = time.perf_counter()
        results.append(run_dataset(load(args.suite, name), args))
        if args.peers and args.suite == "benchmark":
            add_peer_rows(results[-1], args.peers)
        print(markdown(results[-1:], args), flush=True)
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
        write_results(args, results, argv, time.perf_counter() - started_all)
    print("\n".join(verdict(results)))
    return 0


def tables_from(args) -> int:
    """The markdown tables and verdicts of a committed result file (peers' rows added)."""
    with open(args.tables_from, encoding="utf-8") as handle:
        saved = json.load(handle)
    results = saved["results"]
    if args.peers:
        for result in results:
            add_peer_rows(result, args.peers)
    args.settings = saved.get("settings", {})
    text = (markdown(results, args) + "\n\n" + "\n".join(f"- {line}" for line in verdict(results))
            + "\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(f"Generated from {args.tables_from} (`{saved.get('command', '')}`, "
                         f"{saved.get('date', '')}, load average "
                         f"{', '.join(f'{v:.1f}' for v in saved.get('load_average', []))}).\n\n"
                         + text)
    print(text)
    return 0


def write_results(args, results: list[dict], argv, seconds: float) -> None:
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown(results, args) + "\n\n"
                         + "\n".join(f"- {line}" for line in verdict(results)) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"command": "python benchmarks/bench_forecast_real.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
                       "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
                       "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
                       "device": jax.devices()[0].device_kind,
                       "versions": installed_versions(), "suite": args.suite,
                       "settings": {"steps": args.steps, "ensemble": args.ensemble,
                                    "seeds": args.seeds, **args.settings},
                       "results": results}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
