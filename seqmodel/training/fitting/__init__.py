"""The host loop of training: :func:`fit` and its parts, one concern each.

- :mod:`~seqmodel.training.fitting.loop`: :func:`fit`, :class:`FitResult`, :class:`TrainingError`;
- :mod:`~seqmodel.training.fitting.training`: the state on the devices and the dispatched step programs;
- :mod:`~seqmodel.training.fitting.schedule`: which steps evaluate, log and end the run;
- :mod:`~seqmodel.training.fitting.clock`: the time budget of a time-bounded run;
- :mod:`~seqmodel.training.fitting.validation`: evaluation during the run;
- :mod:`~seqmodel.training.fitting.saving`: checkpoints of the run folder;
- :mod:`~seqmodel.training.fitting.log_records`, :mod:`~seqmodel.training.fitting.throughput`: log records and speed;
- :mod:`~seqmodel.training.fitting.stopping`, :mod:`~seqmodel.training.fitting.progress`: Ctrl-C and SIGTERM, the progress bar.

Metric records go to the writers of :mod:`seqmodel.training.writers`.

Example::

    from seqmodel.training.fitting import fit
    result = fit(model, dataset, TrainConfig(steps=1000), out_dir="runs/demo")
"""

from seqmodel.training.fitting.loop import FitResult, TrainingError, fit

__all__ = ["FitResult", "TrainingError", "fit"]
