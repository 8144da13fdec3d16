"""The one real-valued path: every source read into a table, one fitted preparation, one dataset;
the defaults that come from the data; the command line maps its flags onto load_dataset."""

import json

import numpy as np
import pytest

from seqmodel.data import (DataError, NumericDataset, from_arrays, load_dataset, preparation,
                           synthetic)


def seasonal_series(length=240, season=12, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    return 100 + 0.2 * steps + 10 * np.sin(2 * np.pi * steps / season) + rng.normal(size=length)


def first_batch(dataset, **options):
    return next(dataset.train_batches(batch_size=4, seq_len=24, seed=3, **options))


def test_memory_sources_equal_the_same_data_in_a_file(tmp_path):
    pd = pytest.importorskip("pandas")
    values = [seasonal_series(90, seed=1), seasonal_series(70, seed=2)]
    rows = [f"{name},2020-01-{1 + i // 24:02d}T{i % 24:02d}:00,{v:.6f}"
            for name, series in zip("ab", values) for i, v in enumerate(series)]
    (tmp_path / "s.csv").write_text("unique_id,ds,y\n" + "\n".join(rows) + "\n")
    from_file = load_dataset(str(tmp_path / "s.csv"), time_column="ds", id_column="unique_id")
    frame = pd.read_csv(tmp_path / "s.csv", parse_dates=["ds"])
    from_frame = load_dataset(frame)  # unique_id, ds, y: the statsforecast names by default
    assert from_frame.preparation.to_dict() == from_file.preparation.to_dict()
    np.testing.assert_array_equal(first_batch(from_frame).inputs, first_batch(from_file).inputs)
    # Without times: a list of arrays and a padded (n, t, 1) array are the same set.
    rounded = [np.round(v, 6) for v in values]
    from_list = load_dataset(rounded, validation="time")
    padded = np.full((2, 90, 1), np.nan)
    padded[0, :90, 0], padded[1, :70, 0] = rounded
    from_array = load_dataset(padded, validation="time")
    assert from_list.preparation.to_dict() == from_array.preparation.to_dict()
    np.testing.assert_array_equal(first_batch(from_list).inputs, first_batch(from_array).inputs)


def test_memory_sources_get_the_checks_and_messages_of_files():
    bad = np.arange(20.0)
    bad[7] = np.nan
    with pytest.raises(DataError, match="row 7, column 0 is missing"):
        load_dataset(bad)
    assert load_dataset(bad, missing="mask").series[0].values.shape == (20, 1)
    with pytest.raises(DataError, match="dtype <U1 is not numeric"):
        load_dataset([np.array(["a", "b"])])
    with pytest.raises(DataError, match="fewer than 2 rows"):
        load_dataset([np.ones((1, 2))])
    with pytest.raises(DataError, match=r"\[1\] has 2 feature\(s\)"):
        load_dataset([np.ones((5, 1)), np.ones((5, 2))])
    with pytest.raises(DataError, match="time_column='date' names columns"):
        load_dataset(np.ones((10, 1)), time_column="date")
    with pytest.raises(DataError, match="unknown data option"):
        load_dataset(np.ones((10, 1)), lag=(1, 2))


def test_the_default_scaling_is_standard_where_the_level_dwarfs_the_movements():
    rng = np.random.default_rng(0)
    steps = np.arange(600)
    # A CO2-like record: level 360, a yearly swing of 1%: each window moves by ~0.5% of it.
    level = 360 + 0.03 * steps + 3 * np.sin(2 * np.pi * steps / 52) + 0.2 * rng.normal(size=600)
    assert preparation.window_spread([level[:, None]], 104) < preparation.LEVEL_DOMINATED
    assert load_dataset(level, val_fraction=0.1).spec.scaling == "std"
    assert load_dataset(seasonal_series(240, season=12)).spec.scaling == "mean"
    assert load_dataset(rng.poisson(3.0, size=200).astype(float), head="negbin"
                        ).spec.scaling == "mean"
    assert load_dataset((rng.random(200) < 0.3).astype(float)).spec.scaling == "none"
    # A level of zero or no values: no ratio, so no standard scaling.
    assert preparation.window_spread([np.zeros((40, 1))], 8) == float("inf")
    assert preparation.window_spread([np.zeros((0, 1)), level[:, None]], 104) < 0.01
    assert preparation.default_scaling([np.zeros((40, 1))], "student_t", 8) == "mean"


def test_defaults_come_from_the_data_with_or_without_a_time_column(tmp_path):
    values = seasonal_series(240, season=12)
    (tmp_path / "plain.csv").write_text("sales\n" + "\n".join(f"{v:.4f}" for v in values) + "\n")
    months = np.arange("2000-01", "2020-01", dtype="datetime64[M]")[:240]
    (tmp_path / "dated.csv").write_text("month,sales\n" + "\n".join(
        f"{m}-01,{v:.4f}" for m, v in zip(months, values)) + "\n")
    plain = load_dataset(str(tmp_path / "plain.csv"))
    dated = load_dataset(str(tmp_path / "dated.csv"), time_column="month")
    # One rule for both: the season (detected / from the frequency), its lag, mean scaling,
    # the Student-t head, a context of two seasons at least; the dated one adds its calendar.
    assert plain.season == dated.season == 12
    assert plain.spec.lags == dated.spec.lags and 12 in plain.spec.lags
    assert plain.spec.scaling == dated.spec.scaling == "mean" and plain.head == "student_t"
    assert plain.spec.context_length == dated.spec.context_length >= 24
    assert plain.spec.time_features == () and dated.spec.time_features == ("month_of_year",)
    # What the defaults chose can be overridden, and a plain model is the case of no features.
    bare = load_dataset(str(tmp_path / "plain.csv"), lags=(1,), scaling="none", head="gaussian")
    assert not bare.spec.conditioned and bare.model_fields() == {"input_size": 1,
                                                                 "head": "gaussian"}


def test_the_plain_case_of_the_path_is_the_plain_dataset():
    sequences = synthetic.sine(num_sequences=1, length=400)
    plain = NumericDataset(sequences, name="sine", val_fraction=0.2)
    path = load_dataset(from_arrays(sequences[0]), val_fraction=0.2, lags=(1,), scaling="none",
                        head="gaussian", batching="lanes")
    assert plain.normalizer == path.normalizer and plain.splits == path.splits
    np.testing.assert_array_equal(first_batch(plain).inputs, first_batch(path).inputs)
    np.testing.assert_array_equal(first_batch(plain, batching="random").targets,
                                  first_batch(path, batching="random").targets)
    plain_validation = plain.validation_batches(batch_size=2, seq_len=16)
    path_validation = path.validation_batches(batch_size=2, seq_len=16)
    assert len(plain_validation) == len(path_validation)
    np.testing.assert_array_equal(plain_validation[-1].mask, path_validation[-1].mask)


def test_holdout_keeps_the_last_steps_out_and_the_metadata_says_what_was_seen(tmp_path):
    days = np.arange("2024-01-01", "2024-04-10", dtype="datetime64[D]")
    values = seasonal_series(len(days), season=7)
    (tmp_path / "d.csv").write_text("day,y\n" + "\n".join(
        f"{d},{v:.3f}" for d, v in zip(days, values)) + "\n")
    dataset = load_dataset(str(tmp_path / "d.csv"), time_column="day", holdout=14)
    assert len(dataset.series[0]) == len(days) - 14 and len(dataset.full_series[0]) == len(days)
    seen = json.loads(json.dumps(dataset.metadata()))["seen"]
    assert seen == [{"name": "series 0", "steps": len(days) - 14,
                     "last_time": f"{days[-15]}T00:00:00"}]
    assert max(split for split in dataset.splits) <= len(days) - 14
    again = load_dataset(str(tmp_path / "d.csv"), metadata=dataset.metadata())
    assert again.holdout == 14 and again.preparation == dataset.preparation
    with pytest.raises(DataError, match="--holdout 200 leaves fewer than 2 steps"):
        load_dataset(str(tmp_path / "d.csv"), time_column="day", holdout=200)


def test_the_command_line_maps_its_flags_onto_load_dataset(tmp_path):
    from seqmodel.cli import build_parser
    from seqmodel.cli.train import load_training_data

    values = seasonal_series(200, season=7)
    (tmp_path / "x.csv").write_text("t,y,price\n" + "\n".join(
        f"{i},{v:.3f},{i % 5}" for i, v in enumerate(values)) + "\n")
    flags = ["train", "--data", str(tmp_path / "x.csv"), "--time-column", "t", "--covariates",
             "price", "--lags", "1,7", "--scaling", "mean", "--context-length", "20",
             "--holdout", "10", "--head", "gaussian", "--val-fraction", "0.2", "--anchor", "7"]
    args = build_parser().parse_args(flags)
    from_cli = load_training_data(args, args.data, val_fraction=0.2, tokenizer="char",
                                   metadata=None)
    from_api = load_dataset(str(tmp_path / "x.csv"), val_fraction=0.2, time_column="t",
                            covariates=("price",), lags=(1, 7), scaling="mean",
                            context_length=20, holdout=10, head="gaussian", anchor=7)
    assert from_cli.metadata() == from_api.metadata()
    assert from_api.spec.anchor == 7 and from_api.model_fields()["anchor_index"] == 2
    np.testing.assert_array_equal(first_batch(from_cli).inputs, first_batch(from_api).inputs)
    with pytest.raises(Exception, match="--lags applies to real-valued data"):
        text = build_parser().parse_args(["train", "--data", "python-stdlib", "--lags", "1,2"])
        load_training_data(text, text.data, val_fraction=0.1, tokenizer="char", metadata=None)
