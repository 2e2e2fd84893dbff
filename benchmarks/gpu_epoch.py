"""GPU epoch time of w-RA&ER(MM) on CIFAR-shaped data: the per-image data path against the device path, fp16 and bf16.

One script, no network, a few minutes on one H100/H200 with 16 CPU cores:

1. writes `--num_images` random 32x32 RGB images (100 classes) as PNG bytes into a parquet file in a temporary folder
   and loads it memory-mapped through `datasets`' parquet builder, as the Hub's CIFAR-100 is stored;
2. for each precision (fp16, bf16) and data path (`loader`: decode and transform in `--workers` loader processes;
   `device`: decoded once, views made batched on the GPU), trains resnet18 with the CIFAR stem, batch 128, SynerMix
   w-RA&ER(MM) (beta 0.1, Manifold MixUp, alpha 1) through `RecipeTrainer` (the paper's SGD recipe) for `--epochs`
   epochs and times each epoch (CUDA-synchronised at both ends); the first epoch starts workers and autotunes cuDNN,
   so the summary uses the last;
3. samples `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200` in the background and
   reports the mean GPU utilisation over each timed epoch, and counts the host-device synchronisations per step of
   the first (untimed) epoch with `torch.cuda.set_sync_debug_mode("warn")`, by code location;
4. writes `gpu_epoch.json` and `gpu_epoch.md` under `--out`.

Expected duration with the defaults (20,000 images, 2 epochs per run, 4 runs): about 2 minutes of GPU time plus
start-up; lower `--num_images` if needed.

Optionally (`--channels_last`) also the device path with the model in channels_last memory format, bf16.

    python -m benchmarks.gpu_epoch --out $OUT                      # on the GPU machine
    python -m benchmarks.gpu_epoch --quick --out /tmp/gpu_epoch    # CPU smoke run: tiny sizes, numbers meaningless
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import TrainTimer  # first: offline environment, import path
from benchmarks.synthetic import write_image_dataset

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

from synermix_hf import RecipeTrainer, RecipeTrainingArguments, prepare_views
from synermix_hf.models import TorchvisionForImageClassification
from synermix_hf.data.transforms import TransformSpec

NUM_CLASSES = 100
UTILISATION_COMMAND = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]


class UtilisationSampler:
    """`nvidia-smi ... -lms 200` in the background; each line is stamped with the time it arrived."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()
        self._process = None

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._process = subprocess.Popen(UTILISATION_COMMAND, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                self.samples.append((time.time(), float(line.strip().split(",")[0])))
            except ValueError:
                continue

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def mean_between(self, start: float, end: float) -> float | None:
        values = [value for stamp, value in self.samples if start <= stamp <= end]
        return sum(values) / len(values) if values else None


class SyncCounter(TrainerCallback):
    """Host-device synchronisations during the first (untimed) epoch: `torch.cuda.set_sync_debug_mode("warn")`
    makes every synchronising CUDA call warn; the warnings are counted per code location."""

    def __init__(self):
        self.where: dict[str, int] = {}
        self.steps = 0
        self._catcher = None
        self._caught: list = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        if state.epoch and state.epoch >= 1 or not torch.cuda.is_available():
            return
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        self._first_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode(0)
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        self.steps = state.global_step - self._first_step
        for caught in self._caught:
            if "synchroniz" in str(caught.message):
                key = f"{Path(caught.filename).name}:{caught.lineno}"
                self.where[key] = self.where.get(key, 0) + 1

    def summary(self) -> dict:
        total = sum(self.where.values())
        top = sorted(self.where.items(), key=lambda item: -item[1])[:4]
        return {"syncs_per_step": total / self.steps if self.steps else None, "sync_locations": dict(top)}


def train_once(data, path: str, precision: str, cli: argparse.Namespace, tmp: Path, sampler: UtilisationSampler,
               channels_last: bool = False) -> dict:  # fmt: skip
    spec = TransformSpec("cifar", 32)
    views = prepare_views(data, None, spec, "image", "label", two_views=True, views_on=path,
                          cache_dir=str(tmp / "decoded"))  # fmt: skip
    torch.manual_seed(0)
    model = TorchvisionForImageClassification.from_architecture(
        "resnet18", {i: str(i) for i in range(NUM_CLASSES)}, image_size=32
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    on_cpu = not torch.cuda.is_available()
    args = RecipeTrainingArguments(
        output_dir=str(tmp / f"run-{path}-{precision}"), report_to=[], save_strategy="no", eval_strategy="no",
        do_eval=False, disable_tqdm=True, logging_strategy="epoch", num_train_epochs=cli.epochs,
        per_device_train_batch_size=cli.batch_size, beta=0.1, inter_mixup="manifold_mixup", alpha=1.0,
        fp16=precision == "fp16", bf16=precision == "bf16", use_cpu=on_cpu, seed=0,
        dataloader_num_workers=cli.workers if path == "loader" else cli.device_workers,
        dataloader_persistent_workers=(cli.workers if path == "loader" else cli.device_workers) > 0,
        dataloader_pin_memory=not on_cpu,
    )  # fmt: skip
    timer, syncs = TrainTimer(), SyncCounter()
    trainer = RecipeTrainer(model=model, args=args, train_dataset=views.train, callbacks=[syncs, timer])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    start, end = timer.epochs[-1]
    return {
        "views_on": path + (" + channels_last" if channels_last else ""),
        "precision": precision,
        "epoch_seconds": [round(b - a, 3) for a, b in timer.epochs],
        "timed_epoch_s": end - start,
        "images_per_s": len(data) / (end - start),
        "gpu_busy_percent": sampler.mean_between(start, end),
        "losses": losses,
        "finite": all(np.isfinite(losses)),
        "description": views.description,
        **syncs.summary(),
    }


def markdown(summary: dict) -> str:
    lines = [
        "## GPU epoch: per-image vs device data path",
        "",
        f"{summary['device']}; {summary['cpu_count']} CPU cores; torch {summary['torch']}; "
        f"{summary['num_images']} CIFAR-shaped PNG images, resnet18 (CIFAR stem), batch {summary['batch_size']}, "
        f"w-RA&ER(MM) (beta 0.1, Manifold MixUp), RecipeTrainer; per-image path with {summary['workers']} loader "
        f"workers, device path with {summary['device_workers']}; {summary['epochs']} epochs per run, the last timed; "
        f"built dataset in {summary['write_s']:.1f} s; total {summary['total_s']:.0f} s.",
        "",
        "| precision | views on | timed epoch (s) | images/s | GPU busy (%, nvidia-smi) | all epochs (s) | "
        "host-device syncs per step (first epoch) | losses finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        busy = f"{r['gpu_busy_percent']:.0f}" if r["gpu_busy_percent"] is not None else "not sampled"
        syncs = "not counted" if r["syncs_per_step"] is None else (
            f"{r['syncs_per_step']:.2f} ({', '.join(f'{k}: {v}' for k, v in r['sync_locations'].items()) or '-'})")
        lines.append(f"| {r['precision']} | {r['views_on']} | {r['timed_epoch_s']:.2f} | {r['images_per_s']:.0f} | "
                     f"{busy} | {r['epoch_seconds']} | {syncs} | {r['finite']} |")  # fmt: skip
    lines.append("")
    for precision, ratio in summary["speedups"].items():
        lines.append(f"- {precision}: device path epoch {ratio:.2f}x faster than per-image (target >= 2x)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_epoch.json and gpu_epoch.md")
    parser.add_argument("--num_images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                        help="loader workers of the per-image path")  # fmt: skip
    parser.add_argument("--device_workers", type=int, default=0,
                        help="loader workers of the device path (default 0: its loader only gathers rows, as the "
                        "script's default on that path)")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--channels_last", action="store_true", help="also the device path in channels_last, bf16")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: 128 images, batch 16, fp32 (bf16 is emulated on CPUs without it), 1 epoch")
    cli = parser.parse_args(argv)
    if cli.quick:
        cli.num_images, cli.batch_size, cli.epochs, cli.workers, cli.device_workers = 128, 16, 1, 0, 0
        cli.precisions = ["fp32"]
    elif not torch.cuda.is_available():
        print("No CUDA device: use --quick for a CPU smoke run; nothing measured.")
        return 0
    hf_logging.set_verbosity_error()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = []
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_epoch_") as folder:
        tmp = Path(folder)
        data = write_image_dataset(tmp, cli.num_images, size=32, num_classes=NUM_CLASSES, image_format="png")
        write_s = time.time() - started
        with UtilisationSampler() as sampler:
            for precision in cli.precisions:
                for path in ("loader", "device"):
                    runs.append(train_once(data, path, precision, cli, tmp, sampler))
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"}), flush=True)
            if cli.channels_last:
                runs.append(train_once(data, "device", "bf16", cli, tmp, sampler, channels_last=True))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"}), flush=True)
    speedups = {}
    for precision in cli.precisions:
        by_path = {r["views_on"]: r for r in runs if r["precision"] == precision}
        speedups[precision] = by_path["loader"]["timed_epoch_s"] / by_path["device"]["timed_epoch_s"]
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke run)",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "num_images": cli.num_images,
        "batch_size": cli.batch_size, "epochs": cli.epochs, "workers": cli.workers,
        "device_workers": cli.device_workers, "write_s": write_s, "total_s": time.time() - started,
        "nvidia_smi": sampler.available, "runs": runs, "speedups": speedups,
    }  # fmt: skip
    (out / "gpu_epoch.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (out / "gpu_epoch.md").write_text(text)
    print(text)
    return 0 if all(r["finite"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
