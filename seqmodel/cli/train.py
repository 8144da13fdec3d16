"""``seqmodel train``: loading the data its flags name (:mod:`seqmodel.cli.train_flags`), resuming
a run folder, the device set-up, the call of :func:`seqmodel.fit`, ensemble members and the
summary."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import sys
import time
import traceback
from typing import Any

from seqmodel.cli.common import (
    EXIT_FAILURE,
    UsageError,
    exit_status_of_signal,
    quiet_logging,
    rounded,
    say,
)
from seqmodel.cli.sample import default_prompt, text_sample
from seqmodel.cli.train_flags import (  # noqa: F401  (add_train_arguments: the parser's)
    DEFAULT_DATA,
    DEFAULT_MAX_TIME,
    MODEL_FLAGS,
    RESUMABLE_OVERRIDES,
    SERIES_FLAGS,
    TRAIN_FLAGS,
    TRAIN_SAMPLE_STEPS,
    add_train_arguments,
    train_defaults,
)


def load_training_data(args, source: str, *, val_fraction: float, tokenizer, metadata):
    """The dataset of a run: :func:`seqmodel.data.load_dataset` with the flags given (or the
    checkpoint's ``metadata`` of a resumed run); scheduled sampling is refused where the inputs
    hold features that the model does not predict (lags, scales, known features)."""
    from seqmodel.data import is_numeric_source, load_dataset

    options = {keyword: getattr(args, flag) for flag, keyword in SERIES_FLAGS.items()
               if getattr(args, flag, None) is not None}
    if metadata is not None:
        options = {key: value for key, value in options.items() if key == "missing"}
    elif args.head is not None and is_numeric_source(source):
        options["head"] = args.head
    if not is_numeric_source(source) and metadata is None:
        given = sorted(flag for flag, keyword in SERIES_FLAGS.items() if keyword in options)
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies to real-valued data "
                             f"(CSV / TSV / .npy or a built-in series), not to the text {source!r}")
    dataset = load_dataset(source, val_fraction=val_fraction, tokenizer=tokenizer,
                           metadata=metadata, **options)
    scheduled = args.teacher_forcing not in (None, 1.0) or args.teacher_forcing_schedule not in (
        None, "constant")
    if scheduled and dataset.kind == "series" and dataset.spec.conditioned:
        raise UsageError("--teacher-forcing / --teacher-forcing-schedule (scheduled sampling) "
                         "cannot feed the model its own samples with their lags, scales and "
                         "known features; give --lags 1 --scaling none for a model that reads "
                         "its bare elements, or leave them out")
    return dataset


def _default_out(name: str) -> pathlib.Path:
    stem = pathlib.Path(name).stem if os.sep in name or "." in name else name
    base = pathlib.Path("runs") / stem
    if not base.exists():
        return base
    number = 2
    while (base.parent / f"{base.name}-{number}").exists():
        number += 1
    return base.parent / f"{base.name}-{number}"


def _run_folder(args, out: pathlib.Path | None):
    """What ``--out`` holds (:func:`seqmodel.training.checkpoint.inspect_run`, the one reading of a run
    folder), checked against ``--resume``: a folder that holds a run is continued with
    ``--resume`` and refused without it; ``--resume`` on a folder that holds none is refused.
    Returns the :class:`~seqmodel.training.checkpoint.RunFolder` (None: a fresh run, no ``--out``)."""
    from seqmodel.training import checkpoint

    if out is None:
        return None
    run = checkpoint.inspect_run(out)
    if args.resume and not run.holds_run:
        raise UsageError(f"--resume --out {str(out)!r}: holds no run to resume (no checkpoint, "
                         f"no metrics.jsonl); drop --resume to start one there")
    if not args.resume and run.holds_run:
        raise UsageError(f"--out {str(out)!r} already holds a run; pass --resume to continue it, "
                         f"or choose another --out")
    return run


def _flag(name: str) -> str:
    return "--" + {"lr": "lr"}.get(name, name).replace("_", "-")


def _resolve_resume(args, out: pathlib.Path):
    """(model config dict, train config dict, data source, checkpoint metadata) of the run to
    resume, with explicit flags checked against the checkpoint."""
    from seqmodel.training import checkpoint

    try:
        metadata = checkpoint.peek_metadata(out, prefer="latest")
    except checkpoint.CheckpointError as error:
        raise UsageError(f"--resume --out {str(out)!r}: {error}") from None
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


def train_configs(args, dataset):
    """``(ModelConfig, TrainConfig)`` of a new run: the fields the data fixes, the explicit
    flags, and the dataclasses' own defaults for everything else (for series:
    ``SERIES_MODEL_DEFAULTS`` / ``SERIES_TRAIN_DEFAULTS`` and the dataset's window length)."""
    from seqmodel.configs import SERIES_MODEL_DEFAULTS, series_train_defaults
    from seqmodel.nn.model import ModelConfig
    from seqmodel.training.optimization import TrainConfig

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
    model_values = given(MODEL_FLAGS, skip=("head",))
    train_values = given(TRAIN_FLAGS)
    if getattr(dataset, "kind", None) == "series":
        # Sized for series, not for text (seqmodel.configs.SERIES_*_DEFAULTS).
        model_values = {**SERIES_MODEL_DEFAULTS, **model_values}
        defaults = series_train_defaults(
            [len(item) for item in dataset.train_series],
            budget_given=args.steps is not None or args.max_time is not None)
        train_values = {**defaults, **train_values}
        train_values.setdefault("seq_len", dataset.default_seq_len())
    elif args.steps is None and args.max_time is None:
        train_values["max_time"] = DEFAULT_MAX_TIME
    model_config = ModelConfig(**fields, **model_values)
    return model_config, TrainConfig(**train_values)


def planned_batch_size(args) -> int | None:
    """The run's batch size, read before JAX starts (it sets the default device count): the
    flag, the checkpoint's when resuming (its metadata is a JSON file), else the default."""
    if args.batch_size is not None:
        return args.batch_size
    if not args.resume:
        return train_defaults()["batch_size"]
    from seqmodel.training import checkpoint

    out = _resume_out(args)
    run = checkpoint.inspect_run(out)
    if run.holds_run and not run.holds_checkpoint:
        return train_defaults()["batch_size"]  # killed before its first save: starts anew
    try:
        return checkpoint.peek_metadata(out, prefer="latest")["train_config"]["batch_size"]
    except (checkpoint.CheckpointError, KeyError, OSError, ValueError):
        return None  # _run_folder and _resolve_resume report a missing or unreadable checkpoint


def _recorded_devices(args) -> int | None:
    """The devices of the run that ``--resume`` continues, as its checkpoint recorded them (a
    resumed run keeps its split, or it would not continue bit for bit); None when not resuming,
    or for a checkpoint that recorded none."""
    if not args.resume or args.devices is not None:
        return None
    from seqmodel.training import checkpoint

    try:
        devices = checkpoint.peek_metadata(_resume_out(args), prefer="latest").get("devices")
    except (checkpoint.CheckpointError, OSError, ValueError):
        return None  # _run_folder and _resolve_resume report a missing or unreadable checkpoint
    return devices if isinstance(devices, int) and devices > 0 else None


def _resume_out(args) -> pathlib.Path:
    """The run folder that ``--resume`` continues: ``--out``, else the default of ``--data``."""
    return pathlib.Path(args.out) if args.out else pathlib.Path("runs") / (
        args.data or DEFAULT_DATA)


def parallel_from_flags(args, *, batch_size: int | None = None):
    """The :class:`~seqmodel.training.distributed.DataParallel` that the flags of ``seqmodel train`` ask
    for (``--devices``, ``--coordinator``, ``--num-processes``, ``--process-id``), set up in the
    required order by :func:`seqmodel.training.distributed.from_flags`; ``batch_size`` is the run's batch
    (for the default device count). Call it before any JAX computation."""
    from seqmodel.training import distributed

    if args.coordinator is not None and not args.out:
        # Each process would pick its own numbered default folder (runs/NAME-2, ...).
        raise distributed.DistributedError(
            "--coordinator needs --out: every process must name the same run folder (on a file "
            "system that all hosts share)")
    return distributed.from_flags(devices=args.devices, coordinator=args.coordinator,
                                  num_processes=args.num_processes, process_id=args.process_id,
                                  batch_size=batch_size, sequence=args.sequence_parallel or 1)


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

    from seqmodel.training.distributed import is_peer_failure

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


def _metric_writers(args, out: pathlib.Path) -> list:
    """The writers that ``seqmodel train`` adds to ``metrics.jsonl``: ``--tensorboard`` (a
    resumed run rewinds it to the step it continues from: see :func:`seqmodel.fit`)."""
    if not args.tensorboard:
        return []
    from seqmodel.training.writers import TensorBoardWriter

    try:
        return [TensorBoardWriter(out / "tensorboard")]
    except ImportError as error:
        raise UsageError(f"--tensorboard: {error}") from None


def cmd_train(args) -> int:
    # Without --devices a new single-process run times its splits at start-up; a resumed one
    # keeps the split its checkpoint recorded; a time split (--sequence-parallel) is asked for.
    choose_split = (args.devices is None and args.coordinator is None and not args.resume
                    and (args.sequence_parallel or 1) == 1)
    args.devices = args.devices or _recorded_devices(args)
    # Before any JAX computation: virtual CPU devices and jax.distributed must come first.
    parallel = parallel_from_flags(args, batch_size=planned_batch_size(args))
    import jax
    from flax import nnx

    from seqmodel.nn.model import SequenceModel
    from seqmodel.training.fitting import TrainingError, fit
    from seqmodel.training.optimization import TrainConfig

    if not parallel.is_main:
        quiet_logging()  # process 0 reports for the run
    started = time.perf_counter()
    out = _resume_out(args) if args.resume else (pathlib.Path(args.out) if args.out else None)
    run = _run_folder(args, out)
    # --resume of a run killed before any step was saved completely: it starts anew from the
    # flags given now (fit says so in one line).
    from_checkpoint = args.resume and run.holds_checkpoint
    data_metadata = None
    if from_checkpoint:
        model_values, train_values, source, checkpoint_metadata = _resolve_resume(args, out)
        data_metadata = checkpoint_metadata["data"]
    else:
        source = args.data or DEFAULT_DATA
        if out is None:
            out = _default_out(source)
    writers = _metric_writers(args, out)
    val_fraction = args.val_fraction if args.val_fraction is not None else (
        train_values["val_fraction"] if from_checkpoint else train_defaults()["val_fraction"])
    tokenizer = args.tokenizer or train_defaults()["tokenizer"]
    dataset = load_training_data(args, source, val_fraction=val_fraction, tokenizer=tokenizer,
                                  metadata=data_metadata)
    if from_checkpoint:
        from seqmodel.nn.model import ModelConfig

        model_config = ModelConfig.from_dict(model_values)
        train_config = TrainConfig.from_dict(train_values)
    else:
        model_config, train_config = train_configs(args, dataset)
    if from_checkpoint and train_config.steps is not None:
        at_step = checkpoint_metadata["step"]
        if at_step >= train_config.steps:
            say(args, f"seqmodel train: the run in {out} is already at step {at_step} and "
                       f"--steps is {train_config.steps}: nothing to train (raise --steps to "
                       f"continue it)")
            if args.json and parallel.is_main:
                print(json.dumps({"steps": at_step, "checkpoint": str(out),
                                  "nothing_to_train": True}), flush=True)
            return 0
    model = SequenceModel(model_config, rngs=nnx.Rngs(train_config.seed))
    split = None
    if choose_split:
        from seqmodel.training.devices import choose_split as choose

        parallel, split = choose(model, dataset, train_config, parallel,
                                 choose_steps_per_call=args.steps_per_call is None)
        train_config = dataclasses.replace(train_config, steps_per_call=split.steps_per_call)
    units = getattr(dataset, "bits_per_unit", None)
    limits = []
    if train_config.steps:
        limits.append(f"{train_config.steps} steps")
    if train_config.max_time:
        limits.append(f"{train_config.max_time:g} s")
    # The step named is the newest whose metadata reads; should its arrays not read, fit
    # warns which older step it resumes from instead.
    origin = f" from step {checkpoint_metadata['step']}" if from_checkpoint else ""
    say(args, f"seqmodel: {'resuming' if from_checkpoint else 'training'} {model_config.cell} "
               f"h{model_config.hidden_size}x{model_config.num_layers}{origin} on {source} "
               f"({_describe(dataset)}) for {' or '.join(limits)} on "
               f"{split.reason if split else parallel.describe()}; run folder {out}")
    ensemble = getattr(args, "ensemble", None) or 1
    if ensemble > 1 and dataset.kind != "series":
        raise UsageError("--ensemble applies to real-valued data (forecasters), not to text")
    try:
        result = fit(model, dataset, train_config, out_dir=out, resume=args.resume,
                     progress=not args.no_progress, writers=writers,
                     run_metadata={"source": source, "ensemble": ensemble,
                                   "devices": parallel.num_devices,
                                   "device_choice": split.to_dict() if split else None},
                     parallel=parallel)
        member_seconds = [result.train_seconds]
        for member in range(1, ensemble if not result.interrupted else 1):
            member_seconds.append(_train_member(args, member, model_config, train_config,
                                                dataset, out, source, parallel).train_seconds)
    except TrainingError as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
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
        "step_tokens_per_second": rounded(result.step_tokens_per_second),
        "train_loss": rounded(result.train_loss),
        "val_loss": rounded(result.val_loss),
        "best_val_loss": rounded(result.best_val_loss),
        "checkpoint": str(out),
        "interrupted": result.interrupted,
        "stop_signal": signal.Signals(result.stop_signal).name if result.stop_signal else None,
        "checkpoint_wait_seconds": round(result.checkpoint_wait_seconds, 3),
        "devices": parallel.num_devices,
        "device_choice": split.reason if split else None,
    }
    if ensemble > 1:
        summary["ensemble"] = ensemble
        summary["ensemble_train_seconds"] = round(sum(member_seconds), 3)
        say(args, f"ensemble of {len(member_seconds)}: {sum(member_seconds):.1f} s of training "
                   f"in all ({sum(member_seconds) / member_seconds[0]:.1f}x one model)")
    if units:
        summary[f"val_bits_per_{units}"] = rounded(result.val_bits)
        if units == "char":
            summary["bpc"] = rounded(result.val_bits)
    val_text = "n/a" if result.val_loss is None else f"{result.val_loss:.4f} nats/{units or 'element'}"
    if result.interrupted:
        cause = (f"stopped by {signal.Signals(result.stop_signal).name}" if result.stop_signal
                 else "interrupted")
        say(args, f"{cause} at step {result.steps}; saved {result.checkpoint}; continue with "
                   f"--resume --out {out}")
    else:
        say(args, f"done: {result.steps} steps, {result.tokens:,} tokens in "
                   f"{result.train_seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s); "
                   f"val loss {val_text}; checkpoints in {out}")
        if result.steps == 0 and train_config.max_time is not None:
            say(args, f"no training step fitted in --max-time {train_config.max_time:g} (the "
                       f"budget also pays for compiling: {result.train_seconds:.1f} s here); "
                       "give a larger --max-time or --steps N")
    if dataset.kind == "text" and not result.interrupted and parallel.is_main:
        model.eval()
        prompt = default_prompt(dataset.tokenizer)
        text = text_sample(model, dataset.tokenizer, key=jax.random.key(train_config.seed),
                            steps=TRAIN_SAMPLE_STEPS, prompt=prompt, temperature=0.8)[0]
        summary["sample"] = text
        say(args, "--- sample (temperature 0.8) ---", prompt.lstrip("\n") + text, "---")
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)
    if args.json and parallel.is_main:
        print(json.dumps(summary), flush=True)
    if result.interrupted:
        return exit_status_of_signal(result.stop_signal or signal.SIGINT)
    return 0


def _train_member(args, member: int, model_config, train_config, dataset, out, source,
                  parallel) -> Any:
    """Ensemble member ``member`` (seed ``seed + member``) in ``OUT/members/<member>``."""
    import dataclasses

    from flax import nnx

    from seqmodel.forecasting.forecaster import MEMBERS_FOLDER
    from seqmodel.nn.model import SequenceModel
    from seqmodel.training.fitting import fit

    config = dataclasses.replace(train_config, seed=train_config.seed + member)
    folder = pathlib.Path(out) / MEMBERS_FOLDER / str(member)
    say(args, f"seqmodel: ensemble member {member + 1} (seed {config.seed}) in {folder}")
    return fit(SequenceModel(model_config, rngs=nnx.Rngs(config.seed)), dataset, config,
        out_dir=folder, resume=args.resume and folder.is_dir(), progress=not args.no_progress,
        run_metadata={"source": source, "member": member}, parallel=parallel)


def _describe(dataset) -> str:
    if dataset.kind == "text":
        return (f"{len(dataset.train_tokens):,} train / {len(dataset.val_tokens):,} validation "
                f"{dataset.tokenizer.kind}s, vocabulary {dataset.vocab_size}")
    spec = dataset.spec
    steps = sum(len(item) for item in dataset.series)
    parts = [f"{len(dataset.series)} series, {steps:,} steps", f"head {dataset.head}",
             f"lags {','.join(map(str, spec.lags))}", f"scaling {spec.scaling}",
             f"context {spec.context_length}", f"season {dataset.season}",
             "anchor " + (f"the mean of lags {','.join(map(str, spec.anchor_lags))}"
                          if spec.anchor_lags else f"lag {spec.anchor}" if spec.anchor
                          else "none"),
             f"{dataset.validation} validation, {dataset.batching}"]
    if spec.time_features:
        parts.append(f"time features {','.join(spec.time_features)}")
    if dataset.holdout:
        parts.append(f"{dataset.holdout} steps held out")
    return "; ".join(parts)
