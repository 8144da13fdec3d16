"""The speed suite's tables: one line per (cell, hidden, candidate), printed or in Markdown."""

from __future__ import annotations

import os

COLUMNS = [  # (header, key, format)
    ("devices", "devices", "d"),
    ("steps/call", "steps_per_call", "d"),
    ("train tok/s", "tokens_per_second", ".0f"),
    ("x best torch", "ratio_to_torch", ".2f"),
    ("spread", "spread", ".2f"),
    ("cpu ms/step", "cpu_ms_per_step", ".1f"),
    ("x torch-1t cpu", "cpu_ratio_to_torch_1t", ".2f"),
    ("compile s", "compile_seconds", ".2f"),
    ("compile cpu s", "compile_cpu_seconds", ".2f"),
    ("GFLOP/s", "gflops", ".1f"),
    ("roofline", "roofline", ".2f"),
    ("generate tok/s", "generate_tokens_per_second", ".0f"),
]


def _table_rows(results: dict):
    for row in results["rows"]:
        for name, entry in row["candidates"].items():
            cells = [row["cell"], str(row["hidden"]), name]
            if "tokens_per_second" not in entry:
                yield cells + [f"skipped: {entry.get('error', '?')[:50]}"] + [""] * (len(COLUMNS) - 1)
                continue
            yield cells + [format(entry[key], spec) if entry.get(key) is not None else "-"
                           for _, key, spec in COLUMNS]


def _footer(results: dict) -> list[str]:
    ceilings = results.get("ceilings_gflops", {})
    lines = ["GEMM ceilings GFLOP/s: " + ", ".join(
        f"{k.replace('_gflops', '')}={v:.0f}" for k, v in ceilings.items())]
    best = [f"{row['cell']} h{row['hidden']}: {row['torch_best']}" for row in results["rows"]
            if row.get("torch_best")]
    if best:
        lines.append("fastest PyTorch candidate (x best torch is against it): " + ", ".join(best))
    choices = [f"{row['cell']} h{row['hidden']}: {entry['device_choice']['reason']}"
               for row in results["rows"] for name, entry in row["candidates"].items()
               if name == "seqmodel" and entry.get("device_choice")]
    if choices:
        lines.append("seqmodel's split, chosen at start-up: " + "; ".join(choices))
    programs = {entry["compiled_programs"] for row in results["rows"]
                for entry in row["candidates"].values() if "compiled_programs" in entry}
    if programs:
        lines.append("compiled train-step programs after two different batches: "
                     + ", ".join(map(str, sorted(programs))) + " (1 = no recompile)")
    loss_errors = [abs(entry["first_loss"] - entry["seqmodel_first_loss"])
                   for row in results["rows"] for entry in row["candidates"].values()
                   if "first_loss" in entry and "seqmodel_first_loss" in entry]
    if loss_errors:
        lines.append("torch baselines hold seqmodel's weights (seqmodel.interop.to_torch): "
                     f"first-batch loss equal within {max(loss_errors):.1e}")
    loads = [row.get("load_average") for row in results["rows"] if row.get("load_average")]
    if loads:
        worst = max(max(value if isinstance(value, (int, float)) else max(value)
                        for value in load.values()) for load in loads)
        lines.append(f"load average during the runs: up to {worst:.1f} on {os.cpu_count()} CPUs"
                     + ("  (busy machine: absolute figures are low and noisy; read the ratios)"
                        if worst > (os.cpu_count() or 1) else ""))
    return lines


def format_table(results: dict) -> str:
    """The printed table: one line per (cell, hidden, candidate), ratios to the fastest
    PyTorch candidate of the row (named in the footer).

    ``spread`` is ``(max - min) / median`` of the repetitions: the run's own noise figure.
    ``cpu ms/step`` is the CPU time of the candidate's process (every thread) per step, and
    ``x torch-1t cpu`` eager torch-on-one-thread's CPU time over the candidate's: a work ratio that a
    busy machine disturbs far less than wall time (a multi-threaded candidate's figure includes
    its threads' waiting)."""
    header = ["cell", "h", "candidate"] + [title for title, _, _ in COLUMNS]
    rows = list(_table_rows(results))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(values):
        return "  ".join(str(v).rjust(w) if i > 2 else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(header), "-" * len(line(header))] + [line(r) for r in rows]
                     + _footer(results))


def format_markdown(results: dict) -> str:
    """The same table in Markdown (for the README), with the command that produced it."""
    header = ["cell", "h", "candidate"] + [title for title, _, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(results)]
    lines += ["", *_footer(results), "", f"Command: `{results.get('command', '')}`",
              f"Versions: {results.get('versions')}"]
    return "\n".join(lines)
