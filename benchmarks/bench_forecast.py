"""Forecast quality and the exposure-bias report on the built-in ``sine`` data.

Trains one model per variant (teacher forcing, and scheduled sampling for comparison), then on the
validation sequences measures, per horizon step: free-running MAE of the median and CRPS, the
persistence baseline, and the teacher-forced one-step error. Writes a JSON summary and, for the
README, the report and fan-chart figures.

    python benchmarks/bench_forecast.py [--steps 1500] [--horizon 50] [--out docs/figures]
        [--variants teacher-forcing,scheduled-sampling] [--json results.json]

The same numbers come from the CLI (one variant)::

    seqmodel train --data sine --head gaussian --hidden-size 64 --seq-len 100 --batch-size 32 \
        --steps 1500 --out runs/sine
    seqmodel eval --checkpoint runs/sine --horizon 50 --json --plot report.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

import seqmodel as sm
from seqmodel import TrainConfig
from seqmodel.data import load_dataset
from seqmodel.forecasting import paths as forecast
from seqmodel.forecasting import plots, reports
from seqmodel.training.fitting import fit

VARIANTS = {
    # name: (teacher_forcing, schedule)
    "teacher-forcing": (1.0, "constant"),
    "scheduled-sampling": (0.5, "linear"),
}


def run_variant(name: str, args, dataset) -> dict:
    teacher_forcing, schedule = VARIANTS[name]
    config = sm.ModelConfig(input_size=dataset.input_size, head=args.head, cell=args.cell,
                            hidden_size=args.hidden_size, num_mixtures=args.num_mixtures)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(args.seed))
    train_config = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                               learning_rate=args.lr, warmup_steps=min(100, args.steps // 10),
                               weight_decay=0.0, eval_every=None, seed=args.seed,
                               teacher_forcing=teacher_forcing,
                               teacher_forcing_schedule=schedule)
    started = time.perf_counter()
    result = fit(model, dataset, train_config, progress=not args.quiet)
    train_seconds = time.perf_counter() - started
    model.eval()
    started = time.perf_counter()
    report = reports.exposure_bias_report(
        model, dataset.val_sequences, dataset.normalizer, key=jax.random.key(args.seed),
        horizon=args.horizon, num_samples=args.num_samples, num_starts=args.num_starts,
        min_context=args.min_context)
    report_seconds = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    title = f"sine, {args.cell} {args.hidden_size}, {args.head}, {name}"
    plots.plot_report(report, os.path.join(args.out, f"exposure_bias_sine_{name}.png"),
                         title=title)
    if name == "teacher-forcing":
        # One validation sequence: context, fan of sample paths, and what really happened.
        sequence = dataset.val_sequences[0]
        start = min(len(sequence) - args.horizon, 100)
        paths = forecast.forecast(model, dataset.normalizer, sequence[:start],
                                  key=jax.random.key(args.seed + 1), horizon=args.horizon,
                                  num_samples=200)
        plots.plot_fan(sequence[:start], paths, os.path.join(args.out, "fan_sine.png"),
                          truth=sequence[start : start + args.horizon],
                          feature_names=dataset.columns)
    mae, persistence = np.array(report["mae"]), np.array(report["persistence_mae"])
    return {
        "variant": name,
        "teacher_forcing": teacher_forcing,
        "schedule": schedule,
        "train_seconds": round(train_seconds, 1),
        "report_seconds": round(report_seconds, 1),
        "val_loss": result.val_loss,
        "beats_persistence_at_every_horizon": bool(np.all(mae < persistence)),
        "mae_at": {h: round(float(mae[h - 1]), 4) for h in (1, 10, 25, 50) if h <= len(mae)},
        "crps_at": {h: round(report["crps"][h - 1], 4) for h in (1, 10, 25, 50) if h <= len(mae)},
        "persistence_mae_at": {h: round(float(persistence[h - 1]), 4)
                               for h in (1, 10, 25, 50) if h <= len(mae)},
        "one_step_mae": round(report["one_step_mae"], 4),
        "report": report,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="teacher-forcing,scheduled-sampling")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--head", default="gaussian")
    parser.add_argument("--num-mixtures", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--num-starts", type=int, default=64)
    parser.add_argument("--min-context", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--json", default=None, help="write the full results here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants {unknown}: allowed {', '.join(VARIANTS)}")
    # The plain case (the element alone) of the one path: the exposure bias of a bare model.
    dataset = load_dataset("sine", lags=(1,), scaling="none", head=args.head)
    results = [run_variant(name, args, dataset) for name in names]
    print(f"{'variant':<20}{'one-step':>9}" + "".join(f"{'h=' + str(h):>16}" for h in (1, 10, 25, 50))
          + "   (MAE / persistence)")
    for result in results:
        cells = "".join(
            f"{result['mae_at'][h]:>8.3f}/{result['persistence_mae_at'][h]:<7.3f}"
            for h in (1, 10, 25, 50) if h in result["mae_at"])
        print(f"{result['variant']:<20}{result['one_step_mae']:>9.3f}{cells}")
    summary = [{k: v for k, v in r.items() if k != "report"} for r in results]
    print(json.dumps({"device": jax.devices()[0].device_kind, "results": summary}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
