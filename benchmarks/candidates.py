"""What the speed suites time: one :class:`Candidate` per worker process, the candidate lists of
the train-step suite, and the worker's entry point (``python -m benchmarks.candidates --worker
SPEC``, started by :class:`protocol.Worker`).

Every candidate runs alone in its process: device counts, thread counts and the two frameworks'
thread pools never share one. PyTorch runs at each of its thread settings (its default, 1 and 2
threads; the default is dropped when it equals one of them), eager and under ``torch.compile``;
the fastest of them is the baseline every ratio is taken against
(:func:`fastest_torch`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks import protocol

# The PyTorch workers build the seqmodel model only to copy its weights: JAX stays on the CPU
# there and leaves an accelerator to PyTorch.
TORCH_ENV = {"JAX_PLATFORMS": "cpu"}
TORCH_PREFIX = "torch"

SEQMODEL_CANDIDATES = {
    # The default of `seqmodel train`: the split of the batch over devices and the steps per
    # call that seqmodel.training.devices chooses at start-up (the worker reports the choice).
    "seqmodel": {"generate": True},
    # The splits the default chooses from, each pinned: one device and one CPU device per core,
    # with TrainConfig.steps_per_call steps per call and with one.
    "seqmodel-1dev": {"devices": 1},
    "seqmodel-per-core": {"devices": "cores"},
    "seqmodel-1dev-1call": {"devices": 1, "steps_per_call": 1},
    "seqmodel-per-core-1call": {"devices": "cores", "steps_per_call": 1},
    "seqmodel-plain": {"fast_recurrence": False, "devices": 1, "steps_per_call": 1},
}
TRAIN_CANDIDATES = ("seqmodel", "seqmodel-1dev", "seqmodel-per-core", "seqmodel-1dev-1call",
                    "seqmodel-per-core-1call", "seqmodel-fit", "seqmodel-plain", "flax", "torch")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One thing to time in its own worker process.

    ``kind``: a key of :func:`builders` (``seqmodel``, ``fit``, ``flax``, ``torch``, ``gemm``,
    ``generate``, ``torch-generate``, ``beam``, ``torch-beam``). ``options`` are passed to the
    worker (e.g. ``fast_recurrence``, ``threads``, ``devices``, ``mode``); ``env`` is added to the
    worker's environment before it starts (XLA flags must be set before JAX is imported);
    ``cells``: the cells it applies to (empty: all)."""

    name: str
    kind: str
    options: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    cells: tuple[str, ...] = ()

    @property
    def is_torch(self) -> bool:
        return self.kind.startswith(TORCH_PREFIX)

    def applies_to(self, cell: str) -> bool:
        return not self.cells or cell in self.cells


def torch_name(prefix: str, mode: str, threads: int | None, implementation: str = "") -> str:
    """E.g. ``torch-compile-1t``, ``torch-loop-eager-2t``, ``torch-cell-eager-dt`` (``dt``: the
    default thread count)."""
    label = "dt" if threads is None else f"{threads}t"
    return "-".join(part for part in (prefix, implementation, mode, label) if part)


def torch_variants(kind: str, implementations: dict[str, tuple[str, ...]], *,
                   threads=None, modes=None, extra: dict | None = None) -> list[Candidate]:
    """Every PyTorch candidate of ``kind``: each implementation (``{name: cells}``; the name
    ``module`` is left out of candidate names) x mode x thread setting."""
    from benchmarks import torch_variants as variants

    settings = variants.thread_settings(threads or variants.THREAD_SETTINGS)
    found = []
    for implementation, cells in implementations.items():
        for mode in modes or variants.MODES:
            for setting in settings:
                name = torch_name(TORCH_PREFIX, mode, setting,
                                  "" if implementation == "module" else implementation)
                options = {"threads": setting, "mode": mode, "implementation": implementation,
                           **(extra or {})}
                found.append(Candidate(name, kind, options, TORCH_ENV, cells))
    return found


def default_candidates(names=TRAIN_CANDIDATES, *, threads=None, modes=None) -> list[Candidate]:
    """The train-step candidates called ``names`` (``torch``: every PyTorch variant, see
    :func:`torch_variants`; ``torch-...`` names pick single variants); a ValueError names any
    unknown one."""
    table = {name: Candidate(name, "seqmodel", options)
             for name, options in SEQMODEL_CANDIDATES.items()}
    # fit() itself (data pipeline, logging, run folder) around the default step.
    table["seqmodel-fit"] = Candidate("seqmodel-fit", "fit")
    table["flax"] = Candidate("flax", "flax")
    variants = torch_variants("torch", {"module": (), "loop": ("gru",)}, threads=threads,
                              modes=modes)
    table.update({candidate.name: candidate for candidate in variants})
    chosen, unknown = [], []
    for name in names:
        if name == TORCH_PREFIX:
            chosen += variants
        elif name in table:
            chosen.append(table[name])
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; allowed: torch, {', '.join(table)}")
    return chosen


def fastest_torch(measured: dict[str, dict], key: str = "tokens_per_second") -> str | None:
    """The name of the fastest PyTorch candidate of ``measured`` (``{name: entry}``, the highest
    ``key``), or None when none was measured."""
    speeds = {name: entry[key] for name, entry in measured.items()
              if name.startswith(TORCH_PREFIX) and entry.get(key)}
    return max(speeds, key=speeds.get) if speeds else None


def start(candidate: Candidate, cell: str, hidden: int) -> protocol.Worker:
    """A worker process for ``candidate`` at (cell, hidden), built and compiled (see ``hello``)."""
    spec = {"kind": candidate.kind, "cell": cell, "hidden": hidden, "options": candidate.options}
    return protocol.Worker(candidate.name, spec, env=candidate.env)


def builders() -> dict:
    """``kind -> builder(spec) -> (run, compile_info, extra)`` (see :func:`protocol.serve`)."""
    from benchmarks import decode_workers, profile_train_step, rooflines, train_workers

    return {"seqmodel": train_workers.seqmodel_worker, "fit": train_workers.fit_worker,
            "flax": train_workers.flax_worker, "torch": train_workers.torch_worker,
            "gemm": rooflines.gemm_worker, **decode_workers.BUILDERS,
            **profile_train_step.BUILDERS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a speed-suite worker (started by the suite)")
    parser.add_argument("--worker", required=True, metavar="SPEC", help="the JSON spec")
    protocol.serve(builders(), parser.parse_args(argv).worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
