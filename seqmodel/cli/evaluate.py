"""``seqmodel eval``: the validation loss of a text checkpoint; for a real-valued model the
exposure-bias report, or with ``--backtest N`` a rolling-origin backtest against classical
baselines."""

from __future__ import annotations

import argparse
import json

from seqmodel.cli.common import (UsageError, load_checkpoint, positive_int, real_valued_data,
                                 rounded)
from seqmodel.configs import REPORT_NUM_SAMPLES, REPORT_NUM_STARTS


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
        f"start point (default {REPORT_NUM_SAMPLES})")
    add("--num-starts", type=positive_int, metavar="N", help="real values: start points "
        f"(default {REPORT_NUM_STARTS})")
    add("--min-context", type=positive_int, metavar="N", help="real values: shortest context")
    add("--seed", type=int, metavar="N", help=f"real values: sampling seed (default {EVAL_SEED})")
    add("--plot", metavar="PNG", help="real values: error against horizon chart (with "
        "--backtest: forecasts and intervals over the truth)")
    add("--backtest", type=positive_int, metavar="N", help="real values: rolling-origin "
        "backtest over the last N windows of --horizon steps of every series, against "
        "persistence, seasonal naive, AutoETS and AutoARIMA (the last two with the forecast "
        "extra)")
    add("--season", type=positive_int, metavar="M", help="real values: season of MASE and "
        "seasonal naive (default: from the time column's frequency, else 1)")
    add("--baselines", metavar="NAME,...", help="--backtest: the baselines to run (default "
        "persistence,seasonal_naive and, when statsforecast is installed, auto_ets,auto_arima)")
    add("--baseline-history", type=positive_int, metavar="N", help="--backtest: AutoETS and "
        "AutoARIMA see at most the last N steps before each origin (AutoARIMA is slow on long "
        "seasonal histories; default: all)")
    add("--allow-overlap", action="store_true", help="--backtest: score windows that overlap "
        "what the model trained or validated on (refused by default: train with --holdout N)")
    add("--no-calibration", action="store_true", help="--backtest: the model's raw intervals, "
        "without split-conformal calibration on the validation part")


def cmd_eval(args) -> int:
    from seqmodel.data import load_dataset
    from seqmodel.training.evaluation import evaluate
    from seqmodel.training.optimization import TrainConfig

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


def _eval_real_valued(args, model, metadata: dict) -> int:
    """``seqmodel eval`` for a real-valued checkpoint: the horizon report of its
    :class:`~seqmodel.forecasting.forecaster.Forecaster` on the validation part of ``--data``
    (default: the training data), as text or one ``--json`` line, and ``--plot`` its chart;
    ``--backtest N`` runs :func:`_backtest` instead."""
    import dataclasses

    import jax

    from seqmodel.forecasting.forecaster import Forecaster
    from seqmodel.forecasting.plots import plot_report
    from seqmodel.training.evaluation import evaluate
    from seqmodel.training.optimization import TrainConfig

    dataset, source, val_fraction = real_valued_data(args.data, model, metadata)
    for flag in ("baselines", "baseline_history"):
        if args.backtest is None and getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} applies to --backtest only")
    for flag in ("allow_overlap", "no_calibration"):
        if args.backtest is None and getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} applies to --backtest only")
    from seqmodel.forecasting.forecaster import load_members

    forecaster = Forecaster.from_metadata(model, metadata["data"])
    forecaster.members = load_members(args.checkpoint)
    if args.season is not None:
        forecaster.preparation = dataclasses.replace(forecaster.preparation, season=args.season)
    if args.backtest is not None:
        return _backtest(args, forecaster, dataset, source)
    if not dataset.val_sequences:
        raise ValueError(f"--data {source!r} has no validation part (val_fraction "
                         f"{val_fraction}); nothing to evaluate")
    horizon = EVAL_HORIZON if args.horizon is None else args.horizon
    key = jax.random.key(EVAL_SEED if args.seed is None else args.seed)
    eval_config = TrainConfig()
    nll = evaluate(model, dataset.validation_batches(batch_size=eval_config.eval_batch_size,
                                                     seq_len=eval_config.eval_seq_len)).loss
    options = {name: getattr(args, name) for name in ("num_samples", "num_starts", "min_context")
               if getattr(args, name) is not None}
    report = horizon_report_of(forecaster, dataset, key=key, horizon=horizon, nll=nll, **options)
    report = {"val_loss": report["nll"], **report, "data": source}
    if args.plot:
        plot_report(report, args.plot, title=f"{source}: horizon report")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{source}: teacher-forced NLL {report['nll']:.4f} nats per step (normalised units; "
          f"{report['nll_original_units']:.4f} in original units); {report['num_starts']} starts "
          f"x {report['num_samples']} sample paths")
    print(f"{'horizon':>8} {'MAE':>10} {'CRPS':>10} {'teacher':>10} {'persist.':>10} "
          f"{'s.naive':>10}")
    shown = sorted({h for h in (1, 2, 5, 10, 20, 50, 100, 200, horizon) if h <= horizon})
    for h in shown:
        print(f"{h:>8} {report['mae'][h - 1]:>10.4f} {report['crps'][h - 1]:>10.4f} "
              f"{report['teacher_forced_mae'][h - 1]:>10.4f} "
              f"{report['persistence_mae'][h - 1]:>10.4f} "
              f"{report['seasonal_naive_mae'][h - 1]:>10.4f}")
    print("MAE: free running, median of the paths; teacher: one-step MAE fed the truth; "
          f"persist.: last value repeated; s.naive: last season ({report['season']} steps) "
          "repeated" + (f"; chart {args.plot}" if args.plot else ""))
    return 0


def horizon_report_of(forecaster, dataset, *, key, horizon: int, nll: float,
                      min_context: int | None = None, **options) -> dict:
    """The forecaster's horizon report on ``dataset``'s validation part."""
    from seqmodel.forecasting.reports import horizon_report

    return horizon_report(forecaster.model, forecaster.preparation, dataset.series,
                          dataset.splits, key=key, horizon=horizon, nll=nll,
                          min_context=min_context or 1, **options)


def _backtest(args, forecaster, dataset, source: str) -> int:
    """``seqmodel eval --backtest N``: :func:`seqmodel.forecasting.backtest.backtest` of the
    whole series of ``--data`` (the held-out steps included) as a table (or one ``--json``
    line: one object per method), ``--plot`` its forecasts over the truth."""
    import jax

    from seqmodel.forecasting import baselines
    from seqmodel.forecasting.backtest import MODEL_METHOD, backtest
    from seqmodel.forecasting.plots import plot_backtest

    for flag in ("num_starts", "min_context"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} applies to the exposure-bias report, "
                             "not to --backtest")
    horizon = EVAL_HORIZON if args.horizon is None else args.horizon
    season = forecaster.preparation.season
    if args.baselines is None:
        chosen = ("persistence", "seasonal_naive") + (
            baselines.STATSFORECAST_BASELINES if baselines.statsforecast_available() else ())
    else:
        chosen = tuple(name.strip() for name in args.baselines.split(",") if name.strip())
        unknown = [name for name in chosen if name not in baselines.BASELINES]
        if unknown:
            raise UsageError(f"--baselines {args.baselines!r}: {', '.join(unknown)} unknown; "
                             f"allowed are {', '.join(baselines.BASELINES)}")
        missing = [name for name in chosen if name in baselines.STATSFORECAST_BASELINES]
        if missing and not baselines.statsforecast_available():
            raise UsageError(f"--baselines {', '.join(missing)} need statsforecast: pip install "
                             "'seqmodel[forecast]'")
    series = dataset.full_series
    calibration = None
    if not args.no_calibration:
        from seqmodel.forecasting.conformal import calibrate

        calibration = calibrate(forecaster, dataset.series, dataset.splits, horizon=horizon)
    result = backtest(forecaster.model, forecaster.preparation.spec,
                      forecaster.preparation.normalizer, series, windows=args.backtest,
                      members=forecaster.members, calibration=calibration,
                      seen=forecaster.seen, allow_overlap=args.allow_overlap,
                      horizon=horizon, season=season,
                      key=jax.random.key(EVAL_SEED if args.seed is None else args.seed),
                      num_samples=args.num_samples or BACKTEST_SAMPLES,
                      methods=(MODEL_METHOD,) + chosen, baseline_history=args.baseline_history)
    summary = {**result.to_dict(), "data": source, "allow_overlap": bool(args.allow_overlap)}
    if args.plot:
        plot_backtest(result, args.plot, title=f"{source}: backtest, {args.backtest} windows of "
                      f"{horizon}")
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{source}: backtest over the last {args.backtest} windows of {horizon} steps of "
          f"{len(series)} series (season {season}), overall scores")
    names = ("mae", "rmse", "mase", "smape", "nd", "wql", "crps", "coverage_80", "coverage_95")
    print(f"{'method':>15} " + " ".join(f"{name:>11}" for name in names))
    for method, scores in summary["methods"].items():
        print(f"{method:>15} " + " ".join(f"{scores[name]['overall']:>11.4g}" for name in names))
    if result.calibration:
        print("intervals calibrated on the validation part (split conformal, "
              f"{result.calibration['windows']} windows): coverage 80% "
              f"{result.calibration['coverage_80_before']:.3f} -> "
              f"{result.calibration['coverage_80_after']:.3f}, 95% "
              f"{result.calibration['coverage_95_before']:.3f} -> "
              f"{result.calibration['coverage_95_after']:.3f}")
    if result.overlap:
        print("warning: windows overlap what the model trained or validated on "
              "(--allow-overlap): these scores flatter it")
    print("per horizon step: --json" + (f"; chart {args.plot}" if args.plot else ""))
    return 0


# Sample paths per backtest window by default.
BACKTEST_SAMPLES = 200
