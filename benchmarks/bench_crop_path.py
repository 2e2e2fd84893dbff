"""Benchmark 7: the `imagenet` family (RandomResizedCrop, 224 px) on the device path against the per-image path, on
this machine's CPU, side by side in one run.

Food-101-shaped data: JPEG images (quality 90) of 512x384, 384x512 and 512x512 in turn, 10 classes (each with its own
mean colour, so that a small model can learn them), in a saved `datasets.Dataset` with the Hub's `image` / `label`
schema. Both paths make the `imagenet` recipe's two views at 224 px (RandomResizedCrop + flip, and Resize(256) +
CenterCrop(224)), seeded per example appearance through `SeededAugmentation` and the balanced sampler:

* loader (per image): each image decoded and both views made with torchvision in the loader (`TwoViewTransform`);
* device: each image decoded once with its shorter side resized to 256 into an `ImageStore` (cold build timed in part
  d); the loader gathers the stored rows and draws the crops, `CropViews` makes the views batched on the training
  device, here the CPU (torch's antialiased uint8 resize, one image at a time), and that time is counted.

Parts (variants interleaved round after round, medians):

a. the loader's CPU work per example (process CPU time, 1 torch thread): `__getitems__` of a batch + collate
   (target: device >= 20x less), with the device path's parts, and the CPU time to decode one stored-size JPEG next to
   the gather's (why the store keeps raw rows);
b. complete two-view batches per second as `SynerMixTrainer` loads them (`get_train_dataloader` + `batch_on_device`),
   0 and 2 loader workers (targets: device >= 2x with 0 workers, not slower with 2), and where the device path's
   time goes;
c. one training epoch (`SynerMixTrainer.train()`, `train_runtime`) with a tiny CNN, so that data dominates
   (target >= 2x);
d. the cold build of the store (1 and 2 threads), bytes per image by shape, and what Food-101 would take;
e. a short training run, 3 seeds, per path: final accuracy on held-out images (the device path's S = 256 crops
   against the per-image path's full-resolution ones).

    python -m benchmarks.bench_crop_path [--quick] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (fmt_ratio, load_average, machine_section, median, other_python_processes,
                               table, verdict)  # first: offline environment, import path
from benchmarks.synthetic import FOOD101_SHAPES, random_image, write_image_dataset

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers.trainer_callback import PrinterCallback

from synermix_hf import (
    ClassBalancedBatchSampler,
    PositionedBatchSampler,
    SeededAugmentation,
    SynerMixCollator,
    SynerMixTrainer,
    SynerMixTrainingArguments,
    prepare_views,
)
from synermix_hf.data.image_store import stored_images_and_failures, stored_size
from synermix_hf.data.transforms import TransformSpec
from synermix_hf.seeding import example_seeds

LOADER_CPU_TARGET, BATCHES_TARGET_0, BATCHES_TARGET_2, EPOCH_TARGET = 20.0, 2.0, 1.0, 2.0
NUM_CLASSES, IMAGE_SIZE = 10, 224
SPEC = TransformSpec("imagenet", IMAGE_SIZE)
SHORT_SIDE = SPEC.eval_resize  # 256
CLASS_SIGNAL = 0.12  # weight of the class colour in the pixels: learnable, not trivially (see part e)
FOOD101_IMAGES = 75_750 + 25_250
PATHS = ("loader", "device")


class TinyNet(nn.Module):
    """A CNN small enough that the data path, not the model, sets the pace on a CPU at 224 px: a 4x4 average pool
    first (224 -> 56), then two 3x3 convolutions (1.4k parameters with the head)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.AvgPool2d(4), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def prepared(data, evaluation, path: str, cache_dir: str):
    return prepare_views(data, evaluation, SPEC, "image", "label", two_views=True, views_on=path, cache_dir=cache_dir)


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, seed: int = 0) -> dict[str, list]:
    """Each variant once a round, in a shuffled order; the results of each, round after round."""
    results: dict[str, list] = {name: [] for name in variants}
    order = list(variants)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            results[name].append(variants[name]())
    return results


def one_torch_thread():
    class _Threads:
        def __enter__(self):
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)

        def __exit__(self, *exc):
            torch.set_num_threads(self.before)

    return _Threads()


# ------------------------------------------------------------------------------------------- a. loader CPU work


def batches_of_an_epoch(labels, batch_size: int) -> list[list[tuple[int, int]]]:
    """The `(index, position)` items of one epoch's balanced batches, as the trainer's sampler yields them."""
    return list(PositionedBatchSampler(ClassBalancedBatchSampler(labels, batch_size=batch_size, seed=0)))


def measure_loader_cpu(data, cache_dir: str, batch_size: int, rounds: int) -> dict:
    datasets_ = {path: SeededAugmentation(prepared(data, None, path, cache_dir).train, seed=0) for path in PATHS}
    collate = SynerMixCollator()
    batches = batches_of_an_epoch(data["label"], batch_size)
    examples = sum(len(batch) for batch in batches)
    stored = datasets_["device"].dataset
    store, views = stored.store, stored.views

    def epoch(dataset) -> Callable[[], float]:
        def run() -> float:
            start = time.process_time()
            for items in batches:
                batch = collate(dataset.__getitems__(items))
                assert len(batch["labels"]) == len(items)
            return (time.process_time() - start) / examples
        return run

    def parts() -> dict:
        # The device path's loader work, part by part (what `seeded_batch` does), per example.
        spent = dict.fromkeys(("gather (padded_batch)", "crop draw (sample)", "centre boxes", "seeds"), 0.0)
        for items in batches:
            rows = np.array([index for index, _ in items])
            start = time.process_time()
            seeds = example_seeds(0, 0, [position for _, position in items])
            spent["seeds"] += time.process_time() - start
            start = time.process_time()
            store.padded_batch(rows)
            spent["gather (padded_batch)"] += time.process_time() - start
            start = time.process_time()
            views.sample(seeds, store.original_sizes[rows], store.sizes[rows])
            spent["crop draw (sample)"] += time.process_time() - start
            start = time.process_time()
            views.original_boxes(store.original_sizes[rows], store.sizes[rows])
            spent["centre boxes"] += time.process_time() - start
        return {name: value / examples for name, value in spent.items()}

    with one_torch_thread():
        results = interleaved({"loader": epoch(datasets_["loader"]), "device": epoch(datasets_["device"]),
                               "parts": parts}, rounds)  # fmt: skip
        decode = jpeg_decode_cost(rounds)
    part_names = list(results["parts"][0])
    return {
        "examples_per_epoch": examples,
        "loader_s": median(results["loader"]),
        "device_s": median(results["device"]),
        "loader_rounds": results["loader"],
        "device_rounds": results["device"],
        "parts": {name: median([r[name] for r in results["parts"]]) for name in part_names},
        **decode,
    }


def jpeg_decode_cost(rounds: int, repeats: int = 200) -> dict:
    """CPU time to decode one JPEG of the stored size of a 4:3 image at S = 256 (341x256, quality 90), and its bytes:
    what a store of re-encoded JPEG would cost the loader per image and view-pair."""
    height, width = stored_size(384, 512, SHORT_SIDE)
    pixels = random_image(np.random.default_rng(0), height, width)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    encoded = buffer.getvalue()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(repeats):
            with Image.open(io.BytesIO(encoded)) as image:
                np.asarray(image.convert("RGB"))
        times.append((time.process_time() - start) / repeats)
    return {"jpeg_shape": (height, width), "jpeg_bytes": len(encoded), "raw_bytes": height * width * 3,
            "jpeg_decode_s": median(times)}


# ------------------------------------------------------------------------------- b. batches through the trainer


def training_args(tmp: str, batch_size: int, workers: int, epochs: float = 1, seed: int = 0,
                  learning_rate: float = 0.05) -> SynerMixTrainingArguments:
    return SynerMixTrainingArguments(
        output_dir=os.path.join(tmp, "run"), report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
        disable_tqdm=True, logging_strategy="no", per_device_train_batch_size=batch_size, num_train_epochs=epochs,
        beta=0.1, inter_mixup="manifold_mixup", alpha=1.0, balanced_sampler=True, learning_rate=learning_rate,
        dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0, seed=seed,
    )  # fmt: skip


def quiet(trainer: SynerMixTrainer) -> SynerMixTrainer:
    trainer.remove_callback(PrinterCallback)  # its print of the final metrics would clutter the report
    return trainer


def measure_batches(data, cache_dir: str, tmp: str, batch_size: int, workers: int, rounds: int) -> dict:
    trainers, loaders = {}, {}
    for path in PATHS:
        views = prepared(data, None, path, cache_dir)
        trainers[path] = SynerMixTrainer(model=TinyNet(), args=training_args(tmp, batch_size, workers),
                                         train_dataset=views.train)
        loaders[path] = trainers[path].get_train_dataloader()

    def epoch(path: str) -> Callable[[], float]:
        def run() -> float:
            count, start = 0, time.perf_counter()
            for batch in loaders[path]:
                batch = trainers[path].batch_on_device(batch)
                assert batch["pixel_values"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
                assert batch["original_pixel_values"].shape == batch["pixel_values"].shape
                count += len(batch["labels"])
            return count / (time.perf_counter() - start)
        return run

    results = interleaved({path: epoch(path) for path in PATHS}, rounds + (1 if workers else 0))
    if workers:  # the first epoch starts the (persistent) workers
        results = {path: values[1:] for path, values in results.items()}
    out = {path: median(values) for path, values in results.items()}
    out["rounds"] = results
    del loaders, trainers  # stops persistent workers
    return out


def device_profile(data, cache_dir: str, batch_size: int, rounds: int) -> dict:
    """Where one epoch of the device path's complete batches spends its CPU time, per example, in this process: the
    loader's part, then both views as `CropViews` makes them on the CPU (one image at a time), and, for comparison,
    the same views made with the batched ops (`CropViews.augmented`, `CropViews.original_view`), which it makes on a
    GPU."""
    stored = prepared(data, None, "device", cache_dir).train
    dataset = SeededAugmentation(stored, seed=0)
    views = stored.views
    batches = batches_of_an_epoch(data["label"], batch_size)
    examples = sum(len(batch) for batch in batches)
    names = ("loader: __getitems__ + collate (gather, crop draw, boxes)",
             "both views, one image at a time (CropViews on the CPU)")
    alternative = "(not in the path) both views with the batched ops (as on a GPU)"

    def run() -> dict:
        spent = dict.fromkeys((*names, alternative), 0.0)
        for items in batches:
            clock = time.process_time()

            def lap(name: str) -> None:
                nonlocal clock
                now = time.process_time()
                spent[name] += now - clock
                clock = now

            batch = SynerMixCollator()(dataset.__getitems__(items))
            lap(names[0])
            made = views(batch)
            lap(names[1])
            images, sizes, params, boxes = batch["images"], batch["sizes"], batch["augment"], batch["original_boxes"]
            batched = views.augmented(images, sizes, params), views.original_view(images, sizes, boxes)
            lap(alternative)
            assert torch.equal(made["pixel_values"], batched[0])
            assert torch.equal(made["original_pixel_values"], batched[1])
        return {name: value / examples for name, value in spent.items()}

    results = [run() for _ in range(rounds)]
    return {name: median([r[name] for r in results]) for name in results[0]}


# ------------------------------------------------------------------------------------------------- c. one epoch


def measure_epochs(data, cache_dir: str, tmp: str, batch_size: int, workers: int, rounds: int) -> dict:
    def epoch(path: str) -> Callable[[], float]:
        def run() -> float:
            views = prepared(data, None, path, cache_dir)
            torch.manual_seed(0)
            trainer = quiet(SynerMixTrainer(model=TinyNet(), args=training_args(tmp, batch_size, workers),
                                            train_dataset=views.train))
            return trainer.train().metrics["train_runtime"]
        return run

    results = interleaved({path: epoch(path) for path in PATHS}, rounds)
    return {**{path: median(values) for path, values in results.items()}, "rounds": results}


# ---------------------------------------------------------------------------------------------- d. cold build


def measure_build(data, tmp: str, rounds: int) -> dict:
    builds = {"S=256, 1 thread": (SHORT_SIDE, 1), "S=256, 2 threads": (SHORT_SIDE, 2), "S=0, 2 threads": (0, 2)}
    counter = iter(range(10**6))
    stores = {}

    def build(name: str) -> Callable[[], float]:
        short_side, threads = builds[name]

        def run() -> float:
            folder = os.path.join(tmp, f"build{next(counter)}")
            start = time.perf_counter()
            store, failures = stored_images_and_failures(data, "image", short_side, cache_dir=folder,
                                                         num_threads=threads)
            elapsed = time.perf_counter() - start
            assert not failures
            stores[short_side] = store
            return len(data) / elapsed
        return run

    results = interleaved({name: build(name) for name in builds}, rounds)
    # Bytes per image by original shape, read from each store's index.
    by_shape = {}
    for short_side, store in stores.items():
        originals, sizes = np.asarray(store.original_sizes), np.asarray(store.sizes)
        for shape in sorted({tuple(map(int, o)) for o in originals}, key=lambda s: (-s[0], s[1])):
            mask = (originals == shape).all(axis=1)
            by_shape.setdefault(shape, {})[short_side] = int((sizes[mask, 0] * sizes[mask, 1] * 3).mean())
    store = stores[SHORT_SIDE]
    sample = min(len(store), 60)
    reencoded = []
    for row in range(sample):  # what a store of JPEG (quality 90) at S = 256 would take instead
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(store.image(row))).save(buffer, format="JPEG", quality=90)
        reencoded.append(len(buffer.getvalue()))
    source = [len(value["bytes"]) for value in data.with_format("arrow")[:sample]["image"].to_pylist()]
    return {
        "images_per_s": {name: median(values) for name, values in results.items()},
        "rounds": results,
        "store_bytes": {s: stores[s].nbytes for s in stores},
        "bytes_per_image": {s: stores[s].nbytes / len(stores[s]) for s in stores},
        "by_shape": by_shape,
        "reencoded_jpeg_bytes": float(np.mean(reencoded)),
        "source_jpeg_bytes": float(np.mean(source)),
        "num_images": len(data),
    }


# ------------------------------------------------------------------------------------------- e. short training


def accuracy(trainer: SynerMixTrainer, evaluation) -> float:
    trainer.model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader(evaluation):
            batch = trainer.batch_on_device(batch)
            correct += int((trainer.model(batch["pixel_values"]).argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return correct / total


def measure_training(data, evaluation, cache_dir: str, tmp: str, batch_size: int, epochs: int,
                     seeds: list[int]) -> dict:
    results: dict[str, dict[int, float]] = {path: {} for path in PATHS}
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for seed in seeds:
        for path in PATHS if seed % 2 == 0 else PATHS[::-1]:
            views = prepared(data, evaluation, path, cache_dir)
            torch.manual_seed(seed)
            trainer = quiet(SynerMixTrainer(model=TinyNet(), args=training_args(tmp, batch_size, 0, epochs, seed, 0.02),
                                            train_dataset=views.train))
            times[path].append(trainer.train().metrics["train_runtime"])
            results[path][seed] = accuracy(trainer, views.eval)
    summary = {}
    for path, by_seed in results.items():
        values = list(by_seed.values())
        summary[path] = {"by_seed": by_seed, "mean": statistics.fmean(values),
                         "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "train_runtime_s": times[path]}
    return summary


# -------------------------------------------------------------------------------------------------------- run


def run(quick: bool = False, rounds: int | None = None, num_images: int | None = None, batch_size: int | None = None,
        train_epochs: int | None = None, seeds: int | None = None, workers: tuple[int, ...] | None = None) -> dict:
    rounds = rounds or (1 if quick else 5)
    num_images = num_images or (30 if quick else 600)
    batch_size = batch_size or (10 if quick else 64)
    train_epochs = train_epochs or (1 if quick else 5)
    seeds = seeds or (2 if quick else 3)
    workers = workers if workers is not None else ((0,) if quick else (0, 2))
    res: dict = {"rounds": rounds, "num_images": num_images, "batch_size": batch_size, "train_epochs": train_epochs,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_start": load_average(),
                 "torch_threads": torch.get_num_threads(), "started": time.time()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="synermix_crop_") as tmp:
        start = time.perf_counter()
        data = write_image_dataset(Path(tmp), num_images, IMAGE_SIZE, NUM_CLASSES, "jpeg", seed=0,
                                   shapes=FOOD101_SHAPES, class_signal=CLASS_SIGNAL)
        evaluation = write_image_dataset(Path(tmp), max(NUM_CLASSES, num_images // 3), IMAGE_SIZE, NUM_CLASSES,
                                         "jpeg", seed=1, shapes=FOOD101_SHAPES, class_signal=CLASS_SIGNAL)
        res["write_s"] = time.perf_counter() - start
        cache_dir = os.path.join(tmp, "store")
        start = time.perf_counter()
        prepared(data, evaluation, "device", cache_dir)
        res["first_build_s"] = time.perf_counter() - start
        res["loader_cpu"] = measure_loader_cpu(data, cache_dir, batch_size, rounds)
        res["batches"] = {w: measure_batches(data, cache_dir, tmp, batch_size, w, rounds) for w in workers}
        with one_torch_thread():
            res["device_profile"] = device_profile(data, cache_dir, batch_size, max(1, rounds // 2))
        res["epoch"] = {w: measure_epochs(data, cache_dir, tmp, batch_size, w, max(1, (rounds + 1) // 2))
                        for w in workers}
        res["build"] = measure_build(data, tmp, max(1, (rounds + 1) // 2))
        res["training"] = measure_training(data, evaluation, cache_dir, tmp, batch_size, train_epochs,
                                           list(range(seeds)))
        res["num_eval_images"] = len(evaluation)
    res["load_end"] = load_average()
    res["others_end"] = other_python_processes()
    res["total_s"] = time.time() - res["started"]
    return res


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f}"


def report(res: dict) -> str:
    n, batch = res["num_images"], res["batch_size"]
    a = res["loader_cpu"]
    b0 = res["batches"].get(0)
    b2 = res["batches"].get(2)
    text = (
        f"{n} Food-101-shaped JPEG images (quality 90; 512x384, 384x512 and 512x512 in turn; 10 classes, each with "
        f"its own mean colour at weight {CLASS_SIGNAL:g}) in a saved `datasets.Dataset`; `imagenet` recipe at 224 px, "
        f"two views, balanced batches of {batch} (plus partners); device path with the store at S = {SHORT_SIDE}, "
        f"its views made on this CPU. CPU capability: {res['cpu_capability']}; torch threads in this process: "
        f"{res['torch_threads']} (part a: 1); variants interleaved, median of {res['rounds']} rounds (parts c-d: "
        f"{max(1, (res['rounds'] + 1) // 2)}). Load average at start {res['load_start']}, at end {res['load_end']}; "
        "other Python processes at the end: " + ("; ".join(res["others_end"]) or "none") + f". Total "
        f"{res['total_s']:.0f} s (writing the data {res['write_s']:.1f} s, first store build of train + eval "
        f"{res['first_build_s']:.1f} s).\n\n"
    )
    # Targets
    less = a["loader_s"] / a["device_s"]
    rows = [("a. loader CPU per example, device >= 20x less",
             f"{_us(a['loader_s'])} us vs {_us(a['device_s'])} us: {fmt_ratio(less)}",
             verdict(less >= LOADER_CPU_TARGET))]
    for workers, target, b in ((0, BATCHES_TARGET_0, b0), (2, BATCHES_TARGET_2, b2)):
        if b is not None:
            ratio = b["device"] / b["loader"]
            rows.append((f"b. two-view batches/s, {workers} workers, device >= {target:g}x",
                         f"{b['loader']:.0f} vs {b['device']:.0f} images/s: {fmt_ratio(ratio)}",
                         verdict(ratio >= target)))
    for workers, e in res["epoch"].items():
        ratio = e["loader"] / e["device"]
        rows.append((f"c. one epoch, tiny CNN, {workers} workers, >= {EPOCH_TARGET:g}x",
                     f"{e['loader']:.2f} s vs {e['device']:.2f} s: {fmt_ratio(ratio)}", verdict(ratio >= EPOCH_TARGET)))
    t = res["training"]
    spread = max(t["loader"]["stdev"], t["device"]["stdev"])
    close = abs(t["loader"]["mean"] - t["device"]["mean"]) <= max(2 * spread, 1e-9)
    rows.append(("e. accuracy within the seeds' spread", f"per-image {t['loader']['mean']:.3f} +- "
                 f"{t['loader']['stdev']:.3f}, device {t['device']['mean']:.3f} +- {t['device']['stdev']:.3f}",
                 "met" if close else "**missed**"))
    text += "Targets:\n\n" + table(["target", "per-image vs device", "verdict"], rows)

    # a.
    text += (
        f"\n\n**a. The loader's CPU work per example** (process CPU time, 1 torch thread, one epoch of "
        f"{a['examples_per_epoch']} examples a round: `SeededAugmentation(...).__getitems__` of each balanced batch "
        "+ `SynerMixCollator`):\n\n"
    )
    rows = [("per-image: decode + RandomResizedCrop view + Resize/CenterCrop view", _us(a["loader_s"]), "1.00x"),
            ("device: gather rows, draw crops, centre boxes, collate", _us(a["device_s"]),
             fmt_ratio(a["loader_s"] / a["device_s"]) + " less")]
    rows += [(f"  device part: {name}", _us(value), "") for name, value in a["parts"].items()]
    height, width = a["jpeg_shape"]
    rows.append((f"for comparison: decode one {width}x{height} JPEG (quality 90, {a['jpeg_bytes'] / 1e3:.0f} KB; the "
                 f"raw row is {a['raw_bytes'] / 1e3:.0f} KB)", _us(a["jpeg_decode_s"]),
                 f"{a['jpeg_decode_s'] / a['parts']['gather (padded_batch)']:.0f}x the gather"))
    text += table(["work", "CPU us / example", "ratio"], rows)
    text += (
        "\n\nA store of re-encoded JPEG would be about "
        f"{a['raw_bytes'] / a['jpeg_bytes']:.0f}x smaller but would cost the loader that decode for every example "
        "every epoch, instead of the gather.\n\n"
    )

    # b.
    text += ("**b. Complete two-view batches per second, views made on the CPU**, as `SynerMixTrainer` loads them "
             "(`get_train_dataloader()` + `batch_on_device(batch)`; workers persistent, their first epoch left out):"
             "\n\n")
    rows = []
    for workers, b in res["batches"].items():
        target = BATCHES_TARGET_0 if workers == 0 else BATCHES_TARGET_2
        ratio = b["device"] / b["loader"]
        rows.append((workers, f"{b['loader']:.0f}", f"{b['device']:.0f}", fmt_ratio(ratio),
                     f">= {target:g}x: {verdict(ratio >= target)}"))
    text += table(["loader workers", "per-image (images/s)", "device (images/s)", "device / per-image", "target"],
                  rows)
    profile = dict(res["device_profile"])
    alternative = {name: profile.pop(name) for name in list(profile) if name.startswith("(not")}
    total = sum(profile.values())
    text += ("\n\nWhere the device path's time goes with 0 workers (CPU time per example, 1 torch thread, this "
             "process):\n\n")
    text += table(["step", "CPU us / example", "share"],
                  [(name, _us(value), f"{100 * value / total:.0f}%") for name, value in profile.items()]
                  + [("total", _us(total), "100%")]
                  + [(name, _us(value), "") for name, value in alternative.items()])

    # c.
    text += ("\n\n**c. One training epoch**, `SynerMixTrainer.train()` `train_runtime`, w-RA&ER(MM) (beta 0.1, "
             "Manifold MixUp), a CNN of 1.4k parameters behind a 4x4 average pool, so that data dominates:\n\n")
    rows = [(w, f"{e['loader']:.2f}", f"{e['device']:.2f}", fmt_ratio(e["loader"] / e["device"]),
             verdict(e["loader"] / e["device"] >= EPOCH_TARGET)) for w, e in res["epoch"].items()]
    text += table(["loader workers", "per-image (s)", "device (s)", "per-image / device", f">= {EPOCH_TARGET:g}x"],
                  rows)

    # d.
    d = res["build"]
    text += f"\n\n**d. The cold build of the store** ({d['num_images']} images, wall time, fresh folder each time):\n\n"
    rows = [(name, f"{rate:.0f}") for name, rate in d["images_per_s"].items()]
    text += table(["build", "images/s"], rows)
    text += "\n\n" + table(
        ["stored at", "bytes / image (mean)", f"store of these {d['num_images']}"],
        [(f"S = {s}" if s else "S = 0 (full resolution)", f"{d['bytes_per_image'][s]:,.0f}",
          f"{d['store_bytes'][s] / 2**20:.1f} MiB") for s in sorted(d["store_bytes"], reverse=True)])
    rows = []
    for shape, by_s in d["by_shape"].items():
        rows.append((f"{shape[0]}x{shape[1]} (h x w)", f"{by_s.get(SHORT_SIDE, 0):,}",
                     _gib(by_s.get(SHORT_SIDE, 0) * FOOD101_IMAGES), f"{by_s.get(0, 0):,}",
                     _gib(by_s.get(0, 0) * FOOD101_IMAGES)))
    mix = {s: statistics.fmean(by_s.get(s, 0) for by_s in d["by_shape"].values()) for s in (SHORT_SIDE, 0)}
    rows.append(("equal mix of the three", f"{mix[SHORT_SIDE]:,.0f}", _gib(mix[SHORT_SIDE] * FOOD101_IMAGES),
                 f"{mix[0]:,.0f}", _gib(mix[0] * FOOD101_IMAGES)))
    text += ("\n\nFood-101 (75,750 training + 25,250 validation images), were all its images of one shape, from "
             "the measured bytes per image of each shape (its real mix of shapes is not measured here):\n\n")
    text += table(["image shape", f"S = {SHORT_SIDE}: bytes / image", "Food-101 (GiB)", "S = 0: bytes / image",
                   "Food-101 (GiB)"], rows)
    text += (f"\n\nFor comparison, per image: the source JPEGs {d['source_jpeg_bytes']:,.0f} bytes; the stored "
             f"images re-encoded as JPEG (quality 90) {d['reencoded_jpeg_bytes']:,.0f} bytes.\n\n")

    # e.
    rows = []
    for path, r in t.items():
        name = "per-image" if path == "loader" else f"device (S = {SHORT_SIDE})"
        rows.append((name, ", ".join(f"{seed}: {acc:.3f}" for seed, acc in r["by_seed"].items()), f"{r['mean']:.3f}",
                     f"{r['stdev']:.3f}", f"{median(r['train_runtime_s']):.1f}"))
    text += (f"**e. A short training comparison**: the same tiny CNN, {res['train_epochs']} epochs, "
             f"{len(t['loader']['by_seed'])} seeds (model init, batches and crops), SynerMix w-RA&ER(MM), evaluated "
             f"on {res['num_eval_images']} held-out images of the same kind (the same centre-crop pixels on both "
             "paths):\n\n")
    text += table(["path", "accuracy per seed", "mean", "stdev", "train_runtime (s, median)"], rows)
    difference = t["device"]["mean"] - t["loader"]["mean"]
    text += (
        f"\n\nThe device path's mean is {difference:+.3f} from the per-image path's; the larger of the two seed "
        f"standard deviations is {spread:.3f}. What this shows: on data whose class signal is colour and texture "
        "statistics, cutting the augmented crops from the image stored at S = 256 instead of the full-resolution "
        "image " + ("does not change what the model learns beyond the seeds' spread" if close else
                    "changes the result by more than twice the seeds' spread") + ". It is a small model on synthetic "
        "data: it cannot show effects of detail lost at S = 256 on fine-grained real images.\n"
    )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 images, one round, 0 workers (smoke run, seconds)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    parser.add_argument("--num_images", type=int, help="training images (default 600)")
    parser.add_argument("--batch_size", type=int, help="balanced batch (default 64)")
    parser.add_argument("--train_epochs", type=int, help="epochs of part e (default 5)")
    parser.add_argument("--seeds", type=int, help="seeds of part e (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process (default 1: steadier on a shared machine)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = ["## 7. The imagenet family (224 px): device path vs per-image path (CPU)", "",
              time.strftime("%Y-%m-%d %H:%M:%S %Z"), "", machine_section(), ""]
    print("\n".join(header), flush=True)
    text = report(run(quick=args.quick, rounds=args.rounds, num_images=args.num_images, batch_size=args.batch_size,
                      train_epochs=args.train_epochs, seeds=args.seeds))
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(header) + "\n" + text)


if __name__ == "__main__":
    main()
