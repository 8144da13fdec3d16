"""The speed suite's bookkeeping (no timing here: the suite itself lives in benchmarks/)."""

import pytest

from seqmodel import benchmarking


def _results():
    entry = {"tokens_per_second": 1000.0, "ratio_to_torch": 1.25, "spread": 0.1,
             "cpu_ms_per_step": 40.0, "compile_seconds": 2.0, "compiled_programs": 1}
    return {
        "rows": [{"cell": "lstm", "hidden": 128, "load_average": {"before": 0.5, "after": 0.7},
                  "candidates": {"seqmodel": entry, "flax": {"error": "ImportError: no flax"}}}],
        "ceilings_gflops": {"large_gflops": 150.0},
        "command": "seqmodel bench --quick",
    }


def test_table_and_markdown_show_every_candidate():
    table = benchmarking.format_table(_results())
    assert "seqmodel" in table and "1.25" in table and "skipped: ImportError" in table
    assert "1 (1 = no recompile)" in table
    markdown = benchmarking.format_markdown(_results())
    assert markdown.count("| lstm | 128 |") == 2
    assert "`seqmodel bench --quick`" in markdown


def test_step_flops_split_serial_and_parallel():
    flops = benchmarking.step_flops("lstm", 128)
    recurrent = 2 * 32 * 128 * 128 * 512  # 2 * batch * steps * h * 4h
    assert flops["serial_forward"] == flops["serial_backward"] == recurrent
    assert flops["parallel"] > recurrent
    roofline = benchmarking._roofline("lstm", 128, 0.05, {
        "large_gflops": 100.0, "serial_gflops_h128x4_forward": 50.0,
        "serial_gflops_h128x4_backward": 50.0})
    assert 0 < roofline["roofline"] < 1 and roofline["gflops"] > 0


def test_unknown_candidate_is_named():
    with pytest.raises(ValueError, match="unknown candidates.*'pytorch'"):
        benchmarking.default_candidates(("seqmodel", "pytorch"))
