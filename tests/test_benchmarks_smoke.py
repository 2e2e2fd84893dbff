"""Smoke test of benchmarks/: every benchmark runs end to end on minimal sizes. Nothing here checks a timing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from benchmarks import bench_memory, gpu_epoch, run_all


def test_benchmarks_quick_run(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "results.md"
    run_all.main(["--quick", "--threads", "1", "--only", "intra,step,data,device,gpu,crop", "--out", str(out)])
    assert torch.get_num_threads() == threads
    text = out.read_text()
    headings = ("## 1. intra_class_mixup", "## 2. Training step time", "## 3. Data pipeline", "## 5. Device data path",
                "## GPU check", "## 7. The imagenet family (224 px)")
    for heading in headings:
        assert heading in text
    assert "plain Trainer" in text and "hand: beta=0.1, MixUp" in text


def test_memory_child_reports_peak():
    result = bench_memory.child("SynerMix beta=0.1, MixUp", batch_size=4, threads=None)
    assert result["rss_peak_mib"] > 0 and result["rss_before_mib"] > 0


def test_gpu_epoch_224_runs_on_cpu(tmp_path, monkeypatch):
    # Numbers meaningless on the CPU: this only checks that the 224 px mode (Food-101-shaped JPEGs, the per-image and
    # the device path, ResNet-18 with the ImageNet stem in channels_last) runs end to end and writes its report. The
    # 224 px views reach the model, which pools them 7x7 before its stem: ResNet-18 at 224 px is most of this test's
    # time otherwise, and it is the data paths that are checked here.
    build = gpu_epoch.TorchvisionForImageClassification.from_architecture

    def pooled_resnet(*args, **kwargs):
        model = build(*args, **kwargs)
        model.network.conv1 = torch.nn.Sequential(torch.nn.AvgPool2d(7), model.network.conv1)
        return model

    monkeypatch.setattr(gpu_epoch, "TorchvisionForImageClassification",
                        SimpleNamespace(from_architecture=pooled_resnet))
    assert gpu_epoch.main(["--quick", "--image_size", "224", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu_epoch.json").read_text())
    assert [run["views_on"] for run in summary["runs"]] == ["loader + channels_last", "device + channels_last"]
    assert all(run["finite"] and run["losses"] for run in summary["runs"])
    assert "training set (12 images): decoded once at full resolution" in summary["runs"][1]["description"]
    assert "| 224 | fp32 | device + channels_last |" in (tmp_path / "gpu_epoch.md").read_text()
