"""The timed train steps, one builder per kind of candidate (run inside a worker process).

Each builder takes the worker's spec (``cell``, ``hidden``, ``options``), builds and compiles its
train step on the shared workload (:mod:`benchmarks.workload`), and returns
``(run, compile_info, extra)`` as :func:`benchmarks.protocol.serve` wants: ``run(n)`` times ``n``
steps, compile excluded.
"""

from __future__ import annotations

import shutil
import tempfile
import time

from benchmarks.workload import (
    BATCH,
    EMBED,
    SEQUENCE,
    VOCAB,
    batch,
    optax_chain,
    reference_model,
)


def _compile(jitted, *args):
    """``(compiled, {"compile_seconds": wall, "compile_cpu_seconds": cpu})`` of ``jitted(*args)``.

    The CPU seconds (this process, all threads) stay meaningful on a busy machine, where the wall
    time of a compile stretches with the load."""
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = jitted.lower(*args).compile()
    return compiled, {"compile_seconds": time.perf_counter() - wall,
                      "compile_cpu_seconds": time.process_time() - cpu}


def _set_cpu_devices(options: dict) -> int:
    """Ask for ``options['devices']`` CPU devices; must run before JAX's backend starts."""
    import jax

    devices = int(options.get("devices") or 1)
    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    return devices


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
    optimizer = optax_chain()
    opt_state = optimizer.init(params)

    def loss_fn(params, inputs, targets):
        return loss_of(nnx.merge(graphdef, params, rest), inputs, targets)

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    inputs, targets = (jax.numpy.asarray(a) for a in batch())
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


class _SameBatches:
    """A dataset stand-in for :func:`seqmodel.training.devices.choose_split`: its train batches
    are the workload's batch, again and again."""

    def train_batches(self, **_):
        import numpy as np

        from seqmodel.data import Batch

        inputs, targets = batch(0)
        while True:
            yield Batch(inputs=inputs, targets=targets, mask=None,
                        reset=np.zeros((BATCH,), bool))


def seqmodel_worker(spec: dict):
    """The library's own train step, as ``seqmodel train`` runs it: the program of
    :meth:`seqmodel.training.distributed.DataParallel.train_step` (the batch and the lanes' carry
    split by rows over the devices), ``TrainConfig.steps_per_call`` steps per call over stacked
    batches unless ``options['steps_per_call']`` says otherwise.

    ``options['devices']``: a count (1: the plain one-device step), ``"cores"`` (one CPU device
    per core), or absent: ``seqmodel train``'s default, the split that
    :func:`seqmodel.training.devices.choose_split` measures at start-up (the ready line names it
    in ``device_choice``)."""
    import jax
    import numpy as np
    from flax import nnx

    from seqmodel.data import Batch
    from seqmodel.training import devices, distributed
    from seqmodel.training.fitting.in_flight import CallsInFlight
    from seqmodel.training.optimization import (
        TrainConfig,
        init_train_state,
        stack_batches,
    )

    options = spec["options"]
    count = options.get("devices")
    count = distributed.cpu_cores() if count == "cores" else count
    # Before any JAX computation: virtual CPU devices must be asked for first.
    parallel = distributed.from_flags(devices=count, batch_size=BATCH)
    model = reference_model(spec["cell"], spec["hidden"],
                            fast_recurrence=options.get("fast_recurrence", True),
                            fold_embedding=options.get("fold_embedding", True))
    train_config = TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=10_000)
    per_call = int(options.get("steps_per_call") or train_config.steps_per_call)
    choice = None
    if count is None:
        parallel, choice = devices.choose_split(model, _SameBatches(), train_config, parallel)
        per_call = choice.steps_per_call
    tx, train_step = parallel.train_step(nnx.graphdef(model), train_config,
                                         stacked=per_call > 1)
    graphdef, state = init_train_state(model, tx, train_config)
    # The step donates its state; copies keep the model itself usable (for generate).
    state = parallel.place_state(jax.tree.map(
        lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, state))

    def placed(seed: int, reset: bool):
        # Lanes: every batch continues the previous one's rows, so the carry is passed along.
        inputs, targets = batch(seed)
        one = Batch(inputs=inputs, targets=targets, mask=None, reset=np.full((BATCH,), reset))
        if per_call == 1:
            return parallel.shard_batch(one)
        return parallel.shard_batch(stack_batches([one] * per_call), stacked=True)

    first = placed(0, False)
    compiled, compile_info = _compile(train_step, state, first)
    # No recompile across batches: the jitted step itself, fed two different batches, must keep
    # one compiled program (the timing below then calls the compiled program directly).
    for batch_values in (first, placed(1, True)):
        state, metrics = train_step(state, batch_values)
    compile_info["compiled_programs"] = int(train_step._cache_size())
    if choice is not None:  # the choice compiled this program already: its time is the choice's
        compile_info["compile_seconds"] = compile_info["compile_cpu_seconds"] = None
    compile_info["devices"] = parallel.num_devices
    compile_info["steps_per_call"] = per_call
    if choice is not None:
        compile_info["device_choice"] = choice.to_dict()
    holder = {"state": state}

    def run(n: int) -> tuple[float, float]:
        calls = -(-n // per_call)  # whole calls, timed and scaled to n steps
        wall, cpu = time.perf_counter(), time.process_time()
        in_flight = CallsInFlight()  # as fit() bounds the dispatch queue
        for _ in range(calls):
            holder["state"], metrics = compiled(holder["state"], first)
            in_flight.add(metrics)
        metrics["loss"].block_until_ready()
        scale = n / (calls * per_call)
        return (time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale

    extra = {}
    if options.get("generate"):
        extra["generate"] = _generate_runner(model)
    return run, compile_info, extra


def _generate_runner(model, steps: int = SEQUENCE):
    """Timer of free-running generation, ``BATCH`` rows of ``steps`` tokens, compile excluded
    (the generate benchmark's own timer)."""
    from benchmarks.decode_workers import time_generate

    return lambda: time_generate(model, batch_size=BATCH, steps=steps)


def fit_worker(spec: dict):
    """:func:`seqmodel.training.fitting` itself, as ``seqmodel train`` runs it: a text dataset in lanes,
    metrics fetched and written to ``metrics.jsonl`` every ``log_every`` steps, the NaN check, a
    run folder. A repetition of ``n`` steps is one ``fit`` of one more log interval than that;
    the time quoted runs from the end of its first interval (the run's start) to the end of its
    last (evaluation and the final checkpoint come after), marked by fit's callback. Against
    ``seqmodel`` in the same run (same devices) it shows whether the data pipeline and the logging
    keep the compiled step busy. Without ``options['devices']`` its split is measured at
    start-up, as ``seqmodel train`` does."""
    import numpy as np
    from flax import nnx

    from seqmodel import TrainConfig
    from seqmodel.data.text import TextDataset
    from seqmodel.nn.model import ModelConfig, SequenceModel
    from seqmodel.training import distributed
    from seqmodel.training.fitting import fit

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
    choice, per_call = None, TrainConfig.steps_per_call
    if options.get("devices") is None:  # as seqmodel train: the split measured at start-up
        from seqmodel.training import devices

        parallel, choice = devices.choose_split(
            model, dataset, TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=10_000),
            parallel)
        per_call = choice.steps_per_call

    def run(n: int) -> tuple[float, float]:
        # Whole log intervals: the callback then marks the end of every interval, and the time
        # from the first mark to the last is exactly `timed` steps with their logging.
        timed = -(-n // log_every) * log_every
        marks = []
        train_config = TrainConfig(batch_size=BATCH, seq_len=SEQUENCE, steps=timed + log_every,
                                   eval_every=None, log_every=log_every, steps_per_call=per_call)
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
    return run, {"devices": parallel.num_devices, "steps_per_call": per_call,
                 **({"device_choice": choice.to_dict()} if choice else {})}, {}


def flax_worker(spec: dict):
    """``nnx.RNN(OptimizedLSTMCell / GRUCell)`` between an embedding and a linear head, trained
    with the same optax chain (its own initialisation: Flax's cells have other conventions)."""
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


def torch_worker(spec: dict):
    """``nn.Embedding`` + ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear`` holding the weights of the
    ``seqmodel`` candidates' model (:func:`seqmodel.interop.to_torch`), checked to give its loss
    on the first batch before anything is timed; AdamW with warmup and clipping.

    ``options``: ``threads`` (intra-op threads; None: PyTorch's default), ``mode`` (``eager`` or
    ``compile``: ``torch.compile`` of the forward and loss, whose backward AOTAutograd compiles
    with it; the foreach AdamW step stays eager), ``implementation`` (``module``: ``nn.LSTM`` /
    ``nn.GRU``; ``loop``: :class:`benchmarks.torch_variants.GRULoop`, the GRU as a loop over time
    with its input projection hoisted, checked against the same loss). On a GPU: cuDNN."""
    import torch

    from benchmarks import torch_variants
    from benchmarks.torch_copy import check_same_loss, torch_modules

    options = spec["options"]
    threads = torch_variants.configure_threads(options.get("threads"))
    mode = options.get("mode", "eager")
    implementation = options.get("implementation", "module")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seqmodel_model = reference_model(spec["cell"], spec["hidden"])
    modules = torch_modules(seqmodel_model, device)
    if implementation == "loop":
        if spec["cell"] != "gru":
            raise ValueError(f"implementation 'loop' is the GRU's; cell {spec['cell']!r}")
        modules = type(modules)(modules[0], torch_variants.gru_loop_class()(modules[1]).to(device),
                                modules[2])
    elif implementation != "module":
        raise ValueError(f"implementation={implementation!r}; allowed: module, loop")
    inputs_array, targets_array = batch()
    agreement = check_same_loss(seqmodel_model, modules, inputs_array, targets_array)
    del seqmodel_model

    class TorchBaseline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn, self.head = modules

        def forward(self, tokens):
            return self.head(self.rnn(self.embed(tokens))[0])

    model = TorchBaseline()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    inputs, targets = (torch.from_numpy(a).long().to(device) for a in (inputs_array, targets_array))

    def loss_of(inputs, targets):
        logits = model(inputs)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))

    loss_of = torch_variants.compiled(loss_of, mode)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return loss

    wall, cpu = time.perf_counter(), time.process_time()
    step().item()  # compiles (torch.compile) or warms up (eager)
    compile_info = {"compile_seconds": time.perf_counter() - wall,
                    "compile_cpu_seconds": time.process_time() - cpu}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = step()
        loss.item()
        return time.perf_counter() - start

    return run, {**compile_info, **threads, "mode": mode, "implementation": implementation,
                 "first_loss": agreement["torch_loss"],
                 "seqmodel_first_loss": agreement["loss"]}, {}
