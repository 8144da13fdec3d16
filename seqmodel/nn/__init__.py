"""The model: cell equations, recurrences, cells, linear scans, blocks, heads, ``SequenceModel``.

- ``equations``: the pure one-step equations of the serial cells, shared by every path.
- ``recurrence``: custom-VJP scans of the serial cells (the backward loop carries only ``dh``).
- ``cells``: LSTM, GRU, Elman: ``project`` (time-parallel) + ``recur`` (serial).
- ``scans``: ``h = a * h + b`` by sequential, associative, chunked and log-space scans.
- ``linear``: minGRU, minLSTM, RG-LRU cells; ``blocks``: the residual block they run in.
- ``heads``, ``count_heads``: output distributions (``log_prob``, ``sample``, ``mode``).
- ``model``: ``SequenceModel``, ONE masked, reset-aware walk over the layers.

May import: ``seqmodel.configs``, ``seqmodel.errors``; nothing above (no data, decoding,
training).
"""
