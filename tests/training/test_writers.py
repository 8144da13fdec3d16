"""Metric writers (seqmodel.training.writers): JSON lines, TensorBoard event files read back with their
protobuf, callbacks, and the loss plot drawn from records."""

import json
import struct

import pytest

from seqmodel.training import writers as metrics

RECORDS = [
    {"step": 20, "loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.7, "tokens_per_second": None,
     "elapsed": 1.5},
    {"step": 40, "loss": 2.0, "learning_rate": 2e-3, "grad_norm": float("nan"),
     "tokens_per_second": 900.0, "elapsed": 3.0},
    {"step": 40, "val_loss": 2.1, "val_bits_per_char": 3.03, "elapsed": 3.5},
]


def read_event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from the TFRecord event files under ``folder``: each record is
    ``uint64 length, uint32 crc, data, uint32 crc``, the data an ``Event`` protobuf."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_jsonl_writer_round_trip_and_append(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    writer = metrics.JsonlWriter(path)
    writer.write(RECORDS[0])
    assert json.loads(path.read_text()) == RECORDS[0]  # flushed at once: nothing lost on a crash
    writer.close()
    appended = metrics.JsonlWriter(path, append=True)
    for record in RECORDS[1:]:
        appended.write(record)
    appended.close()
    read = metrics.read_jsonl(path)
    assert len(read) == 3 and read[0] == RECORDS[0] and read[2] == RECORDS[2]
    assert metrics.read_jsonl(tmp_path / "absent.jsonl") == []
    metrics.JsonlWriter(path).close()  # a new run starts the file anew
    assert metrics.read_jsonl(path) == []


def test_tensorboard_writer_writes_the_numbers_of_each_record(tmp_path):
    pytest.importorskip("tensorboardX")
    writer = metrics.TensorBoardWriter(tmp_path / "tensorboard")
    assert not (tmp_path / "tensorboard").exists()  # no file until the first record
    for record in RECORDS:
        writer.write(record)
    writer.close()
    scalars = read_event_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(20, 2.5), (40, 2.0)]
    assert scalars["validation/loss"] == [(40, pytest.approx(2.1))]
    assert scalars["validation/bits_per_char"] == [(40, pytest.approx(3.03))]
    assert [step for step, _ in scalars["train/learning_rate"]] == [20, 40]
    # None and NaN are skipped; step and elapsed are the axes, not series.
    assert scalars["train/tokens_per_second"] == [(40, 900.0)]
    assert [step for step, _ in scalars["train/grad_norm"]] == [20]
    assert not {"train/step", "train/elapsed"} & scalars.keys()


def test_tensorboard_tags():
    assert metrics.tensorboard_tag("loss") == "train/loss"
    assert metrics.tensorboard_tag("val_loss") == "validation/loss"


def test_callback_and_memory_writers_get_copies(tmp_path):
    seen = []
    writer = metrics.CallbackWriter(seen.append)
    memory = metrics.MemoryWriter()
    for record in RECORDS:
        writer.write(record)
        memory.write(record)
    seen[0]["loss"] = -1.0  # the callback's copy: the writers' records stay as they were
    assert memory.records[0]["loss"] == 2.5 and len(seen) == 3
    assert isinstance(writer, metrics.MetricWriter) and isinstance(memory, metrics.MetricWriter)
    with pytest.raises(TypeError, match="function must be callable"):
        metrics.CallbackWriter("print")


def test_plot_losses_draws_from_records(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    backend = matplotlib.get_backend()
    image = tmp_path / "loss.png"
    assert metrics.plot_losses(RECORDS, image)
    assert image.read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend  # the object API leaves the global backend alone
    assert not metrics.plot_losses([{"step": 1, "elapsed": 0.1}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
