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
import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Sequence

# Flags of `seqmodel train` that set a field of ModelConfig / TrainConfig: flag -> field. The
# defaults of these flags are the fields' defaults (train_defaults), so the API, the CLI and
# --help cannot disagree.
MODEL_FLAGS = {"cell": "cell", "hidden_size": "hidden_size", "num_layers": "num_layers",
               "embed_size": "embed_size", "dropout": "dropout", "head": "head",
               "num_mixtures": "num_mixtures"}
TRAIN_FLAGS = {"batch_size": "batch_size", "seq_len": "seq_len", "steps": "steps",
               "max_time": "max_time", "lr": "learning_rate", "warmup": "warmup_steps",
               "weight_decay": "weight_decay", "clip_norm": "clip_norm", "eval_every": "eval_every",
               "val_fraction": "val_fraction", "teacher_forcing": "teacher_forcing",
               "teacher_forcing_schedule": "teacher_forcing_schedule", "batching": "batching",
               "seed": "seed", "steps_per_call": "steps_per_call"}
# Defaults that only the command line has. The argument-free run trains on python-stdlib.
DEFAULT_DATA = "python-stdlib"
# With neither --steps nor --max-time, a run lasts this many seconds.
DEFAULT_MAX_TIME = 180.0
# Characters of the sample printed at the end of `seqmodel train`.
TRAIN_SAMPLE_STEPS = 600

EXIT_USAGE = 2
EXIT_FAILURE = 1

# Flags of `train` that --resume may change; every other explicit flag must match the checkpoint.
RESUMABLE_OVERRIDES = ("steps", "max_time", "eval_every", "steps_per_call")


@functools.cache
def train_defaults() -> dict[str, Any]:
    """The default of every ``seqmodel train`` flag, by flag name: the defaults of the
    :class:`~seqmodel.ModelConfig` / :class:`~seqmodel.TrainConfig` fields that the flags set
    (the one source of defaults), the tokenizer of :func:`seqmodel.data.load_dataset`, and the
    defaults that only the CLI has (``data``; ``head`` None: the dataset picks it).

    Example: ``train_defaults()["hidden_size"] == ModelConfig().hidden_size``.
    """
    from seqmodel.data import load_dataset
    from seqmodel.model import ModelConfig
    from seqmodel.train import TrainConfig

    def field_defaults(config_class) -> dict[str, Any]:
        return {field.name: field.default for field in dataclasses.fields(config_class)}

    model_fields, train_fields = field_defaults(ModelConfig), field_defaults(TrainConfig)
    defaults = {flag: model_fields[field] for flag, field in MODEL_FLAGS.items()}
    defaults.update({flag: train_fields[field] for flag, field in TRAIN_FLAGS.items()})
    defaults.update(
        data=DEFAULT_DATA, head=None,
        tokenizer=inspect.signature(load_dataset).parameters["tokenizer"].default)
    return defaults


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit status 2)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------------------------
# Flag types
# ---------------------------------------------------------------------------------------------


def _number(kind, *, low=None, high=None, low_open=False, what=""):
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


positive_int = _number(int, low=1)
non_negative_int = _number(int, low=0)
positive_float = _number(float, low=0, low_open=True)
non_negative_float = _number(float, low=0)
probability = _number(float, low=0, high=1)


def _fraction(text: str) -> float:
    value = _number(float, low=0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def _dropout(text: str) -> float:
    return _fraction(text)


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``seqmodel train``; their defaults are None so that explicit flags can be told
    apart (see :func:`train_defaults` for the values used when a flag is absent)."""
    from seqmodel.cells import CELLS
    from seqmodel.data import BATCHINGS, TOKENIZERS
    from seqmodel.heads import HEADS
    from seqmodel.train import TEACHER_FORCING_SCHEDULES

    d = train_defaults()
    add = parser.add_argument
    add("--data", metavar="SOURCE", help=f"text file, .csv/.npy file or built-in: {d['data']} "
        f"(default), tinyshakespeare, sine, bimodal, binary-patterns")
    add("--out", metavar="DIR", help="run folder for checkpoints, metrics.jsonl and loss.png "
        "(default: runs/<data name>, numbered when it exists)")
    add("--tokenizer", choices=TOKENIZERS, help=f"text: one symbol per character or per byte "
        f"(default {d['tokenizer']})")
    add("--cell", choices=sorted(CELLS), help=f"recurrent cell (default {d['cell']})")
    add("--hidden-size", type=positive_int, metavar="N", help=f"default {d['hidden_size']}")
    add("--num-layers", type=positive_int, metavar="N", help=f"default {d['num_layers']}")
    add("--embed-size", type=positive_int, metavar="N", help=f"default {d['embed_size']}")
    add("--dropout", type=_dropout, metavar="P", help=f"between layers (default {d['dropout']})")
    add("--head", choices=HEADS, help="output distribution (default: categorical for text, "
        "gaussian for real values, bernoulli for 0/1 data)")
    add("--num-mixtures", type=positive_int, metavar="K", help="components of --head mdn "
        f"(default {d['num_mixtures']})")
    add("--batch-size", type=positive_int, metavar="N", help=f"default {d['batch_size']}")
    add("--seq-len", type=positive_int, metavar="N", help="steps of backpropagation through "
        f"time (default {d['seq_len']})")
    add("--steps", type=positive_int, metavar="N", help="optimizer steps (default: as many as "
        "--max-time allows)")
    add("--max-time", type=positive_float, metavar="SECONDS", help="wall-time bound of the whole "
        f"run, evaluation included (default {DEFAULT_MAX_TIME:.0f} when --steps is not given)")
    add("--lr", type=positive_float, metavar="F", help=f"peak learning rate (default {d['lr']})")
    add("--warmup", type=non_negative_int, metavar="N", help=f"warmup steps (default {d['warmup']})")
    add("--weight-decay", type=non_negative_float, metavar="F",
        help=f"AdamW decay of weight matrices (default {d['weight_decay']})")
    add("--clip-norm", type=positive_float, metavar="F",
        help=f"global gradient-norm clip (default {d['clip_norm']})")
    add("--eval-every", type=positive_int, metavar="N", help="evaluate and checkpoint every N "
        f"steps, and at the end (default {d['eval_every']})")
    add("--steps-per-call", type=positive_int, metavar="K", help="train steps per compiled call; "
        f"the same results for any K, fewer dispatches for larger K (default "
        f"{d['steps_per_call']})")
    add("--val-fraction", type=_fraction, metavar="F", help="last fraction of the data kept for "
        f"validation (default {d['val_fraction']})")
    add("--teacher-forcing", type=probability, metavar="P", help="probability of feeding the truth "
        "(the floor of a decaying schedule); 1.0 is plain teacher forcing (default "
        f"{d['teacher_forcing']})")
    add("--teacher-forcing-schedule", choices=TEACHER_FORCING_SCHEDULES,
        help="scheduled sampling (Bengio et al. 2015): constant, linear, inverse-sigmoid "
             f"(default {d['teacher_forcing_schedule']})")
    add("--batching", choices=BATCHINGS, help="lanes: contiguous lanes, carry passed on; "
        f"random: random windows from a zero carry (default {d['batching']})")
    add("--seed", type=int, metavar="N", help=f"default {d['seed']}")
    add("--missing", choices=("reject", "mask"), help="real values: empty or NaN cells are an "
        "error naming their line and column (reject, default) or stay out of the loss (mask)")
    add("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add("--tensorboard", action="store_true", help="also write TensorBoard event files to "
        "<run folder>/tensorboard (needs tensorboardX: pip install 'seqmodel[tensorboard]')")
    # Data parallelism and several processes: seqmodel.distributed, docs/distributed.md.
    add("--devices", type=positive_int, metavar="N", help="devices per process to split each batch "
        "over (default: all accelerators; on a CPU-only machine one virtual CPU device per core, "
        "at most 8, fewer when the batch does not split into at least 8 rows a device; 1: one "
        "device)")
    add("--coordinator", metavar="HOST:PORT", help="several processes: address of process 0 "
        "(with --num-processes and --process-id; needs --out and --steps)")
    add("--num-processes", type=positive_int, metavar="N", help="processes in the run")
    add("--process-id", type=non_negative_int, metavar="I", help="this process, 0 to N-1 "
        "(process 0 writes logs, samples and metrics)")
    add("--json", action="store_true", help="print one final JSON line (and nothing else on stdout)")
    add("--no-progress", action="store_true", help="no progress bar")


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="DIR", help="run folder (best checkpoint, else latest)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="text to continue (default: a newline)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="UTF-8 file whose text to continue")
    add("--steps", type=positive_int, default=500, metavar="N", help="new elements (default 500)")
    add("--num-samples", type=positive_int, default=1, metavar="N", help="continuations (default 1)")
    add("--temperature", type=non_negative_float, default=1.0, metavar="T",
        help="divides the logits; 0 is greedy (default 1.0)")
    add("--top-k", type=positive_int, metavar="K", help="sample among the K most likely tokens")
    add("--top-p", type=_number(float, low=0, low_open=True, high=1), metavar="P",
        help="sample within the nucleus of probability P")
    add("--greedy", action="store_true", help="always take the most likely token")
    add("--stop", metavar="TEXT", help="end each continuation after the first TEXT")
    add("--seed", type=int, default=0, metavar="N", help="same seed, same text (default 0)")
    # Real-valued models (_sample_real_valued): context from --prompt-file (.csv/.npy).
    add("--out", metavar="PATH", help="real values: write sample paths (S, H, d) to this .npy")
    add("--quantiles", metavar="Q1,Q2,...", help="real values: write these quantiles instead")
    add("--plot", metavar="PNG", help="real values: fan chart of the first context")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="DIR", help="run folder (best checkpoint, else latest)")
    add("--data", metavar="SOURCE", help="data to evaluate (default: the training data's "
        "validation part)")
    add("--json", action="store_true", help='print {"val_loss": ..., "bpc": ...} as one JSON line')
    # Real-valued models: the exposure-bias report (_eval_real_valued).
    add("--horizon", type=positive_int, metavar="H", help="real values: free-running steps "
        f"scored per start point (default {EVAL_HORIZON})")
    add("--num-samples", type=positive_int, metavar="S", help="real values: sample paths per "
        f"start point (default {_report_default('num_samples')})")
    add("--num-starts", type=positive_int, metavar="N", help="real values: start points "
        f"(default {_report_default('num_starts')})")
    add("--min-context", type=positive_int, metavar="N", help="real values: shortest context")
    add("--seed", type=int, metavar="N", help=f"real values: sampling seed (default {EVAL_SEED})")
    add("--plot", metavar="PNG", help="real values: error against horizon chart")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqmodel", description="Autoregressive recurrent sequence models in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_train_arguments(commands.add_parser("train", help="train a model (default: python-stdlib)"))
    add_sample_arguments(commands.add_parser("sample", help="continue a prompt from a checkpoint"))
    add_eval_arguments(commands.add_parser("eval", help="validation loss of a checkpoint"))
    bench = commands.add_parser("bench", help="train-step and generation speed (seqmodel.benchmarking)",
                                add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def _say(args, *lines: str) -> None:
    """Human-readable output: stdout, or stderr when --json keeps stdout for the JSON line."""
    from seqmodel.distributed import is_main_process

    if not is_main_process():
        return
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)


def _default_out(name: str) -> pathlib.Path:
    stem = pathlib.Path(name).stem if os.sep in name or "." in name else name
    base = pathlib.Path("runs") / stem
    if not base.exists():
        return base
    number = 2
    while (base.parent / f"{base.name}-{number}").exists():
        number += 1
    return base.parent / f"{base.name}-{number}"


def _holds_run(folder: pathlib.Path) -> bool:
    return any((folder / kind).is_dir() and any((folder / kind).iterdir()) for kind in ("latest", "best"))


def _flag(name: str) -> str:
    return "--" + {"lr": "lr"}.get(name, name).replace("_", "-")


def _resolve_resume(args, out: pathlib.Path):
    """(model config dict, train config dict, data source, checkpoint metadata) of the run to
    resume, with explicit flags checked against the checkpoint."""
    from seqmodel import checkpoint

    if not _holds_run(out):
        raise UsageError(f"--resume: {str(out)!r} holds no checkpoint to resume; train without "
                         f"--resume first, or give the run folder with --out")
    metadata = checkpoint.read_metadata(out, prefer="latest")
    model_values = dict(metadata["model_config"])
    train_values = dict(metadata["train_config"])
    conflicts = []
    for flag, field in MODEL_FLAGS.items():
        given = getattr(args, flag)
        if given is not None and given != model_values.get(field):
            conflicts.append(f"{_flag(flag)} {given} (checkpoint: {model_values.get(field)})")
    for flag, field in TRAIN_FLAGS.items():
        given = getattr(args, flag)
        if given is None:
            continue
        if flag in RESUMABLE_OVERRIDES:
            train_values[field] = given
        elif given != train_values.get(field):
            conflicts.append(f"{_flag(flag)} {given} (checkpoint: {train_values.get(field)})")
    if conflicts:
        raise UsageError(f"--resume: the checkpoint in {out} was trained with other settings: "
                         f"{'; '.join(conflicts)}; drop these flags or use another --out")
    source = args.data or metadata["data"].get("name")
    return model_values, train_values, source, metadata


def _train_configs(args, dataset):
    """``(ModelConfig, TrainConfig)`` of a new run: the fields the data fixes, the explicit
    flags, and the dataclasses' own defaults for everything else."""
    from seqmodel.model import ModelConfig
    from seqmodel.train import TrainConfig

    def given(flags: dict[str, str], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        return {field: getattr(args, flag) for flag, field in flags.items()
                if flag not in skip and getattr(args, flag) is not None}

    fields = dict(dataset.model_fields())
    if args.head is not None:
        if hasattr(dataset, "check_head"):
            dataset.check_head(args.head)
        fields["head"] = args.head
    elif "head" not in fields and getattr(dataset, "default_head", None):
        fields["head"] = dataset.default_head
    model_config = ModelConfig(**fields, **given(MODEL_FLAGS, skip=("head",)))
    train_values = given(TRAIN_FLAGS)
    if args.steps is None and args.max_time is None:
        train_values["max_time"] = DEFAULT_MAX_TIME
    return model_config, TrainConfig(**train_values)


def _text_sample(model, tokenizer, *, key, steps: int, prompt: str, temperature: float = 1.0,
                 top_k=None, top_p=None, greedy=False, num_samples: int = 1,
                 stop: str | None = None) -> list[str]:
    """Continuations of ``prompt`` as text (prompt not included)."""
    import numpy as np

    from seqmodel.generate import generate

    ids = tokenizer.encode(prompt, what="prompt")
    eos_id = None
    if stop:
        stop_ids = tokenizer.encode(stop, what="--stop text")
        if len(stop_ids) == 1:
            eos_id = int(stop_ids[0])  # a one-symbol stop also ends the compiled loop early
    generation = generate(model, key=key, steps=steps, prompt=np.asarray(ids, np.int32)[None],
                          num_samples=num_samples, temperature=temperature, top_k=top_k,
                          top_p=top_p, greedy=greedy, eos_id=eos_id)
    samples = np.asarray(generation.samples)
    lengths = np.asarray(generation.lengths)
    texts = []
    for row, length in zip(samples, lengths):
        text = tokenizer.decode(row[:length])
        if stop and stop in text:
            text = text[: text.index(stop) + len(stop)]
        texts.append(text)
    return texts


def _default_prompt(tokenizer) -> str:
    if tokenizer.kind == "byte" or "\n" in getattr(tokenizer, "vocabulary", ""):
        return "\n"
    return tokenizer.vocabulary[0]


def _planned_batch_size(args) -> int | None:
    """The run's batch size, read before JAX starts (it sets the default device count): the
    flag, the checkpoint's when resuming (its metadata is a JSON file), else the default."""
    if args.batch_size is not None:
        return args.batch_size
    if not args.resume:
        return train_defaults()["batch_size"]
    from seqmodel import checkpoint

    out = pathlib.Path(args.out) if args.out else pathlib.Path("runs") / (
        args.data or DEFAULT_DATA)
    try:
        return checkpoint.peek_metadata(out, prefer="latest")["train_config"]["batch_size"]
    except (checkpoint.CheckpointError, KeyError, OSError, ValueError):
        return None  # _resolve_resume reports a missing or unreadable checkpoint


def parallel_from_flags(args, *, batch_size: int | None = None):
    """The :class:`~seqmodel.distributed.DataParallel` that the flags of ``seqmodel train`` ask
    for (``--devices``, ``--coordinator``, ``--num-processes``, ``--process-id``), set up in the
    required order by :func:`seqmodel.distributed.from_flags`; ``batch_size`` is the run's batch
    (for the default device count). Call it before any JAX computation."""
    from seqmodel import distributed

    if args.coordinator is not None and not args.out:
        # Each process would pick its own numbered default folder (runs/NAME-2, ...).
        raise distributed.DistributedError(
            "--coordinator needs --out: every process must name the same run folder (on a file "
            "system that all hosts share)")
    return distributed.from_flags(devices=args.devices, coordinator=args.coordinator,
                                  num_processes=args.num_processes, process_id=args.process_id,
                                  batch_size=batch_size)


def stop_after_failure(error: BaseException, parallel) -> None:
    """In a run of several processes, end this process at once after a failed collective (another
    process died) or Ctrl-C: one line on stderr, exit status 1 (130 for Ctrl-C). Returns (for the
    caller to re-raise) in a single-process run and for errors that are not about other
    processes.

    Exiting with ``os._exit`` skips JAX's shutdown barrier, which would otherwise wait for the dead
    process until the heartbeat timeout and then abort with a C++ stack trace.

    Example::

        try:
            fit(model, dataset, config, parallel=parallel)
        except Exception as error:
            stop_after_failure(error, parallel)
            raise
    """
    if parallel.num_processes <= 1:
        return
    import jax

    from seqmodel.distributed import is_peer_failure

    if isinstance(error, KeyboardInterrupt):
        # Leaving at once closes this process's connections, so the others stop too (instead of
        # waiting in JAX's shutdown barrier while they wait for this process in a collective).
        print(f"seqmodel train: process {jax.process_index()} interrupted; the checkpoints in "
              f"--out are the last complete ones; restart every process with --resume",
              file=sys.stderr, flush=True)
        os._exit(130)
    if not is_peer_failure(error):
        return
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"seqmodel train: process {jax.process_index()} of {parallel.num_processes} stops: "
          f"another process of the run failed or was stopped ({first_line}). The checkpoints "
          f"in --out are the last complete ones; restart every process with --resume",
          file=sys.stderr, flush=True)
    os._exit(1)


def _metric_writers(args, out: pathlib.Path, *, resumed_step: int | None) -> list:
    """The writers that ``seqmodel train`` adds to ``metrics.jsonl``: ``--tensorboard``."""
    if not args.tensorboard:
        return []
    from seqmodel.metrics import TensorBoardWriter

    try:
        # A resumed run drops what the interrupted one logged past its checkpoint.
        return [TensorBoardWriter(out / "tensorboard", purge_step=None if resumed_step is None
                                  else resumed_step + 1)]
    except ImportError as error:
        raise UsageError(f"--tensorboard: {error}") from None


def cmd_train(args) -> int:
    # Before any JAX computation: virtual CPU devices and jax.distributed must come first.
    parallel = parallel_from_flags(args, batch_size=_planned_batch_size(args))
    import jax
    from flax import nnx

    from seqmodel.data import load_dataset
    from seqmodel.fit import TrainingError, fit
    from seqmodel.model import SequenceModel
    from seqmodel.train import TrainConfig

    started = time.perf_counter()
    out = pathlib.Path(args.out) if args.out else None
    data_metadata = None
    if args.resume:
        out = out or pathlib.Path("runs") / (args.data or DEFAULT_DATA)
        model_values, train_values, source, checkpoint_metadata = _resolve_resume(args, out)
        data_metadata = checkpoint_metadata["data"]
    else:
        source = args.data or DEFAULT_DATA
        if out is None:
            out = _default_out(source)
        elif _holds_run(out):
            raise UsageError(f"--out {str(out)!r} already holds a run; pass --resume to continue "
                             f"it, or choose another --out")
    writers = _metric_writers(args, out, resumed_step=checkpoint_metadata["step"]
                              if args.resume else None)
    val_fraction = args.val_fraction if args.val_fraction is not None else (
        train_values["val_fraction"] if args.resume else train_defaults()["val_fraction"])
    tokenizer = args.tokenizer or train_defaults()["tokenizer"]
    dataset = load_dataset(source, val_fraction=val_fraction, tokenizer=tokenizer,
                           metadata=data_metadata,
                           **({"missing": args.missing} if args.missing else {}))
    if args.resume:
        from seqmodel.model import ModelConfig

        model_config = ModelConfig.from_dict(model_values)
        train_config = TrainConfig.from_dict(train_values)
    else:
        model_config, train_config = _train_configs(args, dataset)
    if args.resume and train_config.steps is not None:
        at_step = checkpoint_metadata["step"]
        if at_step >= train_config.steps:
            _say(args, f"seqmodel train: the run in {out} is already at step {at_step} and "
                       f"--steps is {train_config.steps}: nothing to train (raise --steps to "
                       f"continue it)")
            if args.json and parallel.is_main:
                print(json.dumps({"steps": at_step, "checkpoint": str(out),
                                  "nothing_to_train": True}), flush=True)
            return 0
    model = SequenceModel(model_config, rngs=nnx.Rngs(train_config.seed))
    units = getattr(dataset, "bits_per_unit", None)
    limits = []
    if train_config.steps:
        limits.append(f"{train_config.steps} steps")
    if train_config.max_time:
        limits.append(f"{train_config.max_time:g} s")
    _say(args, f"seqmodel: {'resuming' if args.resume else 'training'} {model_config.cell} "
               f"h{model_config.hidden_size}x{model_config.num_layers} on {source} "
               f"({_describe(dataset)}) for {' or '.join(limits)} on "
               f"{parallel.describe()}; run folder {out}")
    try:
        result = fit(model, dataset, train_config, out_dir=out, resume=args.resume,
                     progress=not args.no_progress, writers=writers,
                     run_metadata={"source": source}, parallel=parallel)
    except TrainingError as error:
        print(f"seqmodel train: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (Exception, KeyboardInterrupt) as error:
        # Several processes: another one died (JAX raises JaxRuntimeError or ValueError), or
        # Ctrl-C: one line, and this process ends at once so that the others stop too.
        stop_after_failure(error, parallel)
        raise
    summary: dict[str, Any] = {
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "step_tokens_per_second": _rounded(result.step_tokens_per_second),
        "train_loss": _rounded(result.train_loss),
        "val_loss": _rounded(result.val_loss),
        "best_val_loss": _rounded(result.best_val_loss),
        "checkpoint": str(out),
        "interrupted": result.interrupted,
    }
    if units:
        summary[f"val_bits_per_{units}"] = _rounded(result.val_bits)
        if units == "char":
            summary["bpc"] = _rounded(result.val_bits)
    val_text = "n/a" if result.val_loss is None else f"{result.val_loss:.4f} nats/{units or 'element'}"
    if result.interrupted:
        _say(args, f"interrupted at step {result.steps}; saved {out / 'latest'}; continue with "
                   f"--resume --out {out}")
    else:
        _say(args, f"done: {result.steps} steps, {result.tokens:,} tokens in "
                   f"{result.train_seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s); "
                   f"val loss {val_text}; checkpoints in {out}")
    if dataset.kind == "text" and not result.interrupted and parallel.is_main:
        model.eval()
        prompt = _default_prompt(dataset.tokenizer)
        text = _text_sample(model, dataset.tokenizer, key=jax.random.key(train_config.seed),
                            steps=TRAIN_SAMPLE_STEPS, prompt=prompt, temperature=0.8)[0]
        summary["sample"] = text
        _say(args, "--- sample (temperature 0.8) ---", prompt.lstrip("\n") + text, "---")
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)
    if args.json and parallel.is_main:
        print(json.dumps(summary), flush=True)
    return 130 if result.interrupted else 0


def _rounded(value):
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


def _describe(dataset) -> str:
    if dataset.kind == "text":
        return (f"{len(dataset.train_tokens):,} train / {len(dataset.val_tokens):,} validation "
                f"{dataset.tokenizer.kind}s, vocabulary {dataset.vocab_size}")
    fields = dataset.model_fields()
    return ", ".join(f"{key} {value}" for key, value in fields.items())


# ---------------------------------------------------------------------------------------------
# sample / eval
# ---------------------------------------------------------------------------------------------


def _load(checkpoint_path: str):
    from seqmodel import checkpoint

    return checkpoint.load_model(checkpoint_path)


def cmd_sample(args) -> int:
    import jax

    from seqmodel.data import tokenizer_from_dict

    model, metadata = _load(args.checkpoint)
    data = metadata.get("data", {})
    if data.get("kind", "text") != "text":
        return _sample_real_valued(args, model, metadata)
    for flag in ("out", "quantiles", "plot"):
        if getattr(args, flag) is not None:
            raise UsageError(f"seqmodel sample: --{flag} applies to real-valued models only")
    tokenizer = tokenizer_from_dict(data["tokenizer"])
    if args.prompt_file is not None:
        try:
            prompt = pathlib.Path(args.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--prompt-file {args.prompt_file!r}: no such file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--prompt-file {args.prompt_file!r} is not valid UTF-8") from None
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        prompt = _default_prompt(tokenizer)
    if prompt == "":
        raise UsageError("--prompt is empty; give at least one character")
    texts = _text_sample(model, tokenizer, key=jax.random.key(args.seed), steps=args.steps,
                         prompt=prompt, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, greedy=args.greedy, num_samples=args.num_samples,
                         stop=args.stop)
    for index, text in enumerate(texts):
        if index:
            print("\n" + "-" * 40)
        sys.stdout.write(prompt + text + ("" if text.endswith("\n") else "\n"))
    sys.stdout.flush()
    return 0


def cmd_eval(args) -> int:
    from seqmodel.data import load_dataset
    from seqmodel.train import TrainConfig, evaluate

    model, metadata = _load(args.checkpoint)
    data = metadata.get("data", {})
    if data.get("kind", "text") != "text":
        return _eval_real_valued(args, model, metadata)
    train_config = TrainConfig.from_dict(metadata.get("train_config", {}))
    source = args.data or data.get("name") or metadata.get("source")
    dataset = load_dataset(source, val_fraction=train_config.val_fraction, metadata=data)
    fields = dataset.model_fields()
    for key, value in fields.items():
        saved = getattr(model.config, key, None)
        if key != "head" and saved != value:
            raise UsageError(f"--data {source!r} has {key}={value} but the checkpoint's model "
                             f"expects {saved}")
    batches = dataset.validation_batches(batch_size=train_config.eval_batch_size,
                                         seq_len=train_config.eval_seq_len)
    if not batches:
        raise UsageError(f"--data {source!r} has no validation data (val_fraction "
                         f"{train_config.val_fraction}); nothing to evaluate")
    result = evaluate(model, batches)
    units = getattr(dataset, "bits_per_unit", None)
    summary = {"val_loss": _rounded(result.loss), "elements": result.elements}
    if units == "char":
        summary["bpc"] = _rounded(result.bits)
    elif units:
        summary[f"bits_per_{units}"] = _rounded(result.bits)
    if args.json:
        print(json.dumps(summary))
    else:
        line = f"val_loss {result.loss:.4f} nats per {units or 'element'} over {result.elements:,} targets"
        if units:
            line += f" ({result.bits:.4f} bits per {units})"
        print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# sample / eval of real-valued checkpoints (seqmodel.forecast)
# ---------------------------------------------------------------------------------------------

# `seqmodel eval` of a real-valued model: the defaults that only the command line has.
EVAL_HORIZON = 20
EVAL_SEED = 0


def _report_default(name: str):
    """The default of an argument of :func:`seqmodel.forecast.exposure_bias_report`."""
    from seqmodel.forecast import exposure_bias_report

    return inspect.signature(exposure_bias_report).parameters[name].default


def parse_quantiles(text: str) -> tuple[float, ...]:
    """``"0.1,0.5,0.9"`` -> ``(0.1, 0.5, 0.9)``, with a clear error for anything else."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--quantiles {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0.0 <= q <= 1.0 for q in values):
        raise ValueError(f"--quantiles {text!r}: give numbers in [0, 1], e.g. 0.1,0.5,0.9")
    return values


def _load_contexts(path: str, normalizer):
    """Contexts for ``seqmodel sample --prompt-file``: a CSV or ``.npy`` file read like training
    data (a ``sequence_id`` column or an ``(n, t, d)`` array gives several contexts).

    Returns ``(contexts (n, p, d) right-padded, lengths (n,))`` in original units."""
    import numpy as np

    from seqmodel.data.numeric import load_sequences

    if not os.path.isfile(path):
        raise ValueError(f"--prompt-file {os.fspath(path)!r}: no such file")
    table = load_sequences(path)
    if table.num_features != normalizer.num_features:
        raise ValueError(
            f"--prompt-file {os.fspath(path)!r} has {table.num_features} numeric column(s) "
            f"({', '.join(table.columns)}), but the model was trained on "
            f"{normalizer.num_features} feature(s)"
        )
    lengths = np.array([len(s) for s in table.sequences])
    if lengths.min() < 1:
        raise ValueError(f"--prompt-file {os.fspath(path)!r} holds an empty context")
    contexts = np.zeros((len(lengths), lengths.max(), normalizer.num_features), np.float32)
    for row, sequence in enumerate(table.sequences):
        contexts[row, : len(sequence)] = sequence
    return contexts, lengths


def _sample_real_valued(args, model, metadata: dict) -> int:
    """``seqmodel sample`` for a real-valued checkpoint: sample paths ``(S, H, d)`` per context
    (``(n, S, H, d)`` for ``n`` contexts) in original units to ``--out`` (``.npy``), or their
    ``--quantiles`` ``(Q, H, d)``; ``--plot`` draws the fan chart of the first context.
    Without ``--out`` it prints the quantiles of the first context as CSV."""
    import jax
    import numpy as np

    from seqmodel.data.numeric import Normalizer
    from seqmodel.forecast import forecast, plot_fan, sample_quantiles

    if args.prompt is not None:
        raise ValueError("--prompt is for text models; a real-valued model continues "
                         "--prompt-file context.csv (or .npy)")
    if args.prompt_file is None:
        raise ValueError("a real-valued model needs a context to continue: --prompt-file "
                         "context.csv (rows = time steps, columns = features) or .npy")
    for flag in ("top_k", "top_p", "stop"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to text models only; "
                             "real-valued sampling takes --temperature (or --greedy)")
    normalizer = Normalizer.from_dict(metadata["data"]["normalizer"])
    contexts, lengths = _load_contexts(args.prompt_file, normalizer)
    quantiles = parse_quantiles(args.quantiles) if args.quantiles else None
    temperature = 0.0 if args.greedy else args.temperature
    paths = forecast(model, normalizer, contexts, key=jax.random.key(args.seed),
                     horizon=args.steps, num_samples=args.num_samples,
                     context_lengths=lengths, temperature=temperature)  # (n, S, H, d)
    result = paths if quantiles is None else np.moveaxis(
        sample_quantiles(paths, quantiles, axis=1), 0, 1)  # (n, Q, H, d)
    if len(contexts) == 1:
        result = result[0]
    if args.plot:
        plot_fan(contexts[0, : lengths[0]], paths[0], args.plot,
                 feature_names=metadata["data"].get("columns"))
    if args.out:
        np.save(args.out, result.astype(np.float32))
        what = "quantiles " + ",".join(f"{q:g}" for q in quantiles) if quantiles else "sample paths"
        print(f"wrote {what} {tuple(result.shape)} in original units to {args.out}"
              + (f"; fan chart {args.plot}" if args.plot else ""), file=sys.stderr)
        return 0
    shown = quantiles or (0.1, 0.5, 0.9)
    table = sample_quantiles(paths[0], shown, axis=0)  # (Q, H, d)
    columns = metadata["data"].get("columns") or [f"feature {i}" for i in range(paths.shape[-1])]
    print(",".join(["step"] + [f"{name} q{q:g}" for name in columns for q in shown]))
    for step in range(table.shape[1]):
        cells = [f"{table[q, step, f]:.6g}" for f in range(table.shape[2]) for q in range(len(shown))]
        print(",".join([str(step + 1)] + cells))
    return 0


def _eval_real_valued(args, model, metadata: dict) -> int:
    """``seqmodel eval`` for a real-valued checkpoint: the exposure-bias report on the validation
    part of ``--data`` (default: the training data), as text or one ``--json`` line, and
    ``--plot`` its chart."""
    import jax

    from seqmodel.data.numeric import load_numeric_dataset
    from seqmodel.forecast import exposure_bias_report, plot_report

    data = metadata["data"]
    val_fraction = metadata.get("train_config", {}).get("val_fraction", data.get("val_fraction", 0.1))
    source = args.data or data.get("name") or metadata.get("source")
    dataset = load_numeric_dataset(source, val_fraction=val_fraction, metadata=data)
    if dataset.input_size != model.config.input_size:
        raise ValueError(f"--data {source!r} has {dataset.input_size} feature(s) but the "
                         f"checkpoint's model expects {model.config.input_size}")
    if not dataset.val_sequences:
        raise ValueError(f"--data {source!r} has no validation part (val_fraction "
                         f"{val_fraction}); nothing to evaluate")
    horizon = EVAL_HORIZON if args.horizon is None else args.horizon
    options = {name: getattr(args, name) for name in ("num_samples", "num_starts", "min_context")
               if getattr(args, name) is not None}
    report = exposure_bias_report(
        model, dataset.val_sequences, dataset.normalizer,
        key=jax.random.key(EVAL_SEED if args.seed is None else args.seed), horizon=horizon,
        **options)
    report = {"val_loss": report["nll"], **report, "data": source}
    if args.plot:
        plot_report(report, args.plot, title=f"{source}: exposure-bias report")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{source}: teacher-forced NLL {report['nll']:.4f} nats per step (normalised units; "
          f"{report['nll_original_units']:.4f} in original units); {report['num_starts']} starts "
          f"x {report['num_samples']} sample paths")
    print(f"{'horizon':>8} {'MAE':>10} {'CRPS':>10} {'teacher':>10} {'persist.':>10}")
    shown = sorted({h for h in (1, 2, 5, 10, 20, 50, 100, 200, horizon) if h <= horizon})
    for h in shown:
        print(f"{h:>8} {report['mae'][h - 1]:>10.4f} {report['crps'][h - 1]:>10.4f} "
              f"{report['teacher_forced_mae'][h - 1]:>10.4f} {report['persistence_mae'][h - 1]:>10.4f}")
    print("MAE: free running, median of the paths; teacher: one-step MAE fed the truth; "
          "persist.: last value repeated" + (f"; chart {args.plot}" if args.plot else ""))
    return 0


def cmd_bench(args) -> int:
    """Run the speed suite (``python -m benchmarks.bench_speed``) of the source checkout that holds
    this package, in a process of its own, with the user's working directory (for ``--json``)."""
    import subprocess

    checkout = pathlib.Path(__file__).resolve().parents[1]
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


if __name__ == "__main__":
    sys.exit(main())
