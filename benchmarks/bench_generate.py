"""Free-running generation speed: ``seqmodel.decoding.generate`` against a PyTorch eager loop and a Python
loop of a jitted step, in one run, on the very same model.

The model: Embedding(65, 64) -> LSTM(h) -> Linear(h, 65), sampling at temperature 1. The PyTorch
model (``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` + ``torch.multinomial``) holds our weights
(:func:`seqmodel.interop.to_torch`) and must give our loss and logits on a first batch before
anything is timed (otherwise the torch candidates are dropped with that message). Candidates,
per (hidden, batch):

- ``generate``: :func:`seqmodel.decoding.generate`, the whole loop one compiled program;
- ``generate+eos``: the same with an ``eos_id`` the model never emits, i.e. the chunked
  early-stopping while loop running to the end: what early stopping costs when it cannot help;
- ``eos-at-once``: an ``eos_id`` every row emits at its first step: the loop should end after
  its first chunk (early stopping at work);
- ``jit-step``: a Python loop over a jitted ``(params, x, carry, key) -> (x, carry, key)`` step
  (parameters pre-flattened, the cheapest per-step dispatch JAX offers);
- ``torch``: PyTorch eager, ``torch.inference_mode``, one intra-op thread by default (on a busy
  2-core machine two OpenMP threads were 10-30x slower than one and disturbed the candidates
  timed after them); ``--torch-threads 1 2`` times several settings and the fastest is the
  baseline.

Repetitions alternate across candidates (the order rotates each round); medians are quoted, and
the ratios of the fastest repetitions beside them (on a shared machine the fastest repetition is
the least disturbed one), with the spread ``(max - min) / median`` of each candidate as a noise
figure.

Run::

    python benchmarks/bench_generate.py                         # h 128/512 x b 1/32, 500 steps
    python benchmarks/bench_generate.py --json generate.json --repeats 7
    python benchmarks/bench_generate.py --hidden 128 --batch 1 --steps 200   # quick look

or from Python: ``run(hidden_sizes=(128,), batch_sizes=(1,)) -> list[dict]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import seqmodel as sm  # noqa: E402
from benchmarks import (
    torch_copy,  # noqa: E402
    workload,  # noqa: E402
)

# ---------------------------------------------------------------------------------------------
# Candidates: each is a zero-argument callable returning seconds for one full generation.
# ---------------------------------------------------------------------------------------------


def time_generate(model, *, batch_size: int, steps: int, key=None, **options) -> float:
    """Seconds of one ``generate`` call (``batch_size`` rows, ``steps`` tokens), compile excluded:
    a first call warms the cache (a no-op once compiled)."""
    key = jax.random.key(0) if key is None else key
    sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
        .block_until_ready()
    start = time.perf_counter()
    sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
        .block_until_ready()
    return time.perf_counter() - start


def _generate_candidate(model, batch_size: int, steps: int, **options) -> Callable[[], float]:
    keys = iter(jax.random.split(jax.random.key(0), 1000))

    def run() -> float:
        key = next(keys)  # a fresh key per repetition, made outside the timed region
        start = time.perf_counter()
        sm.generate(model, key=key, steps=steps, batch_size=batch_size, **options).samples \
            .block_until_ready()
        return time.perf_counter() - start

    run()  # compile
    return run


def _jit_step_candidate(model, batch_size: int, steps: int) -> Callable[[], float]:
    """A Python loop over one jitted step; parameters flattened once so each call passes plain
    arrays."""
    model = nnx.with_attributes(model, deterministic=True, raise_if_not_found=False)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    @jax.jit
    def step(leaves, x, carry, key):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        logits, carry = model.step(x, carry)
        key, draw = jax.random.split(key)
        return jax.random.categorical(draw, logits).astype(jnp.int32), carry, key

    def run() -> float:
        x = jnp.zeros((batch_size,), jnp.int32)
        carry, key = model.init_carry(batch_size), jax.random.key(1)
        start = time.perf_counter()
        for _ in range(steps):
            x, carry, key = step(leaves, x, carry, key)
        x.block_until_ready()
        return time.perf_counter() - start

    run()  # compile
    return run


def _torch_candidate(modules, batch_size: int, steps: int, threads: int | None):
    import torch

    embed, lstm, linear = modules
    default_threads = torch.get_num_threads()

    def run() -> float:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                x = torch.zeros((batch_size, 1), dtype=torch.long)
                state = None
                start = time.perf_counter()
                for _ in range(steps):
                    output, state = lstm(embed(x), state)
                    probabilities = torch.softmax(linear(output[:, 0]), dim=-1)
                    x = torch.multinomial(probabilities, 1)
                return time.perf_counter() - start
        finally:
            torch.set_num_threads(default_threads)

    run()  # warm-up
    return run


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _with_token_bias(model, token: int, bias_value: float):
    """A copy of ``model`` whose head bias for ``token`` is ``bias_value`` (-1e9: never emitted,
    1e9: always emitted)."""
    copy = nnx.clone(model)
    bias = copy.head.linear.bias
    bias[...] = bias[...].at[token].set(bias_value)
    return copy


def run(*, hidden_sizes=(128, 512), batch_sizes=(1, 32), steps: int = 500, repeats: int = 5,
        with_torch: bool = True, torch_threads=(1,),
        log: Callable[[str], None] = print) -> list[dict]:
    """Time every candidate for each (hidden, batch); returns one dict per pair with
    ``seconds`` (median per candidate), ``fastest`` (best repetition), ``timings`` (all),
    ``tokens_per_second``, ``spread`` and the ratios ``vs_torch`` (the fastest torch setting
    over generate), ``vs_jit_step`` (with ``*_fastest`` twins from the best repetitions),
    ``eos_overhead`` (generate+eos over generate) and ``early_stop_fraction`` (eos-at-once over
    generate)."""
    results = []
    for hidden in hidden_sizes:
        model = workload.reference_model("lstm", hidden)  # the speed suite's weights
        model.eval()
        modules, agreement = None, None
        if with_torch:
            modules = torch_copy.torch_modules(model)
            try:
                agreement = torch_copy.check_same_loss(model, modules, *workload.batch())
            except torch_copy.WeightsDisagree as error:
                log(f"hidden {hidden}: torch candidates dropped: {error}")
                modules, agreement = None, {"error": str(error)}
        for batch in batch_sizes:
            log(f"hidden {hidden}, batch {batch}: compiling / warming up")
            candidates = {
                "generate": _generate_candidate(model, batch, steps),
                "generate+eos": _generate_candidate(_with_token_bias(model, 0, -1e9), batch,
                                                    steps, eos_id=0),
                "eos-at-once": _generate_candidate(_with_token_bias(model, 0, 1e9), batch,
                                                   steps, eos_id=0),
                "jit-step": _jit_step_candidate(model, batch, steps),
            }
            torch_names = []
            if modules is not None:
                for threads in torch_threads:
                    torch_names.append(f"torch-{threads}t")
                    candidates[torch_names[-1]] = _torch_candidate(modules, batch, steps, threads)
            names = list(candidates)
            timings = {name: [] for name in names}
            for repeat in range(repeats):
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    timings[name].append(candidates[name]())
            seconds = {name: statistics.median(values) for name, values in timings.items()}
            fastest = {name: min(values) for name, values in timings.items()}
            spread = {
                name: (max(values) - min(values)) / seconds[name]
                for name, values in timings.items()
            }
            tokens = batch * steps
            row = dict(
                hidden=hidden, batch=batch, steps=steps, repeats=repeats,
                seconds=seconds, fastest=fastest, timings=timings, spread=spread,
                tokens_per_second={name: tokens / value for name, value in seconds.items()},
                vs_jit_step=seconds["jit-step"] / seconds["generate"],
                vs_jit_step_fastest=fastest["jit-step"] / fastest["generate"],
                eos_overhead=seconds["generate+eos"] / seconds["generate"],
                early_stop_fraction=seconds["eos-at-once"] / seconds["generate"],
                torch_agreement=agreement,
            )
            if torch_names:
                row["torch_best"] = min(torch_names, key=seconds.get)
                row["vs_torch"] = seconds[row["torch_best"]] / seconds["generate"]
                row["vs_torch_fastest"] = fastest[row["torch_best"]] / fastest["generate"]
            results.append(row)
            log(markdown([row], header=False))
    return results


def markdown(results: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| hidden | batch | generate tok/s | +eos tok/s | jit-step tok/s | torch tok/s "
            "| vs torch | vs jit-step | eos cost | stop at 1 | noise |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    nan = float("nan")
    for row in results:
        rate = row["tokens_per_second"]
        torch_rate = rate.get(row.get("torch_best", ""), float("nan"))
        lines.append(
            f"| {row['hidden']} | {row['batch']} | {rate['generate']:,.0f} "
            f"| {rate['generate+eos']:,.0f} | {rate['jit-step']:,.0f} "
            f"| {torch_rate:,.0f} ({row.get('torch_best', '-')}) "
            f"| {row.get('vs_torch', nan):.1f}x ({row.get('vs_torch_fastest', nan):.1f}x) "
            f"| {row['vs_jit_step']:.1f}x ({row['vs_jit_step_fastest']:.1f}x) "
            f"| {row['eos_overhead'] - 1:+.1%} | {row['early_stop_fraction']:.0%} "
            f"| {max(row['spread'].values()):.0%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1],
                        help="PyTorch intra-op thread counts to time (the fastest is the baseline)")
    parser.add_argument("--json", help="write the results (with every timing) to this file")
    args = parser.parse_args(argv)
    results = run(hidden_sizes=args.hidden, batch_sizes=args.batch, steps=args.steps,
                  repeats=args.repeats, with_torch=not args.no_torch,
                  torch_threads=tuple(args.torch_threads),
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(results))
    print(
        "\nRatios of medians, in parentheses ratios of the fastest repetitions (the least "
        "disturbed by other processes on a shared machine). "
        "noise: the largest (max - min) / median over the candidates' repetitions; "
        "eos cost: generate with a never-emitted eos_id (chunked early-stop loop) vs without; "
        "stop at 1: time when every row emits eos at its first step, as a fraction of the full "
        "generate (early stopping at work)."
    )
    if args.json:
        meta = dict(machine=platform.machine(), processor=platform.processor(),
                    python=platform.python_version(), jax=jax.__version__,
                    devices=[str(device) for device in jax.devices()])
        try:
            import torch

            meta.update(torch=torch.__version__, torch_threads=list(args.torch_threads))
        except ImportError:
            pass
        with open(args.json, "w") as file:
            json.dump(dict(meta=meta, results=results), file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
