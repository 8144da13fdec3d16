"""benchmarks/bench_long_context.py: one tiny configuration through its worker (no timing
asserted), and the figure from a result file."""

import json

import pytest

from benchmarks import bench_long_context


@pytest.mark.slow
def test_worker_reports_the_plan_and_runs_what_fits():
    spec = dict(length=512, devices=1, remat="block", steps=1, budget_bytes=8 * 2**30)
    result = bench_long_context.worker(spec)
    assert result["ran"] and result["parameters"] > 900_000
    assert 0 < result["device_gib"] < 1 and result["peak_rss_gib"] > 0
    assert result["tokens_per_second"] > 0 and result["loss"] > 0
    assert len(result["losses"]) == 2 and result["losses"][-1] == result["loss"]
    one_block = bench_long_context.worker(dict(spec, num_layers=1, budget_bytes=1))
    assert one_block["parameters"] < result["parameters"] / 3
    skipped = bench_long_context.worker(dict(spec, budget_bytes=1))
    assert not skipped["ran"] and skipped["device_gib"] == result["device_gib"]


def a_report():
    row = dict(length=1024, devices=1, remat="none", parameters=1_000_000, device_gib=0.1,
               planned_gib=0.1, ran=True, step_seconds=2.0, tokens_per_second=512.0, loss=3.5,
               losses=[4.5, 3.5], peak_rss_gib=0.8, load_before=2.0, load_after=3.0)
    return dict(machine=dict(memory_available_gib=20.0), started="2026-12-04 22:09:19",
                rows=[dict(row, length=2048, device_gib=0.2), row,
                      dict(row, remat="block", device_gib=0.05, ran=False),
                      dict(row, devices=4, error="timed out")])


def test_plot_reads_a_result_file(tmp_path):
    path = tmp_path / "figure.png"
    bench_long_context.plot(json.loads(json.dumps(a_report())), path)
    assert path.stat().st_size > 1000


def test_table_lists_every_row_by_length():
    lines = bench_long_context.markdown_table(a_report()).splitlines()
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| 1,024 | 1 | none | 0.10 | 0.10 | 0.80 | 2.0 | 512 | 4.500 > 3.500")
    assert "not run" in lines[3] and "error: timed out" in lines[4]
    assert lines[5].startswith("| 2,048 |")


def test_sittings_keep_each_sittings_budget():
    report = dict(a_report(), budget_gib=12.6)
    first = bench_long_context.sittings(report)
    assert first == [dict(started="2026-12-04 22:09:19", budget_gib=12.6,
                          memory_available_gib=20.0)]
    assert bench_long_context.sittings(dict(report, sittings=first * 2)) == first * 2
