"""GPU epoch time of w-RA&ER(MM): the per-image data path against the device path, at 32 px (CIFAR-shaped data) and
at 224 px (Food-101-shaped data, the `imagenet` recipe).

One script, no network, a few minutes on one H100/H200 with 16 CPU cores:

1. writes `--num_images` random images as a parquet file in a temporary folder and loads it memory-mapped through
   `datasets`' parquet builder, as the Hub stores them: at 32 px (`--image_size 32`, default) 32x32 PNGs with 100
   classes, as CIFAR-100; at 224 px (`--image_size 224`) JPEGs (quality 90) of 512x384, 384x512 and 512x512 in turn
   with 101 classes (each with its own mean colour, so that the loss falls), as Food-101;
2. for each precision and data path (`loader`: decode and transform in `--workers` loader processes; `device`: at
   32 px SxS images decoded once and both views made batched on the GPU (`BatchViews`); at 224 px the training images
   decoded once at full resolution into a store with their original views made once beside them, each crop cut in
   the loader workers by the recipe's own torchvision steps (RandomResizedCrop + flip) and `ToTensor` + `Normalize`
   batched on the GPU (`NormalizedViews`); each store built with one thread per core and timed), trains resnet18
   (the CIFAR stem at 32 px,
   the ImageNet stem at 224 px), batch 128, SynerMix w-RA&ER(MM) (beta 0.1, Manifold MixUp, alpha 1) through
   `SynerMixTrainer` (the paper's SGD recipe) for `--epochs` epochs and times each epoch (CUDA-synchronised at both
   ends); the first epoch starts workers and autotunes cuDNN, so the summary uses the epochs after it;
3. samples `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200` in the background and
   reports the mean GPU utilisation over the timed epochs, and counts the host-device synchronisations per step of
   the first (untimed) epoch with `torch.cuda.set_sync_debug_mode("warn")`, by code location;
4. writes `gpu_epoch.json` and `gpu_epoch.md` under `--out`.

At 224 px every run is bf16 with the model in channels_last (`--precisions` applies to 32 px).

Expected duration: 32 px with the defaults (20,000 images, 2 epochs per run, 4 runs) about 2 minutes of GPU time plus
start-up; `--all` (32 px: fp16 and bf16 per path and the device path in channels_last; 224 px: 4,000 images, 3 epochs,
per-image and device path) not yet measured (writing the 224 px JPEGs takes about 25 s per 1,000 images: 600 took
15.4 s on an AVX2 AMD EPYC in bench_crop_path).

    python -m benchmarks.gpu_epoch --all --out $OUT                           # on the GPU machine: everything
    python -m benchmarks.gpu_epoch --image_size 224 --out $OUT                # 224 px only
    python -m benchmarks.gpu_epoch --quick --all --out /tmp/gpu_epoch         # CPU smoke run, numbers meaningless
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
from benchmarks.synthetic import FOOD101_SHAPES, write_image_dataset

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

from synermix_hf import RecipeTrainingArguments, SynerMixTrainer, prepare_views
from synermix_hf.models import TorchvisionForImageClassification
from synermix_hf.data.transforms import TransformSpec

NUM_CLASSES = {32: 100, 224: 101}  # CIFAR-100, Food-101
NUM_IMAGES = {32: 20_000, 224: 4_000}
EPOCHS = {32: 2, 224: 3}
CLASS_SIGNAL_224 = 0.12  # each class's mean colour in the 224 px images (benchmarks.synthetic), so the loss falls
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


def device_workers(cli: argparse.Namespace, image_size: int) -> int:
    """The device path's loader workers: `--device_workers`, else what `synermix_hf.cli.train` chooses on a GPU: 0 at
    32 px (the loader only gathers stored rows); at 224 px every core but the main process's, at most 16 (the loader
    cuts each crop with Pillow's resampling, the largest part of a step's data work)."""
    if cli.device_workers is not None:
        return cli.device_workers
    if image_size == 32:
        return 0
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def write_data(tmp: Path, image_size: int, num_images: int):
    if image_size == 32:
        return write_image_dataset(tmp, num_images, size=32, num_classes=NUM_CLASSES[32], image_format="png")
    return write_image_dataset(tmp, num_images, size=224, num_classes=NUM_CLASSES[224], image_format="jpeg",
                               shapes=FOOD101_SHAPES, class_signal=CLASS_SIGNAL_224)


def train_once(data, image_size: int, path: str, precision: str, cli: argparse.Namespace, tmp: Path,
               sampler: UtilisationSampler, channels_last: bool = False) -> dict:  # fmt: skip
    spec = TransformSpec("cifar", 32) if image_size == 32 else TransformSpec("imagenet", image_size)
    start = time.time()
    views = prepare_views(data, None, spec, "image", "label", two_views=True, cache_dir=str(tmp / "decoded"),
                          views_on=path)
    prepare_s = time.time() - start  # device path: the cold build of the decoded images (the first run at a size)
    torch.manual_seed(0)
    num_classes = NUM_CLASSES[image_size]
    model = TorchvisionForImageClassification.from_architecture(
        "resnet18", {i: str(i) for i in range(num_classes)}, image_size=image_size, cifar_stem=image_size == 32
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    on_cpu = not torch.cuda.is_available()
    workers = cli.workers if path == "loader" else device_workers(cli, image_size)
    args = RecipeTrainingArguments(
        output_dir=str(tmp / f"run-{image_size}-{path}-{precision}"), report_to=[], save_strategy="no",
        eval_strategy="no", do_eval=False, disable_tqdm=True, logging_strategy="epoch",
        num_train_epochs=cli.epochs[image_size], per_device_train_batch_size=cli.batch_size[image_size], beta=0.1,
        inter_mixup="manifold_mixup", alpha=1.0, fp16=precision == "fp16", bf16=precision == "bf16", use_cpu=on_cpu,
        seed=0, dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=not on_cpu,
    )  # fmt: skip
    timer, syncs = TrainTimer(), SyncCounter()
    trainer = SynerMixTrainer(model=model, args=args, train_dataset=views.train, callbacks=[syncs, timer])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    timed = timer.epochs[1:] or timer.epochs  # the first epoch starts workers and autotunes cuDNN
    start, end = timed[0][0], timed[-1][1]
    timed_s = sum(b - a for a, b in timed)
    return {
        "image_size": image_size,
        "views_on": path + (" + channels_last" if channels_last else ""),
        "precision": precision,
        "workers": workers,
        "prepare_s": prepare_s,
        "epoch_seconds": [round(b - a, 3) for a, b in timer.epochs],
        "timed_epochs": len(timed),
        "timed_epoch_s": timed_s / len(timed),
        "images_per_s": len(data) * len(timed) / timed_s,
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
        f"{summary['device']}; {summary['cpu_count']} CPU cores; torch {summary['torch']}; resnet18, w-RA&ER(MM) "
        f"(beta 0.1, Manifold MixUp), SynerMixTrainer with the paper recipe; per-image path with {summary['workers']} "
        f"loader workers, device path with "
        f"{', '.join(f'{n} at {k}' for k, n in summary['device_workers'].items())} (loader workers); total "
        f"{summary['total_s']:.0f} s.",
        "",
    ]
    for size, data in summary["data"].items():
        what = ("CIFAR-shaped PNG images (32x32, 100 classes), CIFAR stem, cifar recipe" if int(size) == 32 else
                "Food-101-shaped JPEG images (512x384, 384x512, 512x512; 101 classes), ImageNet stem, imagenet recipe "
                "at 224 px (device path: full-resolution store, crops cut in the loader workers by the recipe's "
                "torchvision steps, ToTensor + Normalize batched on the GPU)")
        lines.append(f"- {size} px: {data['num_images']} {what}; batch {summary['batch_size'][size]}; "
                     f"{data['epochs']} epoch(s) per run, those after the first timed (all of one); dataset written "
                     f"in {data['write_s']:.1f} s.")
    lines += [
        "",
        "| px | precision | views on | prepare (s) | timed epoch (s) | images/s | GPU busy (%, nvidia-smi) | "
        "all epochs (s) | host-device syncs per step (first epoch) | losses finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        busy = f"{r['gpu_busy_percent']:.0f}" if r["gpu_busy_percent"] is not None else "not sampled"
        syncs = "not counted" if r["syncs_per_step"] is None else (
            f"{r['syncs_per_step']:.2f} ({', '.join(f'{k}: {v}' for k, v in r['sync_locations'].items()) or '-'})")
        lines.append(f"| {r['image_size']} | {r['precision']} | {r['views_on']} | {r['prepare_s']:.1f} | "
                     f"{r['timed_epoch_s']:.2f} | {r['images_per_s']:.0f} | {busy} | {r['epoch_seconds']} | {syncs} | "
                     f"{r['finite']} |")  # fmt: skip
    lines.append("")
    lines.append("`prepare (s)`: `prepare_views`; on the device path's first run at a size, the cold build of the "
                 "decoded images (one thread per core).")
    lines.append("")
    for key, ratio in summary["speedups"].items():
        lines.append(f"- {key}: device path epoch {ratio:.2f}x faster than per-image (target >= 2x)")
    return "\n".join(lines) + "\n"


def plan(cli: argparse.Namespace) -> list[tuple[int, str, str, bool]]:
    """`(image_size, views_on, precision, channels_last)` of each run, in order."""
    runs = []
    if 32 in cli.sizes:
        runs += [(32, path, precision, False) for precision in cli.precisions for path in ("loader", "device")]
        if cli.channels_last:
            runs.append((32, "device", "bf16" if not cli.quick else "fp32", True))
    if 224 in cli.sizes:
        runs += [(224, path, "bf16" if not cli.quick else "fp32", True) for path in ("loader", "device")]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_epoch.json and gpu_epoch.md")
    parser.add_argument("--image_size", type=int, default=32, choices=[32, 224],
                        help="32: CIFAR-shaped data, cifar recipe (default); 224: Food-101-shaped data, imagenet "
                        "recipe, bf16 and channels_last")  # fmt: skip
    parser.add_argument("--all", action="store_true",
                        help="both sizes: 32 px (every --precisions per path, and the device path in channels_last) "
                        "and 224 px, in one run")  # fmt: skip
    parser.add_argument("--num_images", type=int,
                        help=f"images (default {NUM_IMAGES[32]:,} at 32 px, {NUM_IMAGES[224]:,} at 224 px)")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {EPOCHS[32]} at 32 px, {EPOCHS[224]} "
                        "at 224 px)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1),
                        help="loader workers of the per-image path")  # fmt: skip
    parser.add_argument("--device_workers", type=int, default=None,
                        help="loader workers of the device path (default: what synermix_hf.cli.train chooses on a "
                        "GPU: 0 at 32 px, whose loader only gathers rows; at 224 px every core but one, at most 16, "
                        "whose loader cuts each crop)")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16", "fp32"],
                        help="precisions at 32 px (224 px runs bf16)")
    parser.add_argument("--channels_last", action="store_true",
                        help="also the device path in channels_last, bf16, at 32 px (224 px always is)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: 128 images and batch 16 at 32 px, 12 and 8 at 224 px, fp32 (bf16 is "
                        "emulated on CPUs without it), 1 epoch")
    cli = parser.parse_args(argv)
    cli.sizes = (32, 224) if cli.all else (cli.image_size,)
    if cli.all:
        cli.channels_last = True
    cli.num_images = {size: cli.num_images or NUM_IMAGES[size] for size in (32, 224)}
    cli.epochs = {size: cli.epochs or EPOCHS[size] for size in (32, 224)}
    cli.batch_size = {size: cli.batch_size for size in (32, 224)}
    if cli.quick:
        cli.num_images, cli.epochs, cli.batch_size = {32: 128, 224: 12}, {32: 1, 224: 1}, {32: 16, 224: 8}
        cli.workers, cli.device_workers = 0, 0
        cli.precisions = ["fp32"]
    elif not torch.cuda.is_available():
        print("No CUDA device: use --quick for a CPU smoke run; nothing measured.")
        return 0
    hf_logging.set_verbosity_error()
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs, data_info = [], {}
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_epoch_") as folder:
        tmp = Path(folder)
        with UtilisationSampler() as sampler:
            for size in cli.sizes:
                start = time.time()
                data = write_data(tmp / f"data{size}", size, cli.num_images[size])
                data_info[size] = {"num_images": len(data), "epochs": cli.epochs[size], "write_s": time.time() - start}
                print(json.dumps({"image_size": size, **data_info[size]}), flush=True)
                for image_size, path, precision, channels_last in plan(cli):
                    if image_size != size:
                        continue
                    runs.append(train_once(data, size, path, precision, cli, tmp, sampler, channels_last))
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"}), flush=True)
    speedups = {}
    for size in cli.sizes:
        for precision in {r["precision"] for r in runs if r["image_size"] == size}:
            for layout in ("", " + channels_last"):
                by_path = {r["views_on"]: r for r in runs if r["image_size"] == size and r["precision"] == precision}
                if "loader" + layout not in by_path or "device" + layout not in by_path:
                    continue
                speedups[f"{size} px {precision}{layout}"] = (by_path["loader" + layout]["timed_epoch_s"]
                                                              / by_path["device" + layout]["timed_epoch_s"])
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke run)",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "data": data_info,
        "batch_size": {size: cli.batch_size[size] for size in cli.sizes},
        "workers": cli.workers, "device_workers": {f"{size} px": device_workers(cli, size) for size in cli.sizes},
        "total_s": time.time() - started,
        "nvidia_smi": sampler.available, "runs": runs, "speedups": speedups,
    }  # fmt: skip
    (out / "gpu_epoch.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (out / "gpu_epoch.md").write_text(text)
    print(text)
    return 0 if all(r["finite"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
