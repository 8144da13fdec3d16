"""Speed of the linear recurrences (minGRU, minLSTM, RG-LRU) per scan, through the real model,
next to seqmodel's GRU and LSTM and PyTorch's ``nn.LSTM``, at matched parameter counts.

The candidates and their models are those of :mod:`benchmarks.linear_workload`. For every size
(about 1M and 8M parameters), sequence length T and candidate, in one run:

- ``tokens/s``: the library's train step (``init_train_state`` + ``make_train_step``, as
  ``seqmodel train`` runs it on one device: AdamW with clipping, state donated) on random tokens,
  median of ``--repeats`` timed runs of at least ``--min-seconds`` each, compile excluded;
  PyTorch runs an eager step of the same shape (AdamW, clipping; cuDNN on a GPU) in a process
  of its own (:mod:`benchmarks.linear_torch`);
- ``compile s``: wall seconds to lower and compile the step (and the CPU seconds of it, which a
  busy machine inflates less); ``programs``: compiled programs of the jitted step after two
  different batches (one with a reset), checked once per candidate and size: 1 means no
  recompile across batches;
- ``memory MiB``: the compiled step's footprint as XLA plans it (arguments + outputs +
  temporaries - donated aliases), the same figure on every backend; PyTorch's peak allocation on
  a GPU, none on a CPU (its allocator keeps no count there);
- ``depth``: dependent steps of one scan over T per layer and direction
  (:func:`seqmodel.nn.scans.serial_depth`; ``T`` for the serial cells): what a parallel
  machine cannot hide;
- ``GFLOP/s`` and ``roofline``: model FLOPs per second (:func:`linear_workload.train_flops`) and
  that rate over the large-GEMM rate measured at the start of the same run;
- ``load``: the 1-minute load average after the row (figures on a shared machine are noisy);
- ``fastest`` and ``cpu`` rates (JSON): the least disturbed repetition, and tokens per CPU
  second of the process (a busy machine inflates CPU time less than wall time).

First, the scans alone (``--scan-width``, default 256): forward and backward of the recurrence
by itself on ``(T, b, width)`` coefficients, every scan and T, microseconds per token: what the
choice of scan changes, without the rest of the model (the basis of ``AUTO_SCAN``).

Batch size: ``--tokens-per-step`` (default 8192) // T, so every step holds the same tokens and
T = 8192 runs at batch 1. Generation: ``seqmodel.decoding.generate`` tokens/s, 500 new tokens at batch 1
and 32, per family and size (the step mode is the same for every scan).

The same code runs on a GPU (the GEMM ceiling is then 8192^3, PyTorch uses cuDNN, and JAX does
not preallocate, so that PyTorch has memory too).

Run::

    python benchmarks/bench_linear.py --json linear.json   # full sweep (long: a quiet machine)
    python benchmarks/bench_linear.py --quick              # every candidate, tiny, < 1 minute
    python benchmarks/bench_linear.py --families rglru gru --sizes 1M --lengths 2048 8192
    python benchmarks/plot_linear.py speed linear.json docs/figures/linear_speed.png
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

# JAX must not take most of an accelerator's memory at start: the PyTorch candidate's process
# shares the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import seqmodel as sm
from benchmarks import linear_torch
from benchmarks import linear_workload as workload
from benchmarks.environment import installed_versions
from benchmarks.linear_torch import timed_steps
from benchmarks.linear_workload import Candidate, Size
from seqmodel.data import Batch
from seqmodel.nn import scans as linear_scan
from seqmodel.nn.model import SequenceModel
from seqmodel.training.optimization import (
    TrainConfig,
    init_train_state,
    make_optimizer,
    make_train_step,
)

LENGTHS = (128, 512, 2048, 8192)
GENERATE_BATCHES = (1, 32)
QUICK_DEFAULTS = {"lengths": [64], "chunk_size": 16, "tokens_per_step": 256, "repeats": 1,
                  "min_seconds": 0.0, "generate_steps": 50, "gemm_size": 512, "scan_width": 16}


# ---------------------------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------------------------


def gemm_gflops(size: int, repeats: int = 5) -> float:
    """The machine's large-GEMM rate in GFLOP/s: the fastest of ``repeats`` fp32 ``size^3``
    products (a ceiling is the best the machine does, not its median)."""
    multiply = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((size, size), jnp.float32)
    jax.block_until_ready(multiply(a, a))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(multiply(a, a))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def random_batch(batch: int, length: int, *, seed: int = 0, reset: bool = False) -> Batch:
    tokens = np.random.default_rng(seed).integers(0, workload.VOCAB, (batch, length + 1),
                                                  dtype=np.int32)
    return Batch(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=None,
                 reset=np.full((batch,), reset))


def _footprint(compiled) -> int | None:
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def time_seqmodel_train(config, batch: int, length: int, *, repeats: int, min_seconds: float,
                        check_programs: bool) -> dict:
    """The library's train step of ``config``'s model on ``(batch, length)`` random tokens."""
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    train_config = TrainConfig(batch_size=batch, seq_len=length, steps=10_000)
    tx = make_optimizer(train_config)
    graphdef, state = init_train_state(model, tx, train_config)
    train_step = make_train_step(graphdef, tx, train_config)
    first = jax.device_put(random_batch(batch, length))
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = train_step.lower(state, first).compile()
    result = {"compile_seconds": time.perf_counter() - wall,
              "compile_cpu_seconds": time.process_time() - cpu,
              "memory_bytes": _footprint(compiled)}
    if check_programs:
        # The jitted step itself, fed two different batches: one compiled program, or a
        # recompile. (It finds the program just compiled in JAX's cache: no second compile.)
        for data in (first, jax.device_put(random_batch(batch, length, seed=1, reset=True))):
            state, metrics = train_step(state, data)
        jax.block_until_ready(metrics)
        result["programs"] = int(train_step._cache_size())
    holder = {"state": state}

    def run(steps: int) -> None:
        for _ in range(steps):
            holder["state"], metrics = compiled(holder["state"], first)
        metrics["loss"].block_until_ready()

    return {**result, **timed_steps(run, repeats=repeats, min_seconds=min_seconds)}


def time_generation(config, batch: int, steps: int, *, repeats: int) -> float:
    """Median seconds of ``seqmodel.decoding.generate`` of ``steps`` tokens for ``batch`` rows, compile
    excluded (a first call compiles)."""
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))

    def once() -> float:
        key = next(keys)
        start = time.perf_counter()
        sm.generate(model, key=key, steps=steps, batch_size=batch).samples.block_until_ready()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def time_torch(config, batch: int, length: int, thread_settings, timing: dict) -> dict:
    """The PyTorch candidate in its own process, once per thread setting (0: PyTorch's default);
    the fastest, with every setting's tokens/s under ``"by_threads"``."""
    defaults = TrainConfig()
    spec = {"embed": config.embed_size, "hidden": config.hidden_size,
            "layers": config.num_layers, "batch": batch, "length": length,
            "learning_rate": defaults.learning_rate, "betas": [defaults.beta1, defaults.beta2],
            "weight_decay": defaults.weight_decay, "clip_norm": defaults.clip_norm, **timing}
    results = []
    for threads in thread_settings:
        result = linear_torch.time_in_subprocess({**spec, "threads": threads})
        if "error" in result:
            raise RuntimeError(f"the PyTorch candidate failed: {result['error']}")
        results.append(result)
    best = min(results, key=lambda result: result["seconds_per_step"])
    best["by_threads"] = {result["threads"]: batch * length / result["seconds_per_step"]
                          for result in results}
    return best


def time_scan(method: str, batch: int, length: int, width: int, *, chunk_size: int,
              repeats: int, min_seconds: float) -> dict:
    """The linear recurrence alone, forward and backward: ``grad`` of ``sum(h)`` with respect
    to ``a`` and ``b`` of ``h_t = a_t h_{t-1} + b_t`` over ``(length, batch, width)`` float32,
    by ``method`` (``log_space`` takes the logs of the same coefficients). What the choice of
    scan changes in a train step, without the rest of the model around it."""
    keys = jax.random.split(jax.random.key(0), 2)
    shape = (length, batch, width)
    a = jax.random.uniform(keys[0], shape, jnp.float32, 0.5, 0.999)
    b = jax.random.uniform(keys[1], shape, jnp.float32, 0.01, 1.0)
    initial = jnp.zeros((batch, width), jnp.float32)

    def total(a, b):
        if method == "log_space":
            return linear_scan.log_space(jnp.log(a), jnp.log(b), initial)[1].sum()
        return linear_scan.scan(method, a, b, initial, chunk_size=chunk_size)[1].sum()

    gradient = jax.jit(jax.grad(total, argnums=(0, 1)))
    jax.block_until_ready(gradient(a, b))

    def run(steps: int) -> None:
        for _ in range(steps):
            result = gradient(a, b)
        jax.block_until_ready(result)

    return timed_steps(run, repeats=repeats, min_seconds=min_seconds)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


def measure_train(candidate: Candidate, size: Size, width: int, length: int, args,
                  ceiling: float, check_programs: bool) -> dict:
    config = workload.model_config(candidate, width, size, chunk_size=args.chunk_size)
    batch = max(1, args.tokens_per_step // length)
    timing = {"repeats": args.repeats, "min_seconds": args.min_seconds}
    if candidate.family == workload.TORCH_FAMILY:
        total, matmul = workload.torch_parameter_counts(config)
        result = time_torch(config, batch, length, args.torch_threads, timing)
    else:
        total, matmul = workload.parameter_counts(config)
        result = time_seqmodel_train(config, batch, length, check_programs=check_programs,
                                     **timing)
    seconds = result["seconds_per_step"]
    tokens = batch * length
    gflops = workload.train_flops(matmul, tokens) / seconds / 1e9
    depth = (linear_scan.serial_depth(candidate.scan, length, chunk_size=args.chunk_size)
             if candidate.linear else length)
    memory = result.pop("memory_bytes")
    return {"family": candidate.family, "scan": candidate.scan, "size": size.name,
            "hidden": width, "layers": config.num_layers, "parameters": total,
            "matmul_parameters": matmul, "length": length, "batch": batch,
            "tokens_per_second": tokens / seconds,
            "fastest_tokens_per_second": tokens / result["fastest_seconds_per_step"],
            "cpu_tokens_per_second": tokens / result["cpu_seconds_per_step"],
            "microseconds_per_token": 1e6 * seconds / tokens,
            "memory_mib": None if memory is None else memory / 2**20, "serial_depth": depth,
            "gflops": gflops, "roofline": gflops / ceiling, **result,
            "load": round(os.getloadavg()[0], 2)}


def measure_generate(family: str, size: Size, width: int, batch: int, args) -> dict:
    scan = workload.FAST if family in workload.SERIAL_FAMILIES else "auto"
    config = workload.model_config(Candidate(family, scan), width, size)
    seconds = time_generation(config, batch, args.generate_steps, repeats=args.repeats)
    total, _ = workload.parameter_counts(config)
    return {"family": family, "size": size.name, "hidden": width, "parameters": total,
            "batch": batch, "steps": args.generate_steps,
            "tokens_per_second": batch * args.generate_steps / seconds,
            "load": round(os.getloadavg()[0], 2)}


TRAIN_COLUMNS = [("family", "family", "s"), ("scan", "scan", "s"), ("size", "size", "s"),
                 ("hidden", "h", "d"), ("layers", "L", "d"), ("parameters", "params", ",d"),
                 ("length", "T", "d"), ("batch", "b", "d"),
                 ("tokens_per_second", "tokens/s", ",.0f"),
                 ("microseconds_per_token", "us/token", ".1f"),
                 ("compile_seconds", "compile s", ".1f"), ("programs", "programs", "d"),
                 ("memory_mib", "memory MiB", ".1f"), ("serial_depth", "depth", "d"),
                 ("gflops", "GFLOP/s", ".1f"), ("roofline", "roofline", ".2f"),
                 ("load", "load", ".1f")]
SCAN_COLUMNS = [("scan", "scan", "s"), ("length", "T", "d"), ("batch", "b", "d"),
                ("width", "width", "d"), ("microseconds_per_token", "us/token", ".3f"),
                ("fastest_microseconds_per_token", "fastest", ".3f"),
                ("cpu_microseconds_per_token", "cpu us/token", ".3f"),
                ("serial_depth", "depth", "d"), ("load", "load", ".1f")]
GENERATE_COLUMNS = [("family", "family", "s"), ("size", "size", "s"), ("hidden", "h", "d"),
                    ("parameters", "params", ",d"), ("batch", "b", "d"),
                    ("steps", "steps", "d"), ("tokens_per_second", "tokens/s", ",.0f"),
                    ("load", "load", ".1f")]


def measure_scan(method: str, length: int, args) -> dict:
    batch = max(1, args.tokens_per_step // length)
    timing = time_scan(method, batch, length, args.scan_width, chunk_size=args.chunk_size,
                       repeats=args.repeats, min_seconds=args.min_seconds)
    tokens = batch * length
    return {"scan": method, "length": length, "batch": batch, "width": args.scan_width,
            "microseconds_per_token": 1e6 * timing["seconds_per_step"] / tokens,
            "fastest_microseconds_per_token": 1e6 * timing["fastest_seconds_per_step"] / tokens,
            "cpu_microseconds_per_token": 1e6 * timing["cpu_seconds_per_step"] / tokens,
            "serial_depth": linear_scan.serial_depth(method, length,
                                                     chunk_size=args.chunk_size),
            "load": round(os.getloadavg()[0], 2)}


def format_table(rows: list[dict], columns) -> str:
    """Right-aligned plain-text table; a missing value prints as ``-``."""
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else format(row[key], spec)
                      for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(value.rjust(width) for value, width in zip(line, widths))
                     for line in cells)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every candidate at ~50k parameters, T = 64 (chunks of 16), one "
                        "short repetition, 50 generated tokens: a check in under a minute")
    parser.add_argument("--families", nargs="+", default=list(workload.FAMILIES),
                        choices=workload.FAMILIES)
    parser.add_argument("--scans", nargs="+", default=list(workload.LINEAR_SCANS),
                        choices=workload.LINEAR_SCANS, help="scans of the linear families")
    parser.add_argument("--sizes", nargs="+", default=list(workload.SIZES),
                        choices=list(workload.SIZES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--tokens-per-step", type=int, default=8192,
                        help="batch = this // T (at least 1): every step holds as many tokens")
    parser.add_argument("--chunk-size", type=int, default=linear_scan.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="each timed repetition runs at least this long")
    parser.add_argument("--generate-steps", type=int, default=500)
    parser.add_argument("--generate-batches", nargs="*", type=int, default=list(GENERATE_BATCHES),
                        help="rows of the generation benchmark (none: skip it)")
    parser.add_argument("--scan-width", type=int, default=256,
                        help="width of the scan-alone rows (forward and backward of the "
                        "recurrence by itself, every scan and T); 0: skip them")
    parser.add_argument("--gemm-size", type=int, default=None,
                        help="side of the ceiling GEMM (default 2048 on CPU, 8192 elsewhere)")
    parser.add_argument("--torch-threads", nargs="+", type=int, default=[0, 1],
                        help="intra-op thread settings of the PyTorch candidate, each timed, the "
                        "fastest kept (0: PyTorch's default; on a busy machine one thread can "
                        "be far faster than several)")
    parser.add_argument("--json", default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; flags given explicitly still win
        parser.set_defaults(**QUICK_DEFAULTS)
        args = parser.parse_args(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = ([workload.QUICK_SIZE] if args.quick
             else [workload.SIZES[name] for name in args.sizes])
    chosen = workload.candidates(args.families, args.scans)
    backend = jax.default_backend()
    gemm_size = args.gemm_size or (2048 if backend == "cpu" else 8192)
    ceiling = gemm_gflops(gemm_size)
    started = time.perf_counter()
    print(f"backend {backend} ({jax.devices()[0].device_kind}), large GEMM {gemm_size}^3: "
          f"{ceiling:.1f} GFLOP/s; scan 'auto' = {linear_scan.resolve('auto')}; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    train_rows, generate_rows, scan_rows = [], [], []
    if args.scan_width:
        for length in args.lengths:
            for method in args.scans:
                scan_rows.append(measure_scan(method, length, args))
                print(format_table(scan_rows[-1:], SCAN_COLUMNS).splitlines()[-1], flush=True)
    for size in sizes:
        widths = {family: workload.matched_width(family, size) for family in args.families}
        checked = set()
        for length in args.lengths:
            for candidate in chosen:
                row = measure_train(candidate, size, widths[candidate.family], length, args,
                                    ceiling, check_programs=candidate not in checked)
                checked.add(candidate)
                train_rows.append(row)
                print(format_table([row], TRAIN_COLUMNS).splitlines()[-1], flush=True)
        for family in args.families:
            if family == workload.TORCH_FAMILY:
                continue
            for batch in args.generate_batches:
                row = measure_generate(family, size, widths[family], batch, args)
                generate_rows.append(row)
                print(format_table([row], GENERATE_COLUMNS).splitlines()[-1], flush=True)
    print()
    if scan_rows:
        print(format_table(scan_rows, SCAN_COLUMNS))
        print()
    print(format_table(train_rows, TRAIN_COLUMNS))
    if generate_rows:
        print()
        print(format_table(generate_rows, GENERATE_COLUMNS))
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        record = {"backend": backend, "device": jax.devices()[0].device_kind,
                  "machine": platform.platform(), "processor": platform.processor(),
                  "cpu_count": os.cpu_count(), "jax": jax.__version__,
                  "torch": installed_versions("torch")["torch"], "gemm_size": gemm_size,
                  "gemm_gflops": ceiling,
                  "auto_scan": linear_scan.resolve("auto"), "chunk_size": args.chunk_size,
                  "tokens_per_step": args.tokens_per_step, "scans": scan_rows, "train": train_rows,
                  "generate": generate_rows}
        pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
