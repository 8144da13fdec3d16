"""Probe: several train steps per jitted call (a ``lax.scan`` over steps) against one per call.

Measured on 2 CPU cores: one step per call costs twice on CPU. Each call's dispatch takes a core
from the devices (with one device per core, the other device then waits in the all-reduce), and
XLA:CPU maps the program's temporary buffers anew for every call (124 MB and 30k page faults at
LSTM h512). The 2-device LSTM h128 step ran at 225-254k tokens/s with 4 steps per call, 248-262k
with 10 and 262-267k with 20 (one step per call: 200-256k in the same runs); at h512, 20 steps
gained 18-25% over one, also on one device. ``fit`` now runs
``TrainConfig.steps_per_call`` (20) steps per call; ``seqmodel bench`` compares the two as
``seqmodel`` and ``seqmodel-1call``.

    python benchmarks/probe_steps_per_call.py [--cell lstm] [--hidden 128] [--steps-per-call 4]
        [--devices 1]

The same batch is fed at every step (speed only); the K-step program is fit's own
(``DataParallel.train_step(..., stacked=True)``); batch 32, sequence 128, vocabulary 65.
"""

import argparse
import time

from seqmodel.training import distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru", "elman"))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps-per-call", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--devices", type=int, default=None,
                        help="CPU devices (default: one per core, as seqmodel train)")
    args = parser.parse_args()
    # Before JAX starts: the devices asked for, or the default layout.
    parallel = distributed.from_flags(devices=args.devices, batch_size=32)

    import jax
    import numpy as np
    from flax import nnx

    from seqmodel.data import Batch
    from seqmodel.nn.model import ModelConfig, SequenceModel
    from seqmodel.training.distributed import CallsInFlight
    from seqmodel.training.optimization import TrainConfig, init_train_state, stack_batches

    per_call = args.steps_per_call
    model = SequenceModel(ModelConfig(vocab_size=65, cell=args.cell, hidden_size=args.hidden,
                                      embed_size=64), rngs=nnx.Rngs(0))
    config = TrainConfig(batch_size=32, seq_len=128, steps=10_000)
    tx, one_step = parallel.train_step(nnx.graphdef(model), config)
    _, several = parallel.train_step(nnx.graphdef(model), config, stacked=True)
    state = parallel.place_state(init_train_state(model, tx, config)[1])
    tokens = np.random.default_rng(0).integers(0, 65, (32, 129)).astype(np.int32)
    host_batch = Batch(tokens[:, :-1], tokens[:, 1:], None, np.zeros(32, bool))
    batches = {1: parallel.shard_batch(host_batch),
               per_call: parallel.shard_batch(stack_batches([host_batch] * per_call), stacked=True)}

    def timed(call, calls: int, steps_each: int) -> float:
        nonlocal state
        in_flight = CallsInFlight()
        started = time.perf_counter()
        for _ in range(calls):
            state, metrics = call(state, batches[steps_each])
            in_flight.add(metrics)
        jax.block_until_ready(state)
        return 32 * 128 * calls * steps_each / (time.perf_counter() - started)

    calls = max(1, args.steps // per_call)
    timed(one_step, 4, 1), timed(several, 2, per_call)  # compile and warm up
    print(f"{args.cell} h{args.hidden} on {parallel.describe()}, tokens/s:")
    for _ in range(args.repeats):
        single, multi = timed(one_step, calls * per_call, 1), timed(several, calls, per_call)
        print(f"  1 step per call {single:10,.0f}   {per_call} per call {multi:10,.0f}   "
              f"ratio {multi / single:.3f}")


if __name__ == "__main__":
    main()
