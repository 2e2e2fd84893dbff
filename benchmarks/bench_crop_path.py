"""Benchmark 7: the `imagenet` family (RandomResizedCrop, 224 px) on each data path, on this machine's CPU, side by
side in one run with earlier commits: what the model sees, what making the views costs, what an epoch takes.

Food-101-shaped data: sharp JPEG images (quality 90; 512x384, 384x512 and 512x512 in turn; hard-edged blocks, smooth
noise and grain, so that a softer crop shows), 10 classes, in a saved `datasets.Dataset` with the Hub's `image` /
`label` schema. Every path makes the recipe's two views at 224 px (RandomResizedCrop + flip, and Resize(256) +
CenterCrop(224)), seeded per example appearance through `SeededAugmentation` and the balanced sampler:

* `per-image`: each image decoded and both views made with torchvision in the loader (`views_on="loader"`);
* `default`: the training images decoded once at full resolution into a store, with their original views made once
  beside them; the loader cuts each crop from the stored pixels with the recipe's own torchvision steps
  (RandomResizedCrop + flip, under the example's seed), and `NormalizedViews` does `ToTensor` + `Normalize` of the
  batch on the device (here the CPU);
* `per-image @COMMIT`, `default @COMMIT` (parts b and c, with `--baseline COMMIT`, which may be given more than once):
  the same at that commit, from a `git worktree` of it. `COMMIT:per-image` or `COMMIT:default` times only that path;
  a commit's `default` that takes the per-image path there (3210511 has no device path for this recipe) is timed once,
  as its `per-image`.

Parts:

a. fidelity: >= 500 augmented crops, their original views and the evaluation views of the default path against the
   per-image path's, both through `prepare_views` (the same examples, the same seeds): the share that is
   bit-identical, PSNR (p5 / median, dB, on the [0, 1] pixels) and the largest difference, bilinear and bicubic (timm)
   recipes;
b. the CPU cost of making both views, per example (process CPU time, 1 torch thread): `__getitems__` of a batch, the
   collator and, on the device path, its `device_views` run on the CPU (the former `CropViews` resampled the crops
   there);
c. one training epoch with 0 and with 2 loader workers, a tiny CNN (the data path sets the pace). Targets (issue 32):
   the default epoch at least 2x faster than the per-image epoch of the first `--baseline` (3210511 in the issue) with
   0 workers, and not slower with 2;
d. the stores' sizes and cold builds.

Parts b and c run each path in a process of its own (`benchmarks/epoch_child.py`, one per measurement), rounds
interleaved in a shuffled order; the stores are built before anything is timed. `--quick` is a smoke run: tiny sizes,
one round, each path's measurements in one process.

    python -m benchmarks.bench_crop_path [--quick] [--baseline 3210511 --baseline 60f253d] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, fmt_ratio, load_average, machine_section, median, table  # noqa: I001
from benchmarks.common import verdict  # first: offline environment, import path
from benchmarks.synthetic import FOOD101_SHAPES, random_image

import datasets
import numpy as np
import torch
from PIL import Image

from synermix_hf import SeededAugmentation, SynerMixCollator, prepare_views
from synermix_hf.data.transforms import TransformSpec

NUM_CLASSES = 10
SPEC = TransformSpec("imagenet", 224)
RECIPES = {"bilinear": SPEC,
           "bicubic, crop fraction 0.9 (timm)": TransformSpec("imagenet", 224, interpolation="bicubic", crop_pct=0.9)}
PATHS = {"per-image": "loader", "default": "auto"}  # name: epoch_child.py's --views_on
WORKERS = (0, 2)
EPOCH_TARGETS = {0: 2.0, 2: 1.0}  # workers: the least (per-image epoch of the first baseline) / (default epoch)
FOOD101_TRAIN, FOOD101_EVAL = 75_750, 25_250


@dataclass(frozen=True)
class Variant:
    """One data path of one checkout: `path` is a key of `PATHS`; `commit` None is the current code."""

    path: str
    root: Path
    commit: str | None = None
    asked: bool = False  # the path was named (COMMIT:path), so it is timed even where it repeats another

    @property
    def label(self) -> str:
        return self.path if self.commit is None else f"{self.path} @{self.commit}"


def parse_baseline(value: str) -> tuple[str, tuple[str, ...]]:
    """`COMMIT` or `COMMIT:PATH` (PATH a key of `PATHS`) -> `(commit, paths)`."""
    commit, _, path = value.partition(":")
    if not commit or (path and path not in PATHS):
        raise argparse.ArgumentTypeError(f"{value!r}: give COMMIT or COMMIT:PATH, PATH one of {', '.join(PATHS)}")
    return commit, (path,) if path else tuple(PATHS)


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


def interleaved(variants: dict, rounds: int, seed: int = 0) -> dict:
    """Each variant once a round, in a shuffled order; the results of each, round after round."""
    results: dict = {name: [] for name in variants}
    order = list(variants)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            results[name].append(variants[name]())
    return results


# ------------------------------------------------------------------------------------------------ a. fidelity


def _compare(made: torch.Tensor, expected: torch.Tensor, spec: TransformSpec) -> dict[str, np.ndarray]:
    """Per image: bit-identical, PSNR (dB, [0, 1] pixels, inf when identical) and the largest difference (0-255)."""
    if made.shape != expected.shape:
        raise RuntimeError(f"the default path's views are {tuple(made.shape)}, the per-image path's "
                           f"{tuple(expected.shape)}")
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    difference = (made.float() - expected.float()) * std
    error = difference.pow(2).flatten(1).mean(1).double()
    psnr = torch.where(error > 0, 10 * torch.log10(1 / error.clamp_min(1e-30)), torch.full_like(error, float("inf")))
    return {"exact": np.array([torch.equal(a, b) for a, b in zip(made, expected)]),
            "psnr": psnr.numpy(), "max": (difference.abs().flatten(1).amax(1) * 255).double().numpy()}


def measure_fidelity(data: datasets.Dataset, cache_dir: str, crops: int, batch_size: int = 32) -> dict:
    """The default (device) path's views against the per-image path's, both made through `prepare_views` and
    `SeededAugmentation` for the same example appearances (each image cropped `crops / len(data)` times, each
    appearance its own draw): augmented and original views of `crops` training examples, and the evaluation views
    of the set."""
    collate = SynerMixCollator()
    items = [(position % len(data), position) for position in range(crops)]  # (index, position in the epoch)
    results = {}
    for recipe, spec in RECIPES.items():
        common = {"two_views": True, "cache_dir": cache_dir}
        loader = prepare_views(data, data, spec, "image", "label", views_on="loader", **common)
        device = prepare_views(data, data, spec, "image", "label", views_on="device", **common)
        per_image, stored = SeededAugmentation(loader.train, seed=7), SeededAugmentation(device.train, seed=7)
        rows: dict[str, list] = {"augmented": [], "original": [], "evaluation": []}
        for start in range(0, crops, batch_size):
            chunk = items[start : start + batch_size]
            expected = collate(per_image.__getitems__(chunk))
            made = stored.device_views(collate(stored.__getitems__(chunk)))
            rows["augmented"].append(_compare(made["pixel_values"], expected["pixel_values"], spec))
            rows["original"].append(_compare(made["original_pixel_values"], expected["original_pixel_values"], spec))
        for start in range(0, len(data), batch_size):
            chunk = list(range(start, min(start + batch_size, len(data))))
            expected = collate([loader.eval[index] for index in chunk])
            made = device.eval.device_views(collate(device.eval.__getitems__(chunk)))
            rows["evaluation"].append(_compare(made["pixel_values"], expected["pixel_values"], spec))
        results[recipe] = {view: {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
                           for view, parts in rows.items()}
    return results


# ---------------------------------------------------------------------- b, c. each path in a process of its own


def _child(variant: Variant, folder: Path, batch_size: int, measures: list[str]) -> dict:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "epoch_child.py"), "--root", str(variant.root),
               "--data", str(folder / "data"), "--cache", str(folder / f"cache-{variant.root.name}"),
               "--out", str(folder / "run"), "--batch_size", str(batch_size), "--views_on", PATHS[variant.path],
               "--measure", *measures]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.label}: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_worktree(commit: str, folder: Path) -> Path:
    """A `git worktree` of `commit` under `folder`; RuntimeError with git's words when it cannot be made."""
    target = folder / f"baseline-{commit}"
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(target), commit],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"--baseline {commit}: no git worktree of it: {done.stderr.strip()[-500:]}")
    return target


def measure_paths(variants: list[Variant], folder: Path, batch_size: int, rounds: int, quick: bool) -> dict:
    """Parts b and c: `{"views": {label: child's description}, "repeats": {label: why not timed}, "loader": {label:
    [s per example, a round]}, "examples": n, "epochs": {workers: {label: [s, a round]}}}`."""
    epochs = [f"epoch:{workers}" for workers in WORKERS]
    if quick:  # a smoke run: one process a path, every measurement in it
        found = {v.label: _child(v, folder, batch_size, ["loader_cpu", *epochs]) for v in variants}
    else:  # the stores built before any timing
        found = {v.label: _child(v, folder, batch_size, ["prepare"]) for v in variants}
    repeats = {}
    for variant in variants:
        if (variant.commit is not None and variant.path == "default" and not variant.asked
                and found[variant.label]["views_on"] == "loader"):
            repeats[variant.label] = (f"takes the per-image path at {variant.commit} (its views line: "
                                      f"{found[variant.label]['views'][:200]}), timed once, as per-image "
                                      f"@{variant.commit}")
    timed = [v for v in variants if v.label not in repeats]
    result = {"views": {label: child["views"] for label, child in found.items()},
              "views_on": {label: child["views_on"] for label, child in found.items()},
              "packages": {label: child["synermix_hf"] for label, child in found.items()}, "repeats": repeats}
    if quick:
        result["loader"] = {v.label: [found[v.label]["loader_cpu_s"]] for v in timed}
        result["examples"] = found[timed[0].label]["examples"]
        result["epochs"] = {w: {v.label: [found[v.label][f"epoch:{w}"]] for v in timed} for w in WORKERS}
        return result

    def loader(variant: Variant):
        def run() -> float:
            child = _child(variant, folder, batch_size, ["loader_cpu"])
            result["examples"] = child["examples"]
            return child["loader_cpu_s"]
        return run

    def epoch(variant: Variant, workers: int):
        return lambda: _child(variant, folder, batch_size, [f"epoch:{workers}"])[f"epoch:{workers}"]

    result["loader"] = interleaved({v.label: loader(v) for v in timed}, rounds)
    by_run = interleaved({(v.label, w): epoch(v, w) for v in timed for w in WORKERS}, rounds, seed=1)
    result["epochs"] = {w: {v.label: by_run[(v.label, w)] for v in timed} for w in WORKERS}
    return result


# ---------------------------------------------------------------------------------------------- d. the stores


def measure_stores(data: datasets.Dataset, folder: Path) -> dict:
    from synermix_hf.data.image_store import stored_images_and_failures

    out = {}
    for name, kwargs in (("training images at full resolution", {"short_side": 0}),
                         (f"original / evaluation views (Resize({SPEC.eval_resize}) + CenterCrop({SPEC.image_size}))",
                          {"short_side": SPEC.image_size, "interpolation": SPEC.interpolation,
                           "centre_crop_of": SPEC.eval_resize})):
        cache = folder / f"cold-{len(out)}"
        start = time.perf_counter()
        store, _ = stored_images_and_failures(data, "image", cache_dir=str(cache), **kwargs)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(store.path).iterdir())
        out[name] = {"seconds": seconds, "bytes_per_image": size / len(data),
                     "food101": FOOD101_TRAIN if kwargs["short_side"] == 0 else FOOD101_TRAIN + FOOD101_EVAL}
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


def _reference(labels: list[str], baselines: list[str]) -> str:
    """The per-image path the targets are measured against: the first baseline's, else the current code's."""
    return next((f"per-image @{commit}" for commit in baselines if f"per-image @{commit}" in labels), "per-image")


def report(res: dict) -> str:
    cli = res["cli"]
    lines = [f"# Benchmark 7: the imagenet recipe at 224 px on each data path ({'quick' if cli['quick'] else 'full'})",
             "", machine_section(), "", f"Load average at start / end: {res['load_start']} / {load_average()}.", "",
             f"Data: {cli['num_images']} sharp Food-101-shaped JPEGs (quality 90; 512x384, 384x512, 512x512), "
             f"{NUM_CLASSES} classes; batch {cli['batch_size']}. Command: `python -m benchmarks.bench_crop_path "
             + " ".join(cli["argv"]) + "`.", ""]
    lines += ["## a. What the model sees: the default path's views against the per-image path's", "",
              f"{res['crops']} augmented crops and their original views (the same example appearances under the same "
              f"seeds), and the evaluation views of the {cli['num_images']} images, each made through `prepare_views` "
              "on both paths.", ""]
    rows = []
    for recipe, views in res["fidelity"].items():
        for view, r in views.items():
            rows.append((recipe, view, len(r["exact"]), f"{r['exact'].mean() * 100:.1f} %", _psnr(r["psnr"]),
                         f"{r['max'].max():.0f}"))
    lines.append(table(["recipe", "view", "images", "bit-identical", "PSNR p5 / median (dB)",
                        "largest difference (of 255)"], rows))

    paths = res["paths"]
    labels = list(paths["loader"])
    reference = _reference(labels, cli["baselines"])
    loader = {label: median(values) for label, values in paths["loader"].items()}
    lines += ["", "## b. The CPU cost of making both views, per example (1 torch thread, process CPU time: "
              "`__getitems__` + collator + the device path's `device_views` on the CPU; median of "
              f"{len(paths['loader'][labels[0]])} interleaved rounds, {paths.get('examples', '?')} examples a round, "
              "each in its own process)", ""]
    lines.append(table(["path", "per example", "rounds (us)", f"{reference} / this"],
                       [(label, f"{loader[label] * 1e6:.0f} us",
                         ", ".join(f"{v * 1e6:.0f}" for v in paths["loader"][label]),
                         fmt_ratio(loader[reference] / loader[label])) for label in labels]))

    lines += ["", "## c. One training epoch, tiny CNN (train_runtime; median of "
              f"{len(paths['epochs'][WORKERS[0]][labels[0]])} interleaved rounds, each in its own process)", ""]
    rows = []
    for workers, by_label in paths["epochs"].items():
        epochs = {label: median(values) for label, values in by_label.items()}
        rows += [(workers, label, f"{epochs[label]:.2f} s", ", ".join(f"{v:.2f}" for v in by_label[label]),
                  fmt_ratio(epochs[reference] / epochs[label])) for label in labels]
    lines.append(table(["loader workers", "path", "epoch", "rounds (s)", f"{reference} / this"], rows))
    lines.append("")
    if paths["views_on"]["default"] != "device":
        lines += ["**The current `default` took the per-image path here** (see its views line below): the targets "
                  "below do not measure the device path.", ""]
    if reference == "per-image":
        lines += ["No `--baseline` per-image path: the targets below are against the current per-image path, not the "
                  "issue's (`--baseline 3210511`).", ""]
    for workers, least in EPOCH_TARGETS.items():
        epochs = {label: median(values) for label, values in paths["epochs"][workers].items()}
        ratio = epochs[reference] / epochs["default"]
        goal = f"at least {least:g}x faster than" if least > 1 else "not slower than"
        lines.append(f"* {workers} loader workers: `default` {goal} `{reference}`: {epochs['default']:.2f} s vs "
                     f"{epochs[reference]:.2f} s, {fmt_ratio(ratio)}, {verdict(ratio >= least)}.")
    for commit in cli["baselines"]:
        label = f"default @{commit}"
        if label in labels:
            for workers in WORKERS:
                epochs = paths["epochs"][workers]
                lines.append(f"* {workers} loader workers: `{label}` / `default`: "
                             f"{fmt_ratio(median(epochs[label]) / median(epochs['default']))} (above 1: now faster).")
            lines.append(f"* Views' CPU cost (part b): `{label}` / `default`: "
                         f"{fmt_ratio(loader[label] / loader['default'])}.")
    lines += ["", "The run log's `views` line of each path (and the synermix_hf it imported):", ""]
    lines += [f"* {label}: {text} (`{paths['packages'][label]}`)" for label, text in paths["views"].items()]
    lines += [f"* {label} not timed: {why}." for label, why in paths["repeats"].items()]

    stores = res["stores"]
    lines += ["", f"## d. The stores (cold build, {os.cpu_count()} threads, and bytes an image)", ""]
    lines.append(table(["store", "cold build", "images / s", "bytes an image", "Food-101"],
                       [(name, f"{r['seconds']:.2f} s", f"{cli['num_images'] / r['seconds']:.0f}",
                         f"{r['bytes_per_image']:,.0f}",
                         f"{r['bytes_per_image'] * r['food101'] / 2**30:.1f} GiB ({r['food101']:,} images)")
                        for name, r in stores.items()]))
    lines += ["", "The training set needs both stores when beta > 0 (its original views), the evaluation set the "
              "second only. GPU: see `benchmarks.gpu_epoch` (unmeasured unless docs/gpu holds a run of the current "
              "code)."]
    return "\n".join(lines) + "\n"


def run(quick: bool = False, num_images: int | None = None, crops: int | None = None, rounds: int | None = None,
        batch_size: int | None = None, baselines: list[str] | None = None, argv: list[str] | None = None) -> dict:
    """Every part; `baselines`: `COMMIT` or `COMMIT:PATH` (see `parse_baseline`), timed beside the current code."""
    num_images = num_images or (16 if quick else 300)
    crops = crops or (8 if quick else 600)
    rounds = rounds or (1 if quick else 3)
    batch_size = batch_size or (8 if quick else 64)
    parsed = [parse_baseline(value) for value in baselines or []]
    res = {"load_start": load_average(), "crops": crops,
           "cli": {"quick": quick, "num_images": num_images, "batch_size": batch_size, "argv": argv or [],
                   "baselines": [commit for commit, _ in parsed]}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_data(folder, num_images)
        res["fidelity"] = measure_fidelity(data, str(folder / "cache"), crops)
        worktrees: list[Path] = []
        try:
            variants = [Variant(path, REPO_ROOT) for path in PATHS]
            for commit, paths in parsed:
                worktrees.append(baseline_worktree(commit, folder))
                variants += [Variant(path, worktrees[-1], commit, asked=len(paths) == 1) for path in paths]
            res["paths"] = measure_paths(variants, folder, batch_size, rounds, quick)
        finally:
            for worktree in worktrees:
                subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True, check=False)
        res["stores"] = measure_stores(data, folder)
    return res


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (numbers meaningless)")
    parser.add_argument("--num_images", type=int, default=None, help="default 300")
    parser.add_argument("--crops", type=int, default=None, help="crops compared in part a (default 600)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3")
    parser.add_argument("--batch_size", type=int, default=None, help="default 64")
    parser.add_argument("--baseline", action="append", default=[], metavar="COMMIT[:PATH]",
                        help="a commit (git) whose paths parts b and c time beside the current code; again for "
                        "another; COMMIT:per-image or COMMIT:default times only that path. The targets of part c are "
                        "against the per-image path of the first")
    parser.add_argument("--out", default=None, help="write the report here (markdown)")
    cli = parser.parse_args(argv)
    for value in cli.baseline:
        try:
            parse_baseline(value)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--baseline {error}")
    text = report(run(cli.quick, cli.num_images, cli.crops, cli.rounds, cli.batch_size, cli.baseline, argv))
    if cli.out:
        Path(cli.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
