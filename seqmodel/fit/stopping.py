"""Ctrl-C during a run: stop after the current step and save, or interrupt at once."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (the state buffers
    are donated to the step in flight, so raising in the middle of it would lose them); a second
    Ctrl-C interrupts at once. ``requested`` may also be set by the loop (a callback asked).

    Example::

        with StopRequest() as stop:
            while not stop.requested:
                ...                         # one call of train steps
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class InterruptAtOnce:
    """Leaves SIGINT alone (Ctrl-C raises ``KeyboardInterrupt``); ``requested`` is set only by
    the loop (a callback asked to stop)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def stop_request_for(parallel) -> StopRequest | InterruptAtOnce:
    """What Ctrl-C does in a run on ``parallel`` (a :class:`~seqmodel.distributed.DataParallel`):
    in one process the first Ctrl-C stops after the current step and saves; across processes
    each would stop after its own step and the others would wait in a collective, so Ctrl-C
    interrupts at once and the run resumes from its last checkpoint."""
    return StopRequest() if parallel.num_processes == 1 else InterruptAtOnce()
