"""The PyTorch ``nn.LSTM`` candidate of :mod:`benchmarks.bench_linear`, timed in a process of its
own: in the process that runs JAX, PyTorch's CPU threads and XLA's contend (a 1M-parameter
LSTM step ran 100x slower there than alone).

Run by :func:`time_in_subprocess`; by hand::

    python -m benchmarks.linear_torch '{"embed": 64, "hidden": 432, "layers": 1, "batch": 4,
        "length": 2048, "repeats": 3, "min_seconds": 1.0, "learning_rate": 0.005,
        "betas": [0.9, 0.99], "weight_decay": 0.01, "clip_norm": 1.0}'

prints one JSON line: the :func:`timed_steps` figures, ``memory_bytes`` (peak allocation on a GPU; None
on a CPU), ``threads``, ``torch_device``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks import protocol
from benchmarks.linear_workload import VOCAB


def timed_steps(run, *, repeats: int, min_seconds: float) -> dict:
    """Time ``run(n)``, which runs ``n`` train steps and waits for the device. One warm step,
    then ``repeats`` runs of enough steps to last ``min_seconds`` each. Returns
    ``seconds_per_step`` (the median), ``fastest_seconds_per_step`` (on a shared machine, the
    least disturbed run) and ``cpu_seconds_per_step`` (median CPU time of this process, all its
    threads: the work done, which other processes inflate less than they stretch wall time)."""

    def timed(steps: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        run(steps)
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

    first, _ = timed(1)
    steps = max(1, int(np.ceil(min_seconds / max(first, 1e-9))))
    walls, cpus = zip(*(timed(steps) for _ in range(repeats)))
    return {"seconds_per_step": statistics.median(walls), "fastest_seconds_per_step": min(walls),
            "cpu_seconds_per_step": statistics.median(cpus)}


def time_torch_train(spec: dict) -> dict:
    """``nn.Embedding(256, embed)`` + ``nn.LSTM(hidden, layers)`` + ``nn.Linear`` trained eagerly
    on random tokens ``(batch, length)``: AdamW (``learning_rate``, ``betas``, ``weight_decay``)
    and global-norm clipping (``clip_norm``) as the spec says; cuDNN on a GPU. JAX is not
    imported here, so its threads never start in this process."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    embed = torch.nn.Embedding(VOCAB, spec["embed"])
    lstm = torch.nn.LSTM(spec["embed"], spec["hidden"], num_layers=spec["layers"],
                         batch_first=True)
    head = torch.nn.Linear(spec["hidden"], VOCAB)
    modules = torch.nn.ModuleList([embed, lstm, head]).to(device)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=spec["learning_rate"],
                                  betas=tuple(spec["betas"]), weight_decay=spec["weight_decay"])
    tokens = np.random.default_rng(0).integers(0, VOCAB, (spec["batch"], spec["length"] + 1))
    inputs = torch.from_numpy(tokens[:, :-1]).long().to(device)
    targets = torch.from_numpy(tokens[:, 1:]).long().to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = head(lstm(embed(inputs))[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), spec["clip_norm"])
        optimizer.step()
        return loss

    def run(steps: int) -> None:
        for _ in range(steps):
            loss = step()
        loss.item()  # waits for the device

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = timed_steps(run, repeats=spec["repeats"], min_seconds=spec["min_seconds"])
    return {**timing,
            "memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "threads": torch.get_num_threads(), "torch_device": device}


def time_in_subprocess(spec: dict) -> dict:
    """:func:`time_torch_train` in a fresh ``python -m benchmarks.linear_torch`` process; a
    failure comes back as ``{"error": ...}``."""
    process = subprocess.run([sys.executable, "-m", "benchmarks.linear_torch", json.dumps(spec)],
                             capture_output=True, text=True, check=False,
                             env=protocol.environment())
    if process.returncode != 0:
        return {"error": process.stderr.strip()[-2000:]}
    return json.loads(process.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(time_torch_train(json.loads(sys.argv[1]))))
