"""The linear-recurrence benchmarks' bookkeeping (benchmarks/bench_linear.py, linear_workload.py,
bench_quality.py): matched sizes, FLOP counts, candidates, the loss-curve reading, and one tiny
run of the sweep through the real train step (no timing asserted)."""

import json

import numpy as np
import pytest
from flax import nnx

from benchmarks import bench_linear, bench_quality, linear_torch, linear_workload
from benchmarks.linear_workload import Candidate, Size
from seqmodel.nn.model import SequenceModel


def test_candidates_pair_each_linear_family_with_its_scans():
    names = [candidate.name for candidate in linear_workload.candidates()]
    assert "rglru/log_space" not in names  # RG-LRU's inputs may be negative: no log-space scan
    assert {"mingru/log_space", "minlstm/chunked", "rglru/associative", "gru", "lstm",
            "torch-lstm"} <= set(names)
    assert len(names) == 4 + 4 + 3 + 3
    with pytest.raises(ValueError, match="'elman'"):
        linear_workload.candidates(["elman"])


@pytest.mark.parametrize("family", ["rglru", "gru"])
def test_matched_width_lands_near_the_target(family):
    size = Size("small", 200_000, 2, 1)
    width = linear_workload.matched_width(family, size, widest=512)

    def total_at(width):
        config = linear_workload.model_config(Candidate(family, "sequential"), width, size)
        return linear_workload.parameter_counts(config)[0], config

    total, config = total_at(width)
    assert width % 8 == 0
    # The nearest multiple of 8: its neighbours miss the target by more.
    miss = abs(total - size.parameters)
    assert miss <= abs(total_at(width - 8)[0] - size.parameters)
    assert miss <= abs(total_at(width + 8)[0] - size.parameters)
    assert miss / size.parameters < 0.1
    model = SequenceModel(config, rngs=nnx.Rngs(0))
    assert total == sum(int(np.prod(leaf.shape)) for leaf in
                        nnx.to_flat_state(nnx.state(model, nnx.Param)).leaves)


def test_matmul_parameters_leave_out_gathers_and_elementwise_parameters():
    size = Size("small", 0, 1, 1)
    gru = linear_workload.model_config(Candidate("gru", "fast"), 32, size)
    # Folded embedding: layer 0's input kernel is gathered; the recurrent kernel and the head
    # multiply every token.
    assert linear_workload.parameter_counts(gru)[1] == 32 * 96 + 32 * linear_workload.VOCAB
    rglru = linear_workload.model_config(Candidate("rglru", "sequential"), 16, size)
    # recurrence input, gate, RG-LRU gates (2h), temporal output, MLP in (6h) and out (3h), head
    expected = 16 * 16 + 16 * 16 + 16 * 32 + 16 * 16 + 16 * 96 + 48 * 16 + 16 * 256
    assert linear_workload.parameter_counts(rglru)[1] == expected
    lstm = linear_workload.model_config(Candidate("lstm", "fast"), 32, size)
    total, matmul = linear_workload.parameter_counts(lstm)
    assert linear_workload.torch_parameter_counts(lstm) == (total + 128, matmul + 64 * 128)


def test_seconds_to_reach_interpolates_between_evaluations():
    curve = [{"seconds": 10.0, "val_loss": 2.0}, {"seconds": 20.0, "val_loss": 1.5},
             {"seconds": 30.0, "val_loss": 1.0}]
    assert bench_quality.seconds_to_reach(curve, 1.25) == pytest.approx(25.0)
    assert bench_quality.seconds_to_reach(curve, 2.5) == 10.0
    assert bench_quality.seconds_to_reach(curve, 0.9) is None


def test_read_curves_splits_validation_from_training(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 20, "loss": 3.9, "elapsed": 2.9},
               {"step": 20, "val_loss": 3.3, "elapsed": 3.9, "val_bits_per_char": 4.8}]
    path.write_text("\n".join(json.dumps(record) for record in records))
    validation, training = bench_quality.read_curves(path)
    assert validation == [{"seconds": 3.9, "step": 20, "val_loss": 3.3}]
    assert training == [{"seconds": 2.9, "step": 20, "loss": 3.9}]


@pytest.mark.slow
def test_a_tiny_sweep_runs_the_library_step_once_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(linear_workload, "QUICK_SIZE", Size("quick", 20_000, 1, 1))
    out = tmp_path / "linear.json"
    bench_linear.main(["--quick", "--families", "mingru", "gru", "--scans", "associative",
                       "--lengths", "24", "--generate-batches", "2", "--generate-steps", "3",
                       "--json", str(out)])
    result = json.loads(out.read_text())
    train = {row["family"]: row for row in result["train"]}
    assert set(train) == {"mingru", "gru"}
    assert train["mingru"]["serial_depth"] == 2 * 5  # ceil(log2 24) levels, up and down
    assert train["gru"]["serial_depth"] == 24
    for row in train.values():
        assert row["programs"] == 1  # no recompile on a second, different batch
        assert row["batch"] == 256 // 24 and row["tokens_per_second"] > 0
        assert row["fastest_tokens_per_second"] >= row["tokens_per_second"]
    assert [row["batch"] for row in result["generate"]] == [2, 2]


def test_the_torch_candidate_trains_and_reports_its_threads():
    pytest.importorskip("torch")
    spec = {"embed": 8, "hidden": 8, "layers": 2, "batch": 2, "length": 5, "repeats": 2,
            "min_seconds": 0.0, "learning_rate": 5e-3, "betas": [0.9, 0.99],
            "weight_decay": 0.01, "clip_norm": 1.0, "threads": 1}
    result = linear_torch.time_torch_train(spec)
    assert result["threads"] == 1 and result["torch_device"] in ("cpu", "cuda")
    assert 0 < result["fastest_seconds_per_step"] <= result["seconds_per_step"]
