"""Stopping a run on request: Ctrl-C (SIGINT) and SIGTERM stop it after the current call of train
steps, so that it saves; in a run of several processes, all stop at the same step."""

from __future__ import annotations

import signal
import threading

import numpy as np

# The signals that ask a run to stop and save. SIGTERM is what schedulers and container runtimes
# (SLURM preemption, Kubernetes) send before they kill a process.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What `signal_number` holds when the loop itself asked to stop (a callback returned True).
CALLBACK = 0


class StopRequest:
    """Turns the first SIGINT or SIGTERM into a request to stop after the current call of train
    steps (the state buffers are donated to the call in flight, so raising in the middle of it
    would lose them). A second signal acts as if no handler were set: a second Ctrl-C raises
    ``KeyboardInterrupt``, a second SIGTERM ends the process. The loop may also ask to stop
    (:meth:`ask`, a callback returned True).

    The loop acts on :attr:`stopping`, which :meth:`poll` updates at the end of each call. In a
    run of several processes a signal may reach one process only, or reach them at different
    steps; so there :meth:`poll` changes :attr:`stopping` only at ``sync`` points (log and
    evaluation steps, which every process reaches together), through a collective that tells every
    process whether any of them was asked to stop: all stop at the same step, and all take part in
    the final save.

    Example::

        with StopRequest(processes=1) as stop:
            while not stop.stopping:
                ...                          # one call of train steps
                stop.poll(sync=at_log_step)
    """

    def __init__(self, *, processes: int = 1):
        self.processes = processes
        self.signal_number: int | None = None  # what asked to stop here (CALLBACK: the loop)
        self.stopping = False  # what the loop acts on
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether this process was asked to stop (the run may not have agreed yet)."""
        return self.signal_number is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_number is None or self.signal_number == CALLBACK:
            self.signal_number = signum
        # The next signal of this kind does what it would do without this handler.
        previous = self._previous.get(signum)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    def ask(self) -> None:
        """The loop asks to stop (a callback returned True)."""
        if self.signal_number is None:
            self.signal_number = CALLBACK

    def poll(self, *, sync: bool) -> None:
        """Update :attr:`stopping` at the end of a call; ``sync``: every process of the run is at
        this same point (a log or evaluation step)."""
        if self.processes == 1:
            self.stopping = self.requested
        elif sync:
            self.signal_number = agree(self.signal_number)
            self.stopping = self.requested

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, signal.SIG_DFL if previous is None else previous)
        self._previous = {}


def agree(signal_number: int | None) -> int | None:
    """The stop request of the whole run from each process's own (every process must call it
    at the same point): None when no process was asked to stop, else the strongest request
    (SIGTERM over SIGINT over a callback). One tiny all-gather across processes."""
    from jax.experimental import multihost_utils

    mine = np.asarray([-1 if signal_number is None else int(signal_number)], np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    strongest = int(everyone.max())
    return None if strongest < 0 else strongest


def stop_request_for(parallel) -> StopRequest:
    """The stop request of a run on ``parallel`` (a :class:`~seqmodel.training.distributed.DataParallel`):
    its processes agree on when to stop."""
    return StopRequest(processes=parallel.num_processes)
