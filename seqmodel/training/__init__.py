"""Training: the pure train step and evaluation programs, devices, metric writers, the fit loop,
checkpoints.

- ``optimization``: the optimizer and its schedules, ``TrainState``, the loss, ``make_train_step``
  / ``make_multi_step`` (pure ``(state, batch) -> (state, metrics)``).
- ``evaluation``: exact masked NLL of validation batches, the carry passed along.
- ``distributed``: the mesh and placement (``DataParallel``), ``jax.distributed`` start-up.
- ``writers``: metric writers (``metrics.jsonl``, TensorBoard, callback) and the loss plot.
- ``checkpoint/``: one orbax manager per run folder: saving, loading, fallback.
- ``fitting/``: the host loop ``fit``: clock, call schedule, validation, saving, stopping.

May import: ``seqmodel.data``, ``seqmodel.nn``, ``seqmodel.decoding`` and below; not
forecasting, interop or cli.
"""
