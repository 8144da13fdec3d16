"""Plots of the linear-recurrence benchmarks for docs/linear.md (matplotlib's object API).

- ``speed``: train cost per token (microseconds) against sequence length T, one panel per model
  size, one line per family and scan, from a :mod:`benchmarks.bench_linear` JSON file;
- ``quality``: validation loss against wall-clock seconds, one line per
  :mod:`benchmarks.bench_quality` JSON file;
- ``tables``: the markdown tables of a bench_linear JSON file (printed).

Run::

    python benchmarks/plot_linear.py speed linear.json docs/figures/linear_speed.png
    python benchmarks/plot_linear.py tables linear.json
    python benchmarks/plot_linear.py quality docs/figures/linear_quality.png gru.json rglru.json \\
        --labels "GRU h512 (default)" "RG-LRU 2x256" --title "tinyshakespeare, 110 s"
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

FAMILY_COLOURS = {"mingru": "tab:blue", "minlstm": "tab:green", "rglru": "tab:red",
                  "gru": "black", "lstm": "tab:gray", "torch-lstm": "tab:orange"}
SCAN_STYLES = {"sequential": "-", "associative": "--", "chunked": "-.", "log_space": ":",
               "fast": "-", "torch": "-"}


def _figure(columns: int, *, width: float = 5.5, height: float = 4.2):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def plot_speed(result: dict, path: str) -> None:
    """Cost per token against T from a bench_linear result (``result["train"]`` rows)."""
    from matplotlib import ticker

    rows = result["train"]
    sizes = list(dict.fromkeys(row["size"] for row in rows))
    figure, axes = _figure(len(sizes))
    for axis, size in zip(axes, sizes):
        lines: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            if row["size"] == size:
                lines.setdefault((row["family"], row["scan"]), []).append(row)
        for (family, scan), points in lines.items():
            points.sort(key=lambda row: row["length"])
            label = family if scan in ("fast", "torch") else f"{family} {scan}"
            axis.plot([row["length"] for row in points],
                      [row["microseconds_per_token"] for row in points],
                      color=FAMILY_COLOURS.get(family), linestyle=SCAN_STYLES.get(scan, "-"),
                      marker="o", markersize=3, label=label)
        parameters = sorted(row["parameters"] for row in rows if row["size"] == size)
        axis.set(xscale="log", yscale="log", xlabel="sequence length T",
                 ylabel="train step, microseconds per token",
                 title=f"{size} parameters ({parameters[0]:,}-{parameters[-1]:,}), "
                       f"{result['tokens_per_step']} tokens/step")
        axis.set_xticks(sorted({row["length"] for row in rows}))
        axis.set_xticklabels([str(length) for length in sorted({row["length"] for row in rows})])
        axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axis.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=7, ncol=2)
    figure.suptitle(f"{result['backend']} ({result['device']}), large GEMM "
                    f"{result['gemm_gflops']:.0f} GFLOP/s", fontsize=10)
    figure.savefig(path, dpi=120)


def plot_quality(results: list[dict], labels: list[str], path: str, *,
                 title: str | None = None) -> None:
    """Validation loss against wall-clock seconds, one line per bench_quality result."""
    figure, (axis,) = _figure(1, width=6.5)
    for result, label in zip(results, labels):
        curve = result["validation_curve"]
        axis.plot([point["seconds"] for point in curve], [point["val_loss"] for point in curve],
                  marker="o", markersize=3,
                  label=f"{label}: {result['val_loss']:.3f} (load "
                        f"{result['load_average_before']:.1f}-{result['load_average_after']:.1f})")
    axis.set(xlabel="wall-clock seconds (evaluations included)",
             ylabel="validation loss, nats per character", title=title or results[0]["data"])
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=120)


def _label(row: dict) -> str:
    return row["family"] if row["scan"] in ("fast", "torch") else f"{row['family']} {row['scan']}"


def markdown_tables(result: dict) -> str:
    """Markdown tables of a bench_linear result for the docs: per size, train tokens/s with the
    roofline fraction, memory and compile time against T; then generation tokens/s."""
    rows = result["train"]
    lengths = sorted({row["length"] for row in rows})
    out = []
    for size in dict.fromkeys(row["size"] for row in rows):
        sized = [row for row in rows if row["size"] == size]
        by_label = {}
        for row in sized:
            by_label.setdefault(_label(row), {})[row["length"]] = row
        batches = ", ".join(f"T={row['length']}: b={row['batch']}" for row in
                            sorted({row["length"]: row for row in sized}.values(),
                                   key=lambda row: row["length"]))
        out.append(f"**{size}** ({batches}): train tokens/s (roofline fraction)\n")
        out.append("| candidate | h x L | params | " + " | ".join(f"T={n}" for n in lengths)
                   + " | memory MiB at T=" + str(lengths[-1]) + " | compile s |")
        out.append("|---" * (len(lengths) + 5) + "|")
        for label, points in by_label.items():
            first = next(iter(points.values()))
            cells = [f"{points[n]['tokens_per_second']:,.0f} ({points[n]['roofline']:.2f})"
                     if n in points else "-" for n in lengths]
            last = points.get(lengths[-1], {})
            memory = last.get("memory_mib")
            compiles = [point["compile_seconds"] for point in points.values()
                        if point.get("compile_seconds") is not None]
            compile_text = (f"{min(compiles):.1f}-{max(compiles):.1f}" if compiles else "-")
            out.append(f"| {label} | {first['hidden']} x {first['layers']} | "
                       f"{first['parameters']:,} | " + " | ".join(cells)
                       + f" | {'-' if memory is None else format(memory, ',.0f')} | "
                       f"{compile_text} |")
        out.append("")
    generate = result.get("generate") or []
    if generate:
        batches = sorted({row["batch"] for row in generate})
        out.append("generate tokens/s (" + str(generate[0]["steps"]) + " new tokens)\n")
        out.append("| family | size | " + " | ".join(f"batch {b}" for b in batches) + " |")
        out.append("|---" * (len(batches) + 2) + "|")
        table = {}
        for row in generate:
            table.setdefault((row["family"], row["size"]), {})[row["batch"]] = row
        for (family, size), points in table.items():
            out.append(f"| {family} | {size} | " + " | ".join(
                f"{points[b]['tokens_per_second']:,.0f}" if b in points else "-"
                for b in batches) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("speed", help="cost per token against T")
    speed.add_argument("result", help="bench_linear.py --json output")
    speed.add_argument("out", help="PNG to write")
    tables = commands.add_parser("tables", help="markdown tables of a bench_linear result")
    tables.add_argument("result", help="bench_linear.py --json output")
    quality = commands.add_parser("quality", help="validation loss against wall-clock seconds")
    quality.add_argument("out", help="PNG to write")
    quality.add_argument("results", nargs="+", help="bench_quality.py --json outputs")
    quality.add_argument("--labels", nargs="+", help="one per result (default: the cell)")
    quality.add_argument("--title")
    args = parser.parse_args(argv)
    if args.command == "tables":
        print(markdown_tables(json.loads(pathlib.Path(args.result).read_text())))
        return 0
    if args.command == "speed":
        plot_speed(json.loads(pathlib.Path(args.result).read_text()), args.out)
        return 0
    results = [json.loads(pathlib.Path(path).read_text()) for path in args.results]
    labels = args.labels or [result.get("cell") or "default cell" for result in results]
    if len(labels) != len(results):
        parser.error(f"--labels: {len(labels)} labels for {len(results)} results; give one each")
    plot_quality(results, labels, args.out, title=args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
