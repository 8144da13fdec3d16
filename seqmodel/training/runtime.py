"""Starting JAX for a run: virtual CPU devices, several processes, and telling a lost peer.

Virtual CPU devices (for tests and benchmarks on a machine without accelerators) must be asked for
before JAX starts its backend: :func:`request_cpu_devices` (``seqmodel train --devices N`` does it).
Several processes (one per host, or several on one machine) join with :func:`initialize`, a thin
wrapper of :func:`jax.distributed.initialize` with bounded timeouts. :mod:`seqmodel.training
.distributed` builds meshes on what this module started (and re-exports its names).

Example::

    from seqmodel.training import runtime
    runtime.request_cpu_devices(4)          # CPU only; before any JAX computation
    runtime.initialize("10.0.0.1:12355", num_processes=2, process_id=0)
"""

from __future__ import annotations

import os
import re

import jax

from seqmodel.errors import UserError

# Bounded waits of jax.distributed (seconds). JAX's own defaults (300 s to start, 100 s to notice
# a dead peer) make a failed run look hung; these fail within a minute and stay well above the
# start-up time of a process (import and data loading).
INITIALIZATION_TIMEOUT = 120
HEARTBEAT_TIMEOUT = 30
SHUTDOWN_TIMEOUT = 60

FORCE_DEVICES_FLAG = "--xla_force_host_platform_device_count"


class DistributedError(UserError):
    """A bad device or process setting; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# Starting JAX: virtual CPU devices and several processes
# ---------------------------------------------------------------------------------------------


def backend_started() -> bool:
    """Whether JAX has started a backend in this process (after which device counts are fixed)."""
    from jax._src import xla_bridge  # no public way to ask without starting the backend

    return xla_bridge.backends_are_initialized()


def request_cpu_devices(count: int) -> None:
    """Give the CPU backend ``count`` virtual devices (for ``--devices N`` on a CPU-only machine).

    Must run before the first JAX computation (importing jax is fine): it sets
    ``jax_num_cpu_devices`` and, for child processes and older JAX, ``XLA_FLAGS=
    --xla_force_host_platform_device_count=count``. Harmless where an accelerator is the default
    backend (only the CPU backend sees it). ``count=1`` leaves everything as it is.

    Raises:
      DistributedError: when JAX already started its backend with another CPU device count.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DistributedError(f"devices={count!r} is invalid: must be a positive integer")
    if count == 1:
        return
    if backend_started():
        have = len(jax.devices("cpu"))
        if have >= count:
            return
        raise DistributedError(
            f"devices={count}: JAX already started with {have} CPU device(s); set "
            f"XLA_FLAGS={FORCE_DEVICES_FLAG}={count} before the first JAX computation")
    flags = re.sub(rf"{FORCE_DEVICES_FLAG}=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {FORCE_DEVICES_FLAG}={count}".strip()
    jax.config.update("jax_num_cpu_devices", count)


# Rows each device keeps at least when the default splits a batch over the cores. Measured on 2
# cores: 16 rows a device (batch 32) trained up to 1.6x faster than one device, 8 rows a
# device (batch 16, the training default) on par with it; fewer rows leave too little work per step.
MIN_ROWS_PER_CPU_DEVICE = 8
# At most this many by default: only 2 cores were measured, and every step's all-reduce waits for
# the slowest of them; ask for more with --devices.
MAX_DEFAULT_CPU_DEVICES = 8


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_cpu_devices(batch_size: int | None, cores: int | None = None) -> int:
    """How many CPU devices ``seqmodel train`` makes when ``--devices`` is not given.

    XLA:CPU runs one device's program on one thread at a time (its small serial GEMMs are not
    split), so one device per core, each with its own rows of the batch, is what uses the cores.
    The count, at most :data:`MAX_DEFAULT_CPU_DEVICES`, is lowered until it divides
    ``batch_size`` and leaves each device at least :data:`MIN_ROWS_PER_CPU_DEVICE` rows;
    ``batch_size=None`` (unknown) gives 1.

    Example: ``default_cpu_devices(32, cores=2) == 2``; ``default_cpu_devices(12, cores=2) == 1``.
    """
    if batch_size is None:
        return 1
    devices = min(cpu_cores() if cores is None else cores, MAX_DEFAULT_CPU_DEVICES)
    while devices > 1 and (batch_size % devices or batch_size // devices < MIN_ROWS_PER_CPU_DEVICE):
        devices -= 1
    return devices


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; a clear error otherwise."""
    host, separator, port = str(address).rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator {address!r} is invalid: give HOST:PORT, e.g. "
                               f"10.0.0.1:12355 (process 0 listens on that port)")
    return host, int(port)


def initialize(coordinator: str, num_processes: int, process_id: int, *,
               initialization_timeout: int = INITIALIZATION_TIMEOUT,
               heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
               shutdown_timeout: int = SHUTDOWN_TIMEOUT) -> None:
    """Join a run of ``num_processes`` processes (call it first, before any JAX computation).

    Process 0 hosts the coordination service on ``coordinator`` (``HOST:PORT``, reachable from
    every process); every process calls this with the same ``coordinator`` and
    ``num_processes`` and its own ``process_id`` in ``[0, num_processes)``. Afterwards
    ``jax.devices()`` lists the devices of every process.

    Timeouts (seconds) are bounded so that a failure is an error, not a hang: a process that
    cannot reach all the others within ``initialization_timeout`` raises
    :class:`DistributedError`; when a process dies during the run, JAX terminates the others
    after ``heartbeat_timeout`` (an abort with "the JAX distributed service detected fatal
    errors" on stderr, which Python cannot catch).

    Example::

        initialize("127.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
    """
    parse_coordinator(coordinator)
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DistributedError(f"--{name.replace('_', '-')} {value!r} is invalid: "
                                   f"must be an integer")
    if num_processes < 1:
        raise DistributedError(f"--num-processes {num_processes} is invalid: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id {process_id} is invalid: must be in "
                               f"[0, {num_processes - 1}] for --num-processes {num_processes}")
    if jax.distributed.is_initialized():
        raise DistributedError("jax.distributed is already initialized in this process")
    if backend_started():
        raise DistributedError("initialize() must run before the first JAX computation "
                               "(JAX already started its backend in this process)")
    try:
        jax.distributed.initialize(
            coordinator, num_processes=num_processes, process_id=process_id,
            initialization_timeout=int(initialization_timeout),
            heartbeat_timeout_seconds=int(heartbeat_timeout),
            shutdown_timeout_seconds=int(shutdown_timeout),
        )
    except Exception as error:  # JAX raises XlaRuntimeError / RuntimeError with long texts
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DistributedError(
            f"process {process_id} of {num_processes} could not join the run at {coordinator} "
            f"within {initialization_timeout} s ({first_line}); start every process with the "
            f"same --coordinator and --num-processes and a distinct --process-id") from None


def is_main_process() -> bool:
    """True in process 0 (and in a single-process run): the one that writes logs and files.

    Does not start the JAX backend when no distributed run was initialized."""
    if not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


# Words of the errors that JAX, gloo and NCCL raise when another process of the run is gone.
_PEER_FAILURE_WORDS = ("gloo", "nccl", "connection", "coordination service", "heartbeat",
                       "barrier", "unavailable", "peer", "socket")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` looks like a failed collective or a lost process (JAX raises
    :class:`jax.errors.JaxRuntimeError` or ``ValueError`` for these, depending on where)."""
    text = str(error).lower()
    return (isinstance(error, jax.errors.JaxRuntimeError)
            or any(word in text for word in _PEER_FAILURE_WORDS))
