"""``seqmodel sample``: continue a text prompt from a checkpoint, or draw sample paths of a
real-valued model (quantiles, fan chart)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import NamedTuple

from seqmodel.cli.common import (
    UsageError,
    load_checkpoint,
    non_negative_float,
    number_type,
    positive_int,
    real_valued_data,
)


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--checkpoint", required=True, metavar="DIR", help="run folder (best checkpoint, else latest)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="text to continue (default: a newline)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="UTF-8 file whose text to continue; "
                        "real values: a .csv / .npy history (default: the training file)")
    add("--steps", type=positive_int, default=500, metavar="N", help="new elements (default 500)")
    add("--num-samples", type=positive_int, default=1, metavar="N", help="continuations (default 1)")
    add("--temperature", type=non_negative_float, default=1.0, metavar="T",
        help="divides the logits; 0 is greedy (default 1.0)")
    add("--top-k", type=positive_int, metavar="K", help="sample among the K most likely tokens")
    add("--top-p", type=number_type(float, low=0, low_open=True, high=1), metavar="P",
        help="sample within the nucleus of probability P")
    add("--greedy", action="store_true", help="always take the most likely token")
    add("--beams", type=positive_int, metavar="N", help="beam search with N beams instead of "
        "sampling (--num-samples best hypotheses, at most N)")
    add("--length-penalty", type=number_type(float), metavar="F", help="with --beams: a "
        "hypothesis scores sum(log p) / length**F (default 1.0)")
    add("--repetition-penalty", type=number_type(float, low=0, low_open=True), metavar="F",
        help="divide the logits of tokens already seen by F (> 1 discourages repeats)")
    add("--min-new-tokens", type=positive_int, metavar="N", help="no --stop text ends a "
        "continuation before N new tokens")
    add("--stop", metavar="TEXT", action="append", help="end each continuation after the first "
        "TEXT (repeat the flag for several)")
    add("--seed", type=int, default=0, metavar="N", help="same seed, same text (default 0)")
    constraint = parser.add_mutually_exclusive_group()
    constraint.add_argument("--regex", metavar="PATTERN", help="text models: every continuation "
                            "(with its --prompt, if given) is a text matching PATTERN in full")
    constraint.add_argument("--json-schema", metavar="FILE", help="text models: every "
                            "continuation is JSON valid under the schema in FILE")
    add("--json", action="store_true", help="text models: print one JSON line {\"samples\": "
        "[text, ...], \"lengths\": [...], \"stop_reasons\": [...]} (continuations only)")
    # Real-valued models (_sample_real_valued): context from --prompt-file (.csv/.npy), else
    # the training file.
    add("--out", metavar="PATH", help="real values: write sample paths (S, H, d) to this .npy")
    add("--quantiles", metavar="Q1,Q2,...", help="real values: write these quantiles instead "
        "(central pairs calibrated by split conformal on the training data's validation part)")
    add("--no-calibration", action="store_true", help="real values: the model's own quantiles, "
        "without conformal calibration")
    add("--plot", metavar="PNG", help="real values: fan chart of the first context")
    add("--future-file", metavar="FILE", help="forecasters with covariates: their values over "
        "the --steps forecast steps (rows after the context; the id column when the context "
        "has several series)")


class TextSample(NamedTuple):
    """One continuation: its ``text``, its ``length`` in tokens and why it stopped."""

    text: str
    length: int
    stop_reason: str


def text_samples(model, tokenizer, *, key, steps: int, prompt: str | None,
                 temperature: float = 1.0, top_k=None, top_p=None, greedy=False,
                 num_samples: int = 1, stop: list[str] | None = None, beams: int | None = None,
                 length_penalty: float | None = None, repetition_penalty: float | None = None,
                 min_new_tokens: int | None = None, constraint=None) -> list[TextSample]:
    """Continuations of ``prompt`` (None: from the model's start element; not included in the
    texts): sampled, or the best ``num_samples`` hypotheses of a beam search with ``beams``
    beams. Each ``stop`` text ends a continuation (included in it); a ``constraint``
    (:class:`seqmodel.Regex`, :class:`seqmodel.JsonSchema`) keeps prompt + continuation in its
    language."""
    import numpy as np

    from seqmodel.decoding.beam import beam_search
    from seqmodel.decoding.generate import generate

    ids = None if prompt is None else np.asarray(tokenizer.encode(prompt, what="prompt"),
                                                 np.int32)[None]
    stop_sequences = [list(tokenizer.encode(text, what="--stop text")) for text in stop or []]
    processors = dict(stop_sequences=stop_sequences or None,
                      repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens)
    if beams is None:
        generation = generate(model, key=key, steps=steps, prompt=ids, num_samples=num_samples,
                              temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              constraint=constraint, **processors)
        rows = zip(np.asarray(generation.samples), np.asarray(generation.lengths),
                   generation.stop_reason_names())
    else:
        result = beam_search(model, prompt=ids, steps=steps, num_beams=beams,
                             num_return_sequences=num_samples,
                             length_penalty=1.0 if length_penalty is None else length_penalty,
                             constraint=constraint, **processors)
        rows = zip(np.asarray(result.sequences[0]), np.asarray(result.lengths[0]),
                   result.stop_reason_names()[0])
    return [TextSample(tokenizer.decode(row[:length]), int(length), reason)
            for row, length, reason in rows]


def text_sample(model, tokenizer, **arguments) -> list[str]:
    """The texts of :func:`text_samples` (same arguments)."""
    return [sample.text for sample in text_samples(model, tokenizer, **arguments)]


def build_constraint(args, tokenizer):
    """The constraint of ``--regex`` / ``--json-schema`` (None without them)."""
    if args.regex is None and args.json_schema is None:
        return None
    from seqmodel.decoding.constraints import JsonSchema, Regex

    if args.regex is not None:
        return Regex(args.regex, tokenizer)
    try:
        text = pathlib.Path(args.json_schema).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError(f"--json-schema {args.json_schema!r}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--json-schema {args.json_schema!r} is not valid UTF-8") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--json-schema {args.json_schema!r} is not JSON: {error}") from None
    return JsonSchema(schema, tokenizer)


def _check_decoding_flags(args) -> None:
    """Flags that contradict each other: one line naming them."""
    if args.beams is None:
        if args.length_penalty is not None:
            raise UsageError("seqmodel sample: --length-penalty applies to --beams only")
        return
    if args.num_samples > args.beams:
        raise UsageError(f"seqmodel sample: --num-samples {args.num_samples} is more than "
                         f"--beams {args.beams}: a beam search returns at most one hypothesis "
                         "per beam")
    for flag in ("top_k", "top_p"):
        if getattr(args, flag) is not None:
            raise UsageError(f"seqmodel sample: --{flag.replace('_', '-')} is a sampling control; "
                             "it does not apply to --beams")
    if args.greedy or args.temperature != 1.0:
        raise UsageError("seqmodel sample: --greedy and --temperature are sampling controls; "
                         "they do not apply to --beams")


def default_prompt(tokenizer) -> str:
    if tokenizer.kind == "byte" or "\n" in getattr(tokenizer, "vocabulary", ""):
        return "\n"
    return tokenizer.vocabulary[0]


def cmd_sample(args) -> int:
    import jax

    from seqmodel.data import tokenizer_from_dict

    model, metadata = load_checkpoint(args.checkpoint)
    data = metadata.get("data", {})
    if data.get("kind", "text") != "text":
        return _sample_real_valued(args, model, metadata)
    for flag in ("out", "quantiles", "plot", "no_calibration"):
        if getattr(args, flag) not in (None, False):
            raise UsageError(f"seqmodel sample: --{flag.replace('_', '-')} applies to "
                             "real-valued models only")
    _check_decoding_flags(args)
    tokenizer = tokenizer_from_dict(data["tokenizer"])
    constraint = build_constraint(args, tokenizer)
    if args.prompt_file is not None:
        try:
            prompt = pathlib.Path(args.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--prompt-file {args.prompt_file!r}: no such file") from None
        except UnicodeDecodeError:
            raise UsageError(f"--prompt-file {args.prompt_file!r} is not valid UTF-8") from None
    elif args.prompt is not None:
        prompt = args.prompt
    elif constraint is not None:
        if args.beams is not None:
            raise UsageError("seqmodel sample: --beams with --regex or --json-schema needs "
                             "--prompt: the start of a text of the language")
        prompt = None  # the constrained text starts at the model's start element
    else:
        prompt = default_prompt(tokenizer)
    if prompt == "":
        raise UsageError("--prompt is empty; give at least one character")
    samples = text_samples(model, tokenizer, key=jax.random.key(args.seed), steps=args.steps,
                           prompt=prompt, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, greedy=args.greedy, num_samples=args.num_samples,
                           stop=args.stop, beams=args.beams, length_penalty=args.length_penalty,
                           repetition_penalty=args.repetition_penalty,
                           min_new_tokens=args.min_new_tokens, constraint=constraint)
    if args.json:
        print(json.dumps({"samples": [sample.text for sample in samples],
                          "lengths": [sample.length for sample in samples],
                          "stop_reasons": [sample.stop_reason for sample in samples]}),
              flush=True)
        return 0
    for index, sample in enumerate(samples):
        if index:
            print("\n" + "-" * 40)
        text = (prompt or "") + sample.text
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    sys.stdout.flush()
    return 0


def parse_quantiles(text: str) -> tuple[float, ...]:
    """``"0.1,0.5,0.9"`` -> ``(0.1, 0.5, 0.9)``, with a clear error for anything else."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--quantiles {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0.0 <= q <= 1.0 for q in values):
        raise ValueError(f"--quantiles {text!r}: give numbers in [0, 1], e.g. 0.1,0.5,0.9")
    return values


def _sample_real_valued(args, model, metadata: dict) -> int:
    """``seqmodel sample`` for a real-valued checkpoint, through its
    :class:`~seqmodel.forecasting.forecaster.Forecaster`: sample paths ``(S, H, d)`` per series
    of the history (``(n, S, H, d)`` for ``n`` series) in original units to ``--out``
    (``.npy``), or their ``--quantiles`` ``(Q, H, d)``; ``--plot`` draws the fan chart of the
    first series. Without ``--out`` it prints the quantiles of the first series as CSV."""
    import jax

    from seqmodel.forecasting.forecaster import Forecaster

    if args.prompt is not None:
        raise ValueError("--prompt is for text models; a real-valued model continues "
                         "--prompt-file context.csv (or .npy)")
    if args.prompt_file is None:
        # The training file is the history a forecasting user means when they name none: each
        # of its series is continued from its end.
        source = metadata.get("source")
        if not (source and os.path.isfile(source)):
            raise ValueError("a real-valued model needs a context to continue: --prompt-file "
                             "context.csv (rows = time steps, columns = features) or .npy"
                             + (f" (the training data {source!r} is not a file here)"
                                if source else ""))
        args.prompt_file = source
        print(f"seqmodel sample: continuing the series of the training data {source!r} from "
              "their ends (--prompt-file chooses another history)", file=sys.stderr)
    for flag in ("top_k", "top_p", "stop", "regex", "json_schema"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to text models only; "
                             "real-valued sampling takes --temperature (or --greedy)")
    if args.json:
        raise ValueError("--json applies to text models only; real-valued samples go to --out "
                         "(.npy) or print as a CSV table")
    forecaster = Forecaster.from_metadata(model, metadata["data"])
    for flag, path in (("--prompt-file", args.prompt_file), ("--future-file", args.future_file)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path!r}: no such file")
    if args.future_file is not None and not forecaster.preparation.spec.covariate_columns:
        raise UsageError("--future-file applies to models trained with --covariates (this one "
                         "reads no covariates)")
    try:
        history = forecaster.read(args.prompt_file, what="--prompt-file")
        future = None if args.future_file is None else forecaster.read(args.future_file, future=True,
                                                                      what="--future-file")
    except ValueError as error:
        raise UsageError(str(error).splitlines()[0]) from None
    if forecaster.preparation.spec.covariate_columns and future is None:
        raise UsageError(f"the model reads the covariates "
                         f"{', '.join(forecaster.preparation.spec.covariate_columns)}: give their "
                         f"values over the {args.steps} forecast steps with --future-file FILE")
    temperature = 0.0 if args.greedy else args.temperature
    try:
        forecast = forecaster.predict(history, future, horizon=args.steps,
                                      num_samples=args.num_samples,
                                      key=jax.random.key(args.seed), temperature=temperature)
    except ValueError as error:
        message = str(error).splitlines()[0]
        flag = "--future-file" if "future" in message else "--prompt-file"
        raise UsageError(f"{flag}: {message.replace('the horizon', '--steps')}") from None
    originals = history.select(forecaster.preparation.columns, what="--prompt-file")
    if not args.no_calibration and (args.quantiles or not args.out):
        _calibrate(args, forecaster, model, metadata)
    return _write_paths(args, metadata, originals, forecast, forecaster)


def _calibrate(args, forecaster, model, metadata: dict) -> None:
    """Set ``forecaster.calibration``: split-conformal margins for ``--steps`` steps on the
    validation part of the training data (as ``fit`` and ``eval --backtest`` calibrate), or say
    on stderr why the quantiles stay the model's own."""
    from seqmodel.data import DataError
    from seqmodel.forecasting.conformal import calibrate

    try:
        dataset, source, _ = real_valued_data(None, model, metadata)
        forecaster.calibration = calibrate(forecaster, dataset.series, dataset.splits,
                                           horizon=args.steps)
    except (DataError, OSError, ValueError) as error:
        print(f"seqmodel sample: quantiles not calibrated ({str(error).splitlines()[0]}); "
              "--no-calibration asks for the model's own", file=sys.stderr)
        return
    print(f"seqmodel sample: quantiles calibrated by split conformal on "
          f"{forecaster.calibration.windows} windows of {source!r} "
          "(--no-calibration: the model's own)", file=sys.stderr)


def _write_paths(args, metadata: dict, histories: list, forecast, forecaster) -> int:
    """Write the sample paths ``(n, S, H, d)`` of ``forecast`` (or their quantiles, calibrated
    where ``forecaster`` holds a calibration) as ``--out``, ``--plot`` and the CSV table on
    stdout say; ``histories`` ``[(T_i, d)]`` in original units."""
    import numpy as np

    from seqmodel.forecasting.plots import plot_fan

    paths = forecast.paths
    quantiles = parse_quantiles(args.quantiles) if args.quantiles else None
    result = paths if quantiles is None else np.moveaxis(
        forecaster.interval_quantiles(forecast, quantiles, histories), 0, 1)  # (n, Q, H, d)
    if len(histories) == 1:
        result = result[0]
    if args.plot:
        plot_fan(histories[0], paths[0], args.plot,
                 feature_names=metadata["data"].get("columns"))
    if args.out:
        np.save(args.out, result.astype(np.float32))
        what = "quantiles " + ",".join(f"{q:g}" for q in quantiles) if quantiles else "sample paths"
        print(f"wrote {what} {tuple(result.shape)} in original units to {args.out}"
              + (f"; fan chart {args.plot}" if args.plot else ""), file=sys.stderr)
        return 0
    shown = quantiles or (0.1, 0.5, 0.9)
    table = forecaster.interval_quantiles(forecast, shown, histories)[:, 0]  # (Q, H, d)
    columns = metadata["data"].get("columns") or [f"feature {i}" for i in range(paths.shape[-1])]
    print(",".join(["step"] + [f"{name} q{q:g}" for name in columns for q in shown]))
    for step in range(table.shape[1]):
        cells = [f"{table[q, step, f]:.6g}" for f in range(table.shape[2]) for q in range(len(shown))]
        print(",".join([str(step + 1)] + cells))
    return 0
