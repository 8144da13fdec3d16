"""Long sequences: peak memory and tokens/s of one train step against the length T, with and
without rematerialisation, on 1 device and with time split over 4 devices.

The model is a ~1M-parameter character-level minGRU (hidden 128, 5 residual blocks, the 101
characters of the corpus) trained at batch 1 on one lane of the ``python-stdlib`` text (built
in: the running Python's standard library, 3M characters), through the library's train step
(``DataParallel.train_step``: AdamW, clipping, state donated), as ``seqmodel train --data
python-stdlib --cell mingru --hidden-size 128 --num-layers 5 --embed-size 16 --batch-size 1
--remat R --sequence-parallel S`` runs it. Each configuration runs in a process of its own (its
device count is fixed when JAX starts, and its peak resident memory is its own), which:

1. compiles the step and reads XLA's plan for it (``memory_analysis``): the bytes each device
   allocates for the step (temporaries + arguments + outputs - donated aliases). This figure is
   exact for the compiled program and costs no memory, so it is recorded for every
   configuration, also those too large to run here;
2. when the plan fits ``--budget-gb`` (default: 60% of the memory available at the start) and
   80% of what is available just before it (others' work on a shared machine comes first), runs
   ``--steps`` timed steps after one warm-up step and records the process's peak resident set
   (``ru_maxrss``: everything, the Python process and JAX included), seconds per step (the
   median of the timed steps), tokens/s and the loss of every step's batch, warm-up included
   (before that step's update; batches are consecutive windows of the text, wrapping round);
3. reports the 1-minute load average before and after (the machine is shared).

Run::

    python benchmarks/bench_long_context.py                       # the sweep of the committed JSON
    python benchmarks/bench_long_context.py --lengths 16384 --remat none block --devices 1
    python benchmarks/bench_long_context.py --plot-only \
        benchmarks/results/long_context_cpu_2core.json
    python benchmarks/bench_long_context.py --table benchmarks/results/long_context_cpu_2core.json

The JSON goes to ``--json`` (rewritten after every configuration, so a long sweep can be read
while it runs) and the figure to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

if not __package__:  # run by path: the package needs its parent on sys.path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.environment import installed_versions
from benchmarks.protocol import environment

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "long_context_cpu_2core.json"
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "figures" / \
    "long_context_memory.png"
LENGTHS = (16_384, 65_536, 262_144, 1_048_576)
MODEL = dict(cell="mingru", hidden_size=128, num_layers=5, embed_size=16)
GIB = 2**30


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping others out)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


# ---------------------------------------------------------------------------------------------
# Worker: one configuration in its own process
# ---------------------------------------------------------------------------------------------


def worker(spec: dict) -> dict:
    from seqmodel.training import distributed

    devices = spec["devices"]
    distributed.request_cpu_devices(devices)
    import jax
    import numpy as np
    from flax import nnx

    from seqmodel import ModelConfig, SequenceModel, TrainConfig
    from seqmodel.data import load_dataset
    from seqmodel.training import optimization

    length = spec["length"]
    started = time.perf_counter()
    parallel = distributed.DataParallel.create(devices, sequence=devices)
    dataset = load_dataset("python-stdlib", val_fraction=0.0)
    architecture = dict(MODEL, num_layers=spec.get("num_layers", MODEL["num_layers"]))
    model_config = ModelConfig(**architecture, **dataset.model_fields(), remat=spec["remat"])
    train_config = TrainConfig(batch_size=1, seq_len=length, steps=spec["steps"] + 1,
                               warmup_steps=0, learning_rate=1e-3, steps_per_call=1)
    parallel.check_config(train_config, model_config)
    batches = dataset.train_batches(batch_size=1, seq_len=length, batching="lanes", seed=0)
    model = SequenceModel(model_config, rngs=nnx.Rngs(0))
    parameters = sum(int(np.prod(leaf.shape)) for leaf in
                     jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef = optimization.split_model(model)[0]
    tx, step = parallel.train_step(graphdef, train_config)
    _, state = optimization.init_train_state(model, tx, train_config)
    state = parallel.place_state(state)
    first = parallel.shard_batch(next(batches))
    compiled = step.lower(state, first).compile()
    analysis = compiled.memory_analysis()
    device_bytes = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                    + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
    result = dict(parameters=parameters, compile_seconds=round(time.perf_counter() - started, 1),
                  device_gib=round(device_bytes / GIB, 4),
                  temp_gib=round(analysis.temp_size_in_bytes / GIB, 4),
                  planned_gib=round(device_bytes * devices / GIB, 4))
    if device_bytes * devices > min(spec["budget_bytes"], 0.8 * available_bytes()):
        return dict(result, ran=False)
    state, metrics = compiled(state, first)  # warm-up: first-touch of every buffer
    losses = [float(metrics["loss"])]  # the loss of each step's batch, before its update
    seconds = []
    for _ in range(spec["steps"]):
        batch = parallel.shard_batch(next(batches))
        begin = time.perf_counter()
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
        seconds.append(time.perf_counter() - begin)
    step_seconds = sorted(seconds)[len(seconds) // 2]
    return dict(result, ran=True, step_seconds=round(step_seconds, 2),
                tokens_per_second=round(length / step_seconds, 1), loss=round(losses[-1], 4),
                losses=[round(loss, 4) for loss in losses],
                peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                                   / GIB, 3))


# ---------------------------------------------------------------------------------------------
# Parent: the sweep, the JSON, the figure
# ---------------------------------------------------------------------------------------------


def run_configuration(spec: dict, timeout: float) -> dict:
    load_before = os.getloadavg()[0]
    command = [sys.executable, "-m", "benchmarks.bench_long_context", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=environment(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return dict(spec, error=(done.stderr.strip().splitlines() or ["no output"])[-1][:300])
    result = json.loads(lines[-1][len("RESULT "):])
    return dict(spec, **result, load_before=round(load_before, 2),
                load_after=round(os.getloadavg()[0], 2))


def sittings(report: dict) -> list[dict]:
    """When each sitting of a result file started, with its budget and the memory then free (the
    top-level fields are the latest sitting's)."""
    return report.get("sittings") or [dict(
        started=report["started"], budget_gib=report["budget_gib"],
        memory_available_gib=report["machine"]["memory_available_gib"])]


def sweep(args) -> dict:
    budget = int((args.budget_gb * GIB) if args.budget_gb else 0.6 * available_bytes())
    report = dict(
        benchmark="bench_long_context",
        model=dict(MODEL, num_layers=args.num_layers, data="python-stdlib (char)"),
        batch_size=1, steps=args.steps,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), memory_available_gib=round(available_bytes() / GIB, 1)),
        budget_gib=round(budget / GIB, 1),
        versions=installed_versions("jax", "jaxlib", "flax", "optax"),
        started=time.strftime("%Y-%m-%d %H:%M:%S"), rows=[])
    if args.append and args.json and pathlib.Path(args.json).exists():
        # Keep the rows of another sitting, except those measured again now.
        earlier = json.loads(pathlib.Path(args.json).read_text())
        planned = {(length, devices, mode) for length in args.lengths
                   for devices in args.devices for mode in args.remat}
        report["rows"] = [row for row in earlier["rows"]
                          if (row["length"], row["devices"], row["remat"]) not in planned]
        report["sittings"] = sittings(earlier) + sittings(report)
    for length in args.lengths:
        for devices in args.devices:
            for mode in args.remat:
                if mode == "scan" and devices not in args.scan_devices:
                    continue
                spec = dict(length=length, devices=devices, remat=mode, steps=args.steps,
                            num_layers=args.num_layers, budget_bytes=budget)
                row = run_configuration(spec, args.timeout)
                row.pop("budget_bytes")
                row["measured"] = time.strftime("%Y-%m-%d %H:%M")
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def plot(report: dict, path: pathlib.Path) -> None:
    """Three panels against T: XLA's plan per device (every configuration), the measured peak
    resident memory of the process (the configurations that ran) and tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (plan, resident, speed) = plt.subplots(1, 3, figsize=(15, 4.4))
    styles = {("none", 1): ("tab:red", "o"), ("scan", 1): ("tab:orange", "^"),
              ("block", 1): ("tab:blue", "s"), ("none", 4): ("tab:pink", "o"),
              ("scan", 4): ("tab:olive", "^"), ("block", 4): ("tab:cyan", "s")}
    groups: dict[tuple, list] = {}
    for row in report["rows"]:
        if "error" not in row:
            groups.setdefault((row["remat"], row["devices"]), []).append(row)
    for (mode, devices), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        rows = sorted(rows, key=lambda row: row["length"])
        color, marker = styles.get((mode, devices), ("gray", "x"))
        style = dict(color=color, marker=marker, linestyle="--" if devices > 1 else "-",
                     label=f"remat={mode}, {devices} device{'s' if devices > 1 else ''}")
        plan.plot([row["length"] for row in rows], [row["device_gib"] for row in rows], **style)
        ran = [row for row in rows if row.get("ran")]
        if ran:
            lengths = [row["length"] for row in ran]
            resident.plot(lengths, [row["peak_rss_gib"] for row in ran], **style)
            speed.plot(lengths, [row["tokens_per_second"] for row in ran], **style)
    for axis in (plan, resident):
        axis.axhline(24, color="black", linewidth=0.8)
        axis.annotate("24 GiB: this machine", (0.02, 24), xycoords=("axes fraction", "data"),
                      xytext=(0, 3), textcoords="offset points", fontsize=8)
        axis.set_yscale("log")
    for axis in (plan, resident, speed):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length T (tokens, batch 1)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="lower right" if axis is not speed else "lower left")
    plan.set_ylabel("GiB a device allocates (XLA's plan)")
    plan.set_title("train step's memory plan, per device")
    resident.set_ylabel("peak resident memory of the process, GiB")
    resident.set_title("measured (all devices: one process)")
    resident.set_ylim(plan.get_ylim())
    loads = [value for row in report["rows"] if row.get("ran")
             for value in (row["load_before"], row["load_after"])]
    speed.set_ylim(bottom=0)
    speed.set_ylabel("tokens/s (measured)")
    speed.set_title(f"throughput, 2-core CPU shared (load {min(loads):.0f}-{max(loads):.0f})"
                    if loads else "throughput")
    figure.suptitle(f"one train step of a {report['rows'][0].get('parameters', 0) / 1e6:.1f}M-"
                    f"parameter minGRU, batch 1 ({report['started'][:10]})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def markdown_table(report: dict) -> str:
    """The rows of a result file as the Markdown table of docs/long_context.md."""
    lines = ["| T | devices | remat | plan GiB a device | plan GiB all | peak RSS GiB | s/step | "
             "tokens/s | loss per step | load (1 min) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    order = {"none": 0, "scan": 1, "block": 2}
    for row in sorted(report["rows"], key=lambda row: (row["length"], row["devices"],
                                                       order.get(row["remat"], 3))):
        if "error" in row:
            lines.append(f"| {row['length']:,} | {row['devices']} | {row['remat']} | "
                         f"error: {row['error']} | | | | | | |")
            continue
        ran = row.get("ran")
        measured = (f"{row['peak_rss_gib']:.2f} | {row['step_seconds']:.1f} | "
                    f"{row['tokens_per_second']:,.0f} | "
                    + " > ".join(f"{loss:.3f}" for loss in row.get("losses", [row["loss"]]))
                    if ran else "not run: plan over the budget | | | ")
        lines.append(f"| {row['length']:,} | {row['devices']} | {row['remat']} | "
                     f"{row['device_gib']:.2f} | {row['planned_gib']:.2f} | {measured} | "
                     f"{row['load_before']:.1f}-{row['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--remat", nargs="+", default=["none", "scan", "block"],
                        choices=["none", "scan", "block"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--scan-devices", type=int, nargs="+", default=[1],
                        help="device counts that also run remat=scan (it is the middle case)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--num-layers", type=int, default=MODEL["num_layers"],
                        help="residual blocks (another count tells the blocks' share of the plan "
                             "from the rest's: embedding, head, loss)")
    parser.add_argument("--budget-gb", type=float, default=None,
                        help="run a configuration only when XLA's plan for it (all devices) is "
                             "under this (default: 60%% of MemAvailable at the start)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a configuration")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--append", action="store_true",
                        help="keep the other rows of --json (the configurations run now replace "
                             "theirs)")
    parser.add_argument("--plot", default=str(DEFAULT_PLOT))
    parser.add_argument("--plot-only", metavar="JSON", help="redraw the figure of a result file")
    parser.add_argument("--table", metavar="JSON", help="print a result file as a Markdown table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.table:
        print(markdown_table(json.loads(pathlib.Path(args.table).read_text())))
        return
    report = (json.loads(pathlib.Path(args.plot_only).read_text()) if args.plot_only
              else sweep(args))
    if args.plot:
        plot(report, pathlib.Path(args.plot))


if __name__ == "__main__":
    main()
