"""What every ``seqmodel`` command shares: the one-line usage error, exit statuses, flag types and
printing for the user."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys

from seqmodel.errors import UserError

EXIT_USAGE = 2


EXIT_FAILURE = 1


def exit_status_of_signal(signal_number: int) -> int:
    """The exit status of a run stopped by a signal: 128 + its number, as a shell reports a
    process that the signal ended (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(signal_number)


# The epilog of every command's --help.
EXIT_STATUSES = f"""\
exit status:
  0    done
  1    the run failed (diverged, or a checkpoint could not be written): one line says what
       is kept; any other unexpected error shows its traceback
  2    a user error (bad flag, missing file, incompatible checkpoint): one line
  {exit_status_of_signal(signal.SIGINT)}  train stopped by Ctrl-C (SIGINT), after saving its latest checkpoint
  {exit_status_of_signal(signal.SIGTERM)}  train stopped by SIGTERM (a scheduler's stop), after saving its latest
       checkpoint; continue either with --resume --out RUN"""


class UsageError(UserError):
    """A user error found by the command line: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit status 2)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def number_type(kind, *, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>' if low_open else '>='} {low}{what}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be <= {high}{what}")
        return value

    return parse


positive_int = number_type(int, low=1)


non_negative_int = number_type(int, low=0)


positive_float = number_type(float, low=0, low_open=True)


non_negative_float = number_type(float, low=0)


probability = number_type(float, low=0, high=1)


def fraction(text: str) -> float:
    value = number_type(float, low=0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def dropout_probability(text: str) -> float:
    return fraction(text)


def say(args, *lines: str) -> None:
    """Human-readable output: stdout, or stderr when --json keeps stdout for the JSON line."""
    from seqmodel.training.distributed import is_main_process

    if not is_main_process():
        return
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)


def rounded(value):
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


def load_checkpoint(checkpoint_path: str):
    """``(model, metadata)`` of the run folder ``--checkpoint``; a missing folder or one without
    a checkpoint is a one-line usage error naming the flag."""
    from seqmodel.training import checkpoint

    run = checkpoint.inspect_run(checkpoint_path)
    if not run.path.exists():
        raise UsageError(f"--checkpoint {checkpoint_path!r}: no such folder")
    if not run.holds_checkpoint:
        held = "no checkpoint" + (" (only a partial step, left by a run killed during its first "
                                  "save)" if run.partial else "")
        if run.damaged:
            held = "no readable checkpoint (" + "; ".join(
                f"step {saved.step}: {reason}" for saved, reason in run.damaged) + ")"
        raise UsageError(f"--checkpoint {checkpoint_path!r} holds {held}: give a run folder "
                         f"written by `seqmodel train --out`")
    return checkpoint.load_model(checkpoint_path)


# Library messages (logger "seqmodel": e.g. a resumed run that falls back to an older step) are
# printed as one line each, "seqmodel COMMAND: message".
class _StderrHandler(logging.StreamHandler):
    """A handler that writes to the ``sys.stderr`` of the moment (which tests replace)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


_LOG_HANDLER = _StderrHandler()


def configure_logging(command: str | None, *, debug: bool = False) -> None:
    """Print the library's warnings (logger ``seqmodel``) as ``seqmodel COMMAND: message`` lines
    on stderr, and keep orbax's own log lines (logger ``absl``: its retries and the tracebacks
    of a failed save, which the one-line error already reports) out of sight unless ``debug``."""
    prefix = f"seqmodel {command}" if command else "seqmodel"
    _LOG_HANDLER.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    library = logging.getLogger("seqmodel")
    if _LOG_HANDLER not in library.handlers:
        library.addHandler(_LOG_HANDLER)
    library.propagate = False
    library.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("absl").setLevel(logging.DEBUG if debug else logging.CRITICAL)


def quiet_logging() -> None:
    """Only errors from the library's logger (the processes of a run other than process 0)."""
    logging.getLogger("seqmodel").setLevel(logging.ERROR)


def real_valued_data(data_source: str | None, model, metadata: dict):
    """``(dataset, source, val_fraction)`` of ``data_source`` (``--data``; None: the training
    data the checkpoint names) read as the checkpoint's real-valued model reads it, split into
    training and validation as its run was."""
    from seqmodel.data import load_dataset

    data = metadata["data"]
    val_fraction = metadata.get("train_config", {}).get("val_fraction",
                                                        data.get("val_fraction", 0.1))
    source = data_source or data.get("name") or metadata.get("source")
    dataset = load_dataset(source, val_fraction=val_fraction, metadata=data)
    if dataset.input_size != model.config.input_size:
        raise ValueError(f"--data {source!r} has {dataset.input_size} feature(s) but the "
                         f"checkpoint's model expects {model.config.input_size}")
    return dataset, source, val_fraction
