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
    skipped = bench_long_context.worker(dict(spec, budget_bytes=1))
    assert not skipped["ran"] and skipped["device_gib"] == result["device_gib"]


def test_plot_reads_a_result_file(tmp_path):
    row = dict(length=1024, devices=1, remat="none", device_gib=0.1, ran=True,
               tokens_per_second=100.0)
    report = dict(machine=dict(memory_available_gib=20.0),
                  rows=[row, dict(row, length=2048, device_gib=0.2),
                        dict(row, remat="block", device_gib=0.05, ran=False),
                        dict(row, devices=4, error="timed out")])
    path = tmp_path / "figure.png"
    bench_long_context.plot(json.loads(json.dumps(report)), path)
    assert path.stat().st_size > 1000
