"""The flags of ``seqmodel train``: their defaults (read from ModelConfig / TrainConfig, the one
source of defaults), the series options that map onto :func:`seqmodel.data.load_dataset`, and
their parsers. :mod:`seqmodel.cli.train` runs the command."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Any

from seqmodel.cli.common import (
    dropout_probability,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)

# Flags of `seqmodel train` that set a field of ModelConfig / TrainConfig: flag -> field. The
# defaults of these flags are the fields' defaults (train_defaults), so the API, the CLI and
# --help cannot disagree.
MODEL_FLAGS = {"cell": "cell", "hidden_size": "hidden_size", "num_layers": "num_layers",
               "embed_size": "embed_size", "dropout": "dropout", "head": "head",
               "num_mixtures": "num_mixtures", "scan": "scan", "expansion": "expansion",
               "mlp_expansion": "mlp_expansion", "remat": "remat", "input_skip": "input_skip"}


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
    from seqmodel.configs import DEFAULT_TOKENIZER, ModelConfig, TrainConfig

    def field_defaults(config_class) -> dict[str, Any]:
        return {field.name: field.default for field in dataclasses.fields(config_class)}

    model_fields, train_fields = field_defaults(ModelConfig), field_defaults(TrainConfig)
    defaults = {flag: model_fields[field] for flag, field in MODEL_FLAGS.items()}
    defaults.update({flag: train_fields[field] for flag, field in TRAIN_FLAGS.items()})
    defaults.update(
        data=DEFAULT_DATA, head=None,
        tokenizer=DEFAULT_TOKENIZER)
    return defaults


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``seqmodel train``; their defaults are None so that explicit flags can be told
    apart (see :func:`train_defaults` for the values used when a flag is absent)."""
    from seqmodel.configs import (
        BATCHINGS,
        CELL_NAMES,
        HEAD_NAMES,
        REMAT_NAMES,
        SCAN_METHODS,
        TEACHER_FORCING_SCHEDULES,
        TOKENIZERS,
    )

    d = train_defaults()
    add = parser.add_argument
    add("--data", metavar="SOURCE", help=f"text file, .csv/.npy file or built-in: {d['data']} "
        f"(default), tinyshakespeare, sine, bimodal, binary-patterns")
    add("--out", metavar="DIR", help="run folder for checkpoints, metrics.jsonl and loss.png "
        "(default: runs/<data name>, numbered when it exists)")
    add("--tokenizer", choices=TOKENIZERS, help=f"text: one symbol per character or per byte "
        f"(default {d['tokenizer']})")
    add("--cell", choices=CELL_NAMES, help=f"recurrent cell: serial (lstm, gru, elman) or a linear "
        f"recurrence run as a residual block (mingru, minlstm, rglru) (default {d['cell']})")
    add("--hidden-size", type=positive_int, metavar="N", help=f"default {d['hidden_size']}")
    add("--num-layers", type=positive_int, metavar="N", help=f"default {d['num_layers']}")
    add("--embed-size", type=positive_int, metavar="N", help=f"default {d['embed_size']}")
    add("--dropout", type=dropout_probability, metavar="P", help=f"between layers (default {d['dropout']})")
    add("--head", choices=HEAD_NAMES, help="output distribution (default: categorical for text, "
        "gaussian for real values, bernoulli for 0/1 data)")
    add("--num-mixtures", type=positive_int, metavar="K", help="components of --head mdn "
        f"(default {d['num_mixtures']})")
    add("--scan", choices=("auto",) + SCAN_METHODS, help="linear recurrences: how training scans "
        f"h = a h + b over time (default {d['scan']}: the fastest measured on the backend)")
    add("--expansion", type=positive_int, metavar="N", help="linear recurrences: the recurrence "
        f"is N x hidden-size wide (default {d['expansion']})")
    add("--mlp-expansion", type=positive_int, metavar="N", help="linear recurrences: the block's "
        f"gated MLP is N x hidden-size wide (default {d['mlp_expansion']})")
    add("--remat", choices=REMAT_NAMES, help="linear recurrences: what the backward pass "
        "recomputes instead of keeping: none, scan (gates and states), block (the whole block, "
        f"one time segment at a time: least memory) (default {d['remat']})")
    add("--input-skip", action=argparse.BooleanOptionalAction, default=None,
        help="real values: a linear path from each step's inputs (the lags) to the head "
        f"(LSTNet's highway; default {'on' if d['input_skip'] else 'off'})")
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
    add("--val-fraction", type=fraction, metavar="F", help="last fraction of the data kept for "
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
    add_forecast_arguments(parser)
    add("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    add("--tensorboard", action="store_true", help="also write TensorBoard event files to "
        "<run folder>/tensorboard (needs tensorboardX: pip install 'seqmodel[tensorboard]')")
    # Data parallelism and several processes: seqmodel.training.distributed, docs/distributed.md.
    add("--devices", type=positive_int, metavar="N", help="devices per process to split each batch "
        "over (default: all accelerators; on a CPU-only machine one device or one virtual CPU "
        "device per core, whichever a short timing at start-up finds faster, said in the first "
        "line and kept by --resume; 1: one device)")
    add("--sequence-parallel", type=positive_int, metavar="S", help="linear recurrences: split "
        "each row's time axis over S of the --devices (the rest split rows); memory per device "
        "falls by S; --seq-len must divide by S (default 1; docs/long_context.md)")
    add("--coordinator", metavar="HOST:PORT", help="several processes: address of process 0 "
        "(with --num-processes and --process-id; needs --out and --steps)")
    add("--num-processes", type=positive_int, metavar="N", help="processes in the run")
    add("--process-id", type=non_negative_int, metavar="I", help="this process, 0 to N-1 "
        "(process 0 writes logs, samples and metrics)")
    add("--json", action="store_true", help="print one final JSON line (and nothing else on stdout)")
    add("--no-progress", action="store_true", help="no progress bar")


# Flags of real-valued data -> the options of seqmodel.data.load_dataset (the one router).
SERIES_FLAGS = {"time_column": "time_column", "id_column": "id_column", "lags": "lags",
                "covariates": "covariates", "static_columns": "static_columns",
                "targets": "target_columns", "scaling": "scaling",
                "context_length": "context_length", "season": "season", "anchor": "anchor",
                "holdout": "holdout", "missing": "missing"}


def column_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no column; give e.g. price,promo")
    return names


def lag_list(text: str) -> tuple[int, ...]:
    from seqmodel.data.features import parse_lags

    try:
        return parse_lags(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of forecasting real series (docs/forecasting.md); any of them (or --head negbin)
    prepares the data with lags, scaling and known features."""
    from seqmodel.data.features import SCALINGS
    from seqmodel.data.preparation import DEFAULT_ANCHOR

    add = parser.add_argument
    add("--time-column", metavar="NAME", help="forecasting: column of timestamps (frequency "
        "inferred; time of day, day of week, day of year or month fed as sin/cos features)")
    add("--id-column", metavar="NAME", help="column naming each row's series (default: "
        "sequence_id when present)")
    add("--lags", type=lag_list, metavar="K1,K2,...", help="real values: lagged targets fed "
        "with every step (1 is the last value; default 1,2,3 and one season back; with 1,000 "
        "training steps or more also 4-7 and 1-3 seasons back with their neighbours)")
    add("--covariates", type=column_list, metavar="COL1,COL2", help="forecasting: known-future "
        "numeric columns fed with every step (forecasts take their future from --future-file)")
    add("--static-columns", type=column_list, metavar="COL1,COL2", help="forecasting: "
        "per-series categories (one value per series), fed one-hot: one global model over many "
        "series")
    add("--targets", type=column_list, metavar="COL1,COL2", help="forecasting: the columns to "
        "forecast (default: every numeric column that is not a covariate)")
    add("--scaling", choices=SCALINGS, help="real values: mean (each window divided by its "
        "context's mean |value|, the log scale fed to the network: DeepAR's), std (the "
        "context's mean subtracted, then divided by its standard deviation) or none; default: "
        "std where the windows move by less than 1%% of their level, none for 0/1 data, else "
        "mean")
    add("--context-length", type=positive_int, metavar="N", help="real values: steps a "
        "forecast reads before its first prediction, which give the scale (default: at "
        "least 32 and two seasons, at most a third of the shortest series)")
    add("--season", type=positive_int, metavar="M", help="real values: the seasonal period in "
        "steps (default: from the time column's frequency, else detected from the data)")
    add("--anchor", metavar="auto|season|seasons|last|none|K", help="real values: what the "
        "predicted location is relative to: the season's lag (the network learns how this "
        "season differs from the last), seasons: the mean of lags s, 2s, 3s where they are fed "
        "(long data), the last value (how the next step differs from it), none, or lag K; auto: "
        f"the season's lag where there is a season, else the last value (default: "
        f"{DEFAULT_ANCHOR})")
    add("--ensemble", type=positive_int, metavar="K", help="real values: train K models with "
        "seeds seed..seed+K-1 (members 2..K in OUT/members/); forecasts pool their sample paths")
    add("--holdout", type=non_negative_int, metavar="N", help="real values: keep the last N "
        "steps of every series out of training and validation (for `eval --backtest` on the "
        "same data)")
