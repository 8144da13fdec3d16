"""``seqmodel eval``: the validation loss of a text checkpoint, or the exposure-bias report of a
real-valued model."""

from __future__ import annotations

import argparse
import inspect
import json

from seqmodel.cli.common import UsageError, load_checkpoint, positive_int, rounded


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


def cmd_eval(args) -> int:
    from seqmodel.data import load_dataset
    from seqmodel.train import TrainConfig, evaluate

    model, metadata = load_checkpoint(args.checkpoint)
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
    summary = {"val_loss": rounded(result.loss), "elements": result.elements}
    if units == "char":
        summary["bpc"] = rounded(result.bits)
    elif units:
        summary[f"bits_per_{units}"] = rounded(result.bits)
    if args.json:
        print(json.dumps(summary))
    else:
        line = f"val_loss {result.loss:.4f} nats per {units or 'element'} over {result.elements:,} targets"
        if units:
            line += f" ({result.bits:.4f} bits per {units})"
        print(line)
    return 0


# `seqmodel eval` of a real-valued model: the defaults that only the command line has.
EVAL_HORIZON = 20


EVAL_SEED = 0


def _report_default(name: str):
    """The default of an argument of :func:`seqmodel.forecast.exposure_bias_report`."""
    from seqmodel.forecast import exposure_bias_report

    return inspect.signature(exposure_bias_report).parameters[name].default


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
