"""Free-running generation speed: ``seqmodel.generate`` against PyTorch's best step loop and a
Python loop of a jitted step, on the very same model, every candidate in its own process.

The model: Embedding(65, 64) -> LSTM(h) -> Linear(h, 65), sampling at temperature 1. The PyTorch
candidates hold its weights (:func:`seqmodel.interop.to_torch`) and must give its loss and
logits on a first batch before they are timed (otherwise they are dropped with that message).
Candidates, per (hidden, batch), each a worker process (:mod:`benchmarks.decode_workers`):

- ``generate``: :func:`seqmodel.generate`, the whole loop one compiled program;
- ``generate+eos``: the same with an ``eos_id`` the model never emits (the chunked early-stopping
  loop running to its end: what early stopping costs when it cannot help);
- ``eos-at-once``: an ``eos_id`` every row emits at its first step (early stopping at work);
- ``jit-step``: a Python loop over a jitted step (the cheapest per-step dispatch JAX offers);
- ``torch-{eager,compile}-{1t,2t}`` (``nn.LSTM`` stepped on length-1 sequences) and
  ``torch-cell-{eager,compile}-{1t,2t}`` (``nn.LSTMCell``): PyTorch at each thread setting
  (its default too when it differs from 1 and 2), eager (``torch.multinomial``) and under
  ``torch.compile`` (the step and a Gumbel-max draw in one compiled graph),
  ``torch.inference_mode``. The fastest of them is the baseline (``torch_best``).

Repetitions alternate across the candidates (the order rotates each round); medians are quoted,
and the ratios of the fastest repetitions beside them, with each candidate's spread
``(max - min) / median`` as a noise figure.

Run::

    python benchmarks/bench_generate.py --json benchmarks/results/generate_cpu_2core.json
    python benchmarks/bench_generate.py --hidden 128 --batch 1 --steps 200      # quick look
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import candidates, protocol  # noqa: E402
from benchmarks.environment import finish, load_average, provenance  # noqa: E402

SEQMODEL_VARIANTS = ("generate", "generate+eos", "eos-at-once", "jit-step")
TORCH_IMPLEMENTATIONS = {"module": (), "cell": ()}


def generate_candidates(*, batch: int, steps: int, with_torch: bool = True, threads=None,
                        modes=None) -> list[candidates.Candidate]:
    """The candidates of one (hidden, batch): seqmodel's four and every PyTorch variant."""
    found = [candidates.Candidate(variant, "generate",
                                  {"variant": variant, "batch": batch, "steps": steps})
             for variant in SEQMODEL_VARIANTS]
    if with_torch:
        found += candidates.torch_variants("torch-generate", TORCH_IMPLEMENTATIONS,
                                           threads=threads, modes=modes,
                                           extra={"batch": batch, "steps": steps})
    return found


def measure(hidden: int, chosen: list[candidates.Candidate], *, repeats: int, log=print) -> dict:
    """Start every candidate, alternate ``repeats`` decodes each, return the row's entries."""
    entries: dict[str, dict] = {}
    workers, failed = protocol.start_workers(
        [(c.name, {"kind": c.kind, "hidden": hidden, "cell": "lstm", "options": c.options}, c.env)
         for c in chosen], log=log)
    try:
        start = load_average()
        seconds, failed_later = protocol.alternate(workers, repeats=repeats, log=log)
        end = load_average()
        for worker in workers:
            hello = {key: value for key, value in worker.hello.items()
                     if key not in ("ready", "result")}
            if seconds[worker.name]:
                entries[worker.name] = {**hello, **protocol.summary(seconds[worker.name]),
                                        "timings": seconds[worker.name]}
    finally:
        for worker in workers:
            worker.close()
    for name, error in {**failed, **failed_later}.items():
        entries.setdefault(name, {})["error"] = error
    return {"candidates": entries, "load_average": {"start": start, "end": end}}


def ratios(row: dict) -> dict:
    """The row's tokens/s per candidate and its ratios: ``vs_torch`` (the fastest PyTorch
    candidate over ``generate``, medians; ``*_fastest``: fastest repetitions), ``vs_jit_step``,
    ``eos_overhead`` (generate+eos over generate), ``early_stop_fraction`` (eos-at-once over
    generate)."""
    entries, tokens = row["candidates"], row["batch"] * row["steps"]
    for entry in entries.values():
        if "median" in entry:
            entry["tokens_per_second"] = tokens / entry["median"]
    generate = entries.get("generate", {})
    out = {}
    if "median" not in generate:
        return out
    best = candidates.fastest_torch(entries)
    if best:
        out.update(torch_best=best, vs_torch=entries[best]["median"] / generate["median"],
                   vs_torch_fastest=entries[best]["fastest"] / generate["fastest"])
    for name, key in (("jit-step", "vs_jit_step"),):
        if "median" in entries.get(name, {}):
            out[key] = entries[name]["median"] / generate["median"]
            out[key + "_fastest"] = entries[name]["fastest"] / generate["fastest"]
    if "median" in entries.get("generate+eos", {}):
        out["eos_overhead"] = entries["generate+eos"]["median"] / generate["median"]
    if "median" in entries.get("eos-at-once", {}):
        out["early_stop_fraction"] = entries["eos-at-once"]["median"] / generate["median"]
    return out


def run(*, hidden_sizes=(128, 512), batch_sizes=(1, 32), steps: int = 500, repeats: int = 5,
        with_torch: bool = True, threads=None, modes=None, log=print) -> list[dict]:
    """One row per (hidden, batch), see :func:`measure` and :func:`ratios`."""
    rows = []
    for hidden in hidden_sizes:
        for batch in batch_sizes:
            log(f"hidden {hidden}, batch {batch}: starting the workers")
            chosen = generate_candidates(batch=batch, steps=steps, with_torch=with_torch,
                                         threads=threads, modes=modes)
            row = {"hidden": hidden, "batch": batch, "steps": steps, "repeats": repeats,
                   **measure(hidden, chosen, repeats=repeats, log=log)}
            row.update(ratios(row))
            rows.append(row)
            log(markdown([row], header=False))
    return rows


def _rate(row: dict, name: str) -> str:
    value = row["candidates"].get(name, {}).get("tokens_per_second")
    return "-" if value is None else f"{value:,.0f}"


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| hidden | batch | generate tok/s | + `eos_id` | Python loop of jitted step | "
                  "PyTorch's best step loop | vs PyTorch | vs jitted-step loop | eos cost | "
                  "stop at 1 | noise |",
                  "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for row in rows:
        best = row.get("torch_best")
        spreads = [entry["spread"] for entry in row["candidates"].values() if "spread" in entry]
        lines.append(
            f"| {row['hidden']} | {row['batch']} | {_rate(row, 'generate')} "
            f"| {_rate(row, 'generate+eos')} | {_rate(row, 'jit-step')} "
            f"| {_rate(row, best) if best else '-'} ({best or 'none'}) "
            f"| {row.get('vs_torch', nan):.1f}x ({row.get('vs_torch_fastest', nan):.1f}x) "
            f"| {row.get('vs_jit_step', nan):.1f}x "
            f"| {row.get('eos_overhead', nan) - 1:+.1%} | {row.get('early_stop_fraction', nan):.0%} "
            f"| {max(spreads, default=nan):.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=None,
                        help="PyTorch thread counts to time besides its default (default 1 2)")
    parser.add_argument("--torch-modes", nargs="+", choices=("eager", "compile"), default=None,
                        help="PyTorch modes (default: both)")
    parser.add_argument("--json", help="write the results (with every timing) to this file")
    args = parser.parse_args(argv)
    report = provenance("benchmarks/bench_generate.py", argv)
    threads = None if args.torch_threads is None else (None, *args.torch_threads)
    rows = run(hidden_sizes=args.hidden, batch_sizes=args.batch, steps=args.steps,
               repeats=args.repeats, with_torch=not args.no_torch, threads=threads,
               modes=args.torch_modes, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(rows))
    print("\nRatios of medians, in parentheses ratios of the fastest repetitions (the least "
          "disturbed by other processes on a shared machine). noise: the largest (max - min) / "
          "median over the candidates' repetitions; eos cost: generate with a never-emitted "
          "eos_id (chunked early-stop loop) against without; stop at 1: time when every row "
          "emits eos at its first step, as a fraction of the full generate.")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(finish({**report, "rows": rows}), indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
