"""The default split of a training run over a CPU-only machine, chosen by a short measurement.

On a CPU, XLA runs one device's program on one thread at a time for the small serial GEMMs of a
recurrence, so one virtual CPU device per core (each with its own rows of the batch) can train
faster than one device. It can also lose: every step's gradient all-reduce waits for the slowest
device, so when other processes hold a core the split runs slower than one device. Several train
steps per compiled call save a dispatch and XLA:CPU's per-call buffer set-up on a quiet machine;
on a busy one a single long call gets a smaller share of the cores than short calls dispatched
from a second thread. Which wins depends on the machine's load at the time, not on the model
alone, so a fixed rule is right on one day and wrong on the next.

:func:`choose_split` therefore times the candidates at start-up: the run's own compiled train
calls on the run's first batches, on one device and on one device per core, each with the
configured steps per call and with one, in alternation, on copies of the initial state (the run
itself starts from the untouched state). One device with the configured steps per call is the
reference: another split is chosen only when it is faster by more than :data:`MARGIN`
(measurement noise), so the default is never slower than one device by more than noise. The
choice and the timings behind it are said in ``seqmodel train``'s first line and recorded in the
checkpoint's metadata, and ``--resume`` keeps the device count (another split rounds the gradient
sum differently, so a run that changed it would not continue bit for bit). ``--devices N`` skips
the measurement; ``--steps-per-call K`` fixes the steps per call.

Both splits live in one process: the process asks for one CPU device per core before JAX starts
(:func:`seqmodel.training.distributed.from_flags`), and the one-device split is a mesh of the
first of them.

Example::

    parallel = distributed.from_flags(batch_size=32)          # before any JAX computation
    parallel, choice = choose_split(model, dataset, config, parallel)
    config = dataclasses.replace(config, steps_per_call=choice.steps_per_call)
    choice.reason   # "2 cpu devices, 20 steps a call (timed at start-up, ms a step: ...)"
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax

from seqmodel.training import optimization
from seqmodel.training.distributed import DataParallel

# A split other than one device with the configured steps per call must beat it by this
# fraction of a step to be chosen.
MARGIN = 0.05
# Timed rounds at least and at most; rounds stop early once every candidate has MIN_ROUNDS
# timings and the timing took MEASURE_SECONDS.
MIN_ROUNDS, MAX_ROUNDS = 2, 4
MEASURE_SECONDS = 1.5


@dataclasses.dataclass(frozen=True)
class SplitChoice:
    """How a run splits over the devices and why.

    Attributes:
      devices: the data-parallel devices of the run.
      steps_per_call: train steps per compiled call.
      reason: one line for the user (what was measured, or why nothing was).
      seconds_per_step: ``{(devices, steps_per_call): seconds}`` of each split timed (empty:
        none was).
      timing_seconds: the wall time the choice took (compiles and timed calls).
    """

    devices: int
    steps_per_call: int
    reason: str
    seconds_per_step: dict[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    timing_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"devices": self.devices, "steps_per_call": self.steps_per_call,
                "reason": self.reason, "timing_seconds": self.timing_seconds,
                "seconds_per_step": {f"{devices}x{per_call}": seconds for (devices, per_call),
                                     seconds in self.seconds_per_step.items()}}


def splits_to_try(parallel: DataParallel) -> list[int]:
    """Device counts worth timing for a run on ``parallel``: ``[1, N]`` for a single-process
    run on ``N > 1`` CPU devices, else ``[N]`` (accelerators and several processes keep what they
    were given)."""
    platform = parallel.mesh.devices.flat[0].platform
    if platform != "cpu" or parallel.num_processes > 1 or parallel.num_devices == 1:
        return [parallel.num_devices]
    return [1, parallel.num_devices]


def _calls(model, dataset, config, parallel: DataParallel, steps_per_call: int):
    """``(run, steps)``: a function that runs compiled train calls of ``steps_per_call`` steps
    on the run's first batches on ``parallel``, as many as make ``config.steps_per_call`` steps,
    and waits for them; and the steps it runs. Its state is a copy of ``model``'s initial state
    (the calls donate their input)."""
    graphdef = optimization.split_model(model)[0]
    _, state = optimization.init_train_state(model, parallel.train_step(graphdef, config)[0],
                                             config)
    state = parallel.place_state(jax.tree.map(
        lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, state))
    batches = parallel.local_batches(dataset.train_batches(
        batch_size=config.batch_size, seq_len=config.seq_len, batching=config.batching,
        seed=config.seed))
    batch, steps = batches.take(steps_per_call)[0]
    program = parallel.train_step(graphdef, config, stacked=steps > 1)[1]
    calls = max(1, config.steps_per_call // steps)
    holder = {"state": state}

    def run() -> None:
        for _ in range(calls):
            holder["state"], metrics = program(holder["state"], batch)
        jax.block_until_ready(metrics)

    return run, steps * calls


def time_splits(model, dataset, config, parallels: Sequence[DataParallel],
                steps_per_call: Sequence[int]) -> dict[tuple[int, int], float]:
    """``{(devices, steps per call): seconds per step}`` of the run's compiled train calls on
    each of ``parallels`` with each of ``steps_per_call``: compiled and run once each, then
    timed in alternation (each round times every candidate once, the order reversed every other
    round; the fastest timing of each counts, the one least disturbed by other work)."""
    calls = {}
    for parallel in parallels:
        for per_call in dict.fromkeys(steps_per_call):
            run, steps = _calls(model, dataset, config, parallel, per_call)
            run()  # compiles; fit reuses the compiled program of the split it runs on
            calls[(parallel.num_devices, per_call)] = (run, steps)
    times: dict[tuple[int, int], list[float]] = {key: [] for key in calls}
    started = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - started >= MEASURE_SECONDS:
            break
        order = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for key in order:
            run, steps = calls[key]
            begin = time.perf_counter()
            run()
            times[key].append((time.perf_counter() - begin) / steps)
    return {key: min(values) for key, values in times.items()}


def _name(devices: int, steps_per_call: int, platform: str) -> str:
    return (f"{devices} {platform} device{'s' if devices > 1 else ''}, {steps_per_call} "
            f"step{'s' if steps_per_call > 1 else ''} a call")


def decide(seconds_per_step: dict[tuple[int, int], float], baseline: tuple[int, int],
           platform: str = "cpu") -> SplitChoice:
    """The split of the measured ``seconds_per_step`` (``{(devices, steps per call): s}``): the
    fastest, when it beats ``baseline`` (one device, the configured steps per call) by more
    than :data:`MARGIN`; else the baseline.

    Example: ``decide({(1, 20): 0.050, (2, 20): 0.040}, (1, 20)).devices == 2``;
    ``decide({(1, 20): 0.050, (2, 20): 0.049}, (1, 20)).devices == 1`` (within the margin)."""
    fastest = min(seconds_per_step, key=seconds_per_step.get)
    reference = seconds_per_step[baseline]
    timings = ", ".join(f"{_name(*key, platform)} {1e3 * seconds:.1f}"
                        for key, seconds in seconds_per_step.items())
    measured = f"timed at start-up, ms a step: {timings}"
    if fastest != baseline and seconds_per_step[fastest] < (1 - MARGIN) * reference:
        speedup = reference / seconds_per_step[fastest]
        return SplitChoice(*fastest, f"{_name(*fastest, platform)} ({measured}; {speedup:.2f}x "
                                     f"the first)", dict(seconds_per_step))
    kept = "" if fastest == baseline else f"; the others within {MARGIN:.0%}: the first kept"
    return SplitChoice(*baseline, f"{_name(*baseline, platform)} ({measured}{kept})",
                       dict(seconds_per_step))


def choose_split(model, dataset, config, parallel: DataParallel, *,
                 choose_steps_per_call: bool = True,
                 measure: Callable = time_splits) -> tuple[DataParallel, SplitChoice]:
    """``(the DataParallel to train on, the choice)`` for a run of ``model`` on ``dataset``
    with ``config`` whose devices were not given. On a single-process CPU run with several
    devices (``parallel``, from :func:`seqmodel.training.distributed.from_flags`) it times one
    device and all of them, each with ``config.steps_per_call`` and (``choose_steps_per_call``)
    one step per call, and takes the fastest (see :func:`decide`); elsewhere ``parallel``
    itself. The caller runs with ``choice.steps_per_call``. ``measure`` replaces the timing
    (tests).

    Example::

        parallel, choice = choose_split(model, dataset, config, parallel)
        config = dataclasses.replace(config, steps_per_call=choice.steps_per_call)
    """
    counts = splits_to_try(parallel)
    platform = parallel.mesh.devices.flat[0].platform
    per_call = config.steps_per_call
    if len(counts) == 1:
        return parallel, SplitChoice(parallel.num_devices, per_call, parallel.describe())
    candidates = {count: parallel if count == parallel.num_devices else DataParallel.create(count)
                  for count in counts if config.batch_size % count == 0}
    options = [per_call, 1] if choose_steps_per_call and per_call > 1 else [per_call]
    started = time.perf_counter()
    timed = measure(model, dataset, config, list(candidates.values()), options)
    choice = decide(timed, (1, per_call), platform)
    choice = dataclasses.replace(choice, timing_seconds=time.perf_counter() - started)
    return candidates[choice.devices], choice
