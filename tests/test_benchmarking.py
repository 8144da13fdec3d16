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


def test_readme_tables_come_from_the_result_files(tmp_path):
    from benchmarks import readme_tables

    speed = {"command": "python benchmarks/bench_speed.py", "date": "2026-12-05T10:00:00+00:00",
             "commit": "abcdef0123456789", "machine": {"cpus": 2}, "repeats": 5,
             "load_average": {"start": [0.5, 0.4, 0.3], "end": [1.5, 1.0, 0.8]},
             "ceilings_gflops": {"large_gflops": 400.0},
             "rows": [{"cell": "lstm", "hidden": 128, "torch_best": "torch-compile-1t",
                       "candidates": {
                           "seqmodel": {"tokens_per_second": 400_000.0, "ratio_to_torch": 1.33,
                                        "spread": 0.05, "devices": 2, "steps_per_call": 20, "device_choice": {
                                            "reason": "2 cpu devices (measured)"}},
                           "seqmodel-1dev-1call": {"tokens_per_second": 250_000.0,
                                                   "ratio_to_torch": 0.83, "spread": 0.08},
                           "torch-compile-1t": {"tokens_per_second": 300_000.0,
                                                "ratio_to_torch": 1.0, "spread": 0.1},
                           "flax": {"error": "ImportError: no flax"}}}]}
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "speed_cpu_2core.json").write_text(__import__("json").dumps(speed))
    sections = readme_tables.sections(results)
    table = sections["train-step"]
    assert "| LSTM | 128 | 400k (**1.33x**, 2 dev. x 20) | 250k (0.83x) |" in table
    assert "300k (`torch-compile-1t`)" in table and "largest spread (max - min) / median: 10%" in table
    assert "commit abcdef0123, load average 0.3-1.5 on 2 CPUs" in table
    assert "2 cpu devices (measured)" in sections["train-step-split"]  # docs only
    assert "| train step LSTM h128 >= 1.3x PyTorch's best | 1.33x (`torch-compile-1t`" in \
        sections["targets"] and "| met |" in sections["targets"]
    assert "skipped: ImportError" in sections["speed-all"]
    # Marked sections of a file are replaced; the rest of it is left as it was.
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- readme_tables:train-step -->\nold\n<!-- /readme_tables:train-step -->\n"
                    "<!-- readme_tables:unknown -->\nkept\n<!-- /readme_tables:unknown -->\n")
    assert readme_tables.update(page, sections) == ["train-step"]
    text = page.read_text()
    assert text.startswith("intro\n") and "old" not in text and "400k" in text and "kept" in text


def test_fault_runs_read_where_each_restart_resumed():
    from benchmarks import bench_faults

    def lines_of(*lines):
        train = bench_faults.TrainProcess.__new__(bench_faults.TrainProcess)
        train.lines = [(0.0, line) for line in lines]
        return train

    resumed = lines_of("seqmodel: resuming gru h32x1 from step 160 on sine (input_size 1) for 400 "
                       "steps on 1 cpu device; run folder x")
    assert resumed.resumed_from() == 160 and not resumed.fell_back()
    fell_back = lines_of("seqmodel: resuming gru h32x1 from step 160 on sine ...",
                         "seqmodel train: resuming from step 80: the newer step 160 (its params "
                         "cannot be read (...)) cannot be read and is set aside in x")
    assert fell_back.resumed_from() == 80 and fell_back.fell_back()
    assert lines_of("seqmodel: training gru h32x1 on sine ...").resumed_from() == 0
    assert lines_of("loading").resumed_from() is None  # killed before it said
    runs = [{"outcome": "identical", "processes": [
        {"expected_step": 0, "resumed_from": 0,
         "kill": {"phase": "saving", "signal": "SIGKILL", "aimed_at": "save",
                  "save_interrupted": True}},
        {"expected_step": 0, "resumed_from": 0}]}]
    counts = bench_faults.count(runs)
    assert counts["by_phase"]["saving"] == 1 and counts["saving_with_partial_step_left"] == 1
    assert counts["identical"] == 1 and counts["restarts"] == 1
