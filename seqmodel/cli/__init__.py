"""The ``seqmodel`` command: ``train``, ``sample``, ``eval`` and ``bench``.

The CLI only parses flags into configs and calls library functions. Exit statuses:

- 0: done;
- 2: a user error (missing file, empty corpus, bad flag value, unknown prompt characters,
  incompatible checkpoint): one line on stderr (``--debug``: with its traceback);
- 1: the run failed (a diverged loss, a checkpoint that cannot be written): one line; any other
  exception is a bug and shows its traceback;
- 130 / 143: ``train`` stopped by Ctrl-C (SIGINT) / SIGTERM after saving its ``latest``
  checkpoint (128 + the signal's number, the shell's convention); continue with ``--resume``.

Which exceptions are user errors: :func:`seqmodel.errors.is_user_error` (the library's
:class:`~seqmodel.errors.UserError` types), and the ``ValueError`` of an argument check: raised by
the command line's own code (``seqmodel.cli``) or by a config's validation of its fields
(``ModelConfig(...)``, ``TrainConfig(...)`` built from the flags).

Only the parser of the command given is built, and the library is imported by the command that
needs it: ``seqmodel --help`` imports neither JAX nor orbax.

Example::

    seqmodel train                                    # python-stdlib, a few minutes, then a sample
    seqmodel train --data tinyshakespeare --max-time 110 --out runs/shakespeare
    seqmodel sample --checkpoint runs/shakespeare --prompt "ROMEO:" --steps 300
    seqmodel eval --checkpoint runs/shakespeare --json
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from seqmodel.cli.bench import cmd_bench
from seqmodel.cli.common import (
    EXIT_STATUSES,
    EXIT_USAGE,
    Parser,
    UsageError,
    configure_logging,
)
from seqmodel.cli.evaluate import add_eval_arguments, cmd_eval
from seqmodel.cli.sample import add_sample_arguments, cmd_sample, parse_quantiles  # noqa: F401
from seqmodel.cli.train import (  # noqa: F401  (tests and scripts reach these as seqmodel.cli.*)
    DEFAULT_MAX_TIME,
    MODEL_FLAGS,
    TRAIN_FLAGS,
    add_train_arguments,
    cmd_train,
    planned_batch_size,
    stop_after_failure,
    train_configs,
    train_defaults,
)
from seqmodel.errors import is_user_error

# command -> (one-line help, the function that adds its flags, the function that runs it)
COMMAND_TABLE = {
    "train": ("train a model (default: python-stdlib)", add_train_arguments, cmd_train),
    "sample": ("continue a prompt from a checkpoint", add_sample_arguments, cmd_sample),
    "eval": ("validation loss of a checkpoint", add_eval_arguments, cmd_eval),
}

COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "bench": cmd_bench}

DEBUG_HELP = "show the traceback of every error, user errors too"


def build_parser(command: str | None = "all") -> argparse.ArgumentParser:
    """The ``seqmodel`` parser. ``command``: the subcommand whose flags to add (adding them
    imports the library modules that define their choices and defaults); ``"all"``: every
    subcommand's; None: none (enough for ``seqmodel --help`` and a missing or unknown command).

    Example::

        args = build_parser().parse_args(["train", "--steps", "10"])
    """
    parser = Parser(prog="seqmodel", description="Autoregressive recurrent sequence models in JAX.",
                    epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, add_arguments, _) in COMMAND_TABLE.items():
        subparser = commands.add_parser(name, help=help_text, epilog=EXIT_STATUSES,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        if command in ("all", name):
            add_arguments(subparser)
        # Also after the command (seqmodel train ... --debug); SUPPRESS: absent, it leaves the
        # value of `seqmodel --debug train` alone.
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help=DEBUG_HELP)
    bench = commands.add_parser("bench", add_help=False,
                                help="train-step and generation speed (the source checkout's benchmarks/)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a top-level option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _is_argument_check(error: BaseException) -> bool:
    """Whether ``error`` is a ``ValueError`` raised by an argument check: the command line's own
    code, or a config dataclass validating its fields in ``__post_init__``."""
    if not isinstance(error, ValueError):
        return False
    from seqmodel.configs import DictConfig  # light: the configs' base class only

    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "__post_init__" and isinstance(frame.f_locals.get("self"),
                                                                  DictConfig):
            return True
    last_frame = None
    for last_frame, _ in traceback.walk_tb(error.__traceback__):
        pass
    return last_frame is not None and str(last_frame.f_globals.get("__name__", "")).startswith(
        "seqmodel.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seqmodel`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        if _command_in(argv) == "bench":
            # Everything after `bench` belongs to the benchmark suite, --help included.
            position = argv.index("bench")
            args = argparse.Namespace(command="bench", bench_args=argv[position + 1:],
                                      debug="--debug" in argv[:position])
            return cmd_bench(args)
        parser = build_parser(_command_in(argv))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        configure_logging(args.command, debug=args.debug)
        return COMMANDS[args.command](args)
    except Exception as error:
        if not (is_user_error(error) or _is_argument_check(error)):
            raise  # a bug: its traceback
        if getattr(args, "debug", False) or (args is None and "--debug" in argv):
            traceback.print_exc()
        command = getattr(args, "command", None)
        prefix = f"seqmodel {command}" if command else "seqmodel"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, UsageError):  # argparse's messages start with the program's name
            print(first_line if first_line.startswith("seqmodel") else f"{prefix}: {first_line}",
                  file=sys.stderr)
        else:
            print(f"{prefix}: error: {first_line}", file=sys.stderr)
        return EXIT_USAGE
