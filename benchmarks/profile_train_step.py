"""Where a train step's time goes, seqmodel's and PyTorch's, on the speed suite's workload.

For each (cell, hidden), in worker processes of their own (:mod:`benchmarks.protocol`):

- seqmodel on one device: the whole train step (one step per call), the forward and loss alone,
  forward and backward without the optimizer; and the serial GEMM chain of the recurrence alone
  (``h @ W_h`` forward, ``dh @ W_h^T`` backward, each step depending on the last, 128 steps,
  the batch's 32 rows and the 16 rows each device holds when the batch is split over two);
- PyTorch on 1 and 2 threads: its eager train step, forward alone, forward and backward, and the
  same serial GEMM chain (``torch.mm`` + ``tanh``).

The serial chain is the part of the step that neither framework can spread over time: its
GFLOP/s at these small shapes is what decides the step at hidden 128 and 512. Every time is the
fastest of ``--repeats`` (the least disturbed); the JSON holds the command, date, commit and
load averages.

Run::

    python benchmarks/profile_train_step.py --json benchmarks/results/profile_train_step_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

if not __package__:  # run by path: Python put benchmarks/ on sys.path, the package needs its parent
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import candidates, protocol  # noqa: E402
from benchmarks.environment import finish, provenance  # noqa: E402
from benchmarks.workload import BATCH, GATES, SEQUENCE, VOCAB  # noqa: E402


def _fastest(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _chain_flops(rows: int, inner: int, cols: int) -> float:
    return 2 * rows * inner * cols * SEQUENCE


def jax_profile(spec: dict):
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks.rooflines import serial_chain
    from benchmarks.workload import batch, reference_model
    from seqmodel.data import Batch
    from seqmodel.training import distributed
    from seqmodel.training.optimization import TrainConfig, init_train_state, make_loss_fn

    cell, hidden, repeats = spec["cell"], spec["hidden"], spec["options"]["repeats"]
    parallel = distributed.from_flags(devices=1)
    model = reference_model(cell, hidden)
    config = TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=10_000)
    graphdef = nnx.graphdef(model)
    tx, step = parallel.train_step(graphdef, config)
    _, state = init_train_state(model, tx, config)
    state = parallel.place_state(jax.tree.map(
        lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, state))
    inputs, targets = batch(0)
    data = parallel.shard_batch(Batch(inputs=inputs, targets=targets, mask=None,
                                      reset=np.zeros((BATCH,), bool)))
    holder = {"state": state}

    def train():
        holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics)

    loss_fn = make_loss_fn(config)
    carry = model.init_carry(BATCH)
    key = jax.random.key(0)
    split_graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return loss_fn(nnx.merge(split_graphdef, params, rest), carry, data, key, 1.0)[0]

    forward, both = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    result = {
        "train_step": _fastest(train, repeats),
        "forward": _fastest(lambda: jax.block_until_ready(forward(params)), repeats),
        "forward_backward": _fastest(lambda: jax.block_until_ready(both(params)), repeats),
    }
    width = GATES[cell] * hidden
    for rows in (BATCH, BATCH // 2):
        for direction, (inner, cols) in {"forward": (hidden, width),
                                         "backward": (width, hidden)}.items():
            compiled, kernel = serial_chain(rows, inner, cols)
            seconds = _fastest(lambda: jax.block_until_ready(compiled(kernel)), repeats)
            result[f"serial_{direction}_{rows}rows"] = seconds
            result[f"serial_{direction}_{rows}rows_gflops"] = (
                _chain_flops(rows, inner, cols) / seconds / 1e9)
    return None, None, {"result": result}


def torch_profile(spec: dict):
    import torch

    from benchmarks import torch_variants
    from benchmarks.torch_copy import torch_modules
    from benchmarks.workload import batch, reference_model

    cell, hidden, repeats = spec["cell"], spec["hidden"], spec["options"]["repeats"]
    threads = torch_variants.configure_threads(spec["options"]["threads"])
    embedding, rnn, head = torch_modules(reference_model(cell, hidden))
    parameters = [*embedding.parameters(), *rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    inputs, targets = (torch.from_numpy(array).long() for array in batch(0))

    def loss():
        logits = head(rnn(embedding(inputs))[0])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    def forward():
        with torch.no_grad():
            loss().item()

    def forward_backward():
        optimizer.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        return value

    def train():
        value = forward_backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        value.item()

    result = {**threads, "train_step": _fastest(train, repeats),
              "forward": _fastest(forward, repeats),
              "forward_backward": _fastest(lambda: forward_backward().item(), repeats)}
    width = GATES[cell] * hidden
    for rows in (BATCH, BATCH // 2):
        for direction, (inner, cols) in {"forward": (hidden, width),
                                         "backward": (width, hidden)}.items():
            kernel = torch.full((inner, cols), 0.01)

            def chain(rows=rows, inner=inner, cols=cols, kernel=kernel):
                with torch.no_grad():
                    state = torch.ones(rows, inner)
                    for _ in range(SEQUENCE):
                        out = torch.tanh(state @ kernel)
                        state = out[:, :inner] if cols > inner else out.repeat(1, inner // cols)
                    return state.sum().item()

            seconds = _fastest(chain, repeats)
            result[f"serial_{direction}_{rows}rows"] = seconds
            result[f"serial_{direction}_{rows}rows_gflops"] = (
                _chain_flops(rows, inner, cols) / seconds / 1e9)
    return None, None, {"result": result}


BUILDERS = {"profile-jax": jax_profile, "profile-torch": torch_profile}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm")
    parser.add_argument("--hidden", default="128,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    report = provenance("benchmarks/profile_train_step.py", argv)
    rows = []
    for cell in args.cells.split(","):
        for hidden in (int(h) for h in args.hidden.split(",")):
            row = {"cell": cell, "hidden": hidden}
            workers = [("seqmodel-1dev", "profile-jax", {"repeats": args.repeats}, {})] + [
                (f"torch-eager-{threads}t", "profile-torch",
                 {"repeats": args.repeats, "threads": threads}, candidates.TORCH_ENV)
                for threads in (1, 2)]
            for name, kind, options, env in workers:
                worker = protocol.Worker(name, {"kind": kind, "cell": cell, "hidden": hidden,
                                                "options": options}, env=env)
                row[name] = worker.hello.get("result") or {"error": worker.hello.get("error")}
                worker.close()
            rows.append(row)
            ours, theirs = row["seqmodel-1dev"], row["torch-eager-1t"]
            print(f"{cell} h{hidden}: seqmodel 1 device step {1e3 * ours.get('train_step', 0):.1f} "
                  f"ms (serial GEMMs at 32 rows: forward "
                  f"{ours.get('serial_forward_32rows_gflops', 0):.0f}, backward "
                  f"{ours.get('serial_backward_32rows_gflops', 0):.0f} GFLOP/s); PyTorch 1 thread "
                  f"{1e3 * theirs.get('train_step', 0):.1f} ms (serial "
                  f"{theirs.get('serial_forward_32rows_gflops', 0):.0f} / "
                  f"{theirs.get('serial_backward_32rows_gflops', 0):.0f} GFLOP/s)", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(finish({**report, "rows": rows}), indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
