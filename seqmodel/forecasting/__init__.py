"""Forecasting: sample paths and reports, the forecaster of conditioned models, backtests,
classical baselines, scores and plots.

- ``scores``: MASE, sMAPE, ND, weighted quantile loss, coverage (NumPy).
- ``baselines``: persistence, seasonal naive, AutoETS / AutoARIMA (statsforecast, optional).
- ``paths``: sample paths of a plain real-valued model, CRPS, the exposure-bias report, plots.
- ``forecaster``: free running of a conditioned model (lags from its own samples, known inputs).
- ``backtest``: rolling origins scored against the baselines.

May import: ``seqmodel.training``, ``seqmodel.decoding``, ``seqmodel.nn``, ``seqmodel.data`` and
below; not interop or cli.
"""
