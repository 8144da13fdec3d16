"""Text data: tokenizers, sources, lanes / random windows, exact evaluation batches."""

import pathlib

import numpy as np
import pytest

from seqmodel.data import (
    ByteTokenizer,
    CharTokenizer,
    DataError,
    TextDataset,
    evaluation_batches,
    load_dataset,
    make_batch_iterator,
    tokenizer_from_dict,
)
from seqmodel.data import text as text_module

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_char_tokenizer_round_trip_with_multibyte_characters():
    text = "héllo, 世界!\n\ttab 🙂"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.vocab_size == len(set(text))
    ids = tokenizer.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text)  # one id per character, not per byte
    assert tokenizer.decode(ids) == text
    assert list(tokenizer.vocabulary) == sorted(set(text))


def test_char_tokenizer_unknown_characters_are_listed():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"prompt holds 2 character\(s\).*'x'.*'é'"):
        tokenizer.encode("abxéa", what="prompt")


def test_smallest_dtype_for_large_vocabulary():
    text = "".join(chr(0x4E00 + i) for i in range(300))
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.encode(text).dtype == np.uint16
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_byte_tokenizer_and_dict_round_trip():
    byte = ByteTokenizer()
    ids = byte.encode("é")
    assert ids.tolist() == [195, 169] and byte.decode(ids) == "é"
    char = CharTokenizer.from_text("ab\n")
    assert tokenizer_from_dict(char.to_dict()).vocabulary == "\nab"
    assert isinstance(tokenizer_from_dict(byte.to_dict()), ByteTokenizer)


def test_validation_is_the_last_fraction():
    tokens = np.arange(100, dtype=np.uint8)
    dataset = TextDataset(tokens, ByteTokenizer(), val_fraction=0.1)
    assert dataset.train_tokens.tolist() == list(range(90))
    assert dataset.val_tokens.tolist() == list(range(90, 100))


def test_lanes_continue_and_reset_at_each_epoch():
    tokens = np.arange(2 * 10 + 1)  # two lanes of 10, windows of 4 -> 2 batches per epoch
    batches = make_batch_iterator(tokens, batch_size=2, seq_len=4, batching="lanes")
    first, second, third = next(batches), next(batches), next(batches)
    assert first.inputs.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert first.targets.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]
    assert second.inputs.tolist() == [[4, 5, 6, 7], [14, 15, 16, 17]]
    assert first.reset.all() and not second.reset.any()
    assert third.reset.all() and third.inputs.tolist() == first.inputs.tolist()
    assert batches.position == {"batching": "lanes", "epoch": 1, "index": 1}


@pytest.mark.parametrize("batching", ["lanes", "random"])
def test_iterators_resume_from_position(batching):
    tokens = np.arange(200, dtype=np.uint8)
    straight = make_batch_iterator(tokens, batch_size=3, seq_len=5, batching=batching, seed=7)
    expected = [next(straight) for _ in range(30)]
    interrupted = make_batch_iterator(tokens, batch_size=3, seq_len=5, batching=batching, seed=7)
    for _ in range(11):
        next(interrupted)
    resumed = make_batch_iterator(tokens, batch_size=3, seq_len=5, batching=batching, seed=7,
                                  position=interrupted.position)
    for batch in expected[11:]:
        again = next(resumed)
        np.testing.assert_array_equal(batch.inputs, again.inputs)
        np.testing.assert_array_equal(batch.reset, again.reset)


def test_random_windows_reset_every_row_and_targets_shift():
    tokens = np.arange(1000)
    batch = next(make_batch_iterator(tokens, batch_size=8, seq_len=16, batching="random"))
    assert batch.reset.all()
    np.testing.assert_array_equal(batch.targets, batch.inputs + 1)
    assert len({int(row[0]) for row in batch.inputs}) > 1


def test_too_short_corpus_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than batch_size \\* seq_len \\+ 1 = 41"):
        make_batch_iterator(np.arange(30), batch_size=4, seq_len=10, what="x")
    with pytest.raises(DataError, match="--batching 'wrong'"):
        make_batch_iterator(np.arange(30), batch_size=1, seq_len=2, batching="wrong")


@pytest.mark.parametrize("length, lanes, seq_len", [(2, 4, 3), (11, 3, 2), (50, 4, 7), (8, 1, 16)])
def test_evaluation_batches_cover_every_target_once(length, lanes, seq_len):
    stream = np.arange(length)
    batches = evaluation_batches(stream, batch_size=lanes, seq_len=seq_len)
    pairs = []
    for batch in batches:
        keep = batch.mask > 0
        pairs += list(zip(batch.inputs[keep].tolist(), batch.targets[keep].tolist()))
    assert sorted(pairs) == [(i, i + 1) for i in range(length - 1)]
    assert batches[0].reset.all() and not any(b.reset.any() for b in batches[1:])


def test_text_file_source_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_dataset(str(latin))


def test_text_file_with_checkpoint_tokenizer(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcabc\nzz", encoding="utf-8")
    dataset = load_dataset(str(path), val_fraction=0.25)
    assert dataset.vocab_size == 5 and dataset.model_fields()["vocab_size"] == 5
    again = load_dataset(str(path), metadata=dataset.metadata())
    np.testing.assert_array_equal(again.tokens, dataset.tokens)
    other = tmp_path / "other.txt"
    other.write_text("abq", encoding="utf-8")
    with pytest.raises(DataError, match="'q'"):
        load_dataset(str(other), metadata=dataset.metadata())


def test_numeric_sources_are_routed_to_the_series_path(monkeypatch):
    from seqmodel.data import readers, series, tables

    reads, builds = [], []
    table = tables.from_arrays(np.arange(20.0))
    monkeypatch.setattr(readers, "read_table", lambda source, **kw: reads.append((source, kw))
                        or table)
    monkeypatch.setattr(series, "build_dataset", lambda table, **kw: builds.append(kw) or "series")
    assert load_dataset("series.csv", val_fraction=0.2) == "series"
    assert reads[0][0] == "series.csv" and builds[0]["val_fraction"] == 0.2
    assert load_dataset("sine") == "series" and len(reads) == 1  # built in: no file read
    # Every suffix the numeric reader takes is routed to it; a .tsv is not a text corpus.
    for name in ("series.tsv", "SERIES.TAB", "walks.npy"):
        assert load_dataset(name, time_column="date", lags=(1, 7)) == "series"
        assert reads[-1][0] == name and reads[-1][1]["time_column"] == "date"
        assert builds[-1]["lags"] == (1, 7)


def test_python_stdlib_is_python():
    dataset = load_dataset("python-stdlib")
    text = dataset.tokenizer.decode(dataset.tokens[:20000])
    assert "def " in text and "import " in text
    assert dataset.tokens.dtype == np.uint8 and len(dataset.tokens) > 1_000_000


def test_tinyshakespeare_from_data_dir(monkeypatch):
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"tinyshakespeare.txt not found in {SHARED_DATA}")
    monkeypatch.setenv("SEQMODEL_DATA_DIR", str(SHARED_DATA))
    dataset = load_dataset("tinyshakespeare")
    assert dataset.vocab_size == 65 and len(dataset.tokens) == 1115394
    assert dataset.tokenizer.decode(dataset.tokens[:14]) == "First Citizen:"


def test_tinyshakespeare_offline_error_says_where(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQMODEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="put tinyshakespeare.txt .* into"):
        text_module.tinyshakespeare_path(download=False)
