"""A script run killed with SIGKILL after a checkpoint resumes and ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synermix_hf.data.sampler import ClassBalancedBatchSampler

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


@pytest.mark.parametrize("views_on", ["device", "loader"])
def test_killed_script_resumes_to_the_same_weights_and_metrics(tmp_path, hub_copies, views_on, script_in_process):
    # 18 training images, batch 4: 4 steps an epoch, so checkpoint-6 is in the middle of epoch 2. The recipe's SGD
    # has momentum (optimizer state), StepLR halves the rate every epoch, and beta > 0 with Manifold MixUp uses the
    # balanced sampler and every kind of draw; the cifar transforms crop, flip and cut out at random.
    common = [
        "-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "16", "-mn", "resnet18",
        "-bs", "4", "-ep", "3", "-lr", "0.05", "-ss", "1", "-ga", "0.5", "-beta", "0.3", "-itrm", "Manifold_Mixup",
        "-seed", "5", "--save_strategy", "steps", "--save_steps", "6", "--save_total_limit", "10",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--views_on", views_on,
    ]  # fmt: skip
    # Partners loaded twice in an epoch are augmented per appearance, and the resume must replay that too.
    labels = [y for y, count in enumerate([6, 6, 6]) for _ in range(count)]  # the copy's training labels
    sampler = ClassBalancedBatchSampler(labels, 4, seed=5)
    epoch_indices = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epoch_indices.append([index for batch in sampler for index in batch])
    assert any(len(indices) > len(set(indices)) for indices in epoch_indices)
    assert script_in_process([*common, "--output_dir", tmp_path / "a"]) == 0

    killed = run(str(ROOT / "tests" / "kill_after_checkpoint.py"), "6", *common,
                 "--output_dir", str(tmp_path / "b"))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "b" / "all_results.json").exists()
    checkpoint = tmp_path / "b" / "checkpoint-6"
    resumed = [*common, "--output_dir", tmp_path / "b", "--resume_from_checkpoint", checkpoint]
    assert script_in_process(resumed) == 0

    log = (tmp_path / "a" / "training_log.txt").read_text()
    assert any(line.split(":")[0].strip() == "views" and f": {views_on}: " in line for line in log.splitlines())

    expected = load_file(tmp_path / "a" / "model.safetensors")
    actual = load_file(tmp_path / "b" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    results_a = json.loads((tmp_path / "a" / "all_results.json").read_text())
    results_b = json.loads((tmp_path / "b" / "all_results.json").read_text())
    for key in ("eval_loss", "eval_accuracy"):
        assert results_b[key] == results_a[key], key
    # The learning rate went through the same per-epoch steps in both runs.
    rates = [
        [e["learning_rate"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"]
         if "learning_rate" in e]
        for d in (tmp_path / "a", tmp_path / "b")
    ]  # fmt: skip
    assert rates[0][-1] == rates[1][-1] == 0.05 * 0.5**2
    # The comparison has teeth: training went on after the checkpoint it resumed from.
    at_checkpoint = load_file(checkpoint / "model.safetensors")
    assert any(not torch.equal(at_checkpoint[name], expected[name]) for name in at_checkpoint)
