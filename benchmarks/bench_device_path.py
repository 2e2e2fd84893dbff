"""Benchmark 5: the device data path against the per-image path, side by side in one run, on this machine's CPU.

Both paths make the same two views of CIFAR-shaped data (the `cifar` recipe at 32 px: RandomCrop(32, pad 4), flip,
Cutout(16), ImageNet mean/std; the original view normalized), drawn per example appearance from
`(seed, epoch, position)`, through `SeededAugmentation` and the balanced sampler exactly as `SynerMixTrainer` loads
them:

* loader (`--views_on loader`): the images are PNG bytes in a `datasets.Image` column (as in the Hub's CIFAR-100), decoded and
  transformed one by one in the loader (`TwoViewTransform`);
* device: the images are decoded once into a uint8 memory map (`stored_images_and_failures(..., square=True)`, cold build timed
  separately) and the loader yields uint8 batches; the views are made batched on the training device, here the
  CPU, and that time is counted.

Parts:

1. data path: images/s of complete two-view batches, 0 and 2 loader workers (target >= 10x);
2. one training epoch of w-RA&ER(MM) (beta 0.1, Manifold MixUp) with a tiny CNN, where data dominates, through
   `SynerMixTrainer.train()` (target >= 2x);
3. (`--default_run`) the built-in default `python run_image_classification.py` on each path: wall time and accuracy
   (target: <= 90 s on this 2-core machine, accuracy >= 95%).

    python -m benchmarks.bench_device_path [--quick] [--default_run]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.common import REPO_ROOT, fmt_ratio, median, one_thread_worker, table, verdict
from benchmarks.synthetic import write_image_dataset
from synermix_hf import (
    ClassBalancedBatchSampler,
    PositionedBatchSampler,
    SeededAugmentation,
    SynerMixCollator,
    SynerMixTrainer,
    SynerMixTrainingArguments,
    prepare_views,
)
from synermix_hf.data.transforms import TransformSpec

DATA_TARGET, EPOCH_TARGET, DEFAULT_RUN_TARGET_S = 10.0, 2.0, 90.0
NUM_CLASSES = 100


def loaders(data: datasets.Dataset, batch_size: int, workers: int, cache_dir: str) -> dict:
    spec = TransformSpec("cifar", 32)
    labels = data["label"]
    named = {}
    for path in ("loader", "device"):
        views = prepare_views(data, None, spec, "image", "label", two_views=True, views_on=path, cache_dir=cache_dir)
        sampler = PositionedBatchSampler(ClassBalancedBatchSampler(labels, batch_size=batch_size, seed=0))
        named[path] = DataLoader(
            SeededAugmentation(views.train, seed=0), batch_sampler=sampler, collate_fn=SynerMixCollator(),
            num_workers=workers, persistent_workers=workers > 0, worker_init_fn=one_thread_worker if workers else None,
        )  # fmt: skip
    return named


def finish(batch: dict, views=None) -> dict:
    """What the trainer does with a batch after moving it to the device (the device path makes its views here, with
    the dataset's `device_views`)."""
    return views(batch) if views is not None and "pixel_values" not in batch else batch


def measure_data(data: datasets.Dataset, batch_size: int, workers: int, rounds: int, cache_dir: str) -> dict:
    named = loaders(data, batch_size, workers, cache_dir)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in named}
    order = list(named)
    shuffler = random.Random(0)
    for round_index in range(rounds + (1 if workers else 0)):
        shuffler.shuffle(order)
        for name in order:
            count, start, start_cpu = 0, time.perf_counter(), time.process_time()
            for batch in named[name]:
                batch = finish(batch, named[name].dataset.device_views)
                count += len(batch["labels"])
                assert batch["pixel_values"].shape[1:] == (3, 32, 32) and "original_pixel_values" in batch
            if workers == 0 or round_index > 0:  # with workers the first epoch starts them
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                rates[name].append((count / wall, count / max(cpu, 1e-9)))
    result = {name: median([r[0] for r in values]) for name, values in rates.items()}
    if workers == 0:  # with workers this process only collects batches: its CPU time says nothing
        result.update({f"{name}_cpu": median([r[1] for r in values]) for name, values in rates.items()})
    return result


class TinyNet(nn.Module):
    """A CNN small enough that the data path, not the model, sets the pace on a CPU."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def measure_epochs(data: datasets.Dataset, batch_size: int, workers: int, rounds: int, cache_dir: str, tmp: str):
    spec = TransformSpec("cifar", 32)
    times: dict[str, list[float]] = {"loader": [], "device": []}
    for _ in range(rounds):
        for path in ("loader", "device"):
            views = prepare_views(data, None, spec, "image", "label", two_views=True, views_on=path,
                                  cache_dir=cache_dir)  # fmt: skip
            args = SynerMixTrainingArguments(
                output_dir=os.path.join(tmp, "epoch"), report_to=[], use_cpu=True, save_strategy="no",
                disable_tqdm=True, logging_strategy="no", per_device_train_batch_size=batch_size, num_train_epochs=1,
                beta=0.1, inter_mixup="manifold_mixup", alpha=1.0, balanced_sampler=True, learning_rate=0.05,
                dataloader_num_workers=workers, dataloader_persistent_workers=False, seed=0,
            )  # fmt: skip
            torch.manual_seed(0)
            trainer = SynerMixTrainer(model=TinyNet(), args=args, train_dataset=views.train)
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train()
            times[path].append((time.perf_counter() - start, time.process_time() - start_cpu))
    result = {name: median([t[0] for t in values]) for name, values in times.items()}
    if workers == 0:
        result.update({f"{name}_cpu": median([t[1] for t in values]) for name, values in times.items()})
    return result


def default_run(path: str, tmp: str) -> dict:
    out = os.path.join(tmp, f"default_{path}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_image_classification.py"), "--views_on", path, "--output_dir", out,
         "--disable_tqdm", "true"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ},
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    metrics = json.loads(Path(out, "all_results.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "accuracy": metrics["eval_accuracy"], "train_s": metrics["train_runtime"]}


def run(quick: bool = False, rounds: int | None = None, with_default_run: bool = False, num_images: int | None = None,
        epochs: bool = True) -> dict:
    rounds = rounds or (1 if quick else 5)
    num_images = num_images or (128 if quick else 4096)
    batch_size = 16 if quick else 128
    results: dict = {"rounds": rounds, "num_images": num_images, "batch_size": batch_size, "data": [], "epoch": []}
    with tempfile.TemporaryDirectory(prefix="synermix_device_") as tmp:
        data = write_image_dataset(Path(tmp), num_images, size=32, num_classes=NUM_CLASSES, image_format="png")
        cache_dir = os.path.join(tmp, "decoded")
        start = time.perf_counter()
        prepare_views(data, None, TransformSpec("cifar", 32), "image", "label", two_views=True, views_on="device",
                      cache_dir=cache_dir)
        results["decode_once_s"] = time.perf_counter() - start
        for workers in (0,) if quick else (0, 2):
            rates = measure_data(data, batch_size, workers, rounds, cache_dir)
            results["data"].append({"workers": workers, **rates, "ratio": rates["device"] / rates["loader"]})
        for workers in ((0,) if quick else (0, 2)) if epochs else ():
            times = measure_epochs(data, batch_size, workers, 1 if quick else max(1, rounds // 2), cache_dir, tmp)
            results["epoch"].append({"workers": workers, **times, "ratio": times["loader"] / times["device"]})
        if with_default_run:
            results["default_run"] = {path: default_run(path, tmp) for path in ("device", "loader")}
    return results


def report(res: dict) -> str:
    n, batch = res["num_images"], res["batch_size"]
    text = (
        f"{n} CIFAR-shaped PNG images (32x32 RGB, 100 classes) in a saved `datasets.Dataset`; cifar recipe, two views, "
        f"balanced batches of {batch}; median of {res['rounds']} interleaved epochs (workers: persistent, first epoch "
        f"left out, one torch thread each). Decoding them once (cold cache, {os.cpu_count()} threads): "
        f"{res['decode_once_s']:.2f} s.\n\n"
    )
    def cpu_ratio(r: dict, inverse: bool = False) -> str:
        if "device_cpu" not in r:
            return ""
        ratio = r["loader_cpu"] / r["device_cpu"] if inverse else r["device_cpu"] / r["loader_cpu"]
        return fmt_ratio(ratio)

    rows = [(r["workers"], f"{r['loader']:.0f}", f"{r['device']:.0f}", fmt_ratio(r["ratio"]), cpu_ratio(r),
             verdict(r["ratio"] >= DATA_TARGET)) for r in res["data"]]  # fmt: skip
    text += ("Data path, images/s of complete two-view batches (the device path's views made on the CPU, counted); "
             "with 0 workers also the ratio in images per second of process CPU time:\n\n")
    text += table(["workers", "loader (wall)", "device (wall)", "device / loader (wall)", "(CPU time)",
                   f"target >= {DATA_TARGET:g}x"], rows)  # fmt: skip
    rows = [(r["workers"], f"{r['loader']:.2f}", f"{r['device']:.2f}", fmt_ratio(r["ratio"]),
             cpu_ratio(r, inverse=True), verdict(r["ratio"] >= EPOCH_TARGET)) for r in res["epoch"]]  # fmt: skip
    if rows:
        text += (
            "\n\nOne training epoch, `SynerMixTrainer.train()`, w-RA&ER(MM) (beta 0.1, Manifold MixUp), a tiny CNN "
            "(2 convolutions, 1.6k parameters) so that data dominates, seconds:\n\n"
        )
        text += table(["workers", "loader (s)", "device (s)", "loader / device (wall)", "(CPU time)",
                       f"target >= {EPOCH_TARGET:g}x"], rows)  # fmt: skip
    if "default_run" in res:
        rows = [(path, f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['train_s']:.1f}", f"{r['accuracy']:.4f}",
                 verdict(r["wall_s"] <= DEFAULT_RUN_TARGET_S and r["accuracy"] >= 0.95))
                for path, r in res["default_run"].items()]  # fmt: skip
        text += "\n\n`python run_image_classification.py --views_on PATH` (the built-in default):\n\n"
        text += table(["data path", "wall (s)", "CPU, user+sys (s)", "train_runtime (s)", "eval accuracy",
                       f"<= {DEFAULT_RUN_TARGET_S:g} s and >= 95%"], rows)  # fmt: skip
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images, no workers, one round (smoke run)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--default_run", action="store_true", help="also time the built-in default on both paths")
    parser.add_argument("--threads", type=int, help="torch threads in this process (default: torch's default)")
    parser.add_argument("--num_images", type=int,
                        help="images in the dataset (default 4096; CIFAR-100's training split has 50000): with "
                        "persistent workers each epoch still starts by handing the workers its first batches, a cost "
                        "that a short epoch does not amortise")
    parser.add_argument("--no_epoch", action="store_true", help="skip part 2 (the training epochs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(report(run(quick=args.quick, rounds=args.rounds, with_default_run=args.default_run,
                     num_images=args.num_images, epochs=not args.no_epoch)))


if __name__ == "__main__":
    main()
