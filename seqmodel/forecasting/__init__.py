"""Forecasting: sample paths and reports, the forecaster of conditioned models, backtests,
classical baselines, scores and plots.

- ``scores``: MASE, sMAPE, ND, weighted quantile loss, coverage, CRPS from samples (NumPy).
- ``baselines``: persistence, seasonal naive, AutoETS / AutoARIMA (statsforecast, optional).
- ``free_running``: the program that rebuilds a prepared model's inputs from its own samples.
- ``forecaster``: :class:`Forecaster` (model(s) + preparation): forecasts in original units.
- ``conformal``: split-conformal calibration of the intervals, per horizon step.
- ``reports``: the horizon report (free running against teacher forcing and naive forecasts).
- ``backtest``: rolling origins scored against the baselines; ``plots``: fan charts, reports.
- ``frames``: the DataFrame interface (``fit``, ``cross_validation``, ``predict`` frames).
- ``paths``: sample paths of a plain model through ``seqmodel.generate``.

Example::

    import seqmodel.forecasting as smf
    forecaster = smf.fit(df, h=14)                # unique_id, ds, y (+ exogenous columns)
    forecaster.predict(level=(80, 95))            # unique_id, ds, seqmodel, seqmodel-lo-80, ...
    smf.cross_validation(df, h=14, n_windows=3)   # + cutoff, y

May import: ``seqmodel.training``, ``seqmodel.decoding``, ``seqmodel.nn``, ``seqmodel.data`` and
below; not interop or cli.
"""

from seqmodel.forecasting.forecaster import Forecast, Forecaster  # noqa: E402
from seqmodel.forecasting.frames import cross_validation, fit  # noqa: E402

__all__ = ["Forecast", "Forecaster", "cross_validation", "fit"]
