"""How far asynchronous dispatch may run ahead of the devices: :class:`CallsInFlight`."""

from __future__ import annotations

import collections

import jax

# How many dispatched train calls (of one or several steps) may be unfinished at once. XLA:CPU's
# PjRt client queues up to 32 executions per device; one more blocks the dispatching task on a
# thread of the client's pool, which has one thread per core. With several CPU devices and an
# all-reduce in the step, two such blocked threads leave none to start one device's half of a
# step, whose other half waits in the all-reduce forever (XLA aborts after 40 s; seen in ~1 of 3
# tight loops of 400 steps on 2 cores, diagnosed with gdb). A few calls of lead keep the devices
# busy just as well.
MAX_CALLS_IN_FLIGHT = 8


class CallsInFlight:
    """Keeps asynchronous dispatch at most ``limit`` calls ahead: :meth:`add` each call's outputs
    (e.g. its metrics) right after dispatching it; it waits for the outputs of the call
    dispatched ``limit`` calls earlier. Any loop over a multi-device step needs it (see
    :data:`MAX_CALLS_IN_FLIGHT`); :func:`seqmodel.training.fitting.fit` uses it.

    Example::

        in_flight = CallsInFlight()
        for batch in batches:
            state, metrics = train_step(state, batch)
            in_flight.add(metrics)
    """

    def __init__(self, limit: int = MAX_CALLS_IN_FLIGHT):
        self.limit = limit
        self.outputs: collections.deque = collections.deque()

    def add(self, outputs) -> None:
        self.outputs.append(outputs)
        if len(self.outputs) > self.limit:
            # In a steady run this call is long done: the wait costs nothing.
            jax.block_until_ready(self.outputs.popleft())
