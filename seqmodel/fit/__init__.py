"""The host loop of training: :func:`fit` and its parts, one concern each.

- :mod:`~seqmodel.fit.loop`: :func:`fit`, :class:`FitResult`, :class:`TrainingError`;
- :mod:`~seqmodel.fit.training`: the state on the devices and the dispatched step programs;
- :mod:`~seqmodel.fit.schedule`: which steps evaluate, log and end the run;
- :mod:`~seqmodel.fit.clock`: the time budget of a time-bounded run;
- :mod:`~seqmodel.fit.validation`: evaluation during the run;
- :mod:`~seqmodel.fit.saving`: checkpoints of the run folder;
- :mod:`~seqmodel.fit.log_records`, :mod:`~seqmodel.fit.throughput`: log records and speed;
- :mod:`~seqmodel.fit.stopping`, :mod:`~seqmodel.fit.progress`: Ctrl-C and SIGTERM, the progress bar.

Metric records go to the writers of :mod:`seqmodel.metrics`.

Example::

    from seqmodel.fit import fit
    result = fit(model, dataset, TrainConfig(steps=1000), out_dir="runs/demo")
"""

from seqmodel.fit.loop import FitResult, TrainingError, fit

__all__ = ["FitResult", "TrainingError", "fit"]
