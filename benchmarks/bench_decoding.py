"""Decoding speed: beam search against a PyTorch eager beam loop over the same weights, and what
the logits processors cost inside ``generate``.

    python benchmarks/bench_decoding.py [--json decoding.json] [--repeats 5]
        [--part beam|processors]   (one part only; default both)

1. Beam search: LSTM, vocabulary 65, ``num_beams`` 8, batch 1, hidden 512, 500 steps, no eos (every
   step runs). seqmodel's ``beam_search`` (one compiled program) against the same algorithm as a
   PyTorch eager loop (``nn.LSTM`` + ``nn.Linear`` built by ``seqmodel.interop.to_torch``; one
   ``log_softmax``, ``topk`` and index-select of the hidden state per step; the faster of 1 and 2
   threads). Both must return the same best beam before timing. Tokens/s = rows x beams x steps /
   seconds.
2. Processors: ``generate`` tokens/s at batch 32, hidden 128, 500 steps, plain against the same
   call with repetition, presence and frequency penalties, a token bias, a ban and a stop
   sequence that never occurs.

Medians of alternating repetitions; compile excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from flax import nnx

import seqmodel as sm

VOCAB = 65


def make_model(hidden: int, seed: int = 0) -> sm.SequenceModel:
    config = sm.ModelConfig(vocab_size=VOCAB, cell="lstm", hidden_size=hidden, embed_size=64)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(seed))
    model.eval()
    return model


def time_call(run, repeats: int) -> list[float]:
    run()  # compile / warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------


def torch_beam_search(modules, prompt: np.ndarray, steps: int, beams: int):
    """The beam search of seqmodel.decoding.beam without eos, as a PyTorch eager loop (batch 1)."""
    import torch

    embedding, rnn, head = modules
    with torch.no_grad():
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        state = None
        if tokens.shape[1] > 1:
            _, state = rnn(embedding(tokens[:, :-1]), state)
        x = tokens[:, -1].repeat(beams)
        if state is not None:
            state = tuple(s.repeat_interleave(beams, dim=1) for s in state)
        scores = torch.full((beams,), -float("inf"))
        scores[0] = 0.0
        history = torch.zeros((beams, steps), dtype=torch.long)
        for step in range(steps):
            output, state = rnn(embedding(x)[:, None], state)
            log_probs = torch.log_softmax(head(output[:, 0]), dim=-1)
            totals = (scores[:, None] + log_probs).reshape(-1)
            scores, flat = torch.topk(totals, beams)
            parent, x = flat // VOCAB, flat % VOCAB
            history = history[parent]
            history[:, step] = x
            state = tuple(s[:, parent] for s in state)
        return history.numpy(), scores.numpy()


def bench_beam(args) -> dict:
    import torch

    from seqmodel.interop import to_torch

    model = make_model(args.hidden)
    modules = to_torch(model)
    prompt = np.array([[1, 2, 3, 4]], np.int32)
    ours = sm.beam_search(model, prompt=prompt, steps=args.steps, num_beams=args.beams,
                          num_return_sequences=args.beams)
    theirs, _ = torch_beam_search(modules, prompt, args.steps, args.beams)
    # Same weights, no randomness: the best beams agree (float rounding may reorder late ties).
    check = min(args.steps, 50)
    agree = bool(np.array_equal(np.asarray(ours.sequences[0, 0, :check]), theirs[0, :check]))
    if not agree:
        raise SystemExit("bench_decoding: seqmodel and PyTorch beam searches disagree on the best "
                         "beam's first tokens; the models are not the same")

    def ours_run():
        jax.block_until_ready(sm.beam_search(model, prompt=prompt, steps=args.steps,
                                             num_beams=args.beams))

    results = {"seqmodel": [], "pytorch": {}}
    thread_counts = (1, 2)
    for _ in range(args.repeats):
        results["seqmodel"] += time_call(ours_run, 1)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            results["pytorch"].setdefault(threads, []).extend(time_call(
                lambda: torch_beam_search(modules, prompt, args.steps, args.beams), 1))
    tokens = args.beams * args.steps
    ours_rate = tokens / statistics.median(results["seqmodel"])
    torch_rate = max(tokens / statistics.median(times) for times in results["pytorch"].values())
    return {"hidden": args.hidden, "beams": args.beams, "steps": args.steps,
            "seqmodel_tokens_per_second": ours_rate, "pytorch_tokens_per_second": torch_rate,
            "ratio": ours_rate / torch_rate, "best_beams_agree_first_tokens": check}


# ---------------------------------------------------------------------------------------------
# Processors
# ---------------------------------------------------------------------------------------------


PROCESSORS = dict(repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.1,
                  token_bias={5: 0.5}, banned_tokens=[0], stop_sequences=[[64, 64, 64, 64]])


def bench_processors(args) -> dict:
    model = make_model(128)
    prompt = np.tile(np.arange(1, 9, dtype=np.int32), (32, 1))
    key = jax.random.key(0)

    def run(**extra):
        return lambda: jax.block_until_ready(
            sm.generate(model, key=key, steps=args.steps, prompt=prompt, **extra).samples)

    plain, processed, repetition = [], [], []
    cpu = {"plain": [], "all": []}  # CPU seconds of the process: steadier on a shared machine
    for _ in range(args.repeats):
        started = time.process_time()
        plain += time_call(run(), 1)
        cpu["plain"].append(time.process_time() - started)
        started = time.process_time()
        processed += time_call(run(**PROCESSORS), 1)
        cpu["all"].append(time.process_time() - started)
        repetition += time_call(run(repetition_penalty=1.2), 1)
    tokens = 32 * args.steps
    plain_rate = tokens / statistics.median(plain)
    processed_rate = tokens / statistics.median(processed)
    return {"batch": 32, "hidden": 128, "steps": args.steps,
            "plain_tokens_per_second": plain_rate,
            "all_processors_tokens_per_second": processed_rate,
            "repetition_only_tokens_per_second": tokens / statistics.median(repetition),
            "cost_fraction": 1.0 - processed_rate / plain_rate,
            "cpu_cost_fraction": statistics.median(cpu["all"]) / statistics.median(cpu["plain"])
            - 1.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--beams", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("beam", "processors"),
                        help="run one part only (default: both)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    report = {"jax": jax.__version__}
    if args.part in (None, "beam"):
        report["beam_search"] = beam = bench_beam(args)
        print(f"beam search (beams {beam['beams']}, batch 1, hidden {beam['hidden']}, "
              f"{beam['steps']} steps): seqmodel {beam['seqmodel_tokens_per_second']:,.0f} "
              f"tok/s, PyTorch eager {beam['pytorch_tokens_per_second']:,.0f} tok/s: "
              f"{beam['ratio']:.1f}x")
    if args.part in (None, "processors"):
        report["processors"] = processors = bench_processors(args)
        report["loadavg"] = [round(value, 2) for value in os.getloadavg()]
        print(f"processors (batch 32, hidden 128): plain "
              f"{processors['plain_tokens_per_second']:,.0f} tok/s, all processors "
              f"{processors['all_processors_tokens_per_second']:,.0f} tok/s (cost "
              f"{100 * processors['cost_fraction']:.1f}%), repetition penalty only "
              f"{processors['repetition_only_tokens_per_second']:,.0f} tok/s; CPU time cost "
              f"{100 * processors['cpu_cost_fraction']:.1f}%")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
