"""Train-step speed of the linear recurrences (minGRU, minLSTM, RG-LRU blocks) per scan.

For every family, scan, model size and sequence length T, one jitted train step (embedding ->
residual blocks of :mod:`seqmodel.linear` -> RMSNorm -> linear head -> cross-entropy, optax AdamW,
parameters and optimizer state donated) on random tokens, reporting:

- ``tokens/s``: median over repetitions of ``steps`` steps, compile excluded;
- ``compile s``: wall seconds to compile the step;
- ``memory MiB``: the compiled program's footprint as XLA plans it (arguments + outputs +
  temporaries - donated aliases), the same figure on every backend;
- ``depth``: serial depth of one scan over T (:func:`seqmodel.linear_scan.serial_depth`; the
  train program runs it forward and backward in every layer);
- ``GFLOP/s`` and ``roofline``: model FLOPs per step (``6 x matmul parameters x tokens``: forward
  2, backward 4; the embedding is a gather and the elementwise recurrence is left out) per second,
  and that rate as a fraction of the large-GEMM FLOP/s measured at the start of the same run.

Sizes match parameter counts between families: each family's width is chosen so that the whole
model (embedding and head included) comes closest to the target. A ``gru`` family (seqmodel's
GRU cell, its custom-VJP scan, same embedding and head, no blocks) is the serial baseline.
Until the model integration lands, this drives the blocks directly rather than SequenceModel.

Run::

    python benchmarks/bench_linear.py                    # full sweep (long: run on a quiet machine)
    python benchmarks/bench_linear.py --tiny             # smoke test, seconds
    python benchmarks/bench_linear.py --families rglru gru --lengths 2048 8192 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqmodel import linear_scan
from seqmodel.cells import GRUCell
from seqmodel.linear import ResidualBlock

FAMILIES = ("mingru", "minlstm", "rglru", "gru")
SIZES = {"1M": (1_000_000, 2), "8M": (8_000_000, 4)}  # name -> (parameters, layers)
TINY_SIZES = {"tiny": (30_000, 2)}
LENGTHS = (128, 512, 2048, 8192)


def scans_of(family: str, requested) -> list[str]:
    """The scans to time for ``family``: the requested ones it supports (``fast`` for the GRU)."""
    if family == "gru":
        return ["fast"]
    allowed = ["sequential", "associative", "chunked"] + (
        ["log_space"] if family in ("mingru", "minlstm") else [])
    return [scan for scan in requested if scan in allowed]


class LanguageModel(nnx.Module):
    """Embedding -> ``layers`` recurrent layers -> RMSNorm -> head, time-major inside."""

    def __init__(self, family: str, vocab: int, hidden: int, layers: int, *, rngs: nnx.Rngs,
                 scan: str = "auto", chunk_size: int = linear_scan.DEFAULT_CHUNK_SIZE,
                 dtype=jnp.float32):
        self.embed = nnx.Embed(vocab, hidden, rngs=rngs)
        if family == "gru":
            make = lambda: GRUCell(hidden, hidden, rngs=rngs, dtype=dtype)  # noqa: E731
        else:
            make = lambda: ResidualBlock(hidden, hidden, rngs=rngs, dtype=dtype,  # noqa: E731
                                         cell=family, scan=scan, chunk_size=chunk_size)
        self.layers = nnx.List([make() for _ in range(layers)])
        self.norm = nnx.RMSNorm(hidden, rngs=rngs, dtype=dtype)
        self.head = nnx.Linear(hidden, vocab, rngs=rngs, dtype=dtype)

    def __call__(self, tokens):
        """tokens ``(b, t)`` -> logits ``(t, b, vocab)``."""
        x = self.embed(tokens.T)
        for layer in self.layers:
            # The GRU cell of this tree names it initialize_carry; the cell contract init_carry.
            init = getattr(layer, "init_carry", None) or layer.initialize_carry
            _, x = layer.scan(init(tokens.shape[0]), layer.project(x))
        return self.head(self.norm(x))


def parameter_counts(family: str, vocab: int, hidden: int, layers: int) -> tuple[int, int]:
    """``(all parameters, matmul parameters)`` without allocating (``nnx.eval_shape``)."""
    model = nnx.eval_shape(lambda: LanguageModel(family, vocab, hidden, layers,
                                                 rngs=nnx.Rngs(0)))
    total = matmul = 0
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        size = int(np.prod(leaf.shape))
        total += size
        # Linear kernels and the GRU's kernels are matmuls; the embedding is a gather.
        if "kernel" in str(path[-1]) and "conv" not in str(path[-1]) and len(leaf.shape) == 2:
            matmul += size
    return total, matmul


def matched_width(family: str, vocab: int, target: int, layers: int, *, step: int = 8) -> int:
    """The width (a multiple of ``step``) whose model comes closest to ``target`` parameters."""
    low, high = 1, 4096 // step
    while low < high:  # smallest width with at least ``target`` parameters
        middle = (low + high) // 2
        if parameter_counts(family, vocab, middle * step, layers)[0] < target:
            low = middle + 1
        else:
            high = middle
    candidates = [max(1, low - 1) * step, low * step]
    return min(candidates,
               key=lambda width: abs(parameter_counts(family, vocab, width, layers)[0] - target))


def gemm_gflops(size: int, repeats: int = 5) -> float:
    """The machine's large-GEMM rate: the fastest of ``repeats`` ``size^3`` fp32 products."""
    multiply = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((size, size), jnp.float32)
    jax.block_until_ready(multiply(a, a))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(multiply(a, a))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def compiled_train_step(model: LanguageModel, batch: int, length: int, vocab: int):
    """``(run(steps) -> seconds, compile seconds, memory bytes)`` for one model and shape."""
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(1e-3)
    opt_state = optimizer.init(params)

    def loss_fn(params, tokens, targets):
        logits = nnx.merge(graphdef, params)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets.T).mean()

    def step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    data = np.random.default_rng(0).integers(0, vocab, (batch, length + 1), dtype=np.int32)
    tokens, targets = jnp.asarray(data[:, :-1]), jnp.asarray(data[:, 1:])
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, opt_state, tokens, targets).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    footprint = None
    if memory is not None:
        footprint = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    state = {"params": params, "opt_state": opt_state}

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            state["params"], state["opt_state"], loss = compiled(
                state["params"], state["opt_state"], tokens, targets)
        loss.block_until_ready()
        return time.perf_counter() - start

    run(1)  # first call: allocation and any lazy initialisation
    return run, compile_seconds, footprint


def measure(family, scan, size_name, target, layers, length, args, ceiling) -> dict:
    hidden = matched_width(family, args.vocab, target, layers)
    total, matmul = parameter_counts(family, args.vocab, hidden, layers)
    batch = args.batch or max(1, args.tokens_per_step // length)
    model = LanguageModel(family, args.vocab, hidden, layers, rngs=nnx.Rngs(0),
                          scan="sequential" if scan == "fast" else scan,
                          chunk_size=args.chunk_size)
    run, compile_seconds, footprint = compiled_train_step(model, batch, length, args.vocab)
    seconds = statistics.median(run(args.steps) / args.steps for _ in range(args.repeats))
    tokens = batch * length
    gflops = 6 * matmul * tokens / seconds / 1e9
    depth = length if scan == "fast" else linear_scan.serial_depth(
        scan, length, chunk_size=args.chunk_size)
    return {"family": family, "scan": scan, "size": size_name, "hidden": hidden,
            "layers": layers, "parameters": total, "length": length, "batch": batch,
            "tokens_per_second": tokens / seconds, "seconds_per_step": seconds,
            "compile_seconds": compile_seconds,
            "memory_mib": None if footprint is None else footprint / 2**20,
            "serial_depth": depth, "gflops": gflops, "roofline": gflops / ceiling}


COLUMNS = [("family", "family", "s"), ("scan", "scan", "s"), ("size", "size", "s"),
           ("hidden", "h", "d"), ("parameters", "params", ",d"), ("length", "T", "d"),
           ("batch", "b", "d"), ("tokens_per_second", "tokens/s", ",.0f"),
           ("compile_seconds", "compile s", ".1f"), ("memory_mib", "memory MiB", ".1f"),
           ("serial_depth", "depth", "d"), ("gflops", "GFLOP/s", ".1f"),
           ("roofline", "roofline", ".2f")]


def format_table(rows: list[dict]) -> str:
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append(["-" if row[key] is None else format(row[key], spec)
                      for key, _, spec in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(value.rjust(width) for value, width in zip(line, widths))
                     for line in cells)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: ~30k-parameter models, T = 24, chunks of 8, one "
                        "repetition")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--scans", nargs="+",
                        default=["sequential", "associative", "chunked", "log_space"],
                        choices=list(linear_scan.METHODS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--tokens-per-step", type=int, default=16_384,
                        help="batch = this // T (at least 1) unless --batch is given")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=linear_scan.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--steps", type=int, default=5, help="train steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gemm-size", type=int, default=None,
                        help="side of the ceiling GEMM (default 2048 on CPU, 8192 elsewhere)")
    parser.add_argument("--json", default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.tiny:
        # 24 = 3 chunks of 8: the chunked scan runs more than one chunk.
        args.lengths, args.steps, args.repeats, args.chunk_size = [24], 2, 1, 8
        args.tokens_per_step, args.gemm_size = 48, args.gemm_size or 256
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = TINY_SIZES if args.tiny else {name: SIZES[name] for name in args.sizes}
    backend = jax.default_backend()
    gemm_size = args.gemm_size or (2048 if backend == "cpu" else 8192)
    ceiling = gemm_gflops(gemm_size)
    print(f"backend {backend} ({jax.devices()[0].device_kind}), large GEMM {gemm_size}^3: "
          f"{ceiling:.1f} GFLOP/s; scan='auto' here = {linear_scan.resolve('auto')}", flush=True)
    rows = []
    for size_name, (target, layers) in sizes.items():
        for length in args.lengths:
            for family in args.families:
                for scan in scans_of(family, args.scans):
                    row = measure(family, scan, size_name, target, layers, length, args, ceiling)
                    rows.append(row)
                    print(format_table([row]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"backend": backend, "device": jax.devices()[0].device_kind,
                       "machine": platform.platform(), "gemm_size": gemm_size,
                       "gemm_gflops": ceiling, "jax": jax.__version__, "rows": rows},
                      handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
