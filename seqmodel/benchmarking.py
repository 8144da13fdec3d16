"""Speed suite: seqmodel's jitted train step against PyTorch and a plain Flax RNN, in one run.

What it measures, for every (cell, hidden size) on the same inputs (batch 32, sequence 128,
Embedding 64 -> cell -> Linear, vocabulary 65, AdamW + global-norm clipping, fp32):

- train-step tokens/s (compile excluded), compile seconds (wall and CPU) and whether the step
  recompiles on a second batch, for
  ``seqmodel`` (the library's step, :func:`seqmodel.train.make_train_step` as ``seqmodel train``
  runs it by default: custom-VJP recurrences, on a CPU-only machine the batch split over one
  device per core, :func:`seqmodel.distributed.default_cpu_devices`), ``seqmodel-1dev`` (the same
  step on one device, ``--devices 1``), ``seqmodel-fit`` (:func:`seqmodel.train.fit` itself with
  its default devices: data pipeline, logging and run folder around the same step),
  ``seqmodel-plain`` (``fast_recurrence=False``: ``lax.scan`` differentiated by JAX, one device),
  ``flax`` (``nnx.RNN(OptimizedLSTMCell / GRUCell)``, same optax chain), ``torch``
  (``nn.LSTM`` / ``nn.GRU``, default threads) and ``torch-1t`` (one thread);
- generate tokens/s of the library (``time_generate`` of ``benchmarks/bench_generate.py`` when
  present, else :func:`seqmodel.generate.generate` directly), ``b=32`` rows of 128 tokens;
- the machine's GEMM FLOP/s: a large ``2048^3`` GEMM and the serial small GEMMs of the
  recurrence (``(b, h) @ (h, G)`` and ``(b, G) @ (G, h)`` chained in a ``lax.scan``), and a
  roofline column: the time the step's FLOPs would take at those ceilings (serial matmuls at the
  serial rate, the rest at the large-GEMM rate) as a fraction of the measured step time.

Every candidate runs in its own worker process (so that device counts, thread counts and the
two frameworks' thread pools do not interfere); the parent alternates repetitions across
candidates (rotating the order) and quotes medians. ``x torch`` is the ratio to the faster of
``torch`` / ``torch-1t`` in the same run; ``x torch-1t cpu`` compares CPU time per step, a figure
that a busy machine disturbs far less than wall time. On a GPU the same code runs unchanged
(PyTorch then uses cuDNN; ``seqmodel`` then runs on the accelerator's devices).

Run::

    python benchmarks/bench_speed.py                  # full suite (~9 min on 2 idle cores)
    python benchmarks/bench_speed.py --quick          # smoke test (~1 min)
    seqmodel bench --json results.json --markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH, SEQUENCE, VOCAB, EMBED = 32, 128, 65, 64
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TRAIN_CANDIDATES = ("seqmodel", "seqmodel-1call", "seqmodel-1dev", "seqmodel-fit", "seqmodel-plain",
                    "flax", "torch", "torch-1t")
TORCH_CANDIDATES = ("torch", "torch-1t")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One thing to time in its own worker process.

    ``kind``: ``seqmodel`` | ``flax`` | ``torch`` | ``gemm``. ``options`` are passed to the worker
    (e.g. ``fast_recurrence``, ``threads``, ``devices``); ``env`` is added to the worker's
    environment before it starts (XLA flags must be set before JAX is imported)."""

    name: str
    kind: str
    options: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)


def default_candidates(names=TRAIN_CANDIDATES) -> list[Candidate]:
    table = {
        # The default: on a CPU-only machine the batch split over one device per core.
        "seqmodel": Candidate("seqmodel", "seqmodel", {"generate": True}),
        # The same devices, one train step per compiled call (before steps_per_call).
        "seqmodel-1call": Candidate("seqmodel-1call", "seqmodel", {"steps_per_call": 1}),
        "seqmodel-1dev": Candidate("seqmodel-1dev", "seqmodel", {"devices": 1}),
        # fit() itself (data pipeline, logging, run folder) around the default step.
        "seqmodel-fit": Candidate("seqmodel-fit", "fit"),
        "seqmodel-plain": Candidate("seqmodel-plain", "seqmodel",
                                    {"fast_recurrence": False, "devices": 1, "steps_per_call": 1}),
        "flax": Candidate("flax", "flax"),
        "torch": Candidate("torch", "torch", {"threads": None}),
        "torch-1t": Candidate("torch-1t", "torch", {"threads": 1}),
    }
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; allowed: {', '.join(table)}")
    return [table[name] for name in names]


# ---------------------------------------------------------------------------------------------
# Workers: one process per candidate, driven by JSON lines on stdin/stdout.
# ---------------------------------------------------------------------------------------------


def _batch(seed: int = 0):
    import numpy as np

    tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQUENCE + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def _optax_chain(total_steps: int = 10_000):
    """The optimizer of the comparison: clip to global norm 1, AdamW with warmup + cosine."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, total_steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))


def _compile(jitted, *args):
    """``(compiled, {"compile_seconds": wall, "compile_cpu_seconds": cpu})`` of ``jitted(*args)``.

    The CPU seconds (this process, all threads) stay meaningful on a busy machine, where the wall
    time of a compile stretches with the load."""
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = jitted.lower(*args).compile()
    return compiled, {"compile_seconds": time.perf_counter() - wall,
                      "compile_cpu_seconds": time.process_time() - cpu}


def _jax_train_runner(model, loss_of, options):
    """Compile a train step ``(params, opt_state, x, y) -> (params, opt_state, loss)`` of ``model``;
    returns ``(run(n), compile_info)``. ``options['devices'] > 1`` splits the batch across
    that many devices (a 'data' mesh axis; parameters replicated)."""
    import jax
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The step donates its parameters; copies keep the model itself usable (for generate).
    params = jax.tree.map(jax.numpy.copy, params)
    optimizer = _optax_chain()
    opt_state = optimizer.init(params)

    def loss_fn(params, inputs, targets):
        return loss_of(nnx.merge(graphdef, params, rest), inputs, targets)

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    inputs, targets = (jax.numpy.asarray(a) for a in _batch())
    devices = int(options.get("devices") or 1)
    if devices > 1:  # the worker called _set_cpu_devices before JAX started
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(jax.devices()[:devices], ("data",))
        data = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        inputs, targets = jax.device_put((inputs, targets), data)
        params, opt_state = jax.device_put((params, opt_state), replicated)
    compiled, compile_info = _compile(jax.jit(step, donate_argnums=(0, 1)),
                                      params, opt_state, inputs, targets)
    state = {"params": params, "opt_state": opt_state}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            state["params"], state["opt_state"], loss = compiled(
                state["params"], state["opt_state"], inputs, targets
            )
        loss.block_until_ready()
        return time.perf_counter() - start

    return run, compile_info


def _set_cpu_devices(options: dict) -> int:
    """Ask for ``options['devices']`` CPU devices; must run before JAX's backend starts."""
    import jax

    devices = int(options.get("devices") or 1)
    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    return devices


def _seqmodel_worker(spec: dict):
    """The library's own train step, as ``seqmodel train [--devices N]`` runs it: the program of
    :meth:`seqmodel.distributed.DataParallel.train_step` (the batch and the lanes' carry split by
    rows over N devices; N=1 is the plain one-device step; no N: the default of
    :func:`seqmodel.distributed.from_flags` for this batch), ``TrainConfig.steps_per_call`` steps
    per call over stacked batches unless ``options['steps_per_call']`` says otherwise."""
    import jax
    import numpy as np
    from flax import nnx

    from seqmodel import distributed
    from seqmodel.data import Batch
    from seqmodel.model import ModelConfig, SequenceModel
    from seqmodel.train import CallsInFlight, TrainConfig, init_train_state, stack_batches

    options = spec["options"]
    # Before any JAX computation: virtual CPU devices must be asked for first.
    parallel = distributed.from_flags(devices=options.get("devices"), batch_size=BATCH)
    config = ModelConfig(
        vocab_size=VOCAB, cell=spec["cell"], hidden_size=spec["hidden"], embed_size=EMBED,
        fast_recurrence=options.get("fast_recurrence", True),
        fold_embedding=options.get("fold_embedding", True),
    )
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    train_config = TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=10_000)
    per_call = int(options.get("steps_per_call") or train_config.steps_per_call)
    tx, train_step = parallel.train_step(nnx.graphdef(model), train_config,
                                         stacked=per_call > 1)
    graphdef, state = init_train_state(model, tx, train_config)
    # The step donates its state; copies keep the model itself usable (for generate).
    state = parallel.place_state(jax.tree.map(
        lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, state))

    def placed(seed: int, reset: bool):
        # Lanes: every batch continues the previous one's rows, so the carry is passed along.
        inputs, targets = _batch(seed)
        one = Batch(inputs=inputs, targets=targets, mask=None, reset=np.full((BATCH,), reset))
        if per_call == 1:
            return parallel.shard_batch(one)
        return parallel.shard_batch(stack_batches([one] * per_call), stacked=True)

    batch = placed(0, False)
    compiled, compile_info = _compile(train_step, state, batch)
    # No recompile across batches: the jitted step itself, fed two different batches, must keep
    # one compiled program (the timing below then calls the compiled program directly).
    for batch_values in (batch, placed(1, True)):
        state, metrics = train_step(state, batch_values)
    compile_info["compiled_programs"] = int(train_step._cache_size())
    compile_info["devices"] = parallel.num_devices
    compile_info["steps_per_call"] = per_call
    holder = {"state": state}

    def run(n: int) -> tuple[float, float]:
        calls = -(-n // per_call)  # whole calls, timed and scaled to n steps
        wall, cpu = time.perf_counter(), time.process_time()
        in_flight = CallsInFlight()  # as fit() bounds the dispatch queue
        for _ in range(calls):
            holder["state"], metrics = compiled(holder["state"], batch)
            in_flight.add(metrics)
        metrics["loss"].block_until_ready()
        scale = n / (calls * per_call)
        return (time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale

    extra = {}
    if options.get("generate"):
        extra["generate"] = _generate_runner(model)
    return run, compile_info, extra


def _fit_worker(spec: dict):
    """:func:`seqmodel.train.fit` itself, as ``seqmodel train`` runs it: a text dataset in lanes,
    metrics fetched and written to ``metrics.jsonl`` every ``log_every`` steps, the NaN check, a
    run folder. A repetition of ``n`` steps is one ``fit`` of one more log interval than that;
    the time quoted runs from the end of its first interval (the run's start) to the end of its
    last (evaluation and the final checkpoint come after), marked by fit's callback. Against
    ``seqmodel`` in the same run (same devices) it shows whether the data pipeline and the logging
    keep the compiled step busy."""
    import shutil

    import numpy as np
    from flax import nnx

    from seqmodel import distributed
    from seqmodel.data.text import TextDataset
    from seqmodel.model import ModelConfig, SequenceModel
    from seqmodel.train import TrainConfig, fit

    options = spec["options"]
    parallel = distributed.from_flags(devices=options.get("devices"), batch_size=BATCH)
    # Text over exactly VOCAB characters, long enough that the lanes never wrap in a repetition.
    alphabet = np.array([chr(ord("!") + index) for index in range(VOCAB)])
    text = "".join(alphabet[np.random.default_rng(0).integers(0, VOCAB, 2_000_000)])
    dataset = TextDataset.from_text(text, val_fraction=0.01)
    config = ModelConfig(vocab_size=dataset.vocab_size, cell=spec["cell"],
                         hidden_size=spec["hidden"], embed_size=EMBED)
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    # The default, a multiple of the default steps per call: every mark falls at a call's end.
    log_every = TrainConfig.log_every

    def run(n: int) -> tuple[float, float]:
        # Whole log intervals: the callback then marks the end of every interval, and the time
        # from the first mark to the last is exactly `timed` steps with their logging.
        timed = -(-n // log_every) * log_every
        marks = []
        train_config = TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=timed + log_every,
                                   eval_every=None, log_every=log_every)
        folder = tempfile.mkdtemp(prefix="seqmodel-bench-fit-")
        try:
            fit(model, dataset, train_config, out_dir=folder, progress=False, parallel=parallel,
                callback=lambda step, summary: marks.append(
                    (time.perf_counter(), time.process_time())))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        (wall_start, cpu_start), (wall_end, cpu_end) = marks[0], marks[-1]
        return (wall_end - wall_start) * n / timed, (cpu_end - cpu_start) * n / timed

    run(1)  # compiles the step (the suite times the compile in the ``seqmodel`` worker)
    return run, {"devices": parallel.num_devices,
                 "steps_per_call": TrainConfig.steps_per_call}, {}


def _generate_runner(model, steps: int = SEQUENCE):
    """Timer of free-running generation, ``BATCH`` rows of ``steps`` tokens, compile excluded."""
    import jax

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generate.py"
    if path.exists():
        module_spec = importlib.util.spec_from_file_location("_bench_generate", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception:  # a half-written sibling script must not break the suite
            module = None
        if module is not None and hasattr(module, "time_generate"):
            return lambda: module.time_generate(model, batch_size=BATCH, steps=steps)
    from seqmodel.generate import generate

    model.eval()
    key = jax.random.key(0)
    generate(model, key=key, steps=steps, batch_size=BATCH).samples.block_until_ready()

    def run() -> float:
        start = time.perf_counter()
        generate(model, key=key, steps=steps, batch_size=BATCH).samples.block_until_ready()
        return time.perf_counter() - start

    return run


def _flax_worker(spec: dict):
    import jax.numpy as jnp
    import optax
    from flax import nnx

    hidden, cell_name = spec["hidden"], spec["cell"]

    class FlaxBaseline(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.embed = nnx.Embed(VOCAB, EMBED, rngs=rngs)
            cell_class = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}[cell_name]
            self.rnn = nnx.RNN(cell_class(EMBED, hidden, rngs=rngs), rngs=False)
            self.head = nnx.Linear(hidden, VOCAB, rngs=rngs)

        def __call__(self, tokens):
            zeros = jnp.zeros((tokens.shape[0], hidden), jnp.float32)
            carry = (zeros, zeros) if cell_name == "lstm" else zeros
            return self.head(self.rnn(self.embed(tokens), initial_carry=carry))

    def loss_of(model, inputs, targets):
        return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets).mean()

    _set_cpu_devices(spec["options"])
    run, compile_info = _jax_train_runner(FlaxBaseline(nnx.Rngs(0)), loss_of, spec["options"])
    return run, compile_info, {}


def _torch_worker(spec: dict):
    import torch

    threads = spec["options"].get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    hidden = spec["hidden"]
    recurrent = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec["cell"]]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    class TorchBaseline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, EMBED)
            self.rnn = recurrent(EMBED, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, VOCAB)

        def forward(self, tokens):
            return self.head(self.rnn(self.embed(tokens))[0])

    model = TorchBaseline().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    inputs, targets = (torch.from_numpy(a).long().to(device) for a in _batch())

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return loss

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = step()
        loss.item()
        return time.perf_counter() - start

    return run, None, {}


def _gemm_worker(spec: dict):
    """Ceilings: the large GEMM and the serial small GEMMs of one recurrence (fwd and bwd shape)."""
    import jax
    import jax.numpy as jnp

    size = int(spec["options"].get("size", 2048))
    large = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((size, size), jnp.float32)
    results = {}

    def timed(function, *args, repeats=7):
        # A ceiling is the best the machine does: the fastest repetition, not the median.
        jax.block_until_ready(function(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times.append(time.perf_counter() - start)
        return min(times)

    results["large_gflops"] = 2 * size**3 / timed(large, a, a) / 1e9
    for hidden, gates in spec["options"].get("serial_shapes", []):
        width = gates * hidden
        for direction, (rows, inner, cols) in {
            "forward": (BATCH, hidden, width), "backward": (BATCH, width, hidden),
        }.items():
            kernel = jnp.full((inner, cols), 0.01, jnp.float32)

            def chain(kernel, rows=rows, inner=inner, cols=cols):
                # Each step's input depends on the last step's output, as in a recurrence.
                def body(state, _):
                    out = jnp.tanh(state @ kernel)
                    if cols > inner:
                        return out[:, :inner], None
                    return jnp.tile(out, (1, inner // cols)), None

                return jax.lax.scan(body, jnp.ones((rows, inner)), None, length=SEQUENCE)[0]

            seconds = timed(jax.jit(chain), kernel)
            results[f"serial_gflops_h{hidden}x{gates}_{direction}"] = (
                2 * rows * inner * cols * SEQUENCE / seconds / 1e9
            )
    return None, None, {"result": results}


WORKERS = {"seqmodel": _seqmodel_worker, "fit": _fit_worker, "flax": _flax_worker,
           "torch": _torch_worker, "gemm": _gemm_worker}


def _worker_main(spec_json: str) -> None:
    """Worker loop: build and compile, answer ``{"ready"}``, then serve ``run N`` / ``generate``."""
    spec = json.loads(spec_json)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    try:
        run, compile_info, extra = WORKERS[spec["kind"]](spec)
    except Exception as error:  # reported to the parent, which records the candidate as failed
        out.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ready": True, **(compile_info or {}),
                          "result": extra.get("result")}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        try:
            if command[0] == "run":
                cpu = time.process_time()
                timed = run(int(command[1]))
                # CPU seconds of this process (all its threads): the work done, which a busy
                # machine does not inflate the way it stretches wall time. A runner that times
                # only part of its call returns (wall, cpu) of that part.
                seconds, cpu_seconds = timed if isinstance(timed, tuple) else (
                    timed, time.process_time() - cpu)
                answer = {"seconds": seconds, "cpu_seconds": cpu_seconds}
            else:
                answer = {"seconds": extra["generate"]()}
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


class Worker:
    """A running worker process for one candidate and one (cell, hidden)."""

    def __init__(self, candidate: Candidate, cell: str, hidden: int, *, timeout: float = 300):
        spec = {"kind": candidate.kind, "cell": cell, "hidden": hidden,
                "options": candidate.options}
        env = dict(os.environ)
        env.update(candidate.env)
        self.name = candidate.name
        # stderr to a file, not a pipe: a chatty worker (logs, warnings) must never block on a
        # full pipe that nobody reads, and its last lines explain a crash.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seqmodel.benchmarking", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        self.hello = self._read()

    def _exited(self) -> dict:
        self.process.wait()
        self.log.seek(0)
        return {"error": f"worker exited with status {self.process.returncode}: "
                         f"{self.log.read()[-2000:].strip()}"}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            return self._exited()
        return json.loads(line)

    def ask(self, command: str) -> dict:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._exited()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


def step_flops(cell: str, hidden: int) -> dict:
    """FLOPs of one train step, split into the serial recurrent matmuls and the rest."""
    width = GATES[cell] * hidden
    recurrent = 2 * BATCH * SEQUENCE * hidden * width  # one pass of h @ W_h over all steps
    head = 2 * BATCH * SEQUENCE * hidden * VOCAB
    table = 2 * VOCAB * EMBED * width
    return {
        "serial_forward": recurrent,
        "serial_backward": recurrent,  # dh @ W_h^T
        # dW_h (one GEMM after the loop), head forward + 2 backward GEMMs, folded input table.
        "parallel": recurrent + 3 * head + 3 * table,
    }


def _roofline(cell: str, hidden: int, seconds_per_step: float, ceilings: dict) -> dict:
    flops = step_flops(cell, hidden)
    gates = GATES[cell]
    forward = ceilings.get(f"serial_gflops_h{hidden}x{gates}_forward")
    backward = ceilings.get(f"serial_gflops_h{hidden}x{gates}_backward")
    large = ceilings.get("large_gflops")
    total = sum(flops.values())
    achieved = total / seconds_per_step / 1e9
    if not (forward and backward and large):
        return {"gflops": achieved}
    bound = (flops["serial_forward"] / forward + flops["serial_backward"] / backward
             + flops["parallel"] / large) / 1e9
    return {"gflops": achieved, "bound_seconds": bound, "roofline": bound / seconds_per_step}


def _measure_config(cell: str, hidden: int, candidates: list[Candidate], *, repeats: int,
                    seconds_per_repeat: float, generate_repeats: int, log) -> dict:
    workers = []
    results: dict[str, dict] = {}
    try:
        for candidate in candidates:
            worker = Worker(candidate, cell, hidden)
            if "error" in worker.hello:
                log(f"  {candidate.name}: skipped ({worker.hello['error'][-300:]})")
                results[candidate.name] = {"error": worker.hello["error"][-1000:]}
                worker.close()
                continue
            results[candidate.name] = {
                key: worker.hello[key] for key in ("compile_seconds", "compile_cpu_seconds",
                                                   "compiled_programs", "devices",
                                                   "steps_per_call")
                if key in worker.hello}
            results[candidate.name]["seconds"] = []
            workers.append(worker)
        # Steps per repetition from one warm-up call, so each repetition lasts about the same.
        steps = {}
        for worker in list(workers):
            first = worker.ask("run 1")
            if "seconds" not in first:
                log(f"  {worker.name}: failed ({first.get('error', 'no answer')[-300:]})")
                results[worker.name]["error"] = first.get("error", "no answer")[-1000:]
                workers.remove(worker)
                worker.close()
                continue
            steps[worker.name] = max(1, round(seconds_per_repeat / max(first["seconds"], 1e-4)))
        load_before = os.getloadavg()[0]
        for repeat in range(repeats):
            # Alternate (every candidate sees the same machine load) and rotate the order, so
            # that no candidate always runs right after the same neighbour.
            shift = repeat % max(len(workers), 1)
            for worker in workers[shift:] + workers[:shift]:
                answer = worker.ask(f"run {steps[worker.name]}")
                if "seconds" in answer:
                    results[worker.name]["seconds"].append(answer["seconds"] / steps[worker.name])
                    results[worker.name].setdefault("cpu_seconds", []).append(
                        answer["cpu_seconds"] / steps[worker.name])
                else:
                    results[worker.name].setdefault("error", answer.get("error", "no answer"))
        for worker in workers:
            entry = results[worker.name]
            if not entry["seconds"]:
                continue
            entry["seconds_per_step"] = statistics.median(entry["seconds"])
            entry["tokens_per_second"] = BATCH * SEQUENCE / entry["seconds_per_step"]
            entry["spread"] = (max(entry["seconds"]) - min(entry["seconds"])) / entry[
                "seconds_per_step"]
            entry["cpu_ms_per_step"] = 1e3 * statistics.median(entry["cpu_seconds"])
        results["_load"] = {"before": load_before, "after": os.getloadavg()[0]}
        generators = [w for w in workers if w.name == "seqmodel"]
        for worker in generators:
            answers = [worker.ask("generate") for _ in range(generate_repeats)]
            times = [answer["seconds"] for answer in answers if "seconds" in answer]
            if times:
                results[worker.name]["generate_tokens_per_second"] = (
                    BATCH * SEQUENCE / statistics.median(times))
            else:
                log(f"  generate failed: {answers[0].get('error')}")
    finally:
        for worker in workers:
            worker.close()
    return results


def run_suite(*, cells=("lstm", "gru"), hidden_sizes=(128, 512), candidates=None,
              repeats: int = 5, seconds_per_repeat: float = 1.0, generate_repeats: int = 3,
              log=print) -> dict:
    """Run the suite and return its results as a JSON-ready dict (see module docstring)."""
    candidates = default_candidates() if candidates is None else candidates
    log(f"load average before: {os.getloadavg()}")
    gemm = Worker(Candidate("gemm", "gemm", {"serial_shapes": [
        (hidden, GATES[cell]) for cell in cells for hidden in hidden_sizes]}), "lstm", 0)
    ceilings = gemm.hello.get("result") or {}
    gemm.close()
    log("GEMM ceilings (GFLOP/s): " + ", ".join(f"{k}={v:.0f}" for k, v in ceilings.items()))
    rows = []
    for cell in cells:
        for hidden in hidden_sizes:
            log(f"{cell} h{hidden} ...")
            measured = _measure_config(
                cell, hidden, candidates, repeats=repeats, seconds_per_repeat=seconds_per_repeat,
                generate_repeats=generate_repeats, log=log)
            load = measured.pop("_load", None)
            for entry in measured.values():
                if "seconds_per_step" in entry:
                    entry.update(_roofline(cell, hidden, entry["seconds_per_step"], ceilings))
            torch_speeds = [measured[n]["tokens_per_second"] for n in TORCH_CANDIDATES
                            if "tokens_per_second" in measured.get(n, {})]
            reference = max(torch_speeds) if torch_speeds else None
            for entry in measured.values():
                if reference and "tokens_per_second" in entry:
                    entry["ratio_to_torch"] = entry["tokens_per_second"] / reference
            # Work ratio: torch on one thread against each candidate, in CPU time per step.
            one_thread = measured.get("torch-1t", {}).get("cpu_ms_per_step")
            for entry in measured.values():
                if one_thread and entry.get("cpu_ms_per_step"):
                    entry["cpu_ratio_to_torch_1t"] = one_thread / entry["cpu_ms_per_step"]
            rows.append({"cell": cell, "hidden": hidden, "load_average": load,
                         "candidates": measured})
    return {
        "shape": {"batch": BATCH, "sequence": SEQUENCE, "vocab": VOCAB, "embed": EMBED},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_after": os.getloadavg()},
        "versions": _versions(),
        "ceilings_gflops": ceilings,
        "rows": rows,
    }


def _versions() -> dict:
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = None
    return versions


COLUMNS = [  # (header, key, format)
    ("devices", "devices", "d"),
    ("steps/call", "steps_per_call", "d"),
    ("train tok/s", "tokens_per_second", ".0f"),
    ("x torch", "ratio_to_torch", ".2f"),
    ("spread", "spread", ".2f"),
    ("cpu ms/step", "cpu_ms_per_step", ".1f"),
    ("x torch-1t cpu", "cpu_ratio_to_torch_1t", ".2f"),
    ("compile s", "compile_seconds", ".2f"),
    ("compile cpu s", "compile_cpu_seconds", ".2f"),
    ("GFLOP/s", "gflops", ".1f"),
    ("roofline", "roofline", ".2f"),
    ("generate tok/s", "generate_tokens_per_second", ".0f"),
]


def _table_rows(results: dict):
    for row in results["rows"]:
        for name, entry in row["candidates"].items():
            cells = [row["cell"], str(row["hidden"]), name]
            if "tokens_per_second" not in entry:
                yield cells + [f"skipped: {entry.get('error', '?')[:50]}"] + [""] * (len(COLUMNS) - 1)
                continue
            yield cells + [format(entry[key], spec) if entry.get(key) is not None else "-"
                           for _, key, spec in COLUMNS]


def _footer(results: dict) -> list[str]:
    ceilings = results.get("ceilings_gflops", {})
    lines = ["GEMM ceilings GFLOP/s: " + ", ".join(
        f"{k.replace('_gflops', '')}={v:.0f}" for k, v in ceilings.items())]
    programs = {entry["compiled_programs"] for row in results["rows"]
                for entry in row["candidates"].values() if "compiled_programs" in entry}
    if programs:
        lines.append("compiled train-step programs after two different batches: "
                     + ", ".join(map(str, sorted(programs))) + " (1 = no recompile)")
    loads = [row.get("load_average") for row in results["rows"] if row.get("load_average")]
    if loads:
        worst = max(max(load.values()) for load in loads)
        lines.append(f"load average during the runs: up to {worst:.1f} on {os.cpu_count()} CPUs"
                     + ("  (busy machine: absolute figures are low and noisy; read the ratios)"
                        if worst > (os.cpu_count() or 1) else ""))
    return lines


def format_table(results: dict) -> str:
    """The printed table: one line per (cell, hidden, candidate), ratios to the best torch.

    ``spread`` is ``(max - min) / median`` of the repetitions: the run's own noise figure.
    ``cpu ms/step`` is the CPU time of the candidate's process (every thread) per step, and
    ``x torch-1t cpu`` torch-on-one-thread's CPU time over the candidate's: a work ratio that a
    busy machine disturbs far less than wall time (a multi-threaded candidate's figure includes
    its threads' waiting)."""
    header = ["cell", "h", "candidate"] + [title for title, _, _ in COLUMNS]
    rows = list(_table_rows(results))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    def line(values):
        return "  ".join(str(v).rjust(w) if i > 2 else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(header), "-" * len(line(header))] + [line(r) for r in rows]
                     + _footer(results))


def format_markdown(results: dict) -> str:
    """The same table in Markdown (for the README), with the command that produced it."""
    header = ["cell", "h", "candidate"] + [title for title, _, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(results)]
    lines += ["", *_footer(results), "", f"Command: `{results.get('command', '')}`",
              f"Versions: {results.get('versions')}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``seqmodel bench`` / ``benchmarks/bench_speed.py``: run the suite, print, write JSON."""
    parser = argparse.ArgumentParser(prog="seqmodel bench", description=__doc__.split("\n")[0])
    parser.add_argument("--json", nargs="?", const="bench_results.json", default=None,
                        help="write the results as JSON to this path (default bench_results.json)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: lstm h128 only, 2 short repetitions")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--hidden", default="128,512")
    parser.add_argument("--candidates", default=",".join(TRAIN_CANDIDATES),
                        help="comma list of: " + ", ".join(TRAIN_CANDIDATES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per repetition")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return 0
    cells = tuple(args.cells.split(","))
    hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
    repeats, seconds, generate_repeats = args.repeats, args.seconds, 3
    if args.quick:
        cells, hidden_sizes, repeats, seconds, generate_repeats = ("lstm",), (128,), 2, 0.3, 1
    for cell in cells:
        if cell not in ("lstm", "gru"):
            parser.error(f"--cells: {cell!r} is not allowed; allowed: lstm, gru")
    candidates = default_candidates(tuple(args.candidates.split(",")))
    results = run_suite(cells=cells, hidden_sizes=hidden_sizes, candidates=candidates,
                        repeats=repeats, seconds_per_repeat=seconds,
                        generate_repeats=generate_repeats,
                        log=lambda message: print(message, file=sys.stderr, flush=True))
    results["command"] = " ".join(["seqmodel bench", *(argv if argv is not None else sys.argv[1:])])
    print(format_table(results))
    if args.markdown:
        print()
        print(format_markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
