"""Where the time of one train step goes: XLA's own per-kernel times, grouped by what the kernels do.

Runs the library's train step (as bench_linear does, one device) for a model of
``benchmarks.linear_workload`` (or any ``--cell`` / ``--hidden`` / ``--layers``), traces a few steps
with ``jax.profiler`` (a Perfetto trace of the XLA:CPU thunks), and joins each kernel's time with
what its fused computation holds in the optimized HLO:

- ``matmul``: fusions with a ``dot`` (XLA:CPU hands them to its GEMM library);
- ``transcendental``: elementwise fusions holding ``tanh``, ``exp``, ``log``, ``logistic``,
  ``sqrt``, ``rsqrt``, ``erf``, ``power`` or ``expm1`` / ``log1p``;
- ``reduction``: fusions ending in a ``reduce`` (bias gradients, norms' statistics, the loss);
- ``layout``: copies and transposes alone (moving data, no arithmetic);
- ``elementwise``: the other fusions (multiplies, adds, selects);
- ``loop``: ``while`` bodies (the scan, the serial cells' recurrences) and what runs inside them.

Each group's share of the step, then the heaviest kernels with their shape and the JAX operation
they came from (``op_name`` metadata). The 1-minute load average is printed with the figures: on
a shared machine absolute times move with it, shares much less.

Run::

    python benchmarks/profile_step.py --cell rglru --hidden 376 --layers 4 --length 8192
    python benchmarks/profile_step.py --cell gru --hidden 920 --layers 2 --length 8192 --top 10
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

if not __package__:  # run by path: the package needs its parent on sys.path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

TRANSCENDENTAL = ("tanh", "exponential", "log", "logistic", "sqrt", "rsqrt", "erf", "power",
                  "exponential-minus-one", "log-plus-one", "cbrt")
GROUPS = ("matmul", "transcendental", "reduction", "layout", "elementwise", "loop", "other")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """``(instructions, computations)`` of an optimized HLO module's text: instruction name ->
    ``(shape, opcode, line)``, computation name -> its body lines."""
    computations: dict[str, list[str]] = {}
    instructions: dict[str, tuple[str, str, str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) [^=]*\{$", line)
        if header and not line.startswith(" "):
            current = header.group(1)
            computations[current] = []
            continue
        if current is not None:
            computations[current].append(line)
        instruction = re.match(r"^\s+(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if instruction:
            instructions[instruction.group(1)] = (instruction.group(2), instruction.group(3), line)
    return instructions, computations


def group_of(name: str, instructions: dict, computations: dict) -> str:
    """Which of :data:`GROUPS` the kernel ``name`` belongs to."""
    if name not in instructions:
        return "other"
    _, opcode, line = instructions[name]
    if opcode in ("while", "conditional", "call"):
        return "loop"
    called = re.search(r"calls=%([\w.\-]+)", line)
    body = "\n".join(computations.get(called.group(1), [])) if called else line
    operations = set(re.findall(r"= \S+ ([\w\-]+)\(", body)) | {opcode}
    if operations & {"dot", "convolution", "custom-call"}:
        return "matmul"
    if operations & set(TRANSCENDENTAL):
        return "transcendental"
    if "reduce" in operations or "reduce-window" in operations:
        return "reduction"
    arithmetic = operations - {"parameter", "bitcast", "copy", "transpose", "broadcast",
                               "reshape", "slice", "concatenate", "constant", "fusion", "pad",
                               "dynamic-slice", "dynamic-update-slice", "tuple",
                               "get-tuple-element"}
    return "layout" if not arithmetic else "elementwise"


def profile(step, state, batch, *, steps: int = 2) -> dict:
    """Trace ``steps`` calls of the jitted ``step(state, batch)`` and group the kernel times.
    Returns ``{"groups": {group: ms a step}, "kernels": [(ms, group, shape, op_name)],
    "step_ms": wall ms a step}``; ``state`` is donated, so pass one you can lose."""
    import jax

    compiled = step.lower(state, batch).compile()
    instructions, computations = parse_hlo(compiled.as_text())
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    folder = tempfile.mkdtemp(prefix="profile_step_")
    started = time.perf_counter()
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - started) / steps
    trace = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(trace) as handle:
        events = json.load(handle)["traceEvents"]
    # Kernels inside a while body appear as their own events too: count each at its own level
    # and charge loops only with what is not inside them.
    durations: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event and event["name"] in instructions:
            durations[event["name"]] += event["dur"] / 1000.0 / steps
    groups: collections.Counter = collections.Counter()
    kernels = []
    for name, milliseconds in durations.items():
        group = group_of(name, instructions, computations)
        groups[group] += milliseconds
        shape, _, line = instructions[name]
        operation = re.search(r'op_name="([^"]+)"', line)
        kernels.append((round(milliseconds, 2), group, shape,
                        operation.group(1) if operation else name))
    kernels.sort(reverse=True)
    return {"groups": {group: round(groups[group], 1) for group in GROUPS if groups[group]},
            "kernels": kernels, "step_ms": round(wall * 1000, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="rglru")
    parser.add_argument("--hidden", type=int, default=376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--scan", default="auto")
    parser.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE",
                        help="another ModelConfig field (repeatable), e.g. mlp_activation=relu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="write the profile here")
    args = parser.parse_args(argv)

    import numpy as np
    from flax import nnx

    from seqmodel import ModelConfig, SequenceModel, TrainConfig
    from seqmodel.data import Batch
    from seqmodel.training import optimization

    options = {}
    for option in args.option:
        field, _, value = option.partition("=")
        options[field] = int(value) if value.isdigit() else value
    linear = args.cell in ("mingru", "minlstm", "rglru")
    config = ModelConfig(vocab_size=args.vocab, cell=args.cell, hidden_size=args.hidden,
                         num_layers=args.layers, **({"scan": args.scan} if linear else {}),
                         **options)
    train = TrainConfig(batch_size=args.batch, seq_len=args.length, steps=10)
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    tx = optimization.make_optimizer(train)
    graphdef, state = optimization.init_train_state(model, tx, train)
    step = optimization.make_train_step(graphdef, tx, train)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, (args.batch, args.length + 1)).astype(np.int32)
    batch = Batch(tokens[:, :-1], tokens[:, 1:], None, np.zeros(args.batch, bool))
    load = os.getloadavg()[0]
    result = profile(step, state, batch, steps=args.steps)
    tokens_per_second = args.batch * args.length / (result["step_ms"] / 1000)
    print(f"{args.cell} h{args.hidden} x{args.layers} {options or ''} T={args.length} "
          f"b={args.batch}: {result['step_ms']:.0f} ms a step ({tokens_per_second:,.0f} "
          f"tokens/s), load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    total = sum(result["groups"].values())
    for group, milliseconds in result["groups"].items():
        print(f"  {group:15s} {milliseconds:9.1f} ms  {100 * milliseconds / total:5.1f}%")
    print(f"  heaviest {args.top} kernels:")
    for milliseconds, group, shape, operation in result["kernels"][: args.top]:
        print(f"  {milliseconds:9.1f} ms  {group:14s} {shape[:34]:34s} {operation[-70:]}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(
            vars(args), load=load, **{key: result[key] for key in ("groups", "step_ms")},
            kernels=result["kernels"][:100]), indent=1) + "\n")


if __name__ == "__main__":
    main()
