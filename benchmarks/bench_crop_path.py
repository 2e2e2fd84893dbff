"""Benchmark 7: the `imagenet` family (RandomResizedCrop, 224 px) on each data path, on this machine's CPU, side by
side in one run: what the model sees, what the loader costs, what an epoch takes.

Food-101-shaped data: sharp JPEG images (quality 90; 512x384, 384x512 and 512x512 in turn; hard-edged blocks, smooth
noise and grain, so that a softer crop shows), 10 classes, in a saved `datasets.Dataset` with the Hub's `image` /
`label` schema. Every path makes the recipe's two views at 224 px (RandomResizedCrop + flip, and Resize(256) +
CenterCrop(224)), seeded per example appearance through `SeededAugmentation` and the balanced sampler:

* `per-image`: each image decoded and both views made with torchvision in the loader (`--views_on loader`);
* `default`: the training images decoded once at full resolution into a store, the evaluation images at Resize(256);
  the loader copies the stored pixels and draws the crops, `CropViews` makes both views on the device with Pillow's
  resampling (here the CPU: Pillow itself, image by image in threads; on an accelerator its batched port);
* `every read`: no store (what the default falls back to when a store does not fit the disk): the loader decodes each
  image from the dataset's own JPEG bytes, the device makes the views as above;
* `S = 256 (opt-in)`: the images kept with the shorter side resized to 256 (`--decode_short_side 256`), the crops cut
  from that;
* `baseline` (part c, with `--baseline COMMIT`): that commit's default path, from a `git worktree` of it.

Parts:

a. fidelity: >= 500 augmented crops and their original views against the per-image path's: the share that is
   bit-identical, PSNR (p5 / median, dB, on the [0, 1] pixels) and the largest difference, for Pillow on the CPU and the
   batched op (the accelerator's, run here on the CPU), bilinear and bicubic;
b. the loader's CPU work per example (process CPU time, 1 torch thread): `__getitems__` of a batch + collate
   (target: `every read` >= 3x less than `per-image`);
c. one training epoch, 0 loader workers, a tiny CNN (the data path sets the pace), each path in a process of its own
   (`benchmarks/epoch_child.py`), rounds interleaved (target: `default` not slower than the baseline's default);
d. the stores' sizes and cold builds.

    python -m benchmarks.bench_crop_path [--quick] [--baseline 5e82ca9] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (REPO_ROOT, fmt_ratio, load_average, machine_section, median, table,  # noqa: I001
                               verdict)  # first: offline environment, import path
from benchmarks.synthetic import FOOD101_SHAPES, random_image

import datasets
import numpy as np
import torch
from PIL import Image

from synermix_hf import ClassBalancedBatchSampler, PositionedBatchSampler, SeededAugmentation, SynerMixCollator
from synermix_hf import prepare_views
from synermix_hf.data.transforms import TransformSpec, build_transforms
from synermix_hf.seeding import example_seeds

LOADER_CPU_TARGET = 3.0
NUM_CLASSES = 10
SPEC = TransformSpec("imagenet", 224)
BICUBIC = TransformSpec("imagenet", 224, interpolation="bicubic", crop_pct=0.9)
PATHS = {  # name: prepare_views keyword arguments
    "per-image": {"views_on": "loader"},
    "default": {},
    "every read": {"decode_budget_gib": 0.0},
    "S = 256 (opt-in)": {"decode_short_side": 256},
}
CHILD_ARGS = {"per-image": ["--views_on", "loader"], "default": [], "every read": ["--budget_gib", "0"],
              "S = 256 (opt-in)": ["--short_side", "256"]}


def sharp_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth noise and grain (`random_image`) under hard-edged blocks of colour down to a few pixels wide: detail at
    every scale, as a photo of food has (edges, texture), so that a crop cut from fewer pixels shows."""
    pixels = random_image(rng, height, width).astype(np.int16)
    for _ in range(40):
        block_height, block_width = (int(v) for v in rng.integers(2, max(3, height // 6), 2))
        top, left = int(rng.integers(0, height - block_height)), int(rng.integers(0, width - block_width))
        pixels[top : top + block_height, left : left + block_width] = rng.integers(0, 256, 3)
    return np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)


def write_data(folder: Path, num_images: int, seed: int = 0) -> datasets.Dataset:
    """`num_images` sharp JPEGs (quality 90) of Food-101's shapes, saved with `save_to_disk` under `folder / data`."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(num_images):
        height, width = FOOD101_SHAPES[i % len(FOOD101_SHAPES)]
        buffer = io.BytesIO()
        Image.fromarray(sharp_image(rng, height, width)).save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
        labels.append(i % NUM_CLASSES)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(NUM_CLASSES)])})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(folder / "data")
    return datasets.load_from_disk(str(folder / "data"))


def interleaved(variants: dict, rounds: int, seed: int = 0) -> dict[str, list]:
    """Each variant once a round, in a shuffled order; the results of each, round after round."""
    results: dict[str, list] = {name: [] for name in variants}
    order = list(variants)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            results[name].append(variants[name]())
    return results


# ------------------------------------------------------------------------------------------------ a. fidelity


def _per_image(data, spec: TransformSpec, indices: list[int], seeds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    train, evaluation = build_transforms(spec)
    augmented, original = [], []
    with torch.random.fork_rng(devices=[]):
        for index, seed in zip(indices, seeds):
            torch.default_generator.manual_seed(int(seed >> np.uint64(1)))
            image = data[index]["image"].convert("RGB")
            augmented.append(train(image))
            original.append(evaluation(image))
    return torch.stack(augmented), torch.stack(original)


def _compare(made: torch.Tensor, expected: torch.Tensor, spec: TransformSpec) -> dict[str, np.ndarray]:
    """Per image: bit-identical, PSNR (dB, [0, 1] pixels, inf when identical) and the largest difference (0-255)."""
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    difference = (made - expected) * std
    error = difference.pow(2).flatten(1).mean(1).double()
    psnr = torch.where(error > 0, 10 * torch.log10(1 / error.clamp_min(1e-30)), torch.full_like(error, float("inf")))
    return {"exact": np.array([torch.equal(a, b) for a, b in zip(made, expected)]),
            "psnr": psnr.numpy(), "max": (difference.abs().flatten(1).amax(1) * 255).double().numpy()}


def measure_fidelity(data, cache_dir: str, crops: int, batch_size: int = 32, quick: bool = False) -> dict:
    """The views of each device variant against the per-image path's, for the same examples and seeds (a smoke run:
    the bilinear default only)."""
    seeds = example_seeds(7, 0, np.arange(crops))
    indices = [i % len(data) for i in range(crops)]  # each image cropped crops / len(data) times, each its own draw
    variants = {("bilinear", "default"): (SPEC, {}),
                ("bilinear", "S = 256 (opt-in)"): (SPEC, {"decode_short_side": 256}),
                ("bicubic (timm)", "default"): (BICUBIC, {})}
    if quick:
        variants = {("bilinear", "default"): variants[("bilinear", "default")]}
    results = {}
    for (interpolation, path), (spec, kwargs) in variants.items():
        prepared = prepare_views(data, None, spec, "image", "label", two_views=True, cache_dir=cache_dir, **kwargs)
        dataset = prepared.train
        for method in ("pillow", "batched"):
            views = dataclasses.replace(dataset.device_views, method=method)
            rows = {"augmented": [], "original": []}
            for start in range(0, crops, batch_size):
                chunk = slice(start, min(start + batch_size, crops))
                made = views(dataset.seeded_batch(indices[chunk], seeds[chunk]))
                expected = _per_image(data, spec, indices[chunk], seeds[chunk])
                rows["augmented"].append(_compare(made["pixel_values"], expected[0], spec))
                rows["original"].append(_compare(made["original_pixel_values"], expected[1], spec))
            op = "Pillow (the CPU op)" if method == "pillow" else "batched port (the accelerator op, on the CPU)"
            results[f"{interpolation} | {path} | {op}"] = {
                view: {key: np.concatenate([r[key] for r in parts]) for key in parts[0]}
                for view, parts in rows.items()}
    return results


# ------------------------------------------------------------------------------------------- b. loader CPU work


class _OneTorchThread:
    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def measure_loader_cpu(data, cache_dir: str, batch_size: int, rounds: int) -> dict:
    datasets_ = {name: SeededAugmentation(prepare_views(data, None, SPEC, "image", "label", two_views=True,
                                                        cache_dir=cache_dir, **kwargs).train, seed=0)
                 for name, kwargs in PATHS.items()}
    collate = SynerMixCollator()
    batches = list(PositionedBatchSampler(ClassBalancedBatchSampler(data["label"], batch_size=batch_size, seed=0)))
    examples = sum(len(batch) for batch in batches)

    def epoch(dataset):
        def run() -> float:
            with _OneTorchThread():
                start = time.process_time()
                for items in batches:
                    collate(dataset.__getitems__(items))
                return (time.process_time() - start) / examples
        return run

    results = interleaved({name: epoch(dataset) for name, dataset in datasets_.items()}, rounds)
    return {**{name: median(values) for name, values in results.items()}, "rounds": results}


# ------------------------------------------------------------------------------------------------- c. one epoch


def _child(root: Path, folder: Path, name: str, extra: list[str], batch_size: int, prepare_only: bool = False) -> dict:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "epoch_child.py"), "--root", str(root),
               "--data", str(folder / "data"), "--cache", str(folder / f"cache-{root.name}"),
               "--out", str(folder / "run"), "--batch_size", str(batch_size), *extra]
    if prepare_only:
        command.append("--prepare_only")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_worktree(commit: str, folder: Path) -> Path | None:
    """A `git worktree` of `commit` under `folder`, or None when git or the commit is not there."""
    target = folder / f"baseline-{commit}"
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(target), commit],
                          capture_output=True, text=True, check=False)
    return target if done.returncode == 0 else None


def measure_epochs(folder: Path, batch_size: int, rounds: int, baseline: Path | None, quick: bool = False) -> dict:
    names = ("default",) if quick else tuple(CHILD_ARGS)  # a smoke run starts one process, not ten
    variants = {name: (REPO_ROOT, CHILD_ARGS[name]) for name in names}
    if baseline is not None:
        variants["baseline default"] = (baseline, ["--views_on", "auto"])
    descriptions = {}
    if not quick:  # stores built before any timing
        descriptions = {name: _child(root, folder, name, extra, batch_size, prepare_only=True)["views"]
                        for name, (root, extra) in variants.items()}

    def epoch(name: str, root: Path, extra: list[str]):
        def run() -> float:
            result = _child(root, folder, name, extra, batch_size)
            descriptions.setdefault(name, result["views"])
            return result["train_runtime"]
        return run

    results = interleaved({name: epoch(name, root, extra) for name, (root, extra) in variants.items()}, rounds)
    return {**{name: median(values) for name, values in results.items()}, "rounds": results, "views": descriptions}


# ---------------------------------------------------------------------------------------------- d. the stores


def measure_stores(data, folder: Path) -> dict:
    from synermix_hf.data.image_store import encoded_images_and_failures, stored_images_and_failures

    out = {}
    for name, make in (("full resolution", lambda c: stored_images_and_failures(data, "image", 0, cache_dir=c)),
                       ("S = 256", lambda c: stored_images_and_failures(data, "image", 256, cache_dir=c)),
                       ("index only (every read)", lambda c: encoded_images_and_failures(data, "image", cache_dir=c))):
        cache = folder / f"cold-{len(out)}"
        start = time.perf_counter()
        store, _ = make(str(cache))
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(store.path).iterdir())
        out[name] = {"seconds": seconds, "bytes_per_image": size / len(data)}
        shutil.rmtree(cache, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------- report


def _psnr(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return "identical"
    p5, p50 = np.percentile(values, 5), np.percentile(values, 50)
    show = lambda v: "inf" if not np.isfinite(v) else f"{v:.1f}"  # noqa: E731
    return f"{show(p5)} / {show(p50)}"


def report(res: dict) -> str:
    cli = res["cli"]
    lines = [f"# Benchmark 7: the imagenet recipe at 224 px on each data path ({'quick' if cli['quick'] else 'full'})",
             "", machine_section(), "", f"Load average at start / end: {res['load_start']} / {load_average()}.", "",
             f"Data: {cli['num_images']} sharp Food-101-shaped JPEGs (quality 90; 512x384, 384x512, 512x512), "
             f"{NUM_CLASSES} classes; batch {cli['batch_size']}. Command: `python -m benchmarks.bench_crop_path "
             + " ".join(cli["argv"]) + "`.", ""]
    lines += ["## a. What the model sees: each device path's views against the per-image path's", "",
              f"{res['crops']} augmented crops (and their original views) of the same examples under the same seeds.",
              ""]
    rows = []
    for name, views in res["fidelity"].items():
        interpolation, path, op = name.split(" | ")
        for view in ("augmented", "original"):
            r = views[view]
            rows.append((interpolation, path, op, view, f"{r['exact'].mean() * 100:.1f} %", _psnr(r["psnr"]),
                         f"{r['max'].max():.0f}"))
    lines.append(table(["recipe", "path", "op", "view", "bit-identical", "PSNR p5 / median (dB)",
                        "largest difference (of 255)"], rows))
    loader = res["loader"]
    ratio = loader["per-image"] / loader["every read"]
    lines += ["", "## b. The loader's CPU work per example (1 torch thread, process CPU time, median of "
              f"{len(loader['rounds']['default'])} interleaved rounds)", ""]
    lines.append(table(["path", "per example", "per-image / this"],
                       [(name, f"{loader[name] * 1e6:.0f} us", fmt_ratio(loader["per-image"] / loader[name]))
                        for name in PATHS]))
    lines += ["", f"Target: the exact path without a store (`every read`, decode only) >= {LOADER_CPU_TARGET:g}x less "
              f"than per-image: {fmt_ratio(ratio)}, {verdict(ratio >= LOADER_CPU_TARGET)}.", ""]
    epochs = res["epochs"]
    lines += ["## c. One training epoch, 0 loader workers, tiny CNN (train_runtime, median of "
              f"{len(epochs['rounds']['default'])} interleaved rounds, each in its own process)", ""]
    reference = epochs.get("baseline default")
    lines.append(table(["path", "epoch", "rounds", "baseline / this"],
                       [(name, f"{epochs[name]:.2f} s", ", ".join(f"{v:.2f}" for v in epochs["rounds"][name]),
                         fmt_ratio(reference / epochs[name]) if reference else "-")
                        for name in epochs["rounds"]]))
    if reference:
        ok = epochs["default"] <= reference * 1.02
        lines += ["", f"Target: `default` (exact) not slower than the baseline's default ({cli['baseline']}, its "
                  f"views: {epochs['views']['baseline default'][:160]}...): {epochs['default']:.2f} s vs "
                  f"{reference:.2f} s, {verdict(ok)} (within 2 %)."]
    else:
        lines += ["", "No baseline commit given (`--baseline`): the target against the former default is unmeasured."]
    lines += ["", "The run log's `views` line of each path:", ""]
    lines += [f"* {name}: {text}" for name, text in epochs["views"].items()]
    stores = res["stores"]
    lines += ["", "## d. The stores (cold build, 2 threads, and bytes an image)", ""]
    lines.append(table(["store", "cold build", "images / s", "bytes an image", "Food-101 (101,000 images)"],
                       [(name, f"{r['seconds']:.2f} s", f"{cli['num_images'] / r['seconds']:.0f}",
                         f"{r['bytes_per_image']:,.0f}", f"{r['bytes_per_image'] * 101_000 / 2**30:.1f} GiB")
                        for name, r in stores.items()]))
    lines += ["", "GPU: see `benchmarks.gpu_epoch` (unmeasured unless docs/gpu holds a run of the current code)."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, num_images: int | None = None, crops: int | None = None, rounds: int | None = None,
        batch_size: int | None = None, baseline: str | None = None, argv: list[str] | None = None) -> dict:
    num_images = num_images or (32 if quick else 300)
    crops = crops or (8 if quick else 600)
    rounds = rounds or (1 if quick else 3)
    batch_size = batch_size or (16 if quick else 64)
    res = {"load_start": load_average(), "crops": crops,
           "cli": {"quick": quick, "num_images": num_images, "batch_size": batch_size, "argv": argv or [],
                   "baseline": baseline}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_data(folder, num_images)
        cache = str(folder / "cache")
        res["fidelity"] = measure_fidelity(data, cache, crops, quick=quick)
        res["loader"] = measure_loader_cpu(data, cache, batch_size, rounds)
        worktree = baseline_worktree(baseline, folder) if baseline else None
        try:
            res["epochs"] = measure_epochs(folder, batch_size, rounds, worktree, quick)
        finally:
            if worktree is not None:
                subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True, check=False)
        res["stores"] = measure_stores(data, folder)
    return res


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (numbers meaningless)")
    parser.add_argument("--num_images", type=int, default=None)
    parser.add_argument("--crops", type=int, default=None, help="crops compared in part a (default 600)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None, help="default 64")
    parser.add_argument("--baseline", default=None, help="a commit whose default path part c times beside (git)")
    parser.add_argument("--out", default=None, help="write the report here (markdown)")
    cli = parser.parse_args(argv)
    text = report(run(cli.quick, cli.num_images, cli.crops, cli.rounds, cli.batch_size, cli.baseline, argv))
    if cli.out:
        Path(cli.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
