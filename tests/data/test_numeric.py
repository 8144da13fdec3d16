"""Numeric data: CSV / .npy loading, normalisation, padding and buckets, synthetic sources."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqmodel.data import padding, readers, synthetic
from seqmodel.data.normalization import Normalizer


def write(tmp_path, text, name="series.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_header_with_a_date_column(tmp_path):
    path = write(tmp_path, "date,open,close\n2024-01-01,1.5,2\n2024-01-02,2.5,3\n2024-01-03,3,4\n")
    # Undeclared, the date column is refused by name, with the way to declare it.
    with pytest.raises(ValueError, match=r"column 'date' holds words.*'2024-01-01' on line 2.*"
                                         r"time_column='date'"):
        readers.load_csv(path)
    table = readers.load_csv(path, time_column="date")
    assert table.columns == ("open", "close") and table.time_column == "date"
    assert len(table.sequences) == 1
    np.testing.assert_allclose(table.sequences[0], [[1.5, 2], [2.5, 3], [3, 4]])
    np.testing.assert_array_equal(
        table.times[0], np.array(["2024-01-01", "2024-01-02", "2024-01-03"], "datetime64[us]"))


def test_csv_without_header_whose_first_column_is_a_date_keeps_every_row(tmp_path):
    path = write(tmp_path, "2020-01-01,1.0\n2020-01-02,2.0\n2020-01-03,3.0\n")
    with pytest.raises(ValueError, match=r"column 'column 1' holds words.*'2020-01-01' on line 1"):
        readers.load_csv(path)
    table = readers.load_csv(path, time_column="column 1")
    assert table.columns == ("column 2",)
    np.testing.assert_allclose(table.sequences[0][:, 0], [1.0, 2.0, 3.0])
    assert table.times[0][0] == np.datetime64("2020-01-01")


def test_csv_header_is_decided_by_the_numeric_columns(tmp_path):
    # A word in the words column of the first row does not make it a header ...
    table = readers.load_csv(write(tmp_path, "x,1,5\nx,2,6\ny,3,7\ny,4,8\n"),
                             id_column="column 1")
    assert table.columns == ("column 2", "column 3")
    assert [s[:, 0].tolist() for s in table.sequences] == [[1, 2], [3, 4]]
    # ... a word in a numeric column does; a missing first value does not.
    assert readers.load_csv(write(tmp_path, "id,v\nx,1\nx,2\n"), id_column="id").columns == ("v",)
    table = readers.load_csv(write(tmp_path, ",1\n2,3\n4,5\n"), missing="mask")
    assert table.sequences[0].shape == (3, 2) and np.isnan(table.sequences[0][0, 0])


def test_csv_refuses_every_column_of_words_by_name(tmp_path):
    path = write(tmp_path, "x,city,colour\n1,paris,red\n2,rome,blue\n")
    with pytest.raises(ValueError, match=r"columns 'city', 'colour' hold words.*'paris' on line 2"
                                         r".*id_column='city'"):
        readers.load_csv(path)
    with pytest.raises(ValueError, match=r"time_column='when' is not a column.*'x', 'city'"):
        readers.load_csv(path, time_column="when")


def test_csv_id_column_and_times_per_sequence(tmp_path):
    text = ("store,day,sales\nb,2024-01-01T00:00:00+01:00,1\nb,2024-01-02,2\n"
            "a,2024-01-01,10\na,2024-01-02,11\n")
    table = readers.load_csv(write(tmp_path, text), time_column="day", id_column="store")
    assert table.columns == ("sales",)
    assert [s[:, 0].tolist() for s in table.sequences] == [[1, 2], [10, 11]]
    # An offset is converted to UTC.
    assert table.times[0][0] == np.datetime64("2023-12-31T23:00:00")
    assert [len(times) for times in table.times] == [2, 2]
    numbers = readers.load_csv(write(tmp_path, "t,x\n0.5,1\n1.5,2\n"), time_column="t")
    assert numbers.times[0].dtype == np.float64 and numbers.columns == ("x",)
    with pytest.raises(ValueError, match=r"line 3, time column 'day': '01/02/2024' is not an ISO"):
        readers.load_csv(write(tmp_path, "day,x\n2024-01-01,1\n01/02/2024,2\n"),
                         time_column="day")
    with pytest.raises(ValueError, match=r"line 3, id column 'store' is empty"):
        readers.load_csv(write(tmp_path, "store,x\na,1\n,2\n"), id_column="store")


def test_csv_end_of_row_delimiter_and_empty_named_column(tmp_path):
    table = readers.load_csv(write(tmp_path, "a,b,\n1,2,\n3,4,\n"))
    assert table.columns == ("a", "b")
    # A named column without values is a feature whose every value is missing, not dropped.
    with pytest.raises(ValueError, match=r"line 2, column 'c' is missing"):
        readers.load_csv(write(tmp_path, "a,c\n1,\n3,\n"))


def test_tsv_reads_tabs_and_routes_to_the_numeric_loader(tmp_path):
    from seqmodel.data import NUMERIC_SUFFIXES, is_numeric_source, load_dataset

    assert {".csv", ".tsv", ".npy"} <= set(NUMERIC_SUFFIXES)
    assert is_numeric_source("x.TSV") and not is_numeric_source("notes.txt")
    rows = "".join(f"2024-01-{i + 1:02d}\t{i}\t{2 * i}\n" for i in range(20))
    path = write(tmp_path, "date\tx\ty\n" + rows, name="series.tsv")
    dataset = load_dataset(str(path), time_column="date")
    assert dataset.kind == "series" and dataset.columns == ("x", "y")
    assert dataset.spec.time_column == "date" and dataset.metadata()["preparation"]["features"][
        "time_column"] == "date"
    # The checkpoint's metadata declares the same columns for data read again.
    again = load_dataset(str(path), metadata=json.loads(json.dumps(dataset.metadata())))
    assert again.columns == ("x", "y") and again.normalizer == dataset.normalizer


def test_csv_without_header(tmp_path):
    table = readers.load_csv(write(tmp_path, "1,2\n3,4\n5,6\n"))
    assert table.columns == ("column 1", "column 2")
    np.testing.assert_allclose(table.sequences[0], [[1, 2], [3, 4], [5, 6]])


def test_csv_sequence_id_splits(tmp_path):
    text = "sequence_id,x\na,1\na,2\nb,10\nb,11\nb,12\na,3\n"
    table = readers.load_csv(write(tmp_path, text))
    assert table.columns == ("x",)
    assert [s[:, 0].tolist() for s in table.sequences] == [[1, 2, 3], [10, 11, 12]]


def test_csv_bad_cell_names_line_and_column(tmp_path):
    path = write(tmp_path, "t,value\n0,1.0\n1,2.0\n2,oops\n3,4.0\n4,5.0\n")
    with pytest.raises(ValueError, match=r"line 4, column 'value': 'oops' is not a number"):
        readers.load_csv(path)


def test_csv_no_numeric_columns(tmp_path):
    with pytest.raises(ValueError, match="no numeric columns"):
        readers.load_csv(write(tmp_path, "name,colour\nann,red\nbob,blue\n"))


@pytest.mark.parametrize("text", ["x\n1.0\n", "1.0\n", "x,y\n"])
def test_csv_too_short(tmp_path, text):
    with pytest.raises(ValueError, match="fewer than 2 rows|no data rows"):
        readers.load_csv(write(tmp_path, text))


def test_csv_ragged_row(tmp_path):
    with pytest.raises(ValueError, match="line 3 has 1 cells"):
        readers.load_csv(write(tmp_path, "a,b\n1,2\n3\n"))


def test_csv_missing_rejected_or_masked(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n3,\n5,nan\n7,8\n")
    with pytest.raises(ValueError, match=r"line 3, column 'b' is missing.*2 missing cell"):
        readers.load_csv(path)
    table = readers.load_csv(path, missing="mask")
    values, mask = padding.pad_sequences(table.sequences)
    assert not np.isnan(values).any()
    assert mask[0].tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="missing='sometimes' is invalid"):
        readers.load_csv(path, missing="sometimes")


def test_missing_file_and_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.read_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="suffix '.parquet' is not supported; use .csv, .tsv"):
        readers.read_table(tmp_path / "x.parquet")
    np.save(tmp_path / "a.npy", np.ones((3, 1)))
    with pytest.raises(ValueError, match="time_column='t' applies to delimited files"):
        readers.read_table(tmp_path / "a.npy", time_column="t")


# -- .npy ----------------------------------------------------------------------------------------


def test_npy_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(5.0))
    np.save(tmp_path / "b.npy", np.ones((6, 3)))
    ragged = np.full((2, 4, 2), np.nan)
    ragged[0, :4] = 1.0
    ragged[1, :2] = 2.0
    np.save(tmp_path / "c.npy", ragged)
    assert readers.read_table(tmp_path / "a.npy").sequences[0].shape == (5, 1)
    assert readers.read_table(tmp_path / "b.npy").sequences[0].shape == (6, 3)
    table = readers.read_table(tmp_path / "c.npy")
    assert [s.shape for s in table.sequences] == [(4, 2), (2, 2)]


def test_npy_missing_and_rank(tmp_path):
    values = np.ones((5, 2))
    values[2, 1] = np.nan
    np.save(tmp_path / "m.npy", values)
    with pytest.raises(ValueError, match="row 2, column 1 is missing"):
        readers.load_npy(tmp_path / "m.npy")
    assert np.isnan(readers.load_npy(tmp_path / "m.npy", missing="mask").sequences[0]).sum() == 1
    np.save(tmp_path / "r.npy", np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2, 2\) is not supported"):
        readers.load_npy(tmp_path / "r.npy")


# -- normalisation ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 20), st.integers(1, 4)),
                  elements=st.floats(-1e4, 1e4)))
def test_normalizer_round_trips(values):
    normalizer = Normalizer.fit(values)
    z = normalizer.normalize(values)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(normalizer.denormalize(z), values, rtol=1e-9, atol=1e-6)
    again = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert again == normalizer


def test_normalizer_statistics_and_constant_feature():
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(5.0, 3.0, 1000), np.full(1000, 7.0)], -1)
    normalizer = Normalizer.fit([values[:400], values[400:]])
    z = normalizer.normalize(values)
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-9)
    np.testing.assert_allclose(z[:, 0].std(), 1.0, atol=1e-9)
    assert normalizer.scale[1] == 1.0 and np.all(z[:, 1] == 0.0)


def test_normalizer_ignores_masked_and_missing():
    values = np.array([[[1.0], [3.0], [100.0]], [[np.nan], [1.0], [3.0]]])
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    normalizer = Normalizer.fit(values, mask=mask)
    assert normalizer.mean == (2.0,) and normalizer.scale == (1.0,)
    with pytest.raises(ValueError, match="have 2 features"):
        normalizer.normalize(np.ones((3, 2)))


# -- padding and buckets ----------------------------------------------------------------------------


def test_pad_and_next_step_batch():
    values, mask = padding.pad_sequences([np.ones((3, 2)), 2 * np.ones((5, 2))], length=8)
    assert values.shape == (2, 8, 2) and mask.tolist()[0] == [1, 1, 1, 0, 0, 0, 0, 0]
    inputs, targets, target_mask = padding.next_step_batch(values, mask)
    assert inputs.shape == targets.shape == (2, 7, 2)
    assert target_mask[0].tolist() == [1, 1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="shorter than the longest"):
        padding.pad_sequences([np.ones((9, 1))], length=8)


def test_buckets_keep_shapes_few():
    assert [padding.bucket_length(n) for n in (1, 8, 9, 37, 64, 65)] == [8, 8, 16, 64, 64, 128]
    lengths = np.random.default_rng(0).integers(2, 300, size=500)
    batches = padding.bucketed_batches(lengths, 16, rng=np.random.default_rng(1))
    shapes = {length for _, length in batches}
    assert len(shapes) <= 6
    assert sorted(np.concatenate([i for i, _ in batches]).tolist()) == list(range(500))
    assert all(lengths[i].max() <= length for i, length in batches)


def test_windows_cover_every_target_once():
    series = np.arange(10.0)[:, None]
    pieces = padding.windows(series, 4)
    targets = np.concatenate([p[1:, 0] for p in pieces])
    assert targets.tolist() == list(range(1, 10))


# -- synthetic sources ------------------------------------------------------------------------------


def test_synthetic_sources_shapes_and_seeds():
    for name, features in (("sine", 1), ("bimodal", 1), ("binary-patterns", 8)):
        first = synthetic.load_synthetic(name, seed=3, num_sequences=5)
        again = synthetic.load_synthetic(name, seed=3, num_sequences=5)
        other = synthetic.load_synthetic(name, seed=4, num_sequences=5)
        assert len(first) == 5 and first[0].shape[-1] == features
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    with pytest.raises(ValueError, match="unknown synthetic source 'cosine'"):
        synthetic.load_synthetic("cosine")


def test_bimodal_proportions_and_binary_patterns():
    values = np.stack(synthetic.bimodal(num_sequences=200, length=50, seed=0))[..., 0]
    residual = values[:, 1:] - synthetic.BIMODAL_DECAY * values[:, :-1]
    assert np.all(np.abs(np.abs(residual) - synthetic.BIMODAL_OFFSET) < 0.6)
    assert abs((residual > 0).mean() - synthetic.BIMODAL_UP_PROBABILITY) < 0.02
    patterns = np.stack(synthetic.binary_patterns(num_sequences=20, seed=0))
    assert set(np.unique(patterns)) <= {0.0, 1.0}
    # The current element determines the next: same pattern now, same pattern next.
    following = {}
    for row in patterns:
        for now, nxt in zip(row[:-1], row[1:]):
            assert following.setdefault(tuple(now), tuple(nxt)) == tuple(nxt)


# -- the dataset -------------------------------------------------------------------------------------


def test_dataset_set_of_sequences(tmp_path):
    from seqmodel.data import load_dataset

    # The plain case (no lags, no scaling) of the one path: a set of separate sequences is held
    # out by sequence and batched whole.
    dataset = load_dataset("sine", val_fraction=0.1, lags=(1,), scaling="none")
    assert dataset.kind == "series" and dataset.model_fields() == {"input_size": 1,
                                                                   "head": "student_t"}
    assert dataset.validation == "sequences" and dataset.batching == "sequences"
    assert len(dataset.val_sequences) == round(0.1 * 256)
    batches = dataset.train_batches(batch_size=8, seq_len=50, seed=1)
    seen = set()
    for _ in range(batches.batches_per_epoch):
        batch = next(batches)
        assert batch.inputs.shape[0] == 8 and batch.inputs.shape[1] in (7, 15, 31, 50)
        assert batch.mask.shape == batch.inputs.shape[:2] and batch.reset.all()
        seen.add(batch.inputs.shape)
    assert len(seen) <= 3
    # Resuming from a stored position gives the very next batches.
    batches = dataset.train_batches(batch_size=8, seq_len=50, seed=1)
    for _ in range(5):
        next(batches)
    resumed = dataset.train_batches(batch_size=8, seq_len=50, seed=1, position=batches.position)
    np.testing.assert_array_equal(next(resumed).inputs, next(batches).inputs)
    # Validation: every target exactly once, in normalised units.
    validation = dataset.validation_batches(batch_size=16, seq_len=64)
    assert sum(b.mask.sum() for b in validation) == dataset.num_validation_targets
    assert dataset.num_validation_targets == sum(len(s) - 1 for s in dataset.val_sequences)


def test_dataset_metadata_rebuilds_the_same_normaliser(tmp_path):
    from seqmodel.data import load_dataset

    rng = np.random.default_rng(0)
    np.save(tmp_path / "walk.npy", np.cumsum(rng.normal(size=(500, 2)), 0) + 50.0)
    dataset = load_dataset(str(tmp_path / "walk.npy"), val_fraction=0.2, scaling="none")
    assert len(dataset.series) == 1 and len(dataset.val_sequences[0]) == 100
    train = np.concatenate(dataset.train_sequences)
    np.testing.assert_allclose(dataset.normalizer.mean, train.mean(0))
    metadata = json.loads(json.dumps(dataset.metadata()))
    # Other data, same normaliser: the model sees data encoded as it was trained.
    np.save(tmp_path / "other.npy", rng.normal(size=(80, 2)))
    again = load_dataset(str(tmp_path / "other.npy"), metadata=metadata)
    assert again.normalizer == dataset.normalizer
    np.save(tmp_path / "wide.npy", rng.normal(size=(80, 3)))
    with pytest.raises(ValueError, match="3 feature"):
        load_dataset(str(tmp_path / "wide.npy"), metadata=metadata)


def test_dataset_constant_feature_and_missing_mask(tmp_path):
    from seqmodel.data import DataError, load_dataset

    rows = "\n".join(f"{i},{'' if i == 12 else f'{np.sin(i / 3):.4f}'},4.0" for i in range(200))
    path = write(tmp_path, "step,wave,flat\n" + rows + "\n")
    with pytest.raises(DataError, match="line 14, column 'wave' is missing"):
        load_dataset(str(path))
    dataset = load_dataset(str(path), missing="mask", lags=(1,), scaling="none",
                           batching="lanes")
    assert dataset.columns == ("step", "wave", "flat") and dataset.normalizer.scale[2] == 1.0
    total = 0.0
    batches = dataset.train_batches(batch_size=4, seq_len=16)
    for _ in range(batches.batches_per_epoch):
        batch = next(batches)
        assert np.isfinite(batch.inputs).all() and np.isfinite(batch.targets).all()
        total += batch.mask.sum()
    assert total == 4 * ((180 - 1) // 4 // 16 * 16) - 1  # every lane target but the missing one


def test_binary_data_is_not_normalised():
    from seqmodel.data import DataError, load_dataset

    dataset = load_dataset("binary-patterns")
    assert dataset.default_head == "bernoulli" and dataset.spec.scaling == "none"
    assert dataset.normalizer == Normalizer.identity(8)
    batch = next(dataset.train_batches(batch_size=4, seq_len=16))
    assert set(np.unique(batch.targets)) <= {0.0, 1.0}
    dataset.check_head("bernoulli")
    with pytest.raises(DataError, match="--head bernoulli needs binary"):
        load_dataset("sine", head="bernoulli")
