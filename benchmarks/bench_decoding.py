"""Decoding speed: beam search against PyTorch's best beam loop over the same weights, and what
the logits processors cost inside ``generate``; every candidate in its own process.

    python benchmarks/bench_decoding.py [--json benchmarks/results/decoding_cpu_2core.json]

1. Beam search: LSTM, vocabulary 65, ``num_beams`` 8, batch 1, hidden 512, 500 steps, no eos (every
   step runs). seqmodel's ``beam_search`` (one compiled program) against the same algorithm as a
   PyTorch loop (:func:`benchmarks.decode_workers.torch_beam_search`: one ``log_softmax``,
   ``topk`` and index-select of the state per step) over ``nn.LSTM`` stepped on length-1
   sequences (``torch-...``) and over ``nn.LSTMCell`` (``torch-cell-...``), eager and with the
   step under ``torch.compile``, at each thread setting; the fastest is the baseline. Every
   PyTorch candidate must return seqmodel's best beam (its first 50 tokens) or it is dropped.
   Tokens/s = beams x steps / seconds.
2. Processors: ``generate`` tokens/s at batch 32, hidden 128, 500 steps, plain against the same
   call with repetition, presence and frequency penalties, a token bias, a ban and a stop
   sequence that never occurs, and with the repetition penalty alone.

Medians of alternating repetitions; compile excluded.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import candidates  # noqa: E402
from benchmarks.bench_generate import measure  # noqa: E402  (start, alternate, summarise)
from benchmarks.environment import finish, provenance  # noqa: E402

PROCESSORS = dict(repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.1,
                  token_bias={5: 0.5}, banned_tokens=[0], stop_sequences=[[64, 64, 64, 64]])


def bench_beam(args, log=print) -> dict:
    options = {"beams": args.beams, "steps": args.steps}
    chosen = [candidates.Candidate("seqmodel", "beam", options)]
    chosen += candidates.torch_variants("torch-beam", {"module": (), "cell": ()}, extra=options)
    result = measure(args.hidden, chosen, repeats=args.repeats, log=log)
    entries = result["candidates"]
    reference = entries.get("seqmodel", {}).get("best_beam")
    for name, entry in entries.items():
        # Same weights, no randomness: the best beams agree (float ties may reorder late ones).
        if name != "seqmodel" and "median" in entry and entry.get("best_beam") != reference:
            entry["error"] = "its best beam differs from seqmodel's: not the same model"
            entry.pop("median")
    tokens = args.beams * args.steps
    for entry in entries.values():
        if "median" in entry:
            entry["tokens_per_second"] = tokens / entry["median"]
    best = candidates.fastest_torch(entries)
    ours = entries.get("seqmodel", {}).get("tokens_per_second")
    return {"hidden": args.hidden, "beams": args.beams, "steps": args.steps, **result,
            "torch_best": best, "seqmodel_tokens_per_second": ours,
            "pytorch_tokens_per_second": entries[best]["tokens_per_second"] if best else None,
            "ratio": ours / entries[best]["tokens_per_second"] if best and ours else None}


def bench_processors(args, log=print) -> dict:
    prompt = np.tile(np.arange(1, 9, dtype=np.int32), (32, 1)).tolist()
    base = {"variant": "generate", "batch": 32, "steps": args.steps, "prompt": prompt}
    processors = {**PROCESSORS, "token_bias": {str(k): v for k, v in PROCESSORS["token_bias"].items()}}
    chosen = [candidates.Candidate("plain", "generate", base),
              candidates.Candidate("all-processors", "generate",
                                   {**base, "generate_options": processors}),
              candidates.Candidate("repetition-only", "generate",
                                   {**base, "generate_options": {"repetition_penalty": 1.2}})]
    result = measure(128, chosen, repeats=args.repeats, log=log)
    tokens = 32 * args.steps
    rates = {name: tokens / entry["median"] for name, entry in result["candidates"].items()
             if "median" in entry}
    return {"batch": 32, "hidden": 128, "steps": args.steps, **result,
            "plain_tokens_per_second": rates.get("plain"),
            "all_processors_tokens_per_second": rates.get("all-processors"),
            "repetition_only_tokens_per_second": rates.get("repetition-only"),
            "cost_fraction": (1.0 - rates["all-processors"] / rates["plain"]
                              if "plain" in rates and "all-processors" in rates else None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--beams", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("beam", "processors"), help="run one part only")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    report = provenance("benchmarks/bench_decoding.py", argv)
    if args.only != "processors":
        beam = report["beam_search"] = bench_beam(args, log)
        print(f"beam search (beams {beam['beams']}, batch 1, hidden {beam['hidden']}, "
              f"{beam['steps']} steps): seqmodel {beam['seqmodel_tokens_per_second'] or 0:,.0f} "
              f"tok/s, PyTorch's best ({beam['torch_best']}) "
              f"{beam['pytorch_tokens_per_second'] or 0:,.0f} tok/s: {beam['ratio'] or 0:.1f}x")
    if args.only != "beam":
        processors = report["processors"] = bench_processors(args, log)
        print(f"processors (batch 32, hidden 128): plain "
              f"{processors['plain_tokens_per_second'] or 0:,.0f} tok/s, all processors "
              f"{processors['all_processors_tokens_per_second'] or 0:,.0f} tok/s (cost "
              f"{100 * (processors['cost_fraction'] or 0):.1f}%), repetition penalty only "
              f"{processors['repetition_only_tokens_per_second'] or 0:,.0f} tok/s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(finish(report), indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
