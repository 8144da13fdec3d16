"""Constrained generation: what a constraint costs, how long its automaton takes to build, and
what it does for a small character model (the worked example of docs/constraints.md).

    python benchmarks/bench_constraints.py [--json constraints.json] [--repeats 5]
        [--train-seconds 90] [--skip-example]

1. Cost: ``generate`` tokens/s of an LSTM (vocabulary of the CSV corpus below, 500 steps, no
   eos: every step runs) at batch 1 and 32, hidden 128 and 512, unconstrained against the same
   call with ``seqmodel.Regex`` of the corpus' rows, repeated (every state has a continuation,
   so both run all steps). Medians of alternating repetitions, compile excluded; target: the
   constraint costs <= 25%.
2. Build: seconds to build ``seqmodel.JsonSchema`` of a person record (strings with lengths,
   an email, an integer, an enum, an array, a nested object) over a char tokenizer of printable
   ASCII and over the byte tokenizer; and, for the choice of library, the same regular
   expression's character automaton built by interegular and tabulated over the char tokenizer.
3. Example: a 1-layer LSTM trained for ``--train-seconds`` on a generated CSV corpus
   (``name,age,city,score`` rows); 200 rows sampled without and with the constraint: the
   fraction that are valid rows, and their mean NLL per character under the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import seqmodel as sm
from benchmarks.environment import installed_versions

# One row of the generated corpus.
ROW = r"[a-z]{3,8},[1-9][0-9],(paris|lyon|oslo|rome|kyiv),[0-9]\.[0-9]{2}\n"
CITIES = ("paris", "lyon", "oslo", "rome", "kyiv")
SYLLABLES = ("ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "de", "an", "el", "or")

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "zip": {"type": "string", "pattern": "[0-9]{5}"}},
            "required": ["city", "zip"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "role"],
}


def csv_corpus(rows: int, seed: int = 0) -> str:
    """``rows`` lines ``name,age,city,score`` (each one matches :data:`ROW`)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        name = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 5)))[:8]
        lines.append(f"{name},{rng.integers(18, 100)},{rng.choice(CITIES)},"
                     f"{rng.integers(0, 10)}.{rng.integers(0, 100):02d}\n")
    return "".join(lines)


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# 1. Cost
# ---------------------------------------------------------------------------------------------


def bench_cost(args, tokenizer) -> list[dict]:
    constraint = sm.Regex(f"({ROW})*", tokenizer)
    rows = []
    for hidden in (128, 512):
        config = sm.ModelConfig(vocab_size=tokenizer.vocab_size, cell="lstm", hidden_size=hidden,
                                embed_size=64)
        model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
        model.eval()
        for batch in (1, 32):
            def run(**extra):
                return lambda: jax.block_until_ready(sm.generate(
                    model, key=jax.random.key(0), steps=args.steps, batch_size=batch,
                    **extra).samples)

            candidates = {"plain": run(), "constrained": run(constraint=constraint)}
            for call in candidates.values():
                call()  # compile
            times = {name: [] for name in candidates}
            processor_times = {name: [] for name in candidates}
            loads = [load()]
            for _ in range(args.repeats):
                for name, call in candidates.items():
                    started, cpu_started = time.perf_counter(), time.process_time()
                    call()
                    times[name].append(time.perf_counter() - started)
                    processor_times[name].append(time.process_time() - cpu_started)
            loads.append(load())
            tokens = batch * args.steps
            rates = {name: tokens / statistics.median(values) for name, values in times.items()}
            cpu = {name: statistics.median(values) for name, values in processor_times.items()}
            row = {"hidden": hidden, "batch": batch, "steps": args.steps,
                   "plain_tokens_per_second": rates["plain"],
                   "constrained_tokens_per_second": rates["constrained"],
                   "cost_fraction": 1.0 - rates["constrained"] / rates["plain"],
                   # CPU seconds of the process (all threads): steadier than wall time when
                   # other processes share the cores.
                   "plain_cpu_seconds": cpu["plain"], "constrained_cpu_seconds": cpu["constrained"],
                   "cpu_cost_fraction": cpu["constrained"] / cpu["plain"] - 1.0,
                   "loadavg_before_after": loads}
            print(f"cost  hidden {hidden:3d} batch {batch:2d}: plain {rates['plain']:10,.0f} "
                  f"tok/s, constrained {rates['constrained']:10,.0f} tok/s: cost "
                  f"{100 * row['cost_fraction']:5.1f}% (CPU time "
                  f"{100 * row['cpu_cost_fraction']:5.1f}%)  (load {loads})", flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. Build time
# ---------------------------------------------------------------------------------------------


def interegular_table(pattern: str, vocabulary: str) -> np.ndarray:
    """The dense (states, V) table of ``pattern`` over single-character tokens, by interegular
    (a character automaton; a byte tokenizer would need a UTF-8 expansion on top)."""
    import interegular

    fsm = interegular.parse_pattern(pattern).to_fsm()
    states = sorted(fsm.states)
    number = {state: row for row, state in enumerate(states)}
    table = np.full((len(states), len(vocabulary)), -1, np.int32)
    for token, char in enumerate(vocabulary):
        symbol = fsm.alphabet[char]
        for state in states:
            target = fsm.map.get(state, {}).get(symbol)
            if target is not None:
                table[number[state], token] = number[target]
    return table


def bench_build(args) -> dict:
    printable = sm.CharTokenizer("".join(chr(code) for code in range(32, 127)) + "\n")
    byte = sm.ByteTokenizer()
    result = {"schema": PERSON_SCHEMA}
    for name, tokenizer in (("char", printable), ("byte", byte)):
        seconds, constraint = [], None
        for _ in range(3):
            started = time.perf_counter()
            constraint = sm.JsonSchema(PERSON_SCHEMA, tokenizer, whitespace="[ ]?")
            seconds.append(time.perf_counter() - started)
        result[f"outlines_core_{name}"] = {
            "seconds": statistics.median(seconds), "states": constraint.num_states,
            "vocab_size": constraint.vocab_size, "regex_chars": len(constraint.pattern)}
        print(f"build {name}: {statistics.median(seconds):.3f} s, {constraint.num_states} states "
              f"x {constraint.vocab_size} tokens (outlines-core)", flush=True)
    pattern = sm.JsonSchema(PERSON_SCHEMA, printable, whitespace="[ ]?").pattern
    try:
        started = time.perf_counter()
        table = interegular_table(pattern, printable.vocabulary)
        result["interegular_char"] = {"seconds": time.perf_counter() - started,
                                      "states": int(table.shape[0])}
        print(f"build char: {result['interegular_char']['seconds']:.3f} s, {table.shape[0]} "
              "states (interegular, character automaton tabulated by hand)", flush=True)
    except Exception as error:  # noqa: BLE001  (a library's parse failure is a result here)
        result["interegular_char"] = {"error": f"{type(error).__name__}: {error}"[:300]}
        print(f"build char: interegular failed: {result['interegular_char']['error']}")
    return result


# ---------------------------------------------------------------------------------------------
# 3. Worked example
# ---------------------------------------------------------------------------------------------


def nll_per_char(model, rows: list[np.ndarray]) -> float:
    """Mean NLL (nats per character) of ``rows`` under ``model``, each from the start element
    (token 0, the newline) as generate draws them."""
    total, count = 0.0, 0
    for tokens in rows:
        inputs = jnp.asarray(np.concatenate([[0], tokens[:-1]])[None], jnp.int32)
        log_probs = jax.nn.log_softmax(_teacher_forced(model, inputs)[0])
        total -= float(jnp.sum(log_probs[jnp.arange(len(tokens)), jnp.asarray(tokens)]))
        count += len(tokens)
    return total / max(count, 1)


@jax.jit
def _teacher_forced(model, inputs):
    return model(inputs)[0]


def bench_example(args, dataset) -> dict:
    tokenizer = dataset.tokenizer
    config = sm.ModelConfig(vocab_size=tokenizer.vocab_size, cell="lstm", hidden_size=128,
                            embed_size=32)
    model = sm.SequenceModel(config, rngs=nnx.Rngs(0))
    train = sm.TrainConfig(batch_size=32, seq_len=64, max_time=args.train_seconds,
                           learning_rate=3e-3, eval_every=None, log_every=10**9)
    fit = sm.fit(model, dataset, train, progress=False)
    model.eval()
    newline = int(tokenizer.encode("\n")[0])
    assert newline == 0, "the start element is the newline (the smallest code point)"
    samples = {}
    constraint = sm.Regex(ROW, tokenizer)
    for name, extra in (("unconstrained", dict(stop_sequences=[[newline]])),
                        ("constrained", dict(constraint=constraint))):
        generation = sm.generate(model, key=jax.random.key(1), steps=40,
                                 batch_size=args.example_rows, temperature=1.0, **extra)
        rows = [np.asarray(row[:length]) for row, length in
                zip(np.asarray(generation.samples), np.asarray(generation.lengths))]
        texts = [tokenizer.decode(row) for row in rows]
        valid = [bool(re.fullmatch(ROW, text)) for text in texts]
        samples[name] = {
            "valid_fraction": float(np.mean(valid)),
            "nll_per_char_all": nll_per_char(model, rows),
            "nll_per_char_valid": nll_per_char(model, [r for r, v in zip(rows, valid) if v]),
            "stop_reasons": {reason: generation.stop_reason_names().count(reason)
                             for reason in set(generation.stop_reason_names())},
            "examples": texts[:5],
        }
        print(f"example {name}: {100 * samples[name]['valid_fraction']:.1f}% valid rows, NLL "
              f"{samples[name]['nll_per_char_all']:.3f} nats/char (valid ones "
              f"{samples[name]['nll_per_char_valid']:.3f}); e.g. {texts[:3]}", flush=True)
    validation = sm.evaluate(model, dataset.validation_batches(batch_size=16, seq_len=256))
    return {"train_seconds": args.train_seconds, "train_steps": int(fit.steps),
            "validation_nll_per_char": float(validation.loss), "rows_sampled": args.example_rows,
            "row_pattern": ROW, **samples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--example-rows", type=int, default=200)
    parser.add_argument("--skip-example", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    dataset = sm.TextDataset.from_text(csv_corpus(20000), name="csv rows")
    report = {"versions": installed_versions("jax", "flax", "outlines-core", "interegular"),
              "cost": bench_cost(args, dataset.tokenizer), "build": bench_build(args)}
    if not args.skip_example:
        report["example"] = bench_example(args, dataset)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
