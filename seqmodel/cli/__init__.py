"""The ``seqmodel`` command: ``train``, ``sample``, ``eval`` and ``bench``.

The CLI only parses flags into configs and calls library functions. Every user error (missing
file, empty corpus, bad flag value, unknown prompt characters, incompatible checkpoint) exits with
status 2 and one line on stderr; a training run that diverges exits with status 1.

Example::

    seqmodel train                                    # python-stdlib, a few minutes, then a sample
    seqmodel train --data tinyshakespeare --max-time 110 --out runs/shakespeare
    seqmodel sample --checkpoint runs/shakespeare --prompt "ROMEO:" --steps 300
    seqmodel eval --checkpoint runs/shakespeare --json
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from seqmodel.cli.bench import cmd_bench
from seqmodel.cli.common import EXIT_USAGE, Parser, UsageError
from seqmodel.cli.evaluate import add_eval_arguments, cmd_eval
from seqmodel.cli.sample import add_sample_arguments, cmd_sample, parse_quantiles  # noqa: F401
from seqmodel.cli.train import (  # noqa: F401  (tests and scripts reach these as seqmodel.cli.*)
    DEFAULT_MAX_TIME, MODEL_FLAGS, TRAIN_FLAGS, _planned_batch_size, _train_configs, add_train_arguments,
    cmd_train, stop_after_failure, train_defaults,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="seqmodel", description="Autoregressive recurrent sequence models in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add_train_arguments(commands.add_parser("train", help="train a model (default: python-stdlib)"))
    add_sample_arguments(commands.add_parser("sample", help="continue a prompt from a checkpoint"))
    add_eval_arguments(commands.add_parser("eval", help="validation loss of a checkpoint"))
    bench = commands.add_parser("bench", help="train-step and generation speed (the source checkout's benchmarks/)",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seqmodel`` console script; returns the exit status."""
    from seqmodel.data import DataError
    from seqmodel.errors import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv[:1] == ["bench"]:
            # Everything after `bench` belongs to the benchmark suite, --help included.
            args = argparse.Namespace(command="bench", bench_args=argv[1:])
        else:
            args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    except (DataError, CheckpointError, ValueError) as error:
        command = getattr(locals().get("args"), "command", None)
        prefix = f"seqmodel {command}" if command else "seqmodel"
        print(f"{prefix}: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
