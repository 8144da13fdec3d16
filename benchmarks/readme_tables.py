"""The README's and the docs' benchmark tables, generated from the committed result files: no
figure typed by hand.

Reads the JSON results under ``benchmarks/results/`` (each holds its command, date, commit,
versions and load averages) and writes Markdown sections, each between
``<!-- readme_tables:NAME -->`` and ``<!-- /readme_tables:NAME -->`` markers:

- ``quickstart``: the output of ``seqmodel train`` with no arguments (``quickstart_*.json``);
- ``train-step``: the train-step table (``speed_*.json``), ratios to the fastest PyTorch
  candidate of each row, which it names, with seqmodel's default split and the one-device,
  one-step-per-call figure beside it;
- ``generation``: generation against PyTorch's best step loop (``generate_*.json``);
- ``forecast``: MASE on the six real series against seasonal naive, the best classical method
  and the best deep peer (``forecast_real_*.json``, ``forecast_peers_*.json``);
- ``more``: one line each for decoding, the linear recurrences and quality;
- for docs/benchmarks.md: ``speed-all`` (every candidate), ``train-cli`` (``seqmodel train``
  from outside against the suite), ``generation-all``, ``decoding``, ``quality``, ``targets``;
- for docs/checkpoints.md: ``faults``.

Run::

    python benchmarks/readme_tables.py                     # writes benchmarks/results/readme_tables.md
    python benchmarks/readme_tables.py --update docs/benchmarks.md docs/checkpoints.md README.md

``--update FILE`` replaces the marked sections that ``FILE`` holds (a file without markers is
left as it is).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import statistics
import sys

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import seconds_to_reach  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
FILES = {
    "speed": "speed_cpu_2core.json",
    "generate": "generate_cpu_2core.json",
    "decoding": "decoding_cpu_2core.json",
    "train_cli": "train_cli_cpu_2core.json",
    "quickstart": "quickstart_cpu_2core.json",
    "quality": "quality",
    "quality_stdlib": "quality_stdlib",
    "faults_1": "faults_cpu_1dev.json",
    "faults_2": "faults_cpu_2dev.json",
    "linear": "linear_cpu_2core_quiet.json",
    "forecast": "forecast_real_cpu_2core.json",
    "forecast_peers": "forecast_peers_cpu_2core.json",
    "long_context": "long_context_cpu_2core.json",
    "long_context_example": "long_context_example_cpu.json",
    "profile": "profile_train_step_cpu_2core.json",
}
TARGETS = {("lstm", 128): 1.3, ("lstm", 512): 1.1}  # train step against PyTorch's best
GENERATION_TARGET = 10.0  # batch 1 against PyTorch's best step loop
NAN = float("nan")


def load(name: str, results: pathlib.Path = RESULTS):
    path = results / FILES[name]
    if path.is_dir():
        return [json.loads(p.read_text()) | {"_file": str(p.relative_to(results.parent.parent))}
                for p in sorted(path.glob("*.json"))]
    if not path.is_file():
        return None
    return json.loads(path.read_text()) | {"_file": str(path.relative_to(results.parent.parent))}


def thousands(value: float | None) -> str:
    """``425k``, ``44.6k``, ``8,776``: tokens/s at a glance."""
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 100_000:
        return f"{value / 1000:.0f}k"
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:,.0f}"


def load_text(report: dict) -> str:
    values = [v for part in report.get("load_average", {}).values()
              for v in (part if isinstance(part, list) else [part])]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "?"


def provenance_line(report: dict) -> str:
    """``date, commit, load average`` of a result file, and the file."""
    commit = (report.get("commit") or "?")[:10]
    return (f"{report.get('date', '?')[:10]}, commit {commit}, load average "
            f"{load_text(report)} on {report.get('machine', {}).get('cpus', '?')} CPUs; "
            f"[{pathlib.Path(report['_file']).name}]({report['_file']})")


# ---------------------------------------------------------------------------------------------
# Train step
# ---------------------------------------------------------------------------------------------

SPEED_COLUMNS = [  # (header, candidate)
    ("seqmodel (default split, chosen at start-up)", "seqmodel"),
    ("1 device, 1 step per call", "seqmodel-1dev-1call"),
    ("1 device", "seqmodel-1dev"),
    ("1 CPU device per core", "seqmodel-per-core"),
    ("1 device per core, 1 step per call", "seqmodel-per-core-1call"),
    ("`fit` itself", "seqmodel-fit"),
    ("plain `lax.scan` autodiff", "seqmodel-plain"),
    ("Flax `nnx.RNN`", "flax"),
]


def _ratio(entry: dict) -> str:
    return f"{entry['ratio_to_torch']:.2f}x" if entry.get("ratio_to_torch") else "-"


def _speed_cell(entry: dict | None, *, bold: bool = False, devices: bool = False) -> str:
    if not entry or "tokens_per_second" not in entry:
        return "-"
    ratio = _ratio(entry)
    ratio = f"**{ratio}**" if bold else ratio
    split = (f", {entry['devices']} dev. x {entry.get('steps_per_call')}"
             if devices and entry.get("devices") else "")
    return f"{thousands(entry['tokens_per_second'])} ({ratio}{split})"


def train_step_table(speed: dict) -> str:
    header = ["cell", "hidden"] + [title for title, _ in SPEED_COLUMNS] + ["PyTorch's best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in speed["rows"]:
        entries = row["candidates"]
        best = row.get("torch_best")
        cells = [row["cell"].upper(), str(row["hidden"])]
        for index, (_, name) in enumerate(SPEED_COLUMNS):
            cells.append(_speed_cell(entries.get(name), bold=index == 0, devices=index == 0))
        cells.append(f"{thousands(entries[best]['tokens_per_second'])} (`{best}`)" if best else "-")
        lines.append("| " + " | ".join(cells) + " |")
    spreads = [entry["spread"] for row in speed["rows"] for entry in row["candidates"].values()
               if "spread" in entry]
    lines += ["", f"Medians of {speed.get('repeats', '?')} alternating repetitions (largest "
                  f"spread (max - min) / median: {max(spreads, default=NAN):.0%}); ratios to the "
                  f"fastest PyTorch candidate of the row, named (`torch-{{eager,compile}}-{{1t,2t}}`: "
                  f"`nn.LSTM` / `nn.GRU` eager or under `torch.compile` on 1 or 2 threads; "
                  f"`torch-loop-...`: the GRU as a loop with its input projection hoisted). "
                  f"`{speed.get('command', '')}`, {provenance_line(speed)}."]
    return "\n".join(lines)


def split_choice_text(speed: dict) -> str:
    """The default's split in every row of the train-step suite, as measured at start-up."""
    choices = [f"{row['cell'].upper()} h{row['hidden']}: {entry['device_choice']['reason']}"
               for row in speed["rows"] for name, entry in row["candidates"].items()
               if name == "seqmodel" and entry.get("device_choice")]
    return "The default's split, as measured at start-up: " + "; ".join(choices) + "."


def _figure(entry: dict, key: str, spec: str, missing: str = "-") -> str:
    """``entry[key]`` formatted with ``spec``; ``missing`` when absent or None."""
    value = entry.get(key)
    return missing if value is None else format(value, spec)


def speed_all_table(speed: dict) -> str:
    """Every candidate of every row, with CPU time, compile time and roofline."""
    lines = ["| cell | h | candidate | tok/s | x best torch | spread | cpu ms/step | compile s | "
             "roofline |", "|---|---|---|---|---|---|---|---|---|"]
    for row in speed["rows"]:
        for name, entry in row["candidates"].items():
            if "tokens_per_second" not in entry:
                lines.append(f"| {row['cell']} | {row['hidden']} | {name} | skipped: "
                             f"{entry.get('error', '?')[:60]} | | | | | |")
                continue
            lines.append(
                f"| {row['cell']} | {row['hidden']} | {name} | {entry['tokens_per_second']:,.0f} "
                f"| {_ratio(entry)} | {_figure(entry, 'spread', '.2f')} "
                f"| {_figure(entry, 'cpu_ms_per_step', '.1f')} "
                f"| {_figure(entry, 'compile_seconds', '.1f', '(at start-up)')} "
                f"| {_figure(entry, 'roofline', '.2f')} |")
    ceilings = speed.get("ceilings_gflops", {})
    lines += ["", "GEMM ceilings GFLOP/s: " + ", ".join(
        f"{k.replace('_gflops', '')} {v:.0f}" for k, v in ceilings.items()) + "; "
        + provenance_line(speed) + "."]
    return "\n".join(lines)


def profile_table(report: dict) -> str:
    """Milliseconds of the step's parts and the serial GEMM chain's GFLOP/s, per framework."""
    lines = ["| cell | hidden | candidate | step ms | forward ms | forward + backward ms | serial "
             "GEMMs GFLOP/s, 32 rows (forward / backward) | 16 rows |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for name in ("seqmodel-1dev", "torch-eager-1t", "torch-eager-2t"):
            part = row.get(name) or {}
            if "train_step" not in part:
                continue
            lines.append(
                f"| {row['cell'].upper()} | {row['hidden']} | {name} "
                f"| {1e3 * part['train_step']:.1f} | {1e3 * part['forward']:.1f} "
                f"| {1e3 * part['forward_backward']:.1f} "
                f"| {part['serial_forward_32rows_gflops']:.0f} / "
                f"{part['serial_backward_32rows_gflops']:.0f} "
                f"| {part['serial_forward_16rows_gflops']:.0f} / "
                f"{part['serial_backward_16rows_gflops']:.0f} |")
    lines += ["", f"Fastest of the repetitions; `{report.get('command', '')}`, "
                  f"{provenance_line(report)}."]
    return "\n".join(lines)


def train_cli_table(report: dict) -> str:
    lines = ["| cell | hidden | suite's default step | `seqmodel train`: step rate | reported | "
             "from outside | fixed costs | split (command) |", "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(
            f"| {row['cell'].upper()} | {row['hidden']} | {row['bench_tokens_per_second']:,.0f} "
            f"({row['bench_devices']} dev.) | {row['step_tokens_per_second']:,.0f} "
            f"({row['step_to_bench']:.2f}x) | {row['train_tokens_per_second']:,.0f} "
            f"| {row['outside_tokens_per_second']:,.0f} ({row['outside_to_bench']:.2f}x) "
            f"| {row['fixed_seconds']:.1f} s of {row['wall_seconds']:.1f} s "
            f"| {row['command_devices']} dev. |")
    lines += ["", f"`{report.get('command', '')}`, {provenance_line(report)}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Generation and decoding
# ---------------------------------------------------------------------------------------------


def _rate(row: dict, name: str | None) -> str:
    value = row["candidates"].get(name or "", {}).get("tokens_per_second")
    return "-" if value is None else f"{value:,.0f}"


def generation_table(report: dict) -> str:
    lines = ["| hidden | batch | `sm.generate` tok/s | + `eos_id` | Python loop of a jitted step "
             "| PyTorch's best step loop | vs PyTorch | vs jitted-step loop |",
             "|---:|---:|---:|---:|---:|---|---:|---:|"]
    for row in report["rows"]:
        best = row.get("torch_best")
        ratio = row.get("vs_torch", NAN)
        bold = "**" if row["batch"] == 1 else ""
        lines.append(
            f"| {row['hidden']} | {row['batch']} | {_rate(row, 'generate')} "
            f"| {_rate(row, 'generate+eos')} | {_rate(row, 'jit-step')} "
            f"| {_rate(row, best)} (`{best}`) | {bold}{ratio:.1f}x{bold} "
            f"({row.get('vs_torch_fastest', NAN):.1f}x) | {row.get('vs_jit_step', NAN):.1f}x |")
    spreads = [entry["spread"] for row in report["rows"] for entry in row["candidates"].values()
               if "spread" in entry]
    first = report["rows"][0] if report["rows"] else {}
    lines += ["", f"Medians of {first.get('repeats', '?')} alternating repetitions, "
                  f"{first.get('steps', '?')} steps, LSTM (fastest repetitions' ratio in "
                  f"parentheses; largest spread {max(spreads, default=NAN):.0%}). PyTorch "
                  f"candidates: `nn.LSTM` stepped on length-1 sequences (`torch-...`) and "
                  f"`nn.LSTMCell` (`torch-cell-...`), eager or under `torch.compile`, on 1 or 2 "
                  f"threads. `{report.get('command', '')}`, {provenance_line(report)}."]
    return "\n".join(lines)


def generation_all_table(report: dict) -> str:
    lines = ["| hidden | batch | candidate | tok/s | spread | compile s |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for name, entry in row["candidates"].items():
            if "tokens_per_second" not in entry:
                lines.append(f"| {row['hidden']} | {row['batch']} | {name} | skipped: "
                             f"{entry.get('error', '?')[:60]} | | |")
                continue
            lines.append(f"| {row['hidden']} | {row['batch']} | {name} "
                         f"| {entry['tokens_per_second']:,.0f} | {entry['spread']:.2f} "
                         f"| {entry.get('compile_seconds', NAN):.1f} |")
    return "\n".join(lines)


def decoding_text(report: dict) -> str:
    beam, processors = report.get("beam_search"), report.get("processors")
    parts = []
    if beam and beam.get("ratio"):
        parts.append(f"8-beam `beam_search`, LSTM h{beam['hidden']}, "
                     f"{thousands(beam['seqmodel_tokens_per_second'])} tokens/s, "
                     f"**{beam['ratio']:.1f}x** PyTorch's best beam loop (`{beam['torch_best']}`, "
                     f"{thousands(beam['pytorch_tokens_per_second'])})")
    if processors and processors.get("cost_fraction") is not None:
        parts.append(f"all logits processors together cost {processors['cost_fraction']:.0%} at "
                     f"batch 32, hidden 128")
    return "; ".join(parts) + f" ({provenance_line(report)})"


def decoding_table(report: dict) -> str:
    beam = report.get("beam_search") or {}
    lines = ["| candidate | tok/s | spread | compile s |", "|---|---|---|---|"]
    for name, entry in beam.get("candidates", {}).items():
        if "tokens_per_second" in entry:
            lines.append(f"| {name} | {entry['tokens_per_second']:,.0f} | {entry['spread']:.2f} "
                         f"| {entry.get('compile_seconds', NAN):.1f} |")
        else:
            lines.append(f"| {name} | skipped: {entry.get('error', '?')[:60]} | | |")
    lines += ["", f"Beams 8, batch 1, hidden {beam.get('hidden')}, {beam.get('steps')} steps; "
                  f"`{report.get('command', '')}`, {provenance_line(report)}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Quality, linear recurrences, forecasting
# ---------------------------------------------------------------------------------------------

ARM_NAMES = {"gru": "GRU h512 (the default)", "lstm": "LSTM h512", "mingru": "minGRU",
             "minlstm": "minLSTM", "rglru": "RG-LRU", "torch-lstm": "PyTorch `nn.LSTM` h512"}


def quality_arms(runs: list[dict], data: str = "tinyshakespeare") -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for run in runs:
        if run.get("arm") and run.get("data") == data:
            arms.setdefault(run["arm"], []).append(run)
    return arms


def quality_table(runs: list[dict], data: str = "tinyshakespeare") -> str:
    budgets = sorted({f"{run['max_time']:g} s" for run in runs if run.get("data") == data})
    lines = [f"| arm (defaults, {', '.join(budgets)}) | seeds | validation loss, nats/char | mean "
             f"| steps | chars/s | load average | files |", "|---|---|---|---|---|---|---|---|"]
    for arm, arm_runs in sorted(quality_arms(runs, data).items(),
                                key=lambda item: statistics.mean(r["val_loss"] for r in item[1])):
        losses = [run["val_loss"] for run in arm_runs]
        files = ", ".join(f"[{run['seed']}]({run['_file']})" for run in arm_runs)
        lines.append(
            f"| {ARM_NAMES.get(arm, arm)} | {len(arm_runs)} | "
            f"{', '.join(f'{loss:.3f}' for loss in losses)} | **{statistics.mean(losses):.3f}** "
            f"| {min(r['steps'] for r in arm_runs):,}-{max(r['steps'] for r in arm_runs):,} "
            f"| {thousands(min(r['tokens_per_second'] for r in arm_runs))}-"
            f"{thousands(max(r['tokens_per_second'] for r in arm_runs))} "
            f"| {min(min(r['load_average']['start'][0], r['load_average']['end'][0]) for r in arm_runs):.1f}-"
            f"{max(max(r['load_average']['start'][0], r['load_average']['end'][0]) for r in arm_runs):.1f} "
            f"| {files} |")
    return "\n".join(lines)


def quality_text(runs: list[dict]) -> str:
    arms = quality_arms(runs)
    if not arms:
        return "no quality results"
    parts = []
    for arm in ("gru", "lstm", "mingru", "torch-lstm"):
        if arm in arms:
            losses = [run["val_loss"] for run in arms[arm]]
            parts.append(f"{ARM_NAMES[arm]} {statistics.mean(losses):.3f} "
                         f"({min(losses):.3f}-{max(losses):.3f})")
    return ("tinyshakespeare in 110 s, every arm at `seqmodel train`'s defaults, "
            f"{len(next(iter(arms.values())))} seeds each, mean (range) nats/char: "
            + ", ".join(parts))


def stdlib_text(runs: list[dict]) -> str:
    """minGRU against the GRU on python-stdlib with 1024-character windows, both at the
    defaults, every seed: when minGRU's curve reaches the GRU's mean final loss."""
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    if not {"gru", "mingru"} <= set(arms):
        return ""
    final = statistics.mean(run["val_loss"] for run in arms["gru"])
    end = statistics.mean(run["validation_curve"][-1]["seconds"] for run in arms["gru"])
    reached = [seconds_to_reach(run["validation_curve"], final) for run in arms["mingru"]]
    ours = statistics.mean(run["val_loss"] for run in arms["mingru"])
    when = ("never reaches it" if any(value is None for value in reached)
            else f"reaches it at {statistics.mean(reached):.0f} s")
    files = ", ".join(f"[{run['arm']} {run['seed']}]({run['_file']})"
                      for arm in ("gru", "mingru") for run in arms[arm])
    return (f"on python-stdlib with 1024-character windows ({len(arms['gru'])} seeds, both at "
            f"the defaults) the GRU ends at {final:.3f} nats/char after {end:.0f} s; minGRU "
            f"{when} and ends at {ours:.3f} ({files})")


def linear_text(linear: dict | None, stdlib: list[dict] | None) -> str:
    parts = []
    if linear:
        rows = [row for row in linear["train"] if row["size"] == "8M" and row["length"] == 8192]
        gru = next((row for row in rows if row["family"] == "gru"), None)
        new = [row for row in rows if row["family"] != "gru"]
        if gru and new:
            best = max(new, key=lambda row: row["tokens_per_second"] * row["parameters"])
            ratio = (best["tokens_per_second"] * best["parameters"]
                     / (gru["tokens_per_second"] * gru["parameters"]))
            parts.append(f"at 8M parameters, batch 1, T = 8192, {best['family']} trains "
                         f"{ratio:.2f}x the GRU's tokens/s x parameters "
                         f"([{pathlib.Path(linear['_file']).name}]({linear['_file']}))")
    if stdlib:
        text = stdlib_text(stdlib)
        if text:
            parts.append(text)
    return "; ".join(parts)


def long_context_text(sweep: dict | None, example: dict | None) -> str:
    """One line: the longest sequence trained, its memory with and without remat, and split over
    devices (``bench_long_context``'s sweep and worked example)."""
    rows = (example or {}).get("rows", []) + (sweep or {}).get("rows", [])
    ran = [row for row in rows if row.get("ran") and row["devices"] == 1]
    if not ran:
        return ""
    longest = max(row["length"] for row in ran)
    trained = next(row for row in ran if row["length"] == longest)
    plain = next((row for row in rows if row["length"] == longest and row["devices"] == 1
                  and row["remat"] == "none"), None)
    split = [row for row in rows if row["length"] == longest and row["devices"] > 1
             and row["remat"] == trained["remat"] and row.get("ran")]
    losses = trained.get("losses") or [trained.get("loss")]
    text = (f"a {trained['parameters'] / 1e6:.1f}M-parameter model trains on one sequence of "
            f"T = {longest:,} characters with `remat=\"{trained['remat']}\"` (XLA plans "
            f"{trained['planned_gib']:.2f} GiB, peak RSS {trained['peak_rss_gib']:.2f} GiB; loss "
            f"{losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps)")
    if plain:
        text += f"; without remat the plan is {plain['planned_gib']:.1f} GiB"
    if split:
        text += (f"; split over {split[0]['devices']} devices, {split[0]['device_gib']:.2f} GiB "
                 f"a device")
    files = [item for item in (example, sweep) if item]
    return text + " (" + ", ".join(f"[{pathlib.Path(item['_file']).name}]({item['_file']})"
                                   for item in files) + ")"


CLASSICAL = {"auto_ets": "AutoETS", "auto_arima": "AutoARIMA", "mstl": "MSTL",
             "seasonal_naive_long": "seasonal naive (long season)"}
DEEP = {"deepar": "DeepAR", "nhits": "NHITS", "lstm": "LSTM"}


def _best(methods: dict, names: dict) -> tuple[float, str] | None:
    """The lowest mean MASE among ``names`` in a peers result's ``methods``: (mase, name)."""
    scored = [(entry["scores"]["mase"]["mean"], label) for key, label in names.items()
              if (entry := methods.get(key)) and "mase" in entry.get("scores", {})]
    return min(scored) if scored else None


def forecast_table(report: dict, peers: dict | None) -> str:
    """MASE per dataset: seqmodel (one model, ensemble; mean over seeds) against seasonal naive,
    the best classical method and the best deep peer of the peers' file (the same windows), and
    the single model's calibrated 80% coverage."""
    peer_rows = {row["dataset"]: row["methods"] for row in (peers or {}).get("results", [])}
    lines = ["| dataset | seqmodel | ensemble | seasonal naive | best classical | best deep peer "
             "| 80% coverage |", "|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        overall = result["overall"]
        single = overall["seqmodel"]
        ensemble = next((value for key, value in overall.items()
                         if key.startswith("seqmodel ensemble")), None)
        methods = dict(peer_rows.get(result["dataset"], {}))
        for key in ("auto_ets", "auto_arima"):  # the benchmark's own histories count too
            if key in overall:
                own = {"scores": {"mase": {"mean": overall[key]["mase"]}}}
                if key not in methods or own["scores"]["mase"]["mean"] < methods[key]["scores"][
                        "mase"]["mean"]:
                    methods[key] = own
        classical, deep = _best(methods, CLASSICAL), _best(methods, DEEP)
        best_other = min(v[0] for v in (classical, deep) if v) if (classical or deep) else NAN

        def cell(value):
            return f"**{value:.3f}**" if value < best_other else f"{value:.3f}"

        lines.append(
            f"| {result['dataset']} | {cell(single['mase'])} | "
            f"{cell(ensemble['mase']) if ensemble else '-'} | "
            f"{overall['seasonal_naive']['mase']:.3f} | "
            + (f"{classical[0]:.3f} {classical[1]}" if classical else "-") + " | "
            + (f"{deep[0]:.3f} {deep[1]}" if deep else "-")
            + f" | {single['coverage_80']:.2f} |")
    files = [report] + ([peers] if peers else [])
    lines.append("")
    lines.append("MASE (mean over seeds; bold: below every other method), " + ", ".join(
        f"[{pathlib.Path(item['_file']).name}]({item['_file']})" for item in files) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Quick start, faults, targets
# ---------------------------------------------------------------------------------------------


def quickstart_block(report: dict) -> str:
    # The progress bar's redraws (tqdm on stderr) are not what a reader needs to see.
    lines = [line for line in report["output"]
             if line.strip() and not re.search(r"step/s|\d+step \[|^\s*$", line)]
    if "--- sample" in " ".join(lines):  # the run's lines and the sample's first 8 lines
        start = next(i for i, line in enumerate(lines) if line.startswith("--- sample"))
        lines = lines[:start + 9] + ["..."]
    return ("```\n" + "\n".join(lines) + "\n```\n\n"
            f"(`{report['run_command']}`, {provenance_line(report)})")


def faults_table(reports: list[dict]) -> str:
    lines = ["| devices | runs | kills | start-up | compile | training | saving (partial step "
             "left) | finishing | restarts from the newest complete step | identical | lost | "
             "failed |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        counts, phases = report["counts"], report["counts"]["by_phase"]
        resumed = counts["resumed_from_newest_complete_step"]
        said = sum(process["resumed_from"] is not None for run in report["runs"]
                   for process in run["processes"][1:])
        lines.append(
            f"| {report['options']['devices']} | {counts['runs']} | {counts['kills']} "
            f"| {phases['start-up']} | {phases['compile']} | {phases['training']} "
            f"| {phases['saving']} ({counts['saving_with_partial_step_left']}) "
            f"| {phases['finishing']} | {resumed} of {said} | {counts['identical']} "
            f"| {counts['lost']} | {counts['failed']} |")
    lines += [""] + [f"`{report['command']}`: {provenance_line(report)}." for report in reports]
    return "\n".join(lines)


def targets_table(speed: dict | None, generate: dict | None) -> str:
    lines = ["| target | measured | |", "|---|---|---|"]
    for row in (speed or {}).get("rows", []):
        target = TARGETS.get((row["cell"], row["hidden"]))
        entry = row["candidates"].get("seqmodel", {})
        if target and entry.get("ratio_to_torch"):
            met = entry["ratio_to_torch"] >= target
            lines.append(f"| train step {row['cell'].upper()} h{row['hidden']} >= {target}x "
                         f"PyTorch's best | {entry['ratio_to_torch']:.2f}x (`{row['torch_best']}`; "
                         f"one device, one step per call: "
                         f"{_ratio(row['candidates'].get('seqmodel-1dev-1call', {}))}) "
                         f"| {'met' if met else '**missed**'} |")
    for row in (generate or {}).get("rows", []):
        if row["batch"] == 1 and row.get("vs_torch"):
            met = row["vs_torch"] >= GENERATION_TARGET
            lines.append(f"| generation, batch 1, hidden {row['hidden']} >= {GENERATION_TARGET:g}x "
                         f"PyTorch's best step loop | {row['vs_torch']:.1f}x (`{row['torch_best']}`) "
                         f"| {'met' if met else '**missed**'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sections and files
# ---------------------------------------------------------------------------------------------


def sections(results: pathlib.Path = RESULTS) -> dict[str, str]:
    """``{name: Markdown}`` of every section whose result files exist."""
    found = {name: load(name, results) for name in FILES}
    # Files of the suites' earlier formats (no provenance, PyTorch in the JAX process) are not
    # quoted: only results of the current scripts are.
    for name in ("speed", "generate", "decoding", "train_cli"):
        if found[name] and "commit" not in found[name]:
            found[name] = None
    out = {}
    if found["quickstart"]:
        out["quickstart"] = quickstart_block(found["quickstart"])
    if found["speed"]:
        out["train-step"] = train_step_table(found["speed"])
        out["train-step-split"] = split_choice_text(found["speed"])
        out["speed-all"] = speed_all_table(found["speed"])
    if found["train_cli"]:
        out["train-cli"] = train_cli_table(found["train_cli"])
    if found["profile"]:
        out["profile"] = profile_table(found["profile"])
    if found["generate"]:
        out["generation"] = generation_table(found["generate"])
        out["generation-all"] = generation_all_table(found["generate"])
    if found["decoding"]:
        out["decoding"] = decoding_table(found["decoding"])
    if found["quality"]:
        out["quality"] = quality_table(found["quality"])
    if found["quality_stdlib"]:
        out["quality-stdlib"] = quality_table(found["quality_stdlib"], "python-stdlib")
    faults = [found[name] for name in ("faults_1", "faults_2") if found[name]]
    if faults:
        out["faults"] = faults_table(faults)
    out["targets"] = targets_table(found["speed"], found["generate"])
    more = []
    if found["decoding"]:
        more.append("- Decoding (`benchmarks/bench_decoding.py`): " + decoding_text(found["decoding"]) + ".")
    linear = linear_text(found["linear"], found["quality_stdlib"])
    if linear:
        more.append("- Linear recurrences (`benchmarks/bench_linear.py`, "
                    "[docs/linear.md](docs/linear.md)): " + linear + ".")
    long_context = long_context_text(found["long_context"], found["long_context_example"])
    if long_context:
        more.append("- Long sequences (`benchmarks/bench_long_context.py`, "
                    "[docs/long_context.md](docs/long_context.md)): " + long_context + ".")
    if found["forecast"]:
        out["forecast"] = forecast_table(found["forecast"], found["forecast_peers"])
    if found["quality"]:
        more.append("- Quality (`benchmarks/bench_quality.py`, [docs/benchmarks.md]"
                    "(docs/benchmarks.md#quality)): " + quality_text(found["quality"]) + ".")
    out["more"] = "\n".join(more)
    return out


def marked(name: str, text: str) -> str:
    return f"<!-- readme_tables:{name} -->\n{text}\n<!-- /readme_tables:{name} -->"


def relative_links(text: str, page: pathlib.Path, root: pathlib.Path) -> str:
    """Links written from the checkout's root (``](benchmarks/...``, ``](docs/...``) made
    relative to ``page``'s folder."""
    import os

    prefix = os.path.relpath(root.resolve(), page.resolve().parent)
    if prefix == ".":
        return text
    return re.sub(r"\]\((benchmarks|docs)/", lambda m: f"]({prefix}/{m.group(1)}/", text)


def update(path: pathlib.Path, generated: dict[str, str],
           root: pathlib.Path = RESULTS.parent.parent) -> list[str]:
    """Replace the marked sections of ``path`` by ``generated`` (links made relative to it);
    returns the names replaced."""
    text = path.read_text(encoding="utf-8")
    replaced = []

    def replace(match):
        name = match.group(1)
        if name not in generated:
            return match.group(0)
        replaced.append(name)
        return marked(name, relative_links(generated[name], path, root))

    text = re.sub(r"<!-- readme_tables:([\w-]+) -->\n(?:.*?\n)?<!-- /readme_tables:\1 -->",
                  replace, text, flags=re.DOTALL)
    path.write_text(text, encoding="utf-8")
    return replaced


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="the result files' folder")
    parser.add_argument("--out", default=str(RESULTS / "readme_tables.md"),
                        help="write every section here (default benchmarks/results/readme_tables.md)")
    parser.add_argument("--update", nargs="*", default=[], metavar="FILE",
                        help="replace the marked sections of these files")
    args = parser.parse_args(argv)
    generated = sections(pathlib.Path(args.results))
    pathlib.Path(args.out).write_text(
        "# Benchmark sections generated by `python benchmarks/readme_tables.py`\n\n"
        "Each section goes between its markers in README.md or docs/ (`--update FILE`).\n\n"
        + "\n\n".join(marked(name, text) for name, text in generated.items()) + "\n",
        encoding="utf-8")
    print(f"wrote {args.out}: {', '.join(generated)}")
    for name in args.update:
        replaced = update(pathlib.Path(name), generated)
        print(f"{name}: {', '.join(replaced) or 'no marked section'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
