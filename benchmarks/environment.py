"""What a benchmark result records about the software and the machine it ran on.

:func:`provenance` is the header every result file carries: the command, the date, the
checkout's commit, the versions, the machine and its load average, so that each figure can be
traced to the run that produced it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import platform
import subprocess
import sys

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "numpy")


def installed_versions(*packages: str) -> dict[str, str | None]:
    """``{package: version}`` of installed distributions, None for one that is not installed
    (PyTorch is an optional baseline). Read from the package metadata: nothing is imported."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def source_commit() -> str | None:
    """The checkout's git commit, with ``+changes`` when its tracked files differ from it; None
    outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain",
                                  "--untracked-files=no"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """The header of a result file: ``command`` (as run from the checkout's root), ``date``
    (UTC), ``commit``, ``versions``, ``machine`` and ``load_average`` at the start. ``argv``:
    the script's arguments (default ``sys.argv[1:]``).

    Example::

        report = {**provenance("benchmarks/bench_generate.py"), "rows": rows}
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    return {
        "command": " ".join(["python", script, *arguments]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "versions": installed_versions(*PACKAGES),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_average()},
    }


def finish(report: dict) -> dict:
    """Record the load average at the end of the run in ``report`` (from :func:`provenance`)."""
    report.setdefault("load_average", {})["end"] = load_average()
    return report
