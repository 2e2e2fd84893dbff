"""Smoke test of benchmarks/: every benchmark runs end to end on minimal sizes. Nothing here checks a timing."""

from __future__ import annotations

import torch

from benchmarks import bench_memory, run_all


def test_benchmarks_quick_run(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "results.md"
    run_all.main(["--quick", "--threads", "1", "--only", "intra,step,data,device,gpu", "--out", str(out)])
    assert torch.get_num_threads() == threads
    text = out.read_text()
    headings = ("## 1. intra_class_mixup", "## 2. Training step time", "## 3. Data pipeline", "## 5. Device data path",
                "## GPU check")
    for heading in headings:
        assert heading in text
    assert "plain Trainer" in text and "hand: beta=0.1, MixUp" in text


def test_memory_child_reports_peak():
    result = bench_memory.child("SynerMix beta=0.1, MixUp", batch_size=4, threads=None)
    assert result["rss_peak_mib"] > 0 and result["rss_before_mib"] > 0
