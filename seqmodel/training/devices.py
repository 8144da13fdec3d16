"""The default split of a training run over a CPU-only machine, chosen by a short measurement.

On a CPU, XLA runs one device's program on one thread at a time for the small serial GEMMs of a
recurrence, so one virtual CPU device per core (each with its own rows of the batch) can train up
to 1.6x faster than one device. It can also lose: every step's gradient all-reduce waits for the
slowest device, so when other processes hold a core the split ran 1.7x slower than one device
(a busy day of the 2-core development machine). Which one wins depends on the machine's load at
the time, not on the model alone, so a fixed rule is right on one day and wrong on the next.

:func:`choose_split` therefore times both at start-up: the run's own compiled train call (its
steps per call) on the run's first batch, one device against one device per core, alternating,
on copies of the initial state (the run itself starts from the untouched state). One device per
core is chosen only when it is faster by more than :data:`MARGIN` (measurement noise), so the
default is never slower than one device by more than noise; a tie keeps one device. The choice
(and the timings behind it) is said in ``seqmodel train``'s first line and recorded in the
checkpoint's metadata, and ``--resume`` keeps it (a split changes the rounding of the gradient
sum, so a run that changed its split would not resume bit for bit). ``--devices N`` skips the
measurement.

The steps per call stay ``TrainConfig.steps_per_call``: several steps per call were faster than
one in every row the speed suite measured (``benchmarks/bench_speed.py``, the ``1call``
candidates), on one device and on several.

Both splits live in one process: the process asks for one CPU device per core before JAX starts
(:func:`seqmodel.training.distributed.from_flags`), and the one-device split is a mesh of the
first of them, which runs as fast as a process with a single device.

Example::

    parallel = distributed.from_flags(batch_size=32)          # before any JAX computation
    parallel, choice = choose_split(model, dataset, config, parallel)
    choice.reason   # "2 cpu devices (measured at start-up: one device 52.0 ms a step, 2 devices
                    #  38.1 ms: 1.37x)"
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax

from seqmodel.training import optimization
from seqmodel.training.distributed import DataParallel

# One device per core must beat one device by this fraction of a step to be chosen.
MARGIN = 0.05
# Timed calls of each split at least, and at most; rounds stop early once both splits have
# MIN_ROUNDS calls and the timing took MEASURE_SECONDS.
MIN_ROUNDS, MAX_ROUNDS = 2, 4
MEASURE_SECONDS = 1.5


@dataclasses.dataclass(frozen=True)
class SplitChoice:
    """How a run splits over the devices and why.

    Attributes:
      devices: the data-parallel devices of the run.
      reason: one line for the user (what was measured, or why nothing was).
      seconds_per_step: ``{devices: seconds}`` of each split timed (empty: none was).
    """

    devices: int
    reason: str
    seconds_per_step: dict[int, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"devices": self.devices, "reason": self.reason,
                "seconds_per_step": {str(count): seconds
                                     for count, seconds in self.seconds_per_step.items()}}


def splits_to_try(parallel: DataParallel) -> list[int]:
    """Device counts worth timing for a run on ``parallel``: ``[1, N]`` for a single-process
    run on ``N > 1`` CPU devices, else ``[N]`` (accelerators and several processes keep what they
    were given)."""
    platform = parallel.mesh.devices.flat[0].platform
    if platform != "cpu" or parallel.num_processes > 1 or parallel.num_devices == 1:
        return [parallel.num_devices]
    return [1, parallel.num_devices]


def _first_call(model, dataset, config, parallel: DataParallel):
    """``(run, steps)``: a function that runs one compiled train call of ``config`` on the
    run's first batch(es) on ``parallel`` and waits for it, and the steps in that call. Its state
    is a copy of ``model``'s initial state (the call donates its input)."""
    graphdef = optimization.split_model(model)[0]
    _, state = optimization.init_train_state(model, parallel.train_step(graphdef, config)[0],
                                             config)
    state = parallel.place_state(jax.tree.map(
        lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, state))
    batches = parallel.local_batches(dataset.train_batches(
        batch_size=config.batch_size, seq_len=config.seq_len, batching=config.batching,
        seed=config.seed))
    batch, steps = batches.take(config.steps_per_call)[0]
    program = parallel.train_step(graphdef, config, stacked=steps > 1)[1]
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = program(holder["state"], batch)
        jax.block_until_ready(metrics)

    return run, steps


def time_splits(model, dataset, config, parallels: Sequence[DataParallel]) -> dict[int, float]:
    """``{devices: seconds per step}`` of the run's compiled train call on each of
    ``parallels``: compiled and run once each, then timed in alternation (each round times every
    split once; the fastest call of each split counts, the one least disturbed by other work)."""
    calls = {}
    for parallel in parallels:
        run, steps = _first_call(model, dataset, config, parallel)
        run()  # compiles; fit reuses the compiled program of the split it runs on
        calls[parallel.num_devices] = (run, steps)
    times: dict[int, list[float]] = {count: [] for count in calls}
    started = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - started >= MEASURE_SECONDS:
            break
        order = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for count in order:
            run, steps = calls[count]
            begin = time.perf_counter()
            run()
            times[count].append((time.perf_counter() - begin) / steps)
    return {count: min(values) for count, values in times.items()}


def decide(seconds_per_step: dict[int, float], platform: str = "cpu") -> SplitChoice:
    """The split of the measured ``seconds_per_step`` (``{1: s, N: s}``): ``N`` devices only
    when faster than one device by more than :data:`MARGIN`.

    Example: ``decide({1: 0.050, 2: 0.040}).devices == 2``; ``decide({1: 0.050, 2:
    0.049}).devices == 1`` (within the margin)."""
    one = seconds_per_step[1]
    many = max(seconds_per_step)
    per_core = seconds_per_step[many]
    measured = (f"measured at start-up: one device {1e3 * one:.1f} ms a step, {many} devices "
                f"{1e3 * per_core:.1f} ms")
    if per_core < (1 - MARGIN) * one:
        return SplitChoice(many, f"{many} {platform} devices ({measured}: "
                                 f"{one / per_core:.2f}x)", dict(seconds_per_step))
    kept = "" if one <= per_core else f", within {MARGIN:.0%}: one device kept"
    return SplitChoice(1, f"1 {platform} device ({measured}{kept})", dict(seconds_per_step))


def choose_split(model, dataset, config, parallel: DataParallel, *,
                 measure: Callable = time_splits) -> tuple[DataParallel, SplitChoice]:
    """``(the DataParallel to train on, the choice)`` for a run of ``model`` on ``dataset``
    with ``config`` whose devices were not given: on a single-process CPU run with several
    devices (``parallel``, from :func:`seqmodel.training.distributed.from_flags`), one device
    or all of them, whichever :func:`time_splits` finds faster (see :func:`decide`); elsewhere
    ``parallel`` itself. ``measure`` replaces the timing (tests).

    Example::

        parallel, choice = choose_split(model, dataset, config, parallel)
    """
    counts = splits_to_try(parallel)
    platform = parallel.mesh.devices.flat[0].platform
    if len(counts) == 1:
        return parallel, SplitChoice(parallel.num_devices, f"{parallel.describe()}")
    candidates = {count: parallel if count == parallel.num_devices else DataParallel.create(count)
                  for count in counts}
    usable = {count: candidate for count, candidate in candidates.items()
              if config.batch_size % count == 0}
    if len(usable) == 1:
        (count, chosen), = usable.items()
        return chosen, SplitChoice(count, f"{chosen.describe()}: the batch of "
                                          f"{config.batch_size} does not split further")
    choice = decide(measure(model, dataset, config, list(usable.values())), platform)
    return usable[choice.devices], choice
