"""A run killed with SIGKILL after a checkpoint resumes and ends exactly where an uninterrupted run ends."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent / "distributed" / "train_resumable.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    uninterrupted = run(str(tmp_path / "a"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    killed = run(str(tmp_path / "b"), "--kill_after_step", "8")  # 6 steps an epoch: step 8 is mid-epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "final_state.pt").exists()
    resumed = run(str(tmp_path / "b"), "--resume_from_checkpoint", str(tmp_path / "b" / "checkpoint-8"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = torch.load(tmp_path / "a" / "final_state.pt")
    actual = torch.load(tmp_path / "b" / "final_state.pt")
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    metrics_a = json.loads((tmp_path / "a" / "final_metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b" / "final_metrics.json").read_text())
    assert metrics_b["eval_loss"] == metrics_a["eval_loss"]
    # The comparison has teeth: training went on after the checkpoint it resumed from.
    at_checkpoint = load_file(tmp_path / "b" / "checkpoint-8" / "model.safetensors")
    assert any(not torch.equal(at_checkpoint[name], expected[name]) for name in at_checkpoint)
