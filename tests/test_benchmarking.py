"""The speed suite's bookkeeping, its worker processes and ``seqmodel bench`` (no timing here: the
suite itself lives in benchmarks/, a package of the source checkout)."""

import numpy as np
import pytest

from benchmarks import candidates, rooflines, tables, torch_copy
from benchmarks.workload import reference_model
from seqmodel import cli


def _results():
    entry = {"tokens_per_second": 1000.0, "ratio_to_torch": 1.25, "spread": 0.1,
             "cpu_ms_per_step": 40.0, "compile_seconds": 2.0, "compiled_programs": 1}
    torch_entry = {"tokens_per_second": 800.0, "first_loss": 4.1744, "seqmodel_first_loss": 4.1743}
    return {
        "rows": [{"cell": "lstm", "hidden": 128, "load_average": {"before": 0.5, "after": 0.7},
                  "candidates": {"seqmodel": entry, "torch": torch_entry,
                                 "flax": {"error": "ImportError: no flax"}}}],
        "ceilings_gflops": {"large_gflops": 150.0},
        "command": "seqmodel bench --quick",
    }


def test_table_and_markdown_show_every_candidate():
    table = tables.format_table(_results())
    assert "seqmodel" in table and "1.25" in table and "skipped: ImportError" in table
    assert "1 (1 = no recompile)" in table
    assert "first-batch loss equal within 1.0e-04" in table
    markdown = tables.format_markdown(_results())
    assert markdown.count("| lstm | 128 |") == 3
    assert "`seqmodel bench --quick`" in markdown


def test_step_flops_split_serial_and_parallel():
    flops = rooflines.step_flops("lstm", 128)
    recurrent = 2 * 32 * 128 * 128 * 512  # 2 * batch * steps * h * 4h
    assert flops["serial_forward"] == flops["serial_backward"] == recurrent
    assert flops["parallel"] > recurrent
    bound = rooflines.roofline("lstm", 128, 0.05, {
        "large_gflops": 100.0, "serial_gflops_h128x4_forward": 50.0,
        "serial_gflops_h128x4_backward": 50.0})
    expected = (2 * recurrent / 50.0 + flops["parallel"] / 100.0) / 1e9
    assert bound["bound_seconds"] == pytest.approx(expected)
    assert bound["roofline"] == pytest.approx(expected / 0.05) and 0 < bound["roofline"] < 1
    assert set(rooflines.roofline("lstm", 128, 0.05, {})) == {"gflops"}


def test_unknown_candidate_is_named():
    with pytest.raises(ValueError, match="unknown candidates.*'pytorch'"):
        candidates.default_candidates(("seqmodel", "pytorch"))


def test_worker_process_answers_over_the_protocol():
    """A real worker (``python -m benchmarks.candidates``), found through PYTHONPATH: the GEMM
    ceilings at a tiny size, then a worker of an unknown kind reporting its error."""
    gemm = candidates.start(candidates.Candidate(
        "gemm", "gemm", {"size": 64, "serial_shapes": [[8, 4]]}), "lstm", 0)
    try:
        assert gemm.hello.get("ready"), gemm.hello
        ceilings = gemm.hello["result"]
        assert set(ceilings) == {"large_gflops", "serial_gflops_h8x4_forward",
                                 "serial_gflops_h8x4_backward"}
        assert all(value > 0 for value in ceilings.values())
    finally:
        gemm.close()
    broken = candidates.start(candidates.Candidate("broken", "no-such-kind"), "lstm", 8)
    broken.close()
    assert broken.hello == {"error": "KeyError: 'no-such-kind'"}


def test_bench_runs_the_checkouts_suite(capfd):
    assert cli.main(["bench", "--help"]) == 0
    assert "usage: seqmodel bench" in capfd.readouterr().out
    assert cli.main(["bench", "--hidden", "big"]) == 2
    assert "--hidden: 'big' is not a comma list of integers" in capfd.readouterr().err


def test_bench_outside_a_checkout_is_one_line(tmp_path, monkeypatch, capsys):
    import seqmodel.cli.bench as bench

    (tmp_path / "seqmodel").mkdir()
    monkeypatch.setattr(bench, "PACKAGE_DIRECTORY", tmp_path / "seqmodel")
    assert cli.main(["bench", "--quick"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "ships with the source checkout only" in error


# ---------------------------------------------------------------------------------------------
# PyTorch baselines hold seqmodel's weights
# ---------------------------------------------------------------------------------------------


def test_torch_copy_gives_the_same_loss_and_a_changed_copy_is_refused():
    torch = pytest.importorskip("torch", reason="the PyTorch baselines need torch")
    inputs, targets = np.random.default_rng(0).integers(0, 65, (2, 2, 9)).astype(np.int32)
    model = reference_model("gru", 16)
    modules = torch_copy.torch_modules(model)
    agreement = torch_copy.check_same_loss(model, modules, inputs, targets)
    assert agreement["loss_error"] <= 1e-5 and agreement["logit_error"] <= 1e-5
    assert agreement["loss"] == pytest.approx(np.log(65), rel=0.1)
    with torch.no_grad():
        modules.rnn.bias_hh_l0[-1] += 0.5  # one entry of b_hn
    with pytest.raises(torch_copy.WeightsDisagree, match="disagrees.*not timing it"):
        torch_copy.check_same_loss(model, modules, inputs, targets)


def test_torch_worker_trains_the_copy():
    torch = pytest.importorskip("torch", reason="the PyTorch baselines need torch")
    from benchmarks import train_workers

    threads = torch.get_num_threads()
    try:
        run, info, _ = train_workers.torch_worker(
            {"cell": "lstm", "hidden": 8, "options": {"threads": 1}})
        assert abs(info["first_loss"] - info["seqmodel_first_loss"]) <= 1e-4
        assert run(1) > 0 and info["threads"] == 1 and info["mode"] == "eager"
        # The GRU as a loop over time holds the same weights: the same loss, and it trains.
        run, info, _ = train_workers.torch_worker(
            {"cell": "gru", "hidden": 8, "options": {"threads": 1, "implementation": "loop"}})
        assert abs(info["first_loss"] - info["seqmodel_first_loss"]) <= 1e-4
        assert run(1) > 0 and info["implementation"] == "loop"
    finally:
        torch.set_num_threads(threads)


def test_the_fastest_pytorch_candidate_is_the_baseline(monkeypatch):
    measured = {"seqmodel": {"tokens_per_second": 900.0}, "torch-eager-1t": {"tokens_per_second": 500.0},
                "torch-compile-2t": {"tokens_per_second": 700.0}, "torch-loop-eager-1t": {"error": "x"}}
    assert candidates.fastest_torch(measured) == "torch-compile-2t"
    assert candidates.fastest_torch({"seqmodel": {"tokens_per_second": 1.0}}) is None
    from benchmarks import torch_variants

    # PyTorch's default is timed only where it is not one of the explicit counts.
    monkeypatch.setattr(torch_variants, "default_threads", lambda: 2)
    names = [c.name for c in candidates.default_candidates(("torch",))]
    assert names == ["torch-eager-1t", "torch-eager-2t", "torch-compile-1t", "torch-compile-2t",
                     "torch-loop-eager-1t", "torch-loop-eager-2t", "torch-loop-compile-1t",
                     "torch-loop-compile-2t"]
    loop = candidates.default_candidates(("torch-loop-eager-1t",))[0]
    assert loop.applies_to("gru") and not loop.applies_to("lstm") and loop.is_torch
    monkeypatch.setattr(torch_variants, "default_threads", lambda: 16)
    names = [c.name for c in candidates.default_candidates(("torch",), modes=("eager",))]
    assert names[:3] == ["torch-eager-dt", "torch-eager-1t", "torch-eager-2t"]


def test_pytorch_variants_compute_what_the_modules_compute():
    torch = pytest.importorskip("torch", reason="the PyTorch baselines need torch")
    from benchmarks import decode_workers, torch_variants

    embedding, gru, head = torch_copy.torch_modules(reference_model("gru", 12))
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        want, want_last = gru(x)
        got, got_last = torch_variants.gru_loop_class()(gru)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_last, want_last, atol=1e-5, rtol=1e-5)

    embedding, lstm, head = torch_copy.torch_modules(reference_model("lstm", 12))
    module, cell = (torch_variants.StepLoop(embedding, lstm, head, implementation=kind,
                                            mode="eager") for kind in ("module", "cell"))
    tokens = torch.tensor([3, 9])
    with torch.no_grad():
        for loop_state in ((module, module.initial_state(2)), (cell, cell.initial_state(2))):
            assert loop_state[1][0].shape == (2, 12)
        logits_module, *_ = module.logits(tokens, *module.initial_state(2))
        logits_cell, *_ = cell.logits(tokens, *cell.initial_state(2))
        sample, h, c = cell.sample(tokens, *cell.initial_state(2))
    torch.testing.assert_close(logits_module, logits_cell, atol=1e-5, rtol=1e-5)
    assert sample.shape == (2,) and sample.dtype == torch.long and h.shape == c.shape == (2, 12)
    prompt = np.array(decode_workers.BEAM_PROMPT)
    by_module = decode_workers.torch_beam_search(module, prompt, steps=6, beams=3)
    by_cell = decode_workers.torch_beam_search(cell, prompt, steps=6, beams=3)
    np.testing.assert_array_equal(by_module[0], by_cell[0])
    assert by_module[0].shape == (3, 6) and np.all(np.diff(by_module[1]) <= 0)


@pytest.mark.slow
def test_decoding_workers_agree_over_the_protocol():
    """A seqmodel and a PyTorch beam-search worker at a tiny size: each answers with its best
    beam (the suite compares them) and times whole searches."""
    pytest.importorskip("torch", reason="the PyTorch baselines need torch")
    options = {"beams": 3, "steps": 12}
    seqmodel_beam = candidates.start(candidates.Candidate("seqmodel", "beam", options), "lstm", 8)
    torch_beam = candidates.start(candidates.Candidate(
        "torch-cell-eager-1t", "torch-beam",
        {**options, "threads": 1, "mode": "eager", "implementation": "cell"},
        candidates.TORCH_ENV), "lstm", 8)
    try:
        assert seqmodel_beam.hello.get("ready"), seqmodel_beam.hello
        assert torch_beam.hello.get("ready"), torch_beam.hello
        assert torch_beam.hello["best_beam"] == seqmodel_beam.hello["best_beam"]
        assert len(seqmodel_beam.hello["best_beam"]) == 12
        assert torch_beam.hello["threads"] == 1
        for worker in (seqmodel_beam, torch_beam):
            assert worker.ask("run 2")["seconds"] > 0
    finally:
        seqmodel_beam.close()
        torch_beam.close()
