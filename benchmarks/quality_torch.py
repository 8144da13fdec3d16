"""The PyTorch arm of the quality benchmark: ``nn.LSTM`` trained on a text corpus for a wall-time
budget with ``seqmodel train``'s defaults, so that the two compare at an equal (zero) tuning
budget.

Everything but the framework is seqmodel's: the corpus, tokenizer and validation split
(:func:`seqmodel.data.load_dataset`), the training lanes (batch 16 x 32, carry passed along,
reset at the epoch's wrap), the initial weights (the seqmodel LSTM model of ``--seed``, copied by
:func:`seqmodel.interop.to_torch`), the optimizer (global-norm clipping 1.0, AdamW 5e-3, betas
0.9 / 0.99, weight decay 0.01 on matrices only), the schedule (100 warmup steps, cosine to 5% at
the step count estimated from the measured speed, re-estimated as it goes), evaluation every
2000 steps and at the end (the exact NLL of the validation stream in lanes of 32 x 256 with the
carry passed along), and the rule that the budget keeps time for the final evaluation. PyTorch
runs at the faster of its default and one thread (timed on 20 steps each at start-up).

It writes ``metrics.jsonl`` records as ``seqmodel train`` does and prints the same JSON summary
line, so :mod:`benchmarks.bench_quality` reads both alike::

    python -m benchmarks.quality_torch --data tinyshakespeare --max-time 110 --out runs/torch
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

DEFAULTS = {"hidden_size": 512, "batch_size": 16, "seq_len": 32, "learning_rate": 5e-3,
            "warmup_steps": 100, "final_fraction": 0.05, "weight_decay": 0.01,
            "betas": (0.9, 0.99), "clip_norm": 1.0, "eval_every": 2000, "eval_batch_size": 32,
            "eval_seq_len": 256, "log_every": 20}


def learning_rate(step: int, horizon: int) -> float:
    """seqmodel's schedule: linear warmup, then cosine to ``final_fraction`` at ``horizon``."""
    peak, warmup = DEFAULTS["learning_rate"], DEFAULTS["warmup_steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
    floor = peak * DEFAULTS["final_fraction"]
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Model:
    """Embedding -> LSTM -> Linear in PyTorch, holding a seqmodel model's initial weights."""

    def __init__(self, vocab_size: int, seed: int):
        import torch
        from flax import nnx

        from seqmodel import ModelConfig, SequenceModel
        from seqmodel.interop import to_torch

        config = ModelConfig(vocab_size=vocab_size, cell="lstm",
                             hidden_size=DEFAULTS["hidden_size"])
        self.embedding, self.lstm, self.head = to_torch(SequenceModel(config, rngs=nnx.Rngs(seed)))
        self.modules = torch.nn.ModuleList([self.embedding, self.lstm, self.head])

    def __call__(self, tokens, state):
        output, state = self.lstm(self.embedding(tokens), state)
        return self.head(output), state


def _reset(state, reset):
    """Zero the rows of ``state`` whose ``reset`` is True (a lane that starts anew)."""
    import torch

    if state is None:
        return None
    keep = torch.from_numpy(~np.asarray(reset)).float()[None, :, None]
    return tuple(part * keep for part in state)


def evaluate(model, batches) -> float:
    """Exact NLL (nats per element) over evaluation batches with the carry passed along."""
    import torch

    total, count, state = 0.0, 0.0, None
    with torch.no_grad():
        for batch in batches:
            state = _reset(state, batch.reset)
            logits, state = model(torch.from_numpy(batch.inputs).long(), state)
            losses = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), torch.from_numpy(batch.targets).long().flatten(),
                reduction="none")
            mask = torch.from_numpy(batch.mask).flatten()
            total += float((losses * mask).sum())
            count += float(mask.sum())
    return total / count


def main(argv=None) -> int:
    import torch

    from seqmodel.data import load_dataset
    from seqmodel.data.batching import evaluation_batches, make_batch_iterator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--max-time", type=float, default=110.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for metrics.jsonl")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset = load_dataset(args.data)
    torch.manual_seed(args.seed)
    model = Model(dataset.vocab_size, args.seed)
    decay = [p for p in model.modules.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.modules.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": DEFAULTS["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=DEFAULTS["learning_rate"], betas=DEFAULTS["betas"])
    batches = make_batch_iterator(dataset.train_tokens, batch_size=DEFAULTS["batch_size"],
                                  seq_len=DEFAULTS["seq_len"], batching="lanes", seed=args.seed)
    validation = evaluation_batches(dataset.val_tokens, batch_size=DEFAULTS["eval_batch_size"],
                                    seq_len=DEFAULTS["eval_seq_len"])
    state = {"carry": None}

    def train_step(step: int, horizon: int) -> float:
        batch = next(batches)
        carry = _reset(state["carry"], batch.reset)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, horizon)
        optimizer.zero_grad(set_to_none=True)
        logits, carry = model(torch.from_numpy(batch.inputs).long(), carry)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), torch.from_numpy(batch.targets).long().flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.modules.parameters(), DEFAULTS["clip_norm"])
        optimizer.step()
        state["carry"] = tuple(part.detach() for part in carry)  # truncated BPTT
        return loss.item()

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = (out / "metrics.jsonl").open("w", encoding="utf-8")
    clock, horizon, losses, val_loss = time.perf_counter(), 10**6, [], None

    def elapsed() -> float:
        return time.perf_counter() - clock

    def write(record: dict) -> None:
        records.write(json.dumps(record) + "\n")
        records.flush()

    # The final evaluation's time is kept out of the training time (as seqmodel's fit does).
    begin = time.perf_counter()
    evaluate(model, validation[:1])
    eval_seconds = (time.perf_counter() - begin) * len(validation)
    # The faster of PyTorch's default threads and one thread, timed on the run's own first
    # steps (they train, and count against the budget).
    default_threads, timings, step = torch.get_num_threads(), {}, 0
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        begin, timed = time.perf_counter(), 0
        # 20 steps, or fewer when they would take more than 5% of the budget (a busy machine).
        while timed < 20 and time.perf_counter() - begin < 0.05 * args.max_time:
            losses.append(train_step(step, horizon))
            step, timed = step + 1, timed + 1
        timings[threads] = (time.perf_counter() - begin) / timed
    threads = min(timings, key=timings.get)
    torch.set_num_threads(threads)
    while elapsed() + eval_seconds < args.max_time:
        losses.append(train_step(step, horizon))
        step += 1
        rate = elapsed() / step
        horizon = step + int((args.max_time - elapsed() - eval_seconds) / max(rate, 1e-9))
        if step % DEFAULTS["log_every"] == 0:
            write({"step": step, "loss": float(np.mean(losses)), "elapsed": elapsed()})
            losses = []
        if step % DEFAULTS["eval_every"] == 0:
            val_loss = evaluate(model, validation)
            write({"step": step, "val_loss": val_loss, "elapsed": elapsed()})
    val_loss = evaluate(model, validation)
    write({"step": step, "val_loss": val_loss, "elapsed": elapsed()})
    records.close()
    train_seconds = elapsed()
    tokens = step * DEFAULTS["batch_size"] * DEFAULTS["seq_len"]
    print(json.dumps({
        "steps": step, "tokens": tokens, "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(tokens / train_seconds, 1), "val_loss": round(val_loss, 5),
        "bpc": round(val_loss / math.log(2), 5), "threads": threads,
        "thread_seconds_per_step": timings, "wall_seconds": round(time.perf_counter() - started, 3),
        "sample": ""}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
