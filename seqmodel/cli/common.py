"""What every ``seqmodel`` command shares: the one-line usage error, exit statuses, flag types and
printing for the user."""

from __future__ import annotations

import argparse
import math
import sys


EXIT_USAGE = 2


EXIT_FAILURE = 1


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


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
    from seqmodel.distributed import is_main_process

    if not is_main_process():
        return
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)


def rounded(value):
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


def load_checkpoint(checkpoint_path: str):
    from seqmodel import checkpoint

    return checkpoint.load_model(checkpoint_path)
