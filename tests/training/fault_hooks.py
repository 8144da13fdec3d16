"""Faults at exact moments of a run, for tests/test_faults.py and benchmarks/bench_faults.py.

``install(settings)`` patches, in this process:

- orbax's final rename of a checkpoint step (the moment a save completes: every file of the step
  is written into ``<step>.orbax-checkpoint-tmp``): ``pause_at_step`` writes the file
  ``ready_file`` and sleeps there (the test then kills the process: a kill inside the save);
  ``fail_at_step`` raises ``OSError(ENOSPC)`` (a disk that is full);
- the dispatch of train steps: ``term_at_step`` sends SIGTERM to this process once the run has
  dispatched that step.

Run as a script, it installs the settings of the environment (``FAULT_PAUSE_AT_STEP``,
``FAULT_READY``, ``FAULT_FAIL_AT_STEP``, ``FAULT_TERM_AT_STEP``) and runs the ``seqmodel`` command
line with its arguments::

    FAULT_TERM_AT_STEP=6 python tests/fault_hooks.py train --data sine --steps 12 --out run
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import sys
import time

PAUSE_SECONDS = 600  # longer than any test waits: the test kills the process first


def install(settings: dict) -> callable:
    """Patch as ``settings`` says (keys ``pause_at_step``, ``ready_file``, ``fail_at_step``,
    ``term_at_step``; missing: no such fault). Returns a function that undoes the patches."""
    from orbax.checkpoint._src.path import atomicity

    from seqmodel.training.fitting import training

    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    original_dispatch = training.Training.dispatch
    pause_at = settings.get("pause_at_step")
    fail_at = settings.get("fail_at_step")
    term_at = settings.get("term_at_step")

    def finalize(self, *args, **kwargs):
        final = self.get_final()
        if final.parent.name == "checkpoints":  # a step, not one of its items
            if pause_at is not None and final.name == str(pause_at):
                pathlib.Path(settings["ready_file"]).write_text(final.name)
                time.sleep(PAUSE_SECONDS)
            if fail_at is not None and final.name == str(fail_at):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        # orbax >= 0.12 finalizes in a coroutine: returning it lets orbax await it.
        return original_finalize(self, *args, **kwargs)

    def dispatch(self, count):
        compiled = original_dispatch(self, count)
        if term_at is not None and self.step - count < int(term_at) <= self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return compiled

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    training.Training.dispatch = dispatch

    def uninstall():
        atomicity.AtomicRenameTemporaryPath.finalize = original_finalize
        training.Training.dispatch = original_dispatch

    return uninstall


def settings_from_environment(environment=os.environ) -> dict:
    names = {"pause_at_step": "FAULT_PAUSE_AT_STEP", "ready_file": "FAULT_READY",
             "fail_at_step": "FAULT_FAIL_AT_STEP", "term_at_step": "FAULT_TERM_AT_STEP"}
    return {key: environment[name] for key, name in names.items() if environment.get(name)}


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    install(settings_from_environment())
    from seqmodel.cli import main

    sys.exit(main(sys.argv[1:]))
