"""Speed suite: seqmodel's jitted train step against PyTorch's best and a plain Flax RNN, in one run.

What it measures, for every (cell, hidden size) on the same inputs (batch 32, sequence 128,
Embedding 64 -> cell -> Linear, vocabulary 65, AdamW + global-norm clipping, fp32):

- train-step tokens/s (compile excluded), compile seconds (wall and CPU) and whether the step
  recompiles on a second batch, for
  ``seqmodel`` (the library's step as ``seqmodel train`` runs it by default: custom-VJP
  recurrences, ``TrainConfig.steps_per_call`` steps per compiled call, and on a CPU-only machine
  the split of the batch over devices that :func:`seqmodel.training.devices.choose_split`
  measures at start-up: one device, or one CPU device per core; ``device_choice`` says which and
  why), ``seqmodel-1dev`` and ``seqmodel-per-core`` (those two splits pinned),
  ``seqmodel-1dev-1call`` (one device, one step per call: no split, no multi-step program),
  ``seqmodel-fit`` (:func:`seqmodel.training.fitting.fit` itself with the default split: data
  pipeline, logging and run folder around the same step), ``seqmodel-plain``
  (``fast_recurrence=False``: ``lax.scan`` differentiated by JAX, one device, one step per
  call), ``flax`` (``nnx.RNN(OptimizedLSTMCell / GRUCell)``, same optax chain) and PyTorch
  (``nn.LSTM`` / ``nn.GRU``, and for the GRU also :class:`benchmarks.torch_variants.GRULoop`,
  its input projection hoisted) at each thread setting (``torch-{eager,compile}-{1t,2t}``, its
  default too when that differs), eager and under ``torch.compile``; the PyTorch models hold the
  seqmodel model's weights (:func:`seqmodel.interop.to_torch`) and must give its loss on the
  first batch before they are timed;
- generate tokens/s of the library (:func:`benchmarks.decode_workers.time_generate`), ``b=32``
  rows of 128 tokens;
- the machine's GEMM FLOP/s: a large ``2048^3`` GEMM and the serial small GEMMs of the
  recurrence (``(b, h) @ (h, G)`` and ``(b, G) @ (G, h)`` chained in a ``lax.scan``), and a
  roofline column: the time the step's FLOPs would take at those ceilings (serial matmuls at the
  serial rate, the rest at the large-GEMM rate) as a fraction of the measured step time.

Every candidate runs in its own worker process (so that device counts, thread counts and the
two frameworks' thread pools do not interfere); the parent alternates repetitions across
candidates (rotating the order) and quotes medians. ``x torch`` is the ratio to the fastest
PyTorch candidate of the same run (named in ``torch_best``); ``x torch-1t cpu`` compares CPU
time per step with eager PyTorch on one thread, a figure that a busy machine disturbs far less
than wall time. The JSON holds the command, date, commit, versions and load averages. On a GPU
the same code runs unchanged (PyTorch then uses cuDNN; ``seqmodel`` the accelerator's devices).

Run (from the source checkout)::

    python benchmarks/bench_speed.py --json benchmarks/results/speed_cpu_2core.json
    python benchmarks/bench_speed.py --quick          # smoke test
    python benchmarks/bench_speed.py --cells lstm --hidden 512 --candidates seqmodel,seqmodel-1dev,seqmodel-per-core
    seqmodel bench --json results.json --markdown
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.candidates import (  # noqa: E402
    TRAIN_CANDIDATES,
    Candidate,
    default_candidates,
    fastest_torch,
    start,
)
from benchmarks.environment import finish, load_average, provenance  # noqa: E402
from benchmarks.rooflines import roofline  # noqa: E402
from benchmarks.tables import format_markdown, format_table  # noqa: E402
from benchmarks.workload import BATCH, EMBED, GATES, SEQUENCE, VOCAB  # noqa: E402

# What a worker's ready line reports that the results keep.
HELLO_KEYS = ("compile_seconds", "compile_cpu_seconds", "compiled_programs", "devices",
              "steps_per_call", "first_loss", "seqmodel_first_loss", "threads", "default_threads",
              "mode", "implementation", "device_choice")
# The work ratio's reference: PyTorch eager on one thread (its CPU time is its work).
ONE_THREAD_TORCH = "torch-eager-1t"


def _measure_config(cell: str, hidden: int, candidates: list[Candidate], *, repeats: int,
                    seconds_per_repeat: float, generate_repeats: int, log) -> dict:
    workers = []
    results: dict[str, dict] = {}
    try:
        for candidate in candidates:
            worker = start(candidate, cell, hidden)
            if "error" in worker.hello:
                log(f"  {candidate.name}: skipped ({worker.hello['error'][-300:]})")
                results[candidate.name] = {"error": worker.hello["error"][-1000:]}
                worker.close()
                continue
            results[candidate.name] = {
                key: worker.hello[key] for key in HELLO_KEYS if key in worker.hello}
            results[candidate.name]["seconds"] = []
            workers.append(worker)
        # Steps per repetition from one warm-up call, so each repetition lasts about the same.
        steps = {}
        for worker in list(workers):
            first = worker.ask("run 1")
            if "seconds" not in first:
                log(f"  {worker.name}: failed ({first.get('error', 'no answer')[-300:]})")
                results[worker.name]["error"] = first.get("error", "no answer")[-1000:]
                workers.remove(worker)
                worker.close()
                continue
            steps[worker.name] = max(1, round(seconds_per_repeat / max(first["seconds"], 1e-4)))
        load_before = load_average()
        for repeat in range(repeats):
            # Alternate (every candidate sees the same machine load) and rotate the order, so
            # that no candidate always runs right after the same neighbour.
            shift = repeat % max(len(workers), 1)
            for worker in workers[shift:] + workers[:shift]:
                answer = worker.ask(f"run {steps[worker.name]}")
                if "seconds" in answer:
                    results[worker.name]["seconds"].append(answer["seconds"] / steps[worker.name])
                    results[worker.name].setdefault("cpu_seconds", []).append(
                        answer["cpu_seconds"] / steps[worker.name])
                else:
                    results[worker.name].setdefault("error", answer.get("error", "no answer"))
        for worker in workers:
            entry = results[worker.name]
            if not entry["seconds"]:
                continue
            entry["seconds_per_step"] = statistics.median(entry["seconds"])
            entry["tokens_per_second"] = BATCH * SEQUENCE / entry["seconds_per_step"]
            entry["spread"] = (max(entry["seconds"]) - min(entry["seconds"])) / entry[
                "seconds_per_step"]
            entry["cpu_ms_per_step"] = 1e3 * statistics.median(entry["cpu_seconds"])
        results["_load"] = {"start": load_before, "end": load_average()}
        generators = [w for w in workers if w.name == "seqmodel"]
        for worker in generators:
            answers = [worker.ask("generate") for _ in range(generate_repeats)]
            times = [answer["seconds"] for answer in answers if "seconds" in answer]
            if times:
                results[worker.name]["generate_tokens_per_second"] = (
                    BATCH * SEQUENCE / statistics.median(times))
            else:
                log(f"  generate failed: {answers[0].get('error')}")
    finally:
        for worker in workers:
            worker.close()
    return results


def run_suite(*, cells=("lstm", "gru"), hidden_sizes=(128, 512), candidates=None,
              repeats: int = 5, seconds_per_repeat: float = 1.0, generate_repeats: int = 3,
              log=print) -> dict:
    """Run the suite and return its results as a JSON-ready dict (see module docstring)."""
    candidates = default_candidates() if candidates is None else candidates
    log(f"load average before: {load_average()}")
    gemm = start(Candidate("gemm", "gemm", {"serial_shapes": [
        (hidden, GATES[cell]) for cell in cells for hidden in hidden_sizes]}), "lstm", 0)
    ceilings = gemm.hello.get("result") or {}
    gemm.close()
    log("GEMM ceilings (GFLOP/s): " + ", ".join(f"{k}={v:.0f}" for k, v in ceilings.items()))
    rows = []
    for cell in cells:
        for hidden in hidden_sizes:
            log(f"{cell} h{hidden} ...")
            measured = _measure_config(
                cell, hidden, [c for c in candidates if c.applies_to(cell)], repeats=repeats,
                seconds_per_repeat=seconds_per_repeat, generate_repeats=generate_repeats, log=log)
            load = measured.pop("_load", None)
            for entry in measured.values():
                if "seconds_per_step" in entry:
                    entry.update(roofline(cell, hidden, entry["seconds_per_step"], ceilings))
            best = fastest_torch(measured)
            reference = measured[best]["tokens_per_second"] if best else None
            for entry in measured.values():
                if reference and "tokens_per_second" in entry:
                    entry["ratio_to_torch"] = entry["tokens_per_second"] / reference
            # Work ratio: torch on one thread against each candidate, in CPU time per step.
            one_thread = measured.get(ONE_THREAD_TORCH, {}).get("cpu_ms_per_step")
            for entry in measured.values():
                if one_thread and entry.get("cpu_ms_per_step"):
                    entry["cpu_ratio_to_torch_1t"] = one_thread / entry["cpu_ms_per_step"]
            rows.append({"cell": cell, "hidden": hidden, "load_average": load,
                         "torch_best": best, "candidates": measured})
    return {
        "shape": {"batch": BATCH, "sequence": SEQUENCE, "vocab": VOCAB, "embed": EMBED},
        "repeats": repeats, "seconds_per_repeat": seconds_per_repeat,
        "ceilings_gflops": ceilings,
        "rows": rows,
    }


def main(argv=None) -> int:
    """``seqmodel bench`` / ``benchmarks/bench_speed.py``: run the suite, print, write JSON."""
    parser = argparse.ArgumentParser(prog="seqmodel bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", nargs="?", const="bench_results.json", default=None,
                        help="write the results as JSON to this path (default bench_results.json)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: lstm h128 only, 2 short repetitions")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--hidden", default="128,512")
    parser.add_argument("--candidates", default=",".join(TRAIN_CANDIDATES),
                        help="comma list of: " + ", ".join(TRAIN_CANDIDATES) + " (torch: every "
                        "PyTorch variant), or single variants such as torch-compile-1t")
    parser.add_argument("--torch-threads", default="1,2",
                        help="PyTorch thread counts besides its default (default 1,2)")
    parser.add_argument("--torch-modes", default="eager,compile",
                        help="PyTorch modes: eager, compile (default both)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per repetition")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    cells = tuple(args.cells.split(","))
    try:
        hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        parser.error(f"--hidden: {args.hidden!r} is not a comma list of integers (e.g. 128,512)")
    repeats, seconds, generate_repeats = args.repeats, args.seconds, 3
    if args.quick:
        cells, hidden_sizes, repeats, seconds, generate_repeats = ("lstm",), (128,), 2, 0.3, 1
    for cell in cells:
        if cell not in ("lstm", "gru"):
            parser.error(f"--cells: {cell!r} is not allowed; allowed: lstm, gru")
    try:
        threads = (None, *(int(count) for count in args.torch_threads.split(",") if count))
    except ValueError:
        parser.error(f"--torch-threads: {args.torch_threads!r} is not a comma list of integers")
    modes = tuple(args.torch_modes.split(","))
    if not set(modes) <= {"eager", "compile"}:
        parser.error(f"--torch-modes: {args.torch_modes!r}; allowed: eager, compile")
    try:
        candidates = default_candidates(tuple(args.candidates.split(",")), threads=threads,
                                        modes=modes)
    except ValueError as error:
        parser.error(f"--candidates: {error}")
    report = provenance("benchmarks/bench_speed.py", argv)
    results = run_suite(cells=cells, hidden_sizes=hidden_sizes, candidates=candidates,
                        repeats=repeats, seconds_per_repeat=seconds,
                        generate_repeats=generate_repeats,
                        log=lambda message: print(message, file=sys.stderr, flush=True))
    results = finish({**report, **results})
    print(format_table(results))
    if args.markdown:
        print()
        print(format_markdown(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
