"""Forecasting real series: seqmodel against seasonal naive, AutoETS and AutoARIMA.

Series that ship inside installed packages (nothing is downloaded): pmdarima's ``taylor``
(half-hourly electricity demand), ``wineind`` (monthly wine sales), ``airpassengers``,
``sunspots`` (monthly), statsmodels' weekly ``co2`` (its 59 missing weeks filled by linear
interpolation), and ``panel``: a generated panel of 40 related monthly series whose levels span
four orders of magnitude (one global model, the series id as a static category).

For each dataset the last ``windows`` windows of ``horizon`` steps are held out: each head in
``--heads`` trains for ``--budget / len(heads)`` seconds on the steps before the first window
(its last 20% as validation: the run keeps its parameters of best validation NLL), the head
whose free-running forecasts of the validation tail have the lowest MASE is kept, and the
rolling-origin backtest (:func:`seqmodel.forecasting.backtest.backtest`) scores it next to the baselines,
which see the same histories. Tables of MASE, wQL, CRPS and interval coverage go to stdout
(``--markdown``) and the full results to ``--json``; ``--plot-dir`` gets one backtest chart per
dataset.

    python benchmarks/bench_forecast_real.py --budget 120 --json results.json \
        --markdown results.md --plot-dir docs/figures
    python benchmarks/bench_forecast_real.py --quick        # a few seconds a dataset: runs end to end

The same run for one dataset from the command line (airpassengers as a CSV with a date column)::

    seqmodel train --data air_train.csv --time-column date --context-length 24 --seq-len 36 \
        --hidden-size 64 --max-time 120 --out runs/air
    seqmodel eval --checkpoint runs/air --data air.csv --backtest 3 --horizon 12 --json \
        --plot backtest.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import seqmodel as sm  # noqa: E402
from benchmarks import forecast_datasets  # noqa: E402
from seqmodel.data.series import load_forecast_dataset  # noqa: E402
from seqmodel.forecasting import baselines  # noqa: E402
from seqmodel.forecasting.backtest import MODEL_METHOD, backtest, plot_backtest  # noqa: E402
from seqmodel.training import checkpoint  # noqa: E402
from seqmodel.training.fitting import fit  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one dataset is backtested and what the model looks like."""

    horizon: int
    windows: int
    season: int
    context_length: int
    hidden_size: int = 32
    batch_size: int = 32
    learning_rate: float = 3e-3
    dropout: float = 0.3
    # Validation (and a checkpoint when it improves) every this many steps: the run keeps its
    # best parameters, which stops the training of a short series before it overfits.
    eval_every: int = 50
    # AutoETS / AutoARIMA see at most this many steps before each origin (a long seasonal
    # history makes AutoARIMA take minutes a fit); None: all.
    baseline_history: int | None = None

    @property
    def seq_len(self) -> int:
        return self.context_length + self.horizon


# -- the data -----------------------------------------------------------------------------------


def _loader(name: str):
    """The series of ``name`` (``[(id, times, values)]``): one definition for every arm of the
    benchmark, seqmodel's and the peers' (``benchmarks/forecast_datasets.py``)."""
    return forecast_datasets.DATASETS[name].loader


DATASETS = {
    "wineind": (_loader("wineind"),
                Setting(horizon=12, windows=3, season=12, context_length=24)),
    "airpassengers": (_loader("airpassengers"),
                      Setting(horizon=12, windows=3, season=12, context_length=24)),
    "sunspots": (_loader("sunspots"),
                 Setting(horizon=24, windows=5, season=12, context_length=48,
                         baseline_history=480)),
    "co2": (_loader("co2"), Setting(horizon=52, windows=4, season=52, context_length=104,
                                    baseline_history=156)),
    "panel": (_loader("panel"), Setting(horizon=12, windows=2, season=12, context_length=24)),
    "taylor": (_loader("taylor"), Setting(horizon=48, windows=7, season=48, context_length=96,
                                          baseline_history=144)),
}


def write_csv(path: str, series, *, drop_last: int = 0) -> None:
    """``date,series,value`` rows (the id column only for several series)."""
    panel = len(series) > 1
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("date,series,value\n" if panel else "date,value\n")
        for name, times, values in series:
            stop = len(values) - drop_last
            for stamp, value in zip(times[:stop], values[:stop]):
                stamp = np.datetime_as_string(np.datetime64(stamp, "m"))
                handle.write(f"{stamp},{name},{value:.6g}\n" if panel else
                             f"{stamp},{value:.6g}\n")


# -- one dataset --------------------------------------------------------------------------------


def train_head(train_csv: str, head: str, setting: Setting, *, panel: bool, seconds: float,
               seed: int, quiet: bool, folder: str):
    options = dict(time_column="date", head=head, context_length=setting.context_length,
                   val_fraction=0.2)
    if panel:
        options.update(id_column="series", static_columns=("series",))
    dataset = load_forecast_dataset(train_csv, **options)
    config = sm.ModelConfig(**dataset.model_fields(), cell="gru",
                            hidden_size=setting.hidden_size, dropout=setting.dropout)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    train_config = sm.TrainConfig(batch_size=setting.batch_size, seq_len=setting.seq_len,
                                  max_time=seconds, learning_rate=setting.learning_rate,
                                  warmup_steps=50, eval_every=setting.eval_every,
                                  eval_seq_len=setting.seq_len, steps_per_call=20, seed=seed)
    out = os.path.join(folder, f"run-{os.path.basename(train_csv)}-{head}")
    result = fit(model, dataset, train_config, out_dir=out, progress=not quiet)
    best, _ = checkpoint.load_model(out, prefer="best")  # early stopping on the validation tail
    return dataset, best, result


def validation_mase(entry: dict, setting: Setting, *, seed: int, most: int = 5) -> float:
    """MASE of the model's forecasts of up to ``most`` windows at the end of the validation
    tail of its training data (NaN when the tail is shorter than one window): how the head is
    chosen, on data the backtest never sees."""
    data = entry["dataset"]
    tail = min(len(item) - split for item, split in zip(data.series, data.splits))
    windows = min(tail // setting.horizon, most)
    if windows < 1:
        return float("nan")
    outcome = backtest(entry["model"], data.spec, data.normalizer, data.series,
                       windows=windows, horizon=setting.horizon, season=setting.season,
                       key=jax.random.key(seed + 1), num_samples=100, methods=(MODEL_METHOD,))
    return outcome.scores[MODEL_METHOD]["mase"].overall


def run_dataset(name: str, args, folder: str) -> dict:
    loader, setting = DATASETS[name]
    if args.quick:
        setting = dataclasses.replace(setting, hidden_size=16, baseline_history=min(
            setting.baseline_history or 10**9, 4 * setting.season))
    series = loader()
    panel = len(series) > 1
    full_csv = os.path.join(folder, f"{name}.csv")
    train_csv = os.path.join(folder, f"{name}_train.csv")
    write_csv(full_csv, series)
    write_csv(train_csv, series, drop_last=setting.windows * setting.horizon)
    heads = [head.strip() for head in args.heads.split(",") if head.strip()]
    seconds = args.budget / len(heads)
    trained = []
    for head in heads:
        started = time.perf_counter()
        dataset, model, result = train_head(train_csv, head, setting, panel=panel,
                                            seconds=seconds, seed=args.seed, quiet=args.quiet,
                                            folder=folder)
        trained.append({"head": head, "dataset": dataset, "model": model,
                        "val_loss": result.best_val_loss, "steps": result.steps,
                        "train_seconds": round(time.perf_counter() - started, 1)})
    for entry in trained:
        entry["val_mase"] = validation_mase(entry, setting, seed=args.seed)
    best = min(trained, key=lambda entry: (np.nan_to_num(entry["val_mase"], nan=np.inf),
                                           entry["val_loss"]))
    methods = ("persistence", "seasonal_naive")
    if baselines.statsforecast_available() and not args.no_statsforecast:
        methods += baselines.STATSFORECAST_BASELINES
    results, chosen = {}, None
    started = time.perf_counter()
    for entry in trained:
        full = load_forecast_dataset(full_csv, metadata=entry["dataset"].metadata())
        is_best = entry is best
        outcome = backtest(entry["model"], full.spec, full.normalizer, full.series,
                           windows=setting.windows, horizon=setting.horizon,
                           season=setting.season, key=jax.random.key(args.seed),
                           num_samples=args.num_samples,
                           methods=(MODEL_METHOD,) + (methods if is_best else ()),
                           baseline_history=setting.baseline_history)
        results[entry["head"]] = outcome
        if is_best:
            chosen = outcome
    backtest_seconds = round(time.perf_counter() - started, 1)
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_backtest(chosen, os.path.join(args.plot_dir, f"backtest_{name}.png"),
                      max_series=2, title=f"{name}: {setting.windows} windows of "
                      f"{setting.horizon}, seqmodel ({best['head']}) vs seasonal naive")
    scores = {f"seqmodel ({best['head']})": chosen.to_dict()["methods"][MODEL_METHOD]}
    scores.update({method: chosen.to_dict()["methods"][method] for method in methods})
    for entry in trained:
        if entry is not best:
            scores[f"seqmodel ({entry['head']}, not chosen)"] = (
                results[entry["head"]].to_dict()["methods"][MODEL_METHOD])
    return {
        "dataset": name, "series": len(series), "steps": int(sum(len(s[2]) for s in series)),
        "setting": dataclasses.asdict(setting), "chosen_head": best["head"],
        "training": [{key: value for key, value in entry.items()
                      if key not in ("dataset", "model")} for entry in trained],
        "budget_seconds": args.budget, "backtest_seconds": backtest_seconds,
        "overall": {method: {metric: round(value["overall"], 5)
                             for metric, value in metric_scores.items()}
                    for method, metric_scores in scores.items()},
        "per_step": scores,
    }


# -- tables --------------------------------------------------------------------------------------

COLUMNS = ("mase", "wql", "smape", "crps", "coverage_80", "coverage_95")


def markdown(results: list[dict], budget: float) -> str:
    lines = []
    for result in results:
        setting = result["setting"]
        training = ", ".join(f"{entry['head']}: {entry['steps']} steps, best val NLL "
                             f"{entry['val_loss']:.3f}, val MASE {entry['val_mase']:.3f}"
                             for entry in result["training"])
        lines += [
            f"### {result['dataset']}",
            "",
            f"{result['series']} series, {result['steps']} steps; backtest: last "
            f"{setting['windows']} windows of {setting['horizon']} steps, season "
            f"{setting['season']}; GRU h{setting['hidden_size']}, context "
            f"{setting['context_length']}, {budget:g} s of training on this machine "
            f"({training}).",
            "",
            "| method | " + " | ".join(COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        for method, scores in result["overall"].items():
            lines.append(f"| {method} | " + " | ".join(f"{scores[c]:.4g}" for c in COLUMNS)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def verdict(results: list[dict]) -> list[str]:
    """The targets: MASE below persistence and seasonal naive everywhere, at or below AutoETS
    on half the datasets, 80% coverage in 75-85%."""
    notes = []
    for result in results:
        overall = result["overall"]
        model = next(scores for method, scores in overall.items()
                     if method.startswith("seqmodel (") and "not chosen" not in method)
        line = [f"{result['dataset']}: MASE {model['mase']:.3f}"]
        for method in ("persistence", "seasonal_naive", "auto_ets", "auto_arima"):
            if method in overall:
                better = model["mase"] <= overall[method]["mase"]
                line.append(f"{'<=' if better else '>'} {method} {overall[method]['mase']:.3f}")
        line.append(f"coverage 80% {model['coverage_80']:.2f}")
        notes.append("; ".join(line))
    return notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))  # taylor (AutoARIMA) last
    parser.add_argument("--heads", default="student_t,gaussian")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of training per dataset, split over --heads")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few seconds a dataset, small "
                        "models: checks that the script runs, not how well")
    parser.add_argument("--no-statsforecast", action="store_true",
                        help="leave AutoETS and AutoARIMA out")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--plot-dir", help="one backtest chart per dataset")
    parser.add_argument("--peers", nargs="?", const="default", help="add the rows of the "
                        "forecasting peers (DeepAR, NHITS, LSTM, MSTL...) from this JSON of "
                        "bench_forecast_peers (default: the committed results)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        parser.error(f"--datasets {unknown}: allowed {', '.join(DATASETS)}")
    if args.quick:
        args.budget, args.num_samples = min(args.budget, 6.0), min(args.num_samples, 50)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            started = time.perf_counter()
            results.append(run_dataset(name, args, folder))
            if args.peers:
                add_peer_rows(results[-1], args.peers)
            print(markdown(results[-1:], args.budget), flush=True)
            print(f"{name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
            write_results(args, results)  # what is done so far survives an interruption
    print("\n".join(verdict(results)))
    return 0


def add_peer_rows(result: dict, path: str) -> None:
    """Appends the peers' rows of ``result``'s dataset (scored on the same windows by
    ``bench_forecast_peers``; deep models: the mean over seeds) to its table."""
    from benchmarks.bench_forecast_peers import RESULTS, peer_rows

    rows = peer_rows(RESULTS if path == "default" else path, result["dataset"])
    result["overall"].update({f"peer: {label}": {metric: round(value, 5)
                                                 for metric, value in scores.items()}
                              for label, scores in rows.items()})


def write_results(args, results: list[dict]) -> None:
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown(results, args.budget) + "\n\n"
                         + "\n".join(f"- {line}" for line in verdict(results)) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
                       "results": results}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
