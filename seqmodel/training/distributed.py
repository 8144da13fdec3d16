"""Data-parallel training on ``jax.sharding``: one host with several devices, or several processes.

A :class:`DataParallel` holds a one-axis :class:`jax.sharding.Mesh` named ``data``. The train step
stays one jitted program: each batch and the training lanes' carry are split along ``data`` (row
``r`` of a batch lives on one device), parameters, optimizer state, step and keys are replicated,
and XLA inserts the gradient all-reduce. One device is the same code path with a mesh of one.

With ``sequence=S`` (``DataParallel.create(devices, sequence=S)``, ``seqmodel train
--sequence-parallel S``) the mesh has a second axis, ``sequence``, and each batch's time axis is
split over it too: a device holds ``t / S`` consecutive steps of its rows. The train step is
traced under :func:`seqmodel.nn.sequence_parallel.split_time`, so the linear recurrences scan
their chunk and exchange chunk summaries along ``sequence``; the carry of the lanes stays split
by rows only (every device of a row group holds it). The devices of one ``sequence`` group belong
to one process. Serial cells refuse it (:meth:`DataParallel.check_config`).

Several processes (one per host, or several on one machine) join with :func:`initialize`
(:mod:`seqmodel.training.runtime`, with virtual CPU devices and the other start-up calls, all
re-exported here). Every process then builds the
same :class:`DataParallel` over all processes' devices, runs the same batch iterator (same seed,
same data position) and hands only its own rows (its lanes of the stream) to its own devices with
:func:`jax.make_array_from_process_local_data`. Only process 0 writes logs, metrics and samples;
every process takes part in a checkpoint save, in which orbax lets process 0 write.

Virtual CPU devices (for tests and benchmarks on a machine without accelerators) must be asked for
before JAX starts its backend: :func:`request_cpu_devices` (``seqmodel train --devices N`` does it).

This module knows meshes, placement and the compiled train step's shardings; the loop that runs
the step is :func:`seqmodel.training.fitting.fit`, and the command-line side (flags, messages, exit codes) is
:mod:`seqmodel.cli`.

Example::

    from seqmodel.training import distributed
    distributed.request_cpu_devices(4)          # CPU only; before any JAX computation
    parallel = distributed.DataParallel.create()                    # all devices
    result = fit(model, dataset, TrainConfig(batch_size=64, steps=100), parallel=parallel)

    # several processes (each runs this with its own process_id):
    distributed.initialize("10.0.0.1:12355", num_processes=2, process_id=0)
    parallel = distributed.DataParallel.create()
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from seqmodel.data import Batch
from seqmodel.nn import sequence_parallel
from seqmodel.training import optimization
from seqmodel.training.runtime import (  # noqa: F401  (the names callers reach as distributed.*)
    FORCE_DEVICES_FLAG,
    HEARTBEAT_TIMEOUT,
    INITIALIZATION_TIMEOUT,
    MAX_DEFAULT_CPU_DEVICES,
    MIN_ROWS_PER_CPU_DEVICE,
    SHUTDOWN_TIMEOUT,
    DistributedError,
    backend_started,
    cpu_cores,
    default_cpu_devices,
    initialize,
    is_main_process,
    is_peer_failure,
    parse_coordinator,
    request_cpu_devices,
)

DATA_AXIS = "data"
SEQUENCE_AXIS = sequence_parallel.SEQUENCE_AXIS

# ---------------------------------------------------------------------------------------------
# Mesh and placement
# ---------------------------------------------------------------------------------------------


def data_mesh(devices: int | None = None, *, sequence: int = 1) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` devices of every process (None: all); with
    ``sequence > 1`` a two-axis mesh ``("data", "sequence")`` of ``devices / sequence`` by
    ``sequence`` devices per process.

    Devices are ordered by process, then by id, so each process's devices hold a contiguous block
    of rows (its lanes), and a ``sequence`` group never spans processes. Example:
    ``data_mesh(1)`` is the one-device mesh of a single process; ``data_mesh(4, sequence=2)``
    splits rows in 2 and time in 2."""
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise DistributedError(f"sequence={sequence!r} is invalid: must be a positive integer "
                               f"(devices that split the time axis)")
    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    local = min(len(group) for group in by_process.values())
    if devices is None:
        devices = local
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise DistributedError(f"devices={devices!r} is invalid: must be a positive integer")
    if devices % sequence:
        raise DistributedError(
            f"--sequence-parallel {sequence} does not divide --devices {devices}: the devices of "
            f"a process form (devices / sequence) row groups of {sequence} devices that split "
            f"time; use a multiple of {sequence} devices")
    if devices > local:
        platform = jax.devices()[0].platform
        hint = (f"; on a CPU-only machine ask for virtual devices first with "
                f"XLA_FLAGS={FORCE_DEVICES_FLAG}={devices} (seqmodel train --devices does it)"
                if platform == "cpu" else "")
        raise DistributedError(f"--devices {devices} is more than the {local} {platform} "
                               f"device(s) of this process{hint}")
    chosen = [device for process in sorted(by_process)
              for device in sorted(by_process[process], key=lambda d: d.id)[:devices]]
    if sequence == 1:
        return Mesh(np.array(chosen), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    return Mesh(np.array(chosen).reshape(-1, sequence), (DATA_AXIS, SEQUENCE_AXIS),
                axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a training run spreads over devices: a mesh with a ``data`` axis (rows) and, for
    sequence parallelism, a ``sequence`` axis (time).

    Attributes:
      mesh: the :class:`jax.sharding.Mesh`: axes ``("data",)`` or ``("data", "sequence")``.

    Example::

        parallel = DataParallel.create(devices=4)
        parallel.check_batch_size(64)
        state = parallel.place_state(state)          # params replicated, carry split by rows
        batch = parallel.shard_batch(batch)          # (64, t) -> 16 rows on each device

        parallel = DataParallel.create(devices=4, sequence=2)
        batch = parallel.shard_batch(batch)          # (64, t) -> 32 rows x t/2 steps a device
    """

    mesh: Mesh

    @classmethod
    def create(cls, devices: int | None = None, *, sequence: int = 1) -> "DataParallel":
        """Over ``devices`` devices of each process (None: all of them), of which groups of
        ``sequence`` split each row's time axis (``devices / sequence`` row groups)."""
        return cls(data_mesh(devices, sequence=sequence))

    # -- facts ---------------------------------------------------------------------------------

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def sequence_size(self) -> int:
        """Devices along the ``sequence`` axis: 1 when time is not split."""
        return int(dict(self.mesh.shape).get(SEQUENCE_AXIS, 1))

    @property
    def data_size(self) -> int:
        """Row groups (devices along ``data``): the number the batch size must split into."""
        return self.num_devices // self.sequence_size

    @property
    def layout(self) -> sequence_parallel.SequenceLayout | None:
        """How the train step splits time (None: it does not)."""
        if self.sequence_size == 1:
            return None
        return sequence_parallel.SequenceLayout(self.mesh, SEQUENCE_AXIS, DATA_AXIS)

    @property
    def num_processes(self) -> int:
        return len({device.process_index for device in self.mesh.devices.flat})

    @property
    def is_main(self) -> bool:
        """Process 0: writes logs, metrics, plots and samples."""
        return jax.process_index() == 0

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def rows(self) -> NamedSharding:
        """Leading axis split along ``data`` (batches ``(b, ...)``, carry leaves ``(b, h)``)."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def stacked_rows(self) -> NamedSharding:
        """Second axis split along ``data`` (stacked batches ``(K, b, ...)``)."""
        return NamedSharding(self.mesh, PartitionSpec(None, DATA_AXIS))

    def batch_shardings(self, *, stacked: bool = False) -> Batch:
        """Shardings of a :class:`~seqmodel.data.Batch` (a prefix tree): rows along ``data``,
        and the time axis of inputs, targets and mask along ``sequence`` when there is one
        (``reset`` ``(b,)`` has no time axis). ``stacked``: leaves ``(K, b, ...)``."""
        rows = self.stacked_rows if stacked else self.rows
        if self.sequence_size == 1:
            return Batch(rows, rows, rows, rows)
        lead = (None,) if stacked else ()
        time = NamedSharding(self.mesh, PartitionSpec(*lead, DATA_AXIS, SEQUENCE_AXIS))
        return Batch(time, time, time, rows)

    def describe(self) -> str:
        """E.g. ``"4 cpu devices"``, ``"8 gpu devices in 2 processes"`` or ``"4 cpu devices
        (2 data x 2 sequence)"``."""
        platform = self.mesh.devices.flat[0].platform
        text = f"{self.num_devices} {platform} device{'s' if self.num_devices > 1 else ''}"
        if self.sequence_size > 1:
            text += f" ({self.data_size} data x {self.sequence_size} sequence)"
        if self.num_processes > 1:
            text += f" in {self.num_processes} processes"
        return text

    # -- checks --------------------------------------------------------------------------------

    def check_batch_size(self, batch_size: int, *, what: str = "batch_size") -> None:
        groups = self.data_size
        if batch_size % groups:
            multiple = -(-batch_size // groups) * groups
            raise DistributedError(
                f"{what}={batch_size} does not split evenly over {self.describe()}: use a "
                f"multiple of {groups} (e.g. {multiple}) or fewer devices "
                f"(--devices N, DataParallel.create(N))")

    def check_config(self, config, model_config=None) -> None:
        """Raise :class:`DistributedError` for a :class:`~seqmodel.training.optimization.TrainConfig` that cannot
        run on this mesh (and, given the :class:`~seqmodel.ModelConfig`, a model that cannot:
        with a ``sequence`` axis only the linear recurrences split time)."""
        self.check_batch_size(config.batch_size, what="--batch-size")
        if self.sequence_size > 1:
            self._check_sequence_split(config, model_config)
        if self.num_processes > 1 and config.max_time is not None:
            # Each process would measure its own time and stop after a different step; the
            # others would then wait for it forever inside a collective.
            raise DistributedError(
                f"--max-time {config.max_time:g} cannot bound a run across {self.num_processes} "
                f"processes (each would stop at its own step); give --steps instead")

    def _check_sequence_split(self, config, model_config) -> None:
        size = self.sequence_size
        if config.seq_len % size:
            raise DistributedError(
                f"--seq-len {config.seq_len} does not split over --sequence-parallel {size}: use "
                f"a multiple of {size} (e.g. {-(-config.seq_len // size) * size})")
        if not config.plain_teacher_forcing:
            raise DistributedError(
                f"--teacher-forcing {config.teacher_forcing:g} (scheduled sampling) feeds each "
                f"step's sample to the next, so time cannot be split: drop it or use "
                f"--sequence-parallel 1")
        if model_config is None:
            return
        if not model_config.linear:
            raise DistributedError(
                f"--cell {model_config.cell} is a serial recurrence (each step needs the previous "
                f"one) and cannot split time over --sequence-parallel {size}; use --cell mingru, "
                f"minlstm or rglru, or --sequence-parallel 1")
        if model_config.scan == "log_space":
            raise DistributedError(
                f"--scan log_space cannot split time over --sequence-parallel {size}; use "
                f"--scan auto, sequential, associative or chunked")
        context = 3 if model_config.cell == "rglru" else 0  # ResidualBlock's default conv width
        if config.seq_len // size < max(context, 1):
            raise DistributedError(
                f"--seq-len {config.seq_len} leaves {config.seq_len // size} step(s) per device "
                f"of --sequence-parallel {size}; the causal convolution of {model_config.cell} "
                f"needs at least {context}")

    # -- placement -----------------------------------------------------------------------------

    def state_shardings(self):
        """Shardings of a :class:`~seqmodel.training.optimization.TrainState` (a prefix tree): the carry split
        by rows, everything else replicated."""
        replicated = self.replicated
        return optimization.TrainState(step=replicated, params=replicated, model_state=replicated,
                          opt_state=replicated, carry=self.rows, key=replicated,
                          horizon=replicated)

    def place_state(self, state):
        """``state`` (the same values in every process) -> the same state laid out on the mesh."""
        shardings = self.state_shardings()
        placed = {
            field.name: self._place(getattr(state, field.name), getattr(shardings, field.name))
            for field in dataclasses.fields(state)
        }
        return state.replace(**placed)

    def _place(self, tree, sharding: NamedSharding):
        def place(leaf):
            if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
                return leaf
            if self.num_processes == 1:
                return jax.device_put(leaf, sharding)
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
                return jax.device_put(leaf, sharding)  # already global: a reshard at most
            # Every process holds the whole value; each takes its devices' pieces of it.
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                     jax.dtypes.prng_key):
                # Typed PRNG keys have no host form: place their raw data, then re-wrap it.
                data = place(jax.random.key_data(leaf))
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            value = np.asarray(leaf)
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

        return jax.tree.map(place, tree)

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a ``(batch_size, ...)`` batch that this process's devices hold."""
        return _local_rows(self, batch_size)

    def _local_rows(self, batch_size: int) -> slice:
        self.check_batch_size(batch_size)
        indices = self.rows.addressable_devices_indices_map((batch_size,)).values()
        # A set: the devices of one sequence group hold the same rows.
        starts = sorted({(index[0].start or 0, index[0].stop or batch_size) for index in indices})
        start, stop = starts[0][0], starts[-1][1]
        if stop - start != sum(b - a for a, b in starts):  # pragma: no cover - mesh order bug
            raise DistributedError("this process's devices do not hold contiguous rows")
        return slice(start, stop)

    def shard_batch(self, batch, *, stacked: bool = False):
        """A global batch (NumPy, the same in every process) -> arrays split by rows on the mesh.

        In a run of several processes each transfers only its own rows. Leaves ``(b, ...)``, or
        with ``stacked=True`` ``(K, b, ...)`` (see :func:`seqmodel.training.optimization.stack_batches`); a
        ``None`` mask stays None. With a ``sequence`` axis, leaves with a time axis after the
        rows (``(b, t, ...)``) are split along it too (:meth:`batch_shardings`)."""
        row_axis = 1 if stacked else 0
        row_sharding = self.stacked_rows if stacked else self.rows
        time_sharding = self.batch_shardings(stacked=stacked).inputs
        return self._put_rows(batch, lambda leaf: (time_sharding if np.ndim(leaf) > row_axis + 1
                                                   else row_sharding), row_axis)

    def _put_rows(self, batch, sharding_of, row_axis: int):
        """Each leaf of ``batch`` on its ``sharding_of(leaf)``; across processes, each process
        transfers only its rows (its lanes)."""
        rows = jax.tree.leaves(batch)[0].shape[row_axis]
        if self.num_processes == 1:
            self.check_batch_size(rows)
            return jax.tree.map(lambda leaf: jax.device_put(leaf, sharding_of(leaf)), batch)
        mine = (slice(None),) * row_axis + (self.local_rows(rows),)
        return jax.tree.map(
            lambda leaf: jax.make_array_from_process_local_data(
                sharding_of(leaf), np.asarray(leaf)[mine], np.shape(leaf)), batch)

    def place_eval_batch(self, batch, *, stacked: bool = False):
        """Like :meth:`shard_batch`, or replicated when the rows do not split evenly (evaluation
        lanes are ``min(eval_batch_size, stream length)``, which need not divide the devices)."""
        row_axis = 1 if stacked else 0
        rows = jax.tree.leaves(batch)[0].shape[row_axis]
        if rows % self.data_size == 0:
            # By rows only, also on a sequence mesh: evaluation does not split time (each device
            # of a sequence group evaluates its rows whole), so its programs hold no collective.
            sharding = self.stacked_rows if stacked else self.rows
            return self._put_rows(batch, lambda leaf: sharding, row_axis)
        return self._place(batch, self.replicated)

    def local_batches(self, batches) -> "LocalBatches":
        """Wrap a batch iterator (``dataset.train_batches(...)``) so that it yields sharded
        batches; ``.position`` and other attributes pass through."""
        return LocalBatches(batches, self)

    # -- back to the host ----------------------------------------------------------------------

    def host_state(self, state):
        """``state`` with every leaf split across processes gathered into a NumPy array (for a
        checkpoint). Every process must call it (it is a collective when rows span processes)."""
        from jax.experimental import multihost_utils

        def gather(leaf):
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable \
                    and not leaf.is_fully_replicated:
                return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
            return leaf

        return jax.tree.map(gather, state)

    def local_copy(self, tree):
        """Replicated arrays -> single-device copies on this process's first device (e.g. the
        trained parameters for sampling on one device after a run)."""
        def local(leaf):
            if isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1 \
                    and leaf.is_fully_replicated:
                return leaf.addressable_data(0)
            return leaf

        return jax.tree.map(local, tree)

    # -- the train step ------------------------------------------------------------------------

    def train_step(self, graphdef, config, *, stacked: bool = False):
        """``(tx, train_step)``: :func:`seqmodel.training.optimization.make_train_step` jitted with this mesh's
        shardings (batch and carry by rows, batch by time along ``sequence``, the rest
        replicated, metrics replicated), traced with the mesh's time split in force; with
        ``stacked=True`` :func:`seqmodel.training.optimization.make_multi_step` instead, K steps over stacked
        batches ``(K, b, ...)`` (:meth:`shard_batch` with ``stacked=True``; one compile per K).
        Shared by every run with the same model graph, optimizer settings and mesh."""
        return _cached_train_step(graphdef, optimization.step_neutral_config(config), self, stacked)


@functools.lru_cache(maxsize=64)
def _local_rows(parallel: DataParallel, batch_size: int) -> slice:
    return parallel._local_rows(batch_size)  # asked for at every batch: computed once


@functools.lru_cache(maxsize=8)
def _cached_train_step(graphdef, config, parallel: DataParallel, stacked: bool):
    tx = optimization.make_optimizer(config)
    states = parallel.state_shardings()
    make = optimization.make_multi_step if stacked else optimization.make_train_step
    step = _traced_with_layout(make(graphdef, tx, config, jit=False), parallel.layout)
    jitted = jax.jit(step, donate_argnums=0,
                     in_shardings=(states, parallel.batch_shardings(stacked=stacked)),
                     out_shardings=(states, parallel.replicated))
    return tx, jitted


def _traced_with_layout(step, layout: sequence_parallel.SequenceLayout | None):
    """``step`` whose tracing runs with ``layout``'s time split in force (the model reads it
    while JAX traces; a compiled call does not run Python)."""
    if layout is None:
        return step

    @functools.wraps(step)
    def traced(*args):
        with sequence_parallel.split_time(layout):
            return step(*args)

    return traced


class LocalBatches:
    """An iterator of sharded batches over a global batch iterator (see
    :meth:`DataParallel.local_batches`). Every process runs the same global iterator, so data
    positions (saved in checkpoints) agree; each hands only its rows to its devices."""

    def __init__(self, batches, parallel: DataParallel):
        self.batches = batches
        self.parallel = parallel

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        return self.parallel.shard_batch(next(self.batches))

    def take(self, count: int) -> list[tuple[Any, int]]:
        """The next ``count`` batches as ``[(sharded batch, steps in it)]``: one batch stacked
        to ``(count, b, ...)`` leaves (the input of :func:`seqmodel.training.optimization.make_multi_step`)
        when they all have one shape, else each on its own (``count`` batches of one step; e.g.
        padded sequence sets bucketed by length)."""
        batches = [next(self.batches) for _ in range(count)]
        if count == 1 or len({optimization.batch_shapes(batch) for batch in batches}) > 1:
            return [(self.parallel.shard_batch(batch), 1) for batch in batches]
        return [(self.parallel.shard_batch(optimization.stack_batches(batches), stacked=True), count)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)


def default_parallel(batch_size: int | None = None) -> DataParallel:
    """As many of this process's devices as split ``batch_size`` evenly (all of them when it
    divides, down to one): what :func:`seqmodel.training.fitting.fit` uses without ``parallel=``, so that a
    plain ``fit`` call never fails on a batch size that does not match the device count.

    Example: on a machine with 4 devices ``default_parallel(6).num_devices == 2``.
    """
    devices = jax.local_device_count()
    while batch_size is not None and batch_size % devices:
        devices -= 1
    return DataParallel.create(devices)


def from_flags(*, devices: int | None = None, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               batch_size: int | None = None, sequence: int = 1) -> DataParallel:
    """What ``seqmodel train --devices N --sequence-parallel S --coordinator HOST:PORT
    --num-processes N --process-id I`` sets up, in the required order: virtual CPU devices (when
    more than one is asked for and the machine has no accelerator JAX would pick), then the
    distributed run, then the mesh. Call it before any JAX computation.

    Without ``devices`` a single process on a CPU-only machine gets
    :func:`default_cpu_devices` of ``batch_size`` (one per core; with ``sequence=S``, ``S``
    times the default for ``cores / S`` cores); with an accelerator, all of its devices.
    ``devices=1`` is the plain one-device run. ``sequence`` devices of each row group split time.

    Example::

        parallel = from_flags(devices=2)    # on a CPU-only machine: 2 virtual CPU devices
        parallel = from_flags(batch_size=32)  # one device per core (2 on a 2-core machine)
        parallel = from_flags(devices=4, sequence=2)   # rows in 2 groups, time in 2 halves
    """
    distributed_flags = (coordinator, num_processes, process_id)
    if any(flag is not None for flag in distributed_flags) and not all(
            flag is not None for flag in distributed_flags):
        raise DistributedError("--coordinator, --num-processes and --process-id go together: "
                               "give all three (or none for a single process)")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise DistributedError(f"--sequence-parallel {sequence!r} is invalid: must be a positive "
                               f"integer")
    if devices is not None:
        request_cpu_devices(devices)
    elif coordinator is None and not backend_started():
        # Only the CPU backend sees these; where an accelerator is the default, the mesh below
        # takes the accelerator's devices.
        cores = max(1, cpu_cores() // sequence)
        request_cpu_devices(sequence * default_cpu_devices(batch_size, cores=cores))
    if coordinator is not None:
        initialize(coordinator, num_processes, process_id)
    return DataParallel.create(devices, sequence=sequence)
