"""Two checkouts of seqmodel side by side: the train step and ``generate`` of each, timed in
alternating processes, and their compiled train steps compared instruction by instruction.

For a reorganisation that must not change what runs (modules moved, names kept), the strongest
evidence is the compiled program: the optimized HLO of ``sm.make_train_step`` for each checkout,
with the source locations (file names and lines, which moved) stripped, must be the same text.
Times on a shared machine are noisy, so each figure is given as wall time (median and fastest of
the repetitions) and as the process's CPU time (``time.process_time``), which the other jobs on
the machine disturb much less. Only the public API is used (``sm.ModelConfig``,
``sm.make_train_step``, ``sm.generate``...), which both checkouts have.

Run (``BEFORE`` and ``AFTER`` are source checkouts, e.g. ``git worktree add /tmp/before REV``)::

    python benchmarks/compare_checkouts.py /tmp/before . --rounds 3 \\
        --json benchmarks/results/layers_before_after_cpu_2core.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time

SHAPES = (("lstm", 128), ("gru", 512))


def worker(cell: str, hidden: int) -> dict:
    """Train-step and generate timings and the stripped HLO hash of the checkout on sys.path."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import seqmodel as sm
    from seqmodel.data import Batch

    config = sm.ModelConfig(vocab_size=65, cell=cell, hidden_size=hidden, embed_size=64)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    train = sm.TrainConfig(steps=1000, batch_size=32, seq_len=128)
    tx = sm.make_optimizer(train)
    graphdef, state = sm.init_train_state(model, tx, train)
    step = sm.make_train_step(graphdef, tx, train)
    tokens = np.random.default_rng(0).integers(0, 65, (32, 129)).astype(np.int32)
    batch = Batch(inputs=jnp.asarray(tokens[:, :-1]), targets=jnp.asarray(tokens[:, 1:]),
                  mask=None, reset=jnp.ones(32, bool))
    hlo = step.lower(state, batch).compile().as_text()
    # Source locations moved with the modules: drop them (op metadata, the location tables).
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    hlo = "\n".join(line for line in hlo.splitlines() if not re.match(r'^\d+ [{"]', line))
    hlo = re.sub(r"^HloModule \S+", "HloModule", hlo, flags=re.M)

    def timed(run, repeats: int) -> dict:
        run()  # compile / warm up
        wall, cpu = [], []
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        return {"wall_ms": 1000 * float(np.median(wall)), "fastest_ms": 1000 * min(wall),
                "cpu_ms": 1000 * float(np.median(cpu))}

    holder = {"state": state}

    def train_step():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    out = {"train_step": timed(train_step, 12)}
    trained = nnx.merge(graphdef, holder["state"].params, holder["state"].model_state)
    trained.eval()
    key = jax.random.key(0)
    out["generate_batch1_500"] = timed(lambda: jax.block_until_ready(
        sm.generate(trained, key=key, steps=500, batch_size=1).samples), 12)
    out["hlo_sha1"] = hashlib.sha1(hlo.encode()).hexdigest()
    out["hlo_lines"] = len(hlo.splitlines())
    out["load_average"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", nargs=2, metavar=("CELL", "HIDDEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return 0
    checkouts = {"before": args.before, "after": args.after}
    commits = {name: subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], text=True,
                                    capture_output=True).stdout.strip()
               for name, path in checkouts.items()}
    rows = []
    for round_index in range(args.rounds):
        for cell, hidden in SHAPES:
            for name, path in checkouts.items():
                environment = {**os.environ, "PYTHONPATH": str(pathlib.Path(path).resolve())}
                printed = subprocess.run([sys.executable, __file__, "x", "x", "--worker", cell,
                                          str(hidden)], env=environment, text=True,
                                         capture_output=True, check=True).stdout
                row = {"round": round_index, "checkout": name, "cell": cell, "hidden": hidden,
                       **json.loads(printed.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = []
    for cell, hidden in SHAPES:
        picked = {name: [row for row in rows if row["checkout"] == name and row["cell"] == cell
                         and row["hidden"] == hidden] for name in checkouts}
        entry = {"cell": cell, "hidden": hidden, "same_compiled_train_step": len(
            {row["hlo_sha1"] for name in checkouts for row in picked[name]}) == 1}
        for part in ("train_step", "generate_batch1_500"):
            for measure in ("cpu_ms", "fastest_ms", "wall_ms"):
                values = {name: sorted(row[part][measure] for row in picked[name])
                          for name in checkouts}
                median = {name: values[name][len(values[name]) // 2] for name in checkouts}
                entry[f"{part}_{measure}_after_over_before"] = median["after"] / median["before"]
        summary.append(entry)
        print(json.dumps(entry), flush=True)
    if args.json:
        report = {"command": "python benchmarks/compare_checkouts.py " + " ".join(
            sys.argv[1:] if argv is None else argv), "date": time.strftime("%Y-%m-%d %H:%M"),
            "commits": commits, "summary": summary, "rows": rows}
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
