"""``seqmodel bench``: the speed suite of the source checkout (benchmarks/), run in a process of
its own."""

from __future__ import annotations

import os
import pathlib
import sys

from seqmodel.cli.common import UsageError

# The installed seqmodel package; in a source checkout its parent holds benchmarks/.
PACKAGE_DIRECTORY = pathlib.Path(__file__).resolve().parents[1]


def cmd_bench(args) -> int:
    """Run the speed suite (``python -m benchmarks.bench_speed``) of the source checkout that holds
    this package, in a process of its own, with the user's working directory (for ``--json``)."""
    import subprocess

    checkout = PACKAGE_DIRECTORY.parent
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        raise UsageError("seqmodel bench: the benchmark suite ships with the source checkout "
                         f"only (no benchmarks/ package beside {checkout / 'seqmodel'}); clone "
                         "the repository and run it there")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(checkout)] + [path for path in environment.get("PYTHONPATH", "").split(os.pathsep)
                           if path])
    return subprocess.call([sys.executable, "-m", "benchmarks.bench_speed", *args.bench_args],
                           env=environment)
