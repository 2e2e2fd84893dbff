"""Benchmark 3: images/s of the two-view `datasets` pipeline against a one-view pipeline on the same JPEG data.

A small JPEG-encoded `datasets.Dataset` (an `Image` feature holding JPEG bytes, 10 classes) is written to a temporary
folder and read back memory-mapped, as a real dataset would be (`benchmarks.synthetic.write_image_dataset`).
Pipelines, all through a `DataLoader` with `SynerMixCollator`:

* one view: `SingleViewTransform(augment)` (what a plain training run does);
* two views: `TwoViewTransform(augment, original)` (SynerMix, one decode per image);
* two views as `SynerMixTrainer` loads them: the same, wrapped in `SeededAugmentation` (per-example seeding of the
  augmentation, one example per `datasets` access);
* two views, decoded twice: the image column read undecoded and decoded once per view (what SynerMix avoids), for
  reference only.

Two image sizes: 64x64 with a CIFAR-style augmentation, and 256x256 with the ImageNet-style 224 transforms of
food101 / oxfordiiipet. Epochs are interleaved over rounds; with workers, they are persistent and the first epoch is
left out.

    python -m benchmarks.bench_data_pipeline [--quick]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from benchmarks.common import fmt_ratio, median, one_thread_worker, table, verdict
from benchmarks.synthetic import write_image_dataset
from synermix_hf import Cutout, SingleViewTransform, SynerMixCollator, TwoViewTransform

try:  # the per-example seeded augmentation that SynerMixTrainer's training loader wraps every dataset in
    from synermix_hf.data import SeededAugmentation
except ImportError:  # pragma: no cover - older library versions
    SeededAugmentation = None

TARGET_RATIO = 0.7
TRAINER_PIPELINE = "two views + SeededAugmentation (SynerMixTrainer's loader)"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def transforms_for(size: int) -> tuple[T.Compose, T.Compose, str]:
    if size <= 96:
        augment = T.Compose(
            [
                T.RandomCrop(size, padding=size // 8),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                Cutout(size // 2),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        original = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return augment, original, f"{size}px, RandomCrop+flip+Cutout / ToTensor"
    augment = T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    original = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return augment, original, f"{size}px, RandomResizedCrop(224)+flip / Resize(256)+CenterCrop(224)"


class TwoViewDecodedTwice:
    """Reads undecoded JPEG bytes and decodes them once per view (the cost SynerMix's one decode avoids)."""

    def __init__(self, augment, original):
        self.augment = augment
        self.original = original

    def __call__(self, batch):
        decode = lambda item: Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        return {
            "pixel_values": [self.augment(decode(item)) for item in batch["image"]],
            "original_pixel_values": [self.original(decode(item)) for item in batch["image"]],
            "labels": batch["label"],
        }


def pipelines(data: datasets.Dataset, size: int):
    augment, original, description = transforms_for(size)
    undecoded = data.cast_column("image", datasets.Image(decode=False))
    two_views = data.with_transform(TwoViewTransform(augment=augment, original=original))
    named = {
        "one view": data.with_transform(SingleViewTransform(augment)),
        "two views (TwoViewTransform)": two_views,
    }
    if SeededAugmentation is not None:
        named[TRAINER_PIPELINE] = SeededAugmentation(two_views, seed=123)
    named["two views, decoded twice (reference)"] = undecoded.with_transform(TwoViewDecodedTwice(augment, original))
    return description, named


def measure(named: dict, batch_size: int, workers: int, rounds: int) -> dict[str, list[float]]:
    loaders = {
        name: DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=True,
            collate_fn=SynerMixCollator(),
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=one_thread_worker if workers > 0 else None,
            generator=torch.Generator().manual_seed(0),
        )
        for name, ds in named.items()
    }
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in named}
    order = list(named)
    shuffler = random.Random(0)
    for round_index in range(rounds + (1 if workers > 0 else 0)):
        shuffler.shuffle(order)
        for name in order:
            count = 0
            start, start_cpu = time.perf_counter(), time.process_time()
            for batch in loaders[name]:
                count += len(batch["labels"])
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if workers == 0 or round_index > 0:  # with workers, the first epoch starts them
                rates[name].append((count / elapsed, count / max(elapsed_cpu, 1e-9)))
    del loaders
    return rates


def run(quick: bool = False, rounds: int | None = None) -> dict:
    rounds = rounds or (1 if quick else 9)
    configs = ((64, 64 if quick else 512), (256, 16 if quick else 192))
    if quick:
        configs = configs[:1]
    worker_counts = (0,) if quick else (0, 2)
    results = []
    with tempfile.TemporaryDirectory(prefix="synermix_jpeg_") as tmp:
        for size, num_images in configs:
            data = write_image_dataset(Path(tmp), num_images, size, num_classes=10, image_format="jpeg")
            description, named = pipelines(data, size)
            for workers in worker_counts:
                rates = measure(named, batch_size=32 if size > 96 else 64, workers=workers, rounds=rounds)
                base = median([r[0] for r in rates["one view"]])
                base_cpu = median([r[1] for r in rates["one view"]])
                for name, values in rates.items():
                    wall = median([r[0] for r in values])
                    cpu = median([r[1] for r in values])
                    results.append(
                        {
                            "data": f"{num_images} JPEGs, {description}",
                            "workers": workers,
                            "pipeline": name,
                            "images_per_s": wall,
                            "ratio": wall / base,
                            # with workers the main process only collects batches: its CPU time says nothing
                            "ratio_cpu": cpu / base_cpu if workers == 0 else None,
                        }
                    )
    return {"rounds": rounds, "results": results}


def report(res: dict) -> str:
    rows = [
        (
            r["data"],
            r["workers"],
            r["pipeline"],
            f"{r['images_per_s']:.0f}",
            fmt_ratio(r["ratio"]),
            fmt_ratio(r["ratio_cpu"]) if r["ratio_cpu"] is not None else "",
        )
        for r in res["results"]
    ]
    text = (
        f"Median images/s over {res['rounds']} interleaved epochs; ratio = images/s / one-view images/s in the same "
        "run. Worker processes use one torch thread each. With 0 workers the ratio is also given in images per "
        "second of process CPU time, which a busy machine disturbs less.\n\n"
    )
    text += table(["data", "workers", "pipeline", "images/s (wall)", "x one view (wall)", "x one view (CPU)"], rows)
    checks = [
        f"- {r['pipeline']}, {r['data'].split(',')[1].strip()}, {r['workers']} workers: {fmt_ratio(r['ratio'])} "
        f"(target >= {TARGET_RATIO}x: {verdict(r['ratio'] >= TARGET_RATIO)})"
        + (
            f"; CPU time {fmt_ratio(r['ratio_cpu'])} {verdict(r['ratio_cpu'] >= TARGET_RATIO)}"
            if r["ratio_cpu"]
            else ""
        )
        for r in res["results"]
        if r["pipeline"] in ("two views (TwoViewTransform)", TRAINER_PIPELINE)
    ]
    return text + "\n\nTarget check (two views vs one view):\n" + "\n".join(checks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 small images, no workers, one round (smoke run)")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args(argv)
    print(report(run(quick=args.quick, rounds=args.rounds)))


if __name__ == "__main__":
    main()
