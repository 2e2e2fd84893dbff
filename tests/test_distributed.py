"""Data-parallel SynerMix on 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from synermix_hf import ClassBalancedBatchSampler, SeededAugmentation, SynerMixCollator, dataset_labels, step_generators
from synermix_hf.checkpoints import checkpoint_problem
from synermix_hf.sampler import PositionedBatchSampler

from test_trainer import device_view_set, hand_intra_loss, hand_mixed_ce, resnet, two_view_sets

HERE = Path(__file__).resolve().parent


# The launchers of the interpreter that runs the tests (the one the package is installed in).
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],
}


def run_two_processes(launcher: list[str], script: Path, *script_args: str, timeout: int = 300) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, str(script), *script_args], capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("data_path", ["per_image", "device"])
def test_one_ddp_step_equals_the_average_of_the_two_process_gradients(tmp_path, monkeypatch, data_path):
    # The device path decodes the images once into HF_DATASETS_CACHE: both processes ask, the first builds it.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    output = run_two_processes(
        LAUNCHERS["torchrun"], HERE / "ddp_one_step.py", str(tmp_path), "mixup", data_path
    )
    assert "process 0 of 2 done" in output and "process 1 of 2 done" in output
    # Both processes wrote into one staging folder, which process 0 renamed once both were done: the checkpoint is
    # complete, with each process's RNG state, and nothing is left behind.
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-1"]
    assert checkpoint_problem(str(run_dir / "checkpoint-1")) is None
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(run_dir / "checkpoint-1"))

    # Each process got a whole balanced batch of the common sequence: batch 0 to process 0, batch 1 to process 1,
    # augmented exactly as one process would augment them.
    train = two_view_sets()[0] if data_path == "per_image" else device_view_set()
    if data_path == "device":
        assert len(os.listdir(tmp_path / "hf_cache" / "synermix_decoded")) == 1  # one cache file, no leftovers
    sampler = ClassBalancedBatchSampler(dataset_labels(train), batch_size=8, seed=3)
    expected_batches = list(PositionedBatchSampler(sampler))[:2]
    seeded = SeededAugmentation(train, seed=3)
    batches = [torch.load(tmp_path / f"batch_rank{rank}.pt") for rank in (0, 1)]
    for indices, batch in zip(expected_batches, batches, strict=True):
        expected = SynerMixCollator()(seeded.__getitems__(indices))
        if data_path == "device":
            expected = expected["views"](expected)  # what the trainer does on the device
        for key in ("pixel_values", "original_pixel_values", "labels"):
            torch.testing.assert_close(batch[key], expected[key])
        counts = torch.bincount(batch["labels"])
        assert counts[counts > 0].min() >= 2

    # One process computes both gradients with each process's draws, averages them and takes the SGD step.
    model = resnet()
    model.load_state_dict(torch.load(tmp_path / "initial.pt"))
    model.train()
    gradients = []
    for rank, batch in enumerate(batches):
        # Each process runs its step's two forward passes on the buffers every process starts the step with (process
        # 0's), and its running statistics then follow its own two batches: DDP's broadcast before the second pass
        # would overwrite them in between (and on torch < 2.12 break the backward pass).
        model.load_state_dict(torch.load(tmp_path / "initial.pt"))
        generator, rng = step_generators(seed=3, step=0, micro_step=0, process_index=rank)
        labels, x = batch["labels"], batch["pixel_values"]
        intra = hand_intra_loss(model, batch["original_pixel_values"], labels, generator)
        lam = rng.beta(1.0, 1.0)
        permutation = torch.randperm(len(labels), generator=generator)
        inter = hand_mixed_ce(model(lam * x + (1 - lam) * x[permutation]), labels, permutation, lam)
        gradients.append(torch.autograd.grad(0.3 * intra + 0.7 * inter, list(model.parameters())))
        buffers = torch.load(tmp_path / f"buffers_rank{rank}.pt")
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(buffers[name], buffer, rtol=1e-5, atol=1e-6, msg=f"process {rank}: {name}")
    final = torch.load(tmp_path / "final.pt")
    names = [name for name, _ in model.named_parameters()]
    for name, parameter, g0, g1 in zip(names, model.parameters(), *gradients, strict=True):
        expected = parameter.detach() - 0.1 * (g0 + g1) / 2
        torch.testing.assert_close(final[name], expected, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "launcher, inter_mixup",
    [("torchrun", "Mixup"), ("torchrun", "Manifold_Mixup"), ("accelerate", "cutmix"), ("accelerate", "none")],
)
def test_the_script_trains_synermix_on_two_processes(tmp_path, hub_copies, launcher, inter_mixup):
    out = tmp_path / "out"
    run_two_processes(
        LAUNCHERS[launcher], HERE.parent / "run_image_classification.py",
        "-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--use_cpu", "--ddp_backend", "gloo",
        "-beta", "0.1", "-itrm", inter_mixup, "-bs", "4", "--max_steps", "2", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true",
    )  # fmt: skip
    log = (out / "training_log.txt").read_text()
    assert "processes                   : 2" in log and "total train batch size      : 8" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all("loss_intra" in entry and "loss_inter" in entry for entry in logged)
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
