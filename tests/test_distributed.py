"""Data-parallel SynerMix on 2 CPU processes (gloo)."""

import contextlib
import json
import re
import os
import subprocess
import signal
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synermix_hf import ClassBalancedBatchSampler, SeededAugmentation, SynerMixCollator, dataset_labels, step_generators
from synermix_hf.resume import checkpoint_problem
from synermix_hf.data.device_datasets import views_of
from synermix_hf.data.sampler import PositionedBatchSampler

from test_trainer import (device_view_set, hand_intra_loss_of_features, hand_mixed_ce, resnet, resnet_features,
                          two_view_sets)

HERE = Path(__file__).resolve().parent


# The launchers of the interpreter that runs the tests (the one the package is installed in).
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],
}


def launch_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_two_processes(launcher: list[str], script: Path, *script_args: str, timeout: int = 300) -> str:
    result = subprocess.run(
        [*launcher, str(script), *script_args], capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
        env=launch_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def one_ddp_step(tmp_path_factory):
    """tests/ddp_one_step.py on two processes (the device path, MixUp; the loader path: on two nodes,
    tests/test_multinode.py): its folder and output."""
    out = tmp_path_factory.mktemp("ddp_step")
    with pytest.MonkeyPatch.context() as patch:
        # The device path decodes the images once into HF_DATASETS_CACHE: both processes ask, the first builds it.
        patch.setenv("HF_DATASETS_CACHE", str(out / "hf_cache"))
        output = run_two_processes(LAUNCHERS["torchrun"], HERE / "ddp_one_step.py", str(out), "mixup", "device",
                                   "use_cpu", "accumulate")
    return out, output


def test_one_ddp_step_equals_the_average_of_the_two_process_gradients(one_ddp_step, monkeypatch):
    tmp_path, output = one_ddp_step
    views_on = "device"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # the store it built
    assert "process 0 of 2 done" in output and "process 1 of 2 done" in output
    # Both processes wrote into one staging folder, which process 0 renamed once both were done: the checkpoint is
    # complete, with each process's RNG state, and nothing is left behind.
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-1"]
    assert checkpoint_problem(str(run_dir / "checkpoint-1")) is None
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(run_dir / "checkpoint-1"))

    if views_on == "device":
        assert len(os.listdir(tmp_path / "hf_cache" / "synermix_decoded")) == 1  # one store, no leftovers
    check_one_ddp_step(tmp_path, views_on)


def check_one_ddp_step(out: Path, views_on: str) -> None:
    """What tests/ddp_one_step.py wrote under `out` is one step on the balanced batch one process would train on,
    split over the two processes, with the intra-class term over the whole batch and averaged gradients."""
    # The step's batch is the first balanced batch of 16 (8 per process) that one process would draw, its first half
    # on process 0 and its second half on process 1, each example augmented as one process would augment it.
    train = two_view_sets()[0] if views_on == "loader" else device_view_set()
    batch_positions = list(PositionedBatchSampler(ClassBalancedBatchSampler(dataset_labels(train), 16, seed=3)))[0]
    shards = np.array_split(np.arange(len(batch_positions)), 2)
    seeded = SeededAugmentation(train, seed=3)
    batches = [torch.load(out / f"batch_rank{rank}.pt") for rank in (0, 1)]
    for rows, batch in zip(shards, batches, strict=True):
        expected = SynerMixCollator()(seeded.__getitems__([batch_positions[row] for row in rows]))
        if views_on == "device":
            expected = views_of(train)(expected)  # what the trainer does on the device
        for key in ("pixel_values", "original_pixel_values", "labels"):
            torch.testing.assert_close(batch[key], expected[key])
    labels = torch.cat([batch["labels"] for batch in batches])
    counts = torch.bincount(labels)
    assert counts[counts > 0].min() >= 2  # balanced as a whole, not necessarily each shard

    # One process computes the step by hand: SynerMix-Intra over the whole batch (each shard's features from its own
    # forward pass, so with its own batch statistics; the weights drawn with process 0's seed in batch order, as one
    # process draws them first), each process's inter-class term with its own draws, weighted by its share of the
    # step's examples, and DDP's average: the mean over the step's examples.
    model = resnet()
    model.load_state_dict(torch.load(out / "initial.pt"))
    model.train()
    intra_generator, _ = step_generators(seed=3, step=0, micro_step=0, process_index=0)
    features = torch.cat([resnet_features(model, batch["original_pixel_values"]) for batch in batches])
    intra = hand_intra_loss_of_features(model, features, labels, torch.rand(len(labels), generator=intra_generator))
    inter = []
    for rank, batch in enumerate(batches):
        generator, rng = shard_generators(rank, len(labels))
        shard_labels, x = batch["labels"], batch["pixel_values"]
        lam = rng.beta(1.0, 1.0)
        permutation = torch.randperm(len(shard_labels), generator=generator)
        mixed_ce = hand_mixed_ce(model(lam * x + (1 - lam) * x[permutation]), shard_labels, permutation, lam)
        inter.append(mixed_ce * len(shard_labels) / len(labels))
    gradient = torch.autograd.grad(0.3 * intra + 0.7 * (inter[0] + inter[1]), list(model.parameters()))
    final = torch.load(out / "final.pt")
    names = [name for name, _ in model.named_parameters()]
    for name, parameter, g in zip(names, model.parameters(), gradient, strict=True):
        expected = parameter.detach() - 0.1 * g
        torch.testing.assert_close(final[name], expected, rtol=1e-4, atol=1e-5, msg=name)

    # Each process runs its step's two forward passes on the buffers every process starts the step with (process 0's),
    # and its running statistics then follow its own two batches: DDP's broadcast before the second pass would
    # overwrite them in between (and on torch < 2.12 break the backward pass).
    for rank, batch in enumerate(batches):
        model.load_state_dict(torch.load(out / "initial.pt"))
        generator, rng = shard_generators(rank, len(labels))
        lam = rng.beta(1.0, 1.0)
        permutation = torch.randperm(len(batch["labels"]), generator=generator)
        with torch.no_grad():
            resnet_features(model, batch["original_pixel_values"])
            x = batch["pixel_values"]
            model(lam * x + (1 - lam) * x[permutation])
        buffers = torch.load(out / f"buffers_rank{rank}.pt")
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(buffers[name], buffer, rtol=1e-5, atol=1e-6, msg=f"process {rank}: {name}")


def shard_generators(rank: int, step_rows: int):
    """The draws of a process's inter-class term in step 0: process 0's generator first drew the step's intra-class
    weights, as one process's does."""
    generator, rng = step_generators(seed=3, step=0, micro_step=0, process_index=rank)
    if rank == 0:
        torch.rand(step_rows, generator=generator)
    return generator, rng


def test_two_processes_of_two_micro_batches_give_the_update_of_the_steps_one_balanced_batch(one_ddp_step):
    # tests/test_accumulation.py's setting on 2 processes x 2 micro-batches of 4: each update is the reference's
    # update on the balanced batch of 16 that one process without accumulation trains on.
    from test_accumulation import examples, hand_updates, vit

    out, _ = one_ddp_step
    model = vit()
    model.load_state_dict(torch.load(out / "accumulated.pt"))
    trained = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(trained, hand_updates(examples(40), steps=2, batch=16, beta=0.5), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(
    "launcher, inter_mixup, batch, cpu, data",
    [
        ("accelerate", "cutmix", ["-bs", "8"], [], ["-ds", "cifar100", "--image_size", "8"]),
        # the RandomResizedCrop recipe on the device path: one process builds the store, the other reuses it
        ("torchrun", "none", ["--per_device_train_batch_size", "4"], ["--use_cpu", "--ddp_backend", "gloo"],
         ["-ds", "food101", "--image_size", "16", "--views_on", "device"]),
    ],
)  # MixUp: one DDP step above; Manifold_Mixup: on two nodes, tests/test_multinode.py
def test_the_script_trains_synermix_on_two_processes(tmp_path, hub_copies, launcher, inter_mixup, batch, cpu, data):
    # -bs is the paper's batch of one step, split over the processes; --per_device_train_batch_size is per process.
    # Without --use_cpu the two CPU processes still train one model (the arguments set it).
    out = tmp_path / "out"
    run_two_processes(
        LAUNCHERS[launcher], HERE.parent / "run_image_classification.py",
        *data, "--dataset_path", str(hub_copies[data[1]]), *cpu, *batch,
        "-beta", "0.1", "-itrm", inter_mixup, "--max_steps", "2", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true",
    )  # fmt: skip
    log = (out / "training_log.txt").read_text()
    assert "processes                   : 2" in log and "per_device_train_batch_size : 4" in log
    assert re.search(r"\n  views +: device: ", log), log  # auto takes it for both recipes
    assert "total train batch size      : 8 (2 processes x 4 per process x 1 accumulation step" in log
    assert "| total train batch size | 8 (2 processes x 4 per process" in (out / "README.md").read_text()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all("loss_intra" in entry and "loss_inter" in entry for entry in logged)
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0


def test_what_two_cpu_processes_cannot_do_is_refused_before_training(one_ddp_step):
    # --sync_bn needs GPUs: on two CPU processes the command line refuses it, in its flags, before it creates anything.
    # (A total batch that does not split over the processes is refused by the check tests/test_script_cli.py tests
    # over accumulation steps, with the processes counted in: the two-process runs above.)
    out, output = one_ddp_step
    error = ("error: --sync_bn needs GPUs: torch's SyncBatchNorm runs on CUDA (or XPU) devices only, and these 2 "
             "processes train on the CPU (gloo). Leave out --sync_bn")
    for rank in (0, 1):
        assert f"process {rank}: {error}" in output, output[-3000:]
    assert not (out / "sync_bn").exists()

def _launched_ranks(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (its children), from their environment."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") if parent == launcher_pid else []
        except OSError:
            continue
        ranks.update({int(item[5:]): int(entry) for item in environment if item.startswith(b"RANK=")})
    return ranks


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_frozen_process_stops_the_others_after_ddp_timeout_with_one_line_naming_it(tmp_path, hub_copies):
    # Rank 1 frozen (SIGSTOP) after the first step: rank 0's next collective waits --ddp_timeout (the job's group
    # and the preemption exchange's, on the CPU too), then it stops with one line naming process 1 (before: it waited
    # torch's default 30 minutes). The deadline is generous: what is tested is that the flag takes effect at all.
    timeout_s, margin_s = 10, 60
    command = [*LAUNCHERS["torchrun"], str(HERE.parent / "run_image_classification.py"),
               "-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--per_device_train_batch_size", "4",
               "-beta", "0.1", "--max_steps", "1000", "--dataloader_num_workers", "0", "--save_strategy", "no",
               "--eval_strategy", "steps", "--eval_steps", "3", "--logging_steps", "1", "--disable_tqdm", "true",
               "--output_dir", str(tmp_path / "out"), "--ddp_timeout", str(timeout_s)]  # fmt: skip
    environment = {**launch_env(), "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent,
                                env=environment, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    reader.start()
    ranks: dict[int, int] = {}
    try:
        started = time.monotonic()
        while "'loss'" not in "".join(lines) and launcher.poll() is None and time.monotonic() - started < 240:
            time.sleep(0.2)
        ranks = _launched_ranks(launcher.pid)
        assert sorted(ranks) == [0, 1], "".join(lines)[-3000:]
        os.kill(ranks[1], signal.SIGSTOP)
        frozen = time.monotonic()
        while _running(ranks[0]) and time.monotonic() - frozen < timeout_s + margin_s:
            time.sleep(0.2)
        assert not _running(ranks[0]), f"process 0 still waits {timeout_s + margin_s} s after process 1 froze"
    finally:
        for pid in ranks.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too; the launcher then reports
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    stopped = [line for line in output.splitlines() if "stopped answering" in line]
    assert len(stopped) == 1, output[-3000:]  # one line, from process 0, naming process 1 and the flag
    assert stopped[0].startswith("error: process 0: process 1 of 2 stopped answering"), stopped
    assert f"--ddp_timeout ({timeout_s} s)" in stopped[0], stopped
    assert "Traceback" not in output.split("stopped answering")[0].rsplit("'loss'", 1)[-1]  # no traceback of rank 0's
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: 1 ", output), output[-3000:]
