"""seqmodel.forecasting.forecaster and seqmodel.data.series: the inputs of a forecaster are the same in
teacher-forced training windows and in free running, lags come from the model's own samples, the
scale is undone in every output, and bad data gets one clear error.

Tiny untrained models (the invariants hold for any weights) and one short training run (a model
with mean scaling extrapolates a trending series).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqmodel as sm
from seqmodel.data import DataError
from seqmodel.data import load_dataset
from seqmodel.data.series import window_arrays
from seqmodel.forecasting import free_running


def write_csv(path, *, days=60, stores=(("a", 10.0), ("b", 1000.0)), covariate=True, seed=0):
    rng = np.random.default_rng(seed)
    rows = ["date,store,sales" + (",price" if covariate else "")]
    for store, level in stores:
        for t in range(days):
            day = np.datetime64("2024-01-01") + t
            value = level * (1 + 0.3 * np.sin(2 * np.pi * t / 7)) + rng.normal() * level * 0.05
            rows.append(f"{day},{store},{value:.4f}" + (f",{1 + 0.1 * np.sin(t):.4f}"
                                                        if covariate else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def sales_dataset(tmp_path_factory, scaling: str):
    """Two stores (levels 10 and 1000), a price covariate and the store as a category."""
    path = write_csv(tmp_path_factory.mktemp("data") / "sales.csv")
    return load_dataset(str(path), time_column="date", id_column="store",
                        covariates=("price",), static_columns=("store",), lags=(1, 2, 7),
                        context_length=10, val_fraction=0.2, scaling=scaling)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return sales_dataset(tmp_path_factory, "mean")


@pytest.fixture(scope="module")
def standard_dataset(tmp_path_factory):
    """The dataset above under standard scaling (each window's mean and std)."""
    return sales_dataset(tmp_path_factory, "std")


def untrained(dataset, head="student_t", **changes):
    fields = {**dataset.model_fields(), "head": head, "hidden_size": 8, **changes}
    return sm.SequenceModel(sm.ModelConfig(**fields), rngs=nnx.Rngs(0))


def test_dataset_layout_and_batches(dataset):
    spec = dataset.spec
    # element, log scale, lags 2 and 7, day of week and day of year (sin, cos), price, a/b
    assert spec.input_size == 1 + 1 + 2 + 4 + 1 + 2 == dataset.input_size
    assert spec.frequency == "day" and dataset.season == 7
    # The location is relative to lag 7, the season (input column 3: after y_t, log s, lag 2).
    assert dataset.model_fields() == {"input_size": 11, "target_size": 1, "input_scaling": True,
                                      "input_location": False, "anchor_index": 3,
                                      "head": "student_t"}
    batches = dataset.train_batches(batch_size=4, seq_len=16, seed=3)
    first, second = next(batches), next(batches)
    assert first.inputs.shape == (4, 16, 11) and first.targets.shape == (4, 16, 1)
    assert first.reset.all() and first.mask.sum() == 4 * 16
    resumed = dataset.train_batches(batch_size=4, seq_len=16, seed=3, position={"index": 1})
    np.testing.assert_array_equal(next(resumed).inputs, second.inputs)
    # Validation scores every validation target once.
    validation = dataset.validation_batches(batch_size=3, seq_len=8)
    assert sum(batch.mask.sum() for batch in validation) == dataset.num_validation_targets == 24


@pytest.mark.parametrize("scaling", [pytest.param("mean", marks=pytest.mark.slow), "std"])
def test_teacher_forced_inputs_equal_the_inputs_built_while_free_running(scaling, request):
    """The invariant of the feature path: fed the truth, the free-running loop builds step by
    step the very inputs of the teacher-forced window, and its one-step outputs are the
    teacher-forced model's."""
    dataset = request.getfixturevalue("dataset" if scaling == "mean" else "standard_dataset")
    model = untrained(dataset)
    series, origin, horizon = dataset.series[1], 45, 8
    contexts = free_running.prepare_contexts(dataset.spec, [series.values[:origin]],
                                           [series.known[: origin + horizon]], horizon)
    length = int(contexts.lengths[0])
    assert length == dataset.spec.context_length
    truth = series.values[origin : origin + horizon][None]
    _, fed = free_running.sample_contexts(model, dataset.spec, contexts, key=jax.random.key(0),
                                        horizon=horizon, num_samples=2, truth=truth)
    inputs, _, _ = window_arrays(dataset.spec, series, origin - length, length + horizon - 1)
    np.testing.assert_allclose(contexts.prompt[0, :length], inputs[:length], atol=1e-6)
    np.testing.assert_allclose(fed[0, 1], inputs[length - 1 :], atol=1e-6)
    outputs = free_running.teacher_forced_steps(model, dataset.spec, contexts, truth)
    teacher, _ = model(inputs[None])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], np.asarray(b)[0, length - 1 :],
                                                         rtol=1e-4, atol=1e-5),
                 outputs, teacher)


def test_lags_come_from_the_models_own_samples(dataset):
    model = untrained(dataset, head="gaussian")
    series, origin, horizon = dataset.series[0], 40, 9
    contexts = free_running.prepare_contexts(dataset.spec, [series.values[:origin]],
                                           [series.known[: origin + horizon]], horizon)
    samples, fed = free_running.sample_contexts(model, dataset.spec, contexts,
                                              key=jax.random.key(1), horizon=horizon,
                                              num_samples=3)
    scale = contexts.scale[0, 0]
    history = np.nan_to_num(series.values[:origin, 0])
    for path in range(3):
        values = np.concatenate([history, samples[0, path, :, 0]])
        for step in range(1, horizon):
            t = origin + step - 1  # the input fed at forecast step `step` is element t
            row = fed[0, path, step]
            np.testing.assert_allclose(row[0] * scale, values[t], rtol=1e-5)
            np.testing.assert_allclose(row[2:4] * scale, [values[t - 1], values[t - 6]],
                                       rtol=1e-5)
            np.testing.assert_allclose(row[4:], series.known[t + 1], atol=1e-6)


@pytest.mark.slow
def test_the_scale_is_undone_in_every_output(dataset):
    """The model's distribution is its network's, scaled back by the scale in its input
    (exactly), and a forecast of counts stays counts."""
    model = untrained(dataset, head="gaussian")
    plain = untrained(dataset, head="gaussian", input_scaling=False)
    nnx.update(plain, nnx.state(model, nnx.Param))
    inputs, _, _ = window_arrays(dataset.spec, dataset.series[1], 10, 12)
    scaled, _ = model(inputs[None])
    unscaled, _ = plain(inputs[None])
    scale = np.exp(inputs[None, :, 1:2])
    np.testing.assert_allclose(scaled.mean, unscaled.mean * scale, rtol=1e-5)
    np.testing.assert_allclose(scaled.log_scale, unscaled.log_scale + np.log(scale), rtol=1e-5)
    # Training windows feed y / s and predict y: the targets are the values themselves.
    np.testing.assert_allclose(inputs[1:, 0] * np.exp(inputs[1:, 1]),
                               dataset.series[1].values[11:22, 0], rtol=1e-5)
    # Forecasts come back in original units (store b is ~100x store a).
    paths = free_running.forecast_series(
        model, dataset.spec, dataset.normalizer, [s.values[:40] for s in dataset.series],
        [s.known[:45] for s in dataset.series], key=jax.random.key(0), horizon=5,
        num_samples=50)
    ratio = np.median(np.abs(paths[1])) / np.median(np.abs(paths[0]))
    assert 20 < ratio < 500


def test_the_location_and_scale_are_undone_in_every_output(standard_dataset):
    """Standard scaling: the model's distribution is its network's times s plus m (exactly),
    with m and s read from its input; training windows feed (y - m) / s and predict y."""
    model = untrained(standard_dataset, head="gaussian")
    plain = untrained(standard_dataset, head="gaussian", input_scaling=False,
                      input_location=False)
    nnx.update(plain, nnx.state(model, nnx.Param))
    inputs, _, _ = window_arrays(standard_dataset.spec, standard_dataset.series[1], 10, 12)
    moved, _ = model(inputs[None])
    network, _ = plain(inputs[None])
    scale, loc = np.exp(inputs[None, :, 1:2]), inputs[None, :, 2:3]
    np.testing.assert_allclose(moved.mean, network.mean * scale + loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moved.log_scale, network.log_scale + np.log(scale), rtol=1e-5)
    np.testing.assert_allclose(inputs[1:, 0] * np.exp(inputs[1:, 1]) + inputs[1:, 2],
                               standard_dataset.series[1].values[11:22, 0], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="input_location"):
        untrained(standard_dataset, head="negbin")


@pytest.mark.parametrize("scaling", ["mean", "std"])
def test_an_anchored_network_that_outputs_zero_forecasts_seasonal_naive(scaling, request):
    """With the season's lag as the anchor, a network whose head says 0 forecasts the value a
    season before each step: the history's last season, then its own (free running)."""
    dataset = request.getfixturevalue("dataset" if scaling == "mean" else "standard_dataset")
    spec = dataclasses.replace(dataset.spec, anchor=7)
    model = untrained(dataset, head="gaussian", anchor_index=spec.anchor_index)
    model.head.linear.kernel[...] = jnp.zeros_like(model.head.linear.kernel[...])
    model.head.linear.bias[...] = jnp.zeros_like(model.head.linear.bias[...])
    histories = [series.values[:40] for series in dataset.series]
    paths = free_running.forecast_series(
        model, spec, dataset.normalizer, histories, [s.known[:52] for s in dataset.series],
        key=jax.random.key(0), horizon=12, num_samples=2, temperature=0.0)  # (n, S, H, d)
    for series, path in zip(histories, paths):
        last_season = dataset.normalizer.denormalize(series)[-7:, 0]
        expected = np.concatenate([last_season, last_season[:5]])
        np.testing.assert_allclose(path[:, :, 0], np.tile(expected, (2, 1)), rtol=1e-4)


@pytest.mark.slow
def test_negative_binomial_forecasts_are_counts(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["t,count"] + [f"{t},{rng.poisson(5 + 4 * np.sin(t / 3))}" for t in range(80)]
    (tmp_path / "counts.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(str(tmp_path / "counts.csv"), time_column="t", head="negbin",
                                 lags=(1, 2), context_length=8)
    assert data.normalizer.scale == (1.0,) and data.spec.scaling == "mean"
    model = untrained(data, head="negbin")
    paths = free_running.forecast_series(model, data.spec, data.normalizer,
                                       [data.series[0].values], None, key=jax.random.key(0),
                                       horizon=6, num_samples=20)
    assert np.all(paths >= 0) and np.all(paths == np.round(paths))
    (tmp_path / "real.csv").write_text("t,count\n0,1.5\n1,2\n2,3\n3,4\n")
    with pytest.raises(DataError, match="negbin needs counts"):
        load_dataset(str(tmp_path / "real.csv"), head="negbin")
    with pytest.raises(DataError, match="--scaling std shifts.*use --scaling mean or none"):
        load_dataset(str(tmp_path / "counts.csv"), time_column="t", head="negbin", scaling="std")


@pytest.mark.slow
def test_a_mean_scaled_model_extrapolates_a_trending_series(tmp_path):
    """Trained on a series growing 2% a step, it forecasts the next steps near their level,
    beyond any level it was trained on; persistence stays behind."""
    from seqmodel.training.fitting import fit
    from seqmodel.training.optimization import TrainConfig

    rng = np.random.default_rng(0)
    steps = np.arange(160)
    series = 10 * 1.02 ** steps * (1 + 0.02 * rng.normal(size=160))
    (tmp_path / "trend.csv").write_text(
        "y\n" + "\n".join(f"{v:.5f}" for v in series) + "\n")
    # No anchor: the scaling alone must carry the model beyond the levels it trained on.
    data = load_dataset(str(tmp_path / "trend.csv"), lags=(1, 2), context_length=8,
                        head="gaussian", val_fraction=0.0, scaling="mean", anchor="none")
    train = data.train_series[0].head_part(140)
    data.train_series = [train]
    model = untrained(data, head="gaussian", hidden_size=16)
    fit(model, data, TrainConfig(batch_size=16, seq_len=16, steps=300, learning_rate=1e-2,
                                 warmup_steps=20, eval_every=None), progress=False)
    paths = free_running.forecast_series(model, data.spec, data.normalizer,
                                       [data.series[0].values[:140]], None,
                                       key=jax.random.key(0), horizon=10, num_samples=100)
    truth = series[140:150]
    error = np.abs(np.median(paths[0, :, :, 0], axis=0) - truth).mean()
    persistence = np.abs(series[139] - truth).mean()
    assert truth.min() > series[:140].max()
    assert error < 0.5 * persistence


def test_short_histories_and_futures_are_refused(dataset):
    spec = dataset.spec
    series = dataset.series[0]
    with pytest.raises(ValueError, match="lags up to 7; give at least 7 steps"):
        free_running.prepare_contexts(spec, [series.values[:5]], [series.known[:10]], 5)
    with pytest.raises(ValueError, match="cover 3 step.*horizon is 5.*future values"):
        free_running.prepare_contexts(spec, [series.values[:30]], [series.known[:33]], 5)


@pytest.mark.parametrize("change, message", [
    (dict(covariates=("promo",)), "'promo' is not a column"),
    (dict(covariates=("flag",)), "column .flag. must hold numbers"),
    (dict(lags=(1, 80)), "lags up to 80"),
    (dict(static_columns=("flag",)), "category column 'flag'"),
])
def test_bad_data_gets_one_clear_error(tmp_path, change, message):
    path = write_csv(tmp_path / "sales.csv")
    if "flag" in str(change):  # a column of words: "y", and "x" on one row
        text = path.read_text().splitlines()
        text = [text[0] + ",flag"] + [line + ("," + ("x" if i == 5 else "y")) for i, line in
                                      enumerate(text[1:])]
        path.write_text("\n".join(text) + "\n")
    options = dict(time_column="date", id_column="store", covariates=("price",),
                   static_columns=("store",))
    options.update(change)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path), **options)


def test_missing_covariates_and_irregular_times_name_the_line(tmp_path):
    path = write_csv(tmp_path / "sales.csv")
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ","  # line 5: no price
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 5, column 'price' is missing"):
        load_dataset(str(path), time_column="date", id_column="store",
                              covariates=("price",))
    masked = load_dataset(str(path), time_column="date", id_column="store",
                                   covariates=("price",), missing="mask")
    assert np.isfinite(masked.series[0].known).all()
    lines = write_csv(tmp_path / "gap.csv").read_text().splitlines()
    del lines[6]
    (tmp_path / "gap.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 7: .* step of 2 days, but the first step is 1 day"):
        load_dataset(str(tmp_path / "gap.csv"), time_column="date", id_column="store")


@pytest.mark.slow
def test_a_stopped_forecaster_run_resumes_bit_for_bit(dataset, tmp_path):
    """Lags, covariates and static categories in the inputs, random windows: a run stopped at
    step 4 and resumed ends with the parameters of the run that was never stopped."""
    from seqmodel.training.fitting import fit
    from seqmodel.training.optimization import TrainConfig

    config = TrainConfig(batch_size=4, seq_len=12, steps=8, eval_every=4, eval_batch_size=4,
                         eval_seq_len=8, warmup_steps=2, log_every=1, steps_per_call=2)
    straight = fit(untrained(dataset), dataset, config, out_dir=tmp_path / "straight",
                   progress=False)
    first = fit(untrained(dataset), dataset, config, out_dir=tmp_path / "resumed",
                progress=False, callback=lambda step, metrics: step >= 4)
    assert first.interrupted and first.steps < config.steps
    resumed = fit(untrained(dataset), dataset, config, out_dir=tmp_path / "resumed",
                  resume=True, progress=False)
    assert resumed.steps == config.steps and resumed.val_loss == straight.val_loss
    for got, want in zip(jax.tree.leaves(resumed.state.params),
                         jax.tree.leaves(straight.state.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_plain_forecaster_draws_the_paths_of_generate():
    """The plain and the forecasting paths agree for a plain model: the Forecaster's program
    (context through the preparation, inputs rebuilt each step) draws the very paths that
    seqmodel.generate draws from the same history and key."""
    import seqmodel as sm
    from seqmodel.data.normalization import Normalizer
    from seqmodel.data.series import plain_preparation
    from seqmodel.forecasting import paths

    model = sm.SequenceModel(sm.ModelConfig(input_size=2, head="gaussian", hidden_size=8),
                             rngs=nnx.Rngs(0))
    normalizer = Normalizer((1.0, -2.0), (2.0, 0.5))
    forecaster = sm.Forecaster(model, plain_preparation(("a", "b"), normalizer, head="gaussian"))
    history = np.random.default_rng(0).normal(size=(30, 2))
    key = jax.random.key(3)
    forecast = forecaster.predict(history, horizon=6, num_samples=5, key=key)
    expected = paths.forecast(model, normalizer, history, key=key, horizon=6, num_samples=5)
    assert forecast.paths.shape == (1, 5, 6, 2) and forecast.names == ["series 0"]
    np.testing.assert_allclose(forecast.paths[0], expected, atol=1e-5)
    with pytest.raises(Exception, match="3 column"):
        forecaster.predict(np.ones((30, 3)), horizon=2)
