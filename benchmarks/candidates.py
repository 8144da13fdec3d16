"""What the speed suite times: one :class:`Candidate` per worker process, and the worker's entry
point (``python -m benchmarks.candidates --worker SPEC``, started by :class:`protocol.Worker`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from benchmarks import protocol

TRAIN_CANDIDATES = ("seqmodel", "seqmodel-1call", "seqmodel-1dev", "seqmodel-fit", "seqmodel-plain",
                    "flax", "torch", "torch-1t")
TORCH_CANDIDATES = ("torch", "torch-1t")
# The PyTorch workers build the seqmodel model only to copy its weights: JAX stays on the CPU
# there and leaves an accelerator to PyTorch.
_TORCH_ENV = {"JAX_PLATFORMS": "cpu"}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One thing to time in its own worker process.

    ``kind``: ``seqmodel`` | ``fit`` | ``flax`` | ``torch`` | ``gemm`` (a key of
    :func:`builders`). ``options`` are passed to the worker (e.g. ``fast_recurrence``,
    ``threads``, ``devices``); ``env`` is added to the worker's environment before it starts
    (XLA flags must be set before JAX is imported)."""

    name: str
    kind: str
    options: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)


def default_candidates(names=TRAIN_CANDIDATES) -> list[Candidate]:
    """The candidates called ``names``; a ValueError names any unknown one."""
    table = {
        # The default: on a CPU-only machine the batch split over one device per core.
        "seqmodel": Candidate("seqmodel", "seqmodel", {"generate": True}),
        # The same devices, one train step per compiled call.
        "seqmodel-1call": Candidate("seqmodel-1call", "seqmodel", {"steps_per_call": 1}),
        "seqmodel-1dev": Candidate("seqmodel-1dev", "seqmodel", {"devices": 1}),
        # fit() itself (data pipeline, logging, run folder) around the default step.
        "seqmodel-fit": Candidate("seqmodel-fit", "fit"),
        "seqmodel-plain": Candidate("seqmodel-plain", "seqmodel",
                                    {"fast_recurrence": False, "devices": 1, "steps_per_call": 1}),
        "flax": Candidate("flax", "flax"),
        "torch": Candidate("torch", "torch", {"threads": None}, _TORCH_ENV),
        "torch-1t": Candidate("torch-1t", "torch", {"threads": 1}, _TORCH_ENV),
    }
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; allowed: {', '.join(table)}")
    return [table[name] for name in names]


def start(candidate: Candidate, cell: str, hidden: int) -> protocol.Worker:
    """A worker process for ``candidate`` at (cell, hidden), built and compiled (see ``hello``)."""
    spec = {"kind": candidate.kind, "cell": cell, "hidden": hidden, "options": candidate.options}
    return protocol.Worker(candidate.name, spec, env=candidate.env)


def builders() -> dict:
    """``kind -> builder(spec) -> (run, compile_info, extra)`` (see :func:`protocol.serve`)."""
    from benchmarks import rooflines, train_workers

    return {"seqmodel": train_workers.seqmodel_worker, "fit": train_workers.fit_worker,
            "flax": train_workers.flax_worker, "torch": train_workers.torch_worker,
            "gemm": rooflines.gemm_worker}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a speed-suite worker (started by the suite)")
    parser.add_argument("--worker", required=True, metavar="SPEC", help="the JSON spec")
    protocol.serve(builders(), parser.parse_args(argv).worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
