"""Training throughput against the number of data-parallel devices (seqmodel.training.distributed).

Each device count runs in its own worker process, started the way ``seqmodel train --devices N``
starts (on a CPU-only machine: ``N`` virtual CPU devices, asked for before JAX starts; with
accelerators: the first ``N`` of them). A worker builds the model, the mesh of ``N`` devices and
the jitted train step of :func:`seqmodel.training.fitting` (batch and lanes' carry split along ``data``,
state replicated), compiles it, then times ``--steps`` steps per request, batches fed from a
lanes iterator through :meth:`DataParallel.shard_batch` as in ``fit``. All workers stay alive and
the parent asks them in turn, so repetitions alternate across device counts (one worker runs at a
time) and each count's median is compared with the 1-device median of the same run (``speedup``,
throughput ratio), beside the ratio of the fastest repetitions (``best``: on a shared machine the
least disturbed one) and the spread ``(max - min) / median`` as a noise figure.

Default: strong scaling (the global batch stays ``--batch-size`` whatever ``N``; that is what
``--devices`` changes in a run). ``--scaling weak`` keeps ``--batch-size`` rows per device.

Virtual CPU devices share the machine's cores: on a CPU they show what splitting a batch costs or
gains against XLA's own multi-threading of one device, not what more hardware would give.

Run::

    python benchmarks/bench_devices.py                          # 1, 2, 4 devices, LSTM h512 b32
    python benchmarks/bench_devices.py --json devices.json --repeats 5
    python benchmarks/bench_devices.py --devices 1 2 --hidden-size 128 --steps 10    # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.protocol import environment  # noqa: E402

CONFIG_DEFAULTS = {"cell": "lstm", "hidden_size": 512, "embed_size": 64, "vocab_size": 100,
                   "batch_size": 32, "seq_len": 128, "steps": 20, "scaling": "strong"}


# ---------------------------------------------------------------------------------------------
# Worker: one device count, one process
# ---------------------------------------------------------------------------------------------


def worker(devices: int, config: dict) -> None:
    """Serve timing requests on stdin/stdout: ``run`` -> ``TIME seconds``; ``quit`` ends."""
    from seqmodel.training import distributed

    parallel = distributed.from_flags(devices=devices)  # before any JAX computation
    import jax
    import numpy as np
    from flax import nnx

    from seqmodel import ModelConfig, SequenceModel, TrainConfig
    from seqmodel.data import make_batch_iterator
    from seqmodel.training.distributed import CallsInFlight
    from seqmodel.training.optimization import init_train_state, split_model

    batch_size = config["batch_size"] * (devices if config["scaling"] == "weak" else 1)
    model = SequenceModel(ModelConfig(vocab_size=config["vocab_size"], cell=config["cell"],
                                      hidden_size=config["hidden_size"],
                                      embed_size=config["embed_size"]), rngs=nnx.Rngs(0))
    train_config = TrainConfig(batch_size=batch_size, seq_len=config["seq_len"], steps=10**6,
                               warmup_steps=10)
    parallel.check_config(train_config)
    graphdef = split_model(model)[0]
    tx, train_step = parallel.train_step(graphdef, train_config)
    graphdef, state = init_train_state(model, tx, train_config)
    state = parallel.place_state(state)
    tokens = np.random.default_rng(0).integers(0, config["vocab_size"], size=2_000_000,
                                               dtype=np.int32).astype(np.uint8)
    batches = parallel.local_batches(make_batch_iterator(
        tokens, batch_size=batch_size, seq_len=config["seq_len"]))

    started = time.perf_counter()
    state, metrics = train_step(state, next(batches))
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started
    print(f"READY {json.dumps({'compile_seconds': compile_seconds, 'batch_size': batch_size, 'mesh': parallel.describe()})}", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        jax.block_until_ready(state)
        started = time.perf_counter()
        # As fit() does: a longer dispatch queue can deadlock XLA:CPU's collectives.
        in_flight = CallsInFlight()
        for _ in range(config["steps"]):
            state, metrics = train_step(state, next(batches))
            in_flight.add(metrics)
        jax.block_until_ready((state, metrics))
        print(f"TIME {time.perf_counter() - started}", flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: alternate repetitions across workers
# ---------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, devices: int, config: dict):
        # Several workers may hold one accelerator: no worker grabs most of its memory.
        extra = {"XLA_PYTHON_CLIENT_PREALLOCATE":
                 os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false")}
        self.devices = devices
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_devices", "--worker", str(devices),
             "--config", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment(extra))
        self.info: dict | None = None

    def _reply(self, prefix: str) -> str:
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"the worker for {self.devices} device(s) ended without a reply "
                           f"(exit status {self.process.wait()}); see its stderr above")

    def ready(self) -> dict:
        if self.info is None:
            self.info = json.loads(self._reply("READY "))
        return self.info

    def time(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self._reply("TIME "))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()


def run(device_counts=(1, 2, 4), repeats: int = 3, **config) -> dict:
    """Time every device count; returns the JSON-compatible report (see :func:`main`)."""
    config = {**CONFIG_DEFAULTS, **config}
    workers = [Worker(count, config) for count in device_counts]
    seconds: dict[int, list[float]] = {count: [] for count in device_counts}
    try:
        infos = {worker.devices: worker.ready() for worker in workers}
        for repeat in range(repeats):
            # Rotate the order each round so no count always runs first after a pause.
            order = workers[repeat % len(workers):] + workers[:repeat % len(workers)]
            for worker in order:
                seconds[worker.devices].append(worker.time())
    finally:
        for worker in workers:
            worker.close()
    base = statistics.median(seconds[device_counts[0]]) / config["steps"]
    base_best = min(seconds[device_counts[0]]) / config["steps"]
    base_batch = infos[device_counts[0]]["batch_size"]
    rows = []
    for count in device_counts:
        per_step = statistics.median(seconds[count]) / config["steps"]
        batch_size = infos[count]["batch_size"]
        tokens_per_second = batch_size * config["seq_len"] / per_step
        speedup = (base / per_step) * (batch_size / base_batch)  # throughput ratio
        # On a shared machine the fastest repetition is the least disturbed one.
        best_speedup = (base_best / (min(seconds[count]) / config["steps"])) * (
            batch_size / base_batch)
        rows.append({
            "devices": count, "mesh": infos[count]["mesh"], "batch_size": batch_size,
            "seconds_per_step": per_step, "tokens_per_second": tokens_per_second,
            "speedup": speedup, "best_speedup": best_speedup, "efficiency": speedup / (count / device_counts[0]),
            "spread": (max(seconds[count]) - min(seconds[count])) / statistics.median(seconds[count]),
            "compile_seconds": infos[count]["compile_seconds"],
            "repeat_seconds": seconds[count],
        })
    import jax

    return {
        "benchmark": "bench_devices",
        "config": {**config, "repeats": repeats},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "jax": jax.__version__},
        "results": rows,
    }


def print_table(report: dict) -> None:
    config = report["config"]
    print(f"{config['cell']} h{config['hidden_size']}, seq {config['seq_len']}, "
          f"{config['scaling']} scaling, {config['steps']} steps x {config['repeats']} repeats "
          f"(median; {report['machine']['cpu_count']} CPU cores)")
    print(f"{'devices':>7} {'mesh':>28} {'batch':>6} {'ms/step':>9} {'tokens/s':>10} "
          f"{'speedup':>8} {'best':>6} {'efficiency':>10} {'spread':>7}")
    for row in report["results"]:
        print(f"{row['devices']:>7} {row['mesh']:>28} {row['batch_size']:>6} "
              f"{1000 * row['seconds_per_step']:>9.2f} {row['tokens_per_second']:>10,.0f} "
              f"{row['speedup']:>7.2f}x {row['best_speedup']:>5.2f}x {row['efficiency']:>10.2f} "
              f"{row['spread']:>7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], metavar="N",
                        help="device counts to compare; the first is the baseline (default 1 2 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=CONFIG_DEFAULTS["steps"],
                        help="train steps per timed repetition")
    parser.add_argument("--cell", default=CONFIG_DEFAULTS["cell"])
    parser.add_argument("--hidden-size", type=int, default=CONFIG_DEFAULTS["hidden_size"])
    parser.add_argument("--batch-size", type=int, default=CONFIG_DEFAULTS["batch_size"],
                        help="global batch (strong scaling) or rows per device (weak)")
    parser.add_argument("--seq-len", type=int, default=CONFIG_DEFAULTS["seq_len"])
    parser.add_argument("--scaling", choices=("strong", "weak"), default="strong")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, json.loads(args.config))
        return 0
    if args.scaling == "strong":
        for count in args.devices:
            if args.batch_size % count:
                parser.error(f"--batch-size {args.batch_size} does not split over {count} devices")
    report = run(tuple(args.devices), repeats=args.repeats, steps=args.steps, cell=args.cell,
                 hidden_size=args.hidden_size, batch_size=args.batch_size,
                 seq_len=args.seq_len, scaling=args.scaling)
    print_table(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
