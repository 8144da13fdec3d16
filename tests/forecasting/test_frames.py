"""The DataFrame interface (fit, predict frames, cross_validation), the refusal of backtest windows
that the model saw, and split-conformal intervals reaching their nominal coverage."""

import numpy as np
import pytest

from seqmodel.data import DataError, load_dataset
from seqmodel.forecasting import conformal

pd = pytest.importorskip("pandas")

TINY = dict(steps=30, hidden_size=8, batch_size=8, num_samples=20, steps_per_call=10)


def panel(length=60, ids=("a", "b"), start="2024-01-01", freq="D", seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for index, name in enumerate(ids):
        steps = np.arange(length)
        y = 10 + index + np.sin(2 * np.pi * steps / 7) + 0.1 * rng.normal(size=length)
        frames.append(pd.DataFrame({"unique_id": name, "y": y, "price": steps % 3,
                                    "ds": pd.date_range(start, periods=length, freq=freq)}))
    return pd.concat(frames, ignore_index=True)[["unique_id", "ds", "y", "price"]]


@pytest.fixture(scope="module")
def fitted():
    import seqmodel.forecasting as smf

    df = panel()
    static = pd.DataFrame({"unique_id": ["a", "b"], "store": ["north", "south"]})
    return df, smf.fit(df, h=5, static_df=static, **TINY)


@pytest.mark.slow
def test_fit_and_predict_answer_in_the_frame_shape(fitted):
    df, forecaster = fitted
    future = panel(length=65).groupby("unique_id").tail(5)[["unique_id", "ds", "price"]]
    out = forecaster.predict(futr_df=future, level=(80, 95))
    assert list(out.columns) == ["unique_id", "ds", "seqmodel", "seqmodel-lo-80",
                                 "seqmodel-hi-80", "seqmodel-lo-95", "seqmodel-hi-95"]
    assert len(out) == 10 and list(out["unique_id"].unique()) == ["a", "b"]
    last = df.groupby("unique_id")["ds"].max()
    first = out.groupby("unique_id")["ds"].min()
    assert ((first - last) == pd.Timedelta(days=1)).all()  # the day after each series ends
    assert (out["seqmodel-lo-95"] <= out["seqmodel-lo-80"]).all()
    assert (out["seqmodel-lo-80"] <= out["seqmodel"]).all()
    assert (out["seqmodel"] <= out["seqmodel-hi-80"]).all()
    assert forecaster.calibration is not None and forecaster.calibration.horizon == 5
    # Any coverage in percent, statsforecast's column names; 90% is calibrated like 80%.
    wide = forecaster.predict(futr_df=future, level=(90, 97.5))
    assert list(wide.columns)[3:] == ["seqmodel-lo-90", "seqmodel-hi-90", "seqmodel-lo-97.5",
                                      "seqmodel-hi-97.5"]
    raw = forecaster.predict(futr_df=future, level=(90,), calibrated=False)
    assert (wide["seqmodel-lo-90"] <= raw["seqmodel-lo-90"]).all()
    assert (wide["seqmodel-hi-90"] >= raw["seqmodel-hi-90"]).all()
    for bad in (120, 0, "80"):
        with pytest.raises(ValueError, match=f"level={bad!r} is invalid: allowed are interval "
                                             "coverages in percent"):
            forecaster.predict(futr_df=future, level=(bad,))
    with pytest.raises(ValueError, match="h=0 is invalid: allowed is a positive integer"):
        forecaster.predict(h=0, futr_df=future)
    with pytest.raises(ValueError, match="futr_df"):
        forecaster.predict()  # the exogenous price needs its future
    with pytest.raises(ValueError, match="h=9 is longer"):
        forecaster.predict(h=9, futr_df=future)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_forecaster_and_a_used_out_dir_is_refused(fitted, tmp_path):
    import seqmodel.forecasting as smf

    df, forecaster = fitted
    static = pd.DataFrame({"unique_id": ["a", "b"], "store": ["north", "south"]})
    again = smf.fit(df, h=5, static_df=static, **TINY)
    future = panel(length=65).groupby("unique_id").tail(5)[["unique_id", "ds", "price"]]
    pd.testing.assert_frame_equal(forecaster.predict(futr_df=future), again.predict(futr_df=future))
    # A fit into a folder that holds a run would put its checkpoints beside the old run's.
    (tmp_path / "member-0").mkdir()
    (tmp_path / "member-0" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="member-0' already holds a run"):
        smf.fit(df, h=5, static_df=static, out_dir=str(tmp_path), **TINY)


@pytest.mark.slow
def test_cross_validation_trains_before_the_first_cutoff(fitted):
    import seqmodel.forecasting as smf

    df = panel(length=50)[["unique_id", "ds", "y"]]
    df["unique_id"] = df["unique_id"].map({"a": 1, "b": 2})  # integer ids stay integers
    cv = smf.cross_validation(df, h=4, n_windows=3, step_size=2, level=(80,), **TINY)
    assert list(cv.columns) == ["unique_id", "ds", "cutoff", "y", "seqmodel", "seqmodel-lo-80",
                                "seqmodel-hi-80"]
    assert len(cv) == 2 * 3 * 4 and set(cv["unique_id"]) == {1, 2}
    ends = df.groupby("unique_id")["ds"].max()
    for name, group in cv.groupby("unique_id"):
        cutoffs = sorted(group["cutoff"].unique())
        day = pd.Timedelta(days=1)
        assert cutoffs == [ends[name] - 8 * day, ends[name] - 6 * day, ends[name] - 4 * day]
        for cutoff, window in group.groupby("cutoff"):
            assert (window["ds"] > cutoff).all() and len(window) == 4
            truth = df[(df["unique_id"] == name) & df["ds"].isin(window["ds"])]["y"].to_numpy()
            np.testing.assert_allclose(window["y"].to_numpy(), truth)
    with pytest.raises(ValueError, match="shorter than 30 windows"):
        smf.cross_validation(df, h=4, n_windows=30, **TINY)


def test_backtest_refuses_windows_the_model_saw(tmp_path):
    from seqmodel.forecasting.backtest import overlapping

    days = pd.date_range("2024-01-01", periods=80, freq="D")
    (tmp_path / "d.csv").write_text("day,y\n" + "\n".join(
        f"{d.date()},{10 + np.sin(i / 3):.4f}" for i, d in enumerate(days)) + "\n")
    seen_all = load_dataset(str(tmp_path / "d.csv"), time_column="day")
    held = load_dataset(str(tmp_path / "d.csv"), time_column="day", holdout=12)
    origins = np.array([[68, 74]])  # two windows of 6 steps at the end
    found = overlapping(seen_all.seen(), seen_all.full_series, origins)
    assert len(found) == 1 and "2024-03-09" in found[0] and "2024-03-20" in found[0]
    assert overlapping(held.seen(), held.full_series, origins) == []
    # Without time stamps the steps decide.
    assert overlapping([{"name": "series 0", "steps": 68}], seen_all.full_series, origins) == []
    assert overlapping([{"name": "series 0", "steps": 69}], seen_all.full_series, origins)


def test_conformal_intervals_reach_their_coverage_on_ar1():
    # AR(1) with Gaussian noise; a forecaster whose paths are half as spread as the truth.
    rng = np.random.default_rng(0)
    phi, sigma, horizon, paths_per = 0.8, 1.0, 6, 200

    def windows(count):
        start = rng.normal(0, sigma / np.sqrt(1 - phi**2), size=count) + 50.0
        truth, paths = np.zeros((count, horizon, 1)), np.zeros((count, paths_per, horizon, 1))
        level, sampled = start - 50.0, np.repeat((start - 50.0)[:, None], paths_per, 1)
        for step in range(horizon):
            level = phi * level + sigma * rng.normal(size=count)
            sampled = phi * sampled + 0.5 * sigma * rng.normal(size=sampled.shape)
            truth[:, step, 0], paths[:, :, step, 0] = level + 50.0, sampled + 50.0
        return paths, truth

    calibration_paths, calibration_truth = windows(3000)
    scale = np.full((3000, 1), 50.0)
    calibration = conformal.conformal_margins(calibration_paths, calibration_truth, scale,
                                              levels=(0.8, 0.95))
    assert calibration.coverage_before["0.8"] < 0.6  # too narrow before
    paths, truth = windows(3000)
    levels = (0.025, 0.1, 0.5, 0.9, 0.975)
    quantiles = calibration.adjust(np.quantile(paths, levels, axis=1), levels,
                                   np.full((3000, 1), 50.0))
    inside_80 = (truth >= quantiles[1]) & (truth <= quantiles[3])
    inside_95 = (truth >= quantiles[0]) & (truth <= quantiles[4])
    assert 0.76 <= inside_80.mean() <= 0.84
    assert 0.93 <= inside_95.mean() <= 0.97
    per_step = inside_80.mean(axis=(0, 2))  # every horizon step is calibrated on its own
    assert per_step.min() >= 0.75 and per_step.max() <= 0.85
    np.testing.assert_array_equal(quantiles[2], np.quantile(paths, 0.5, axis=1))  # the median
    # With the default levels 90% is calibrated too, and 85% (between 80% and 90%) interpolated.
    every = conformal.conformal_margins(calibration_paths, calibration_truth, scale)
    levels = (0.05, 0.075, 0.925, 0.95)
    quantiles = every.adjust(np.quantile(paths, levels, axis=1), levels, np.full((3000, 1), 50.0))
    assert 0.87 <= ((truth >= quantiles[0]) & (truth <= quantiles[3])).mean() <= 0.93
    assert 0.82 <= ((truth >= quantiles[1]) & (truth <= quantiles[2])).mean() <= 0.88
    again = conformal.Calibration.from_dict(calibration.to_dict())
    np.testing.assert_allclose(again.margins, calibration.margins, atol=1e-6)


def test_every_central_interval_is_calibrated_between_and_beyond_the_calibrated_levels():
    # Margins 1 at 80% and 3 at 95% (step 0), 2 and 6 (step 1); window scale 10.
    calibration = conformal.Calibration((0.8, 0.95), np.array([[1.0, 2.0], [3.0, 6.0]]),
                                        {}, 100)
    levels = (0.005, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.975, 0.995)
    quantiles = np.zeros((len(levels), 1, 2, 1))  # every quantile at 0: the margins show
    with pytest.warns(UserWarning, match="0.99 interval is wider than the widest calibrated"):
        adjusted = calibration.adjust(quantiles, levels, np.full((1, 1), 10.0))
    highs = dict(zip(levels, adjusted[:, 0, :, 0]))
    np.testing.assert_allclose(highs[0.9], [10.0, 20.0])   # 80%: its own margin
    np.testing.assert_allclose(highs[0.95], [70 / 3, 140 / 3])  # 90%: 2/3 of 80% -> 95%
    np.testing.assert_allclose(highs[0.975], [30.0, 60.0])  # 95%: its own
    np.testing.assert_allclose(highs[0.7], [5.0, 10.0])    # 40%: halfway from 0 to 80%'s
    np.testing.assert_allclose(highs[0.995], [30.0, 60.0])  # 99%: 95%'s, with the warning
    np.testing.assert_allclose(highs[0.5], [0.0, 0.0])     # the median stays
    np.testing.assert_allclose(adjusted[:, 0, :, 0], -adjusted[::-1, 0, :, 0])  # symmetric


def test_conformal_margins_widen_but_narrow_only_when_asked():
    # Paths twice as spread as the truth: the windows find every interval too wide.
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2000, 3, 1))
    paths = 2.0 * rng.normal(size=(2000, 100, 3, 1))
    scale = np.ones((2000, 1))
    kept = conformal.conformal_margins(paths, truth, scale, levels=(0.8,))
    assert kept.coverage_before["0.8"] > 0.95
    np.testing.assert_array_equal(kept.margins, 0.0)  # the model's own interval stays
    narrowed = conformal.conformal_margins(paths, truth, scale, levels=(0.8,), narrow=True)
    assert (narrowed.margins < -0.5).all()  # 2 x 1.28 wide each side, 1.28 needed
    levels = (0.1, 0.5, 0.9)
    quantiles = narrowed.adjust(np.quantile(paths, levels, axis=1), levels, scale)
    inside = (truth >= quantiles[0]) & (truth <= quantiles[2])
    assert 0.76 <= inside.mean() <= 0.84


def test_calibration_windows_lie_after_the_split_unless_too_few():
    chosen = conformal.calibration_origins([100, 100], [80, 90], horizon=5, first=3, minimum=10)
    assert all(origin >= 80 for _, origin in chosen) and len(chosen) >= 10
    assert all(origin + 5 <= 100 for _, origin in chosen)
    widened = conformal.calibration_origins([30], [28], horizon=5, first=3, minimum=10)
    assert len(widened) >= 10 and min(o for _, o in widened) >= 3
    with pytest.raises(DataError, match="no calibration window fits"):
        conformal.calibration_origins([6], [5], horizon=5, first=3)
