"""What checking each stored row's checksum costs the loader: its CPU time for an epoch of two-view batches, with the
checks and without, side by side (BENCHMARKS.md, "Store checksums").

Two stores, as `prepare_views` makes them on the device path: CIFAR-shaped PNGs (32 px, the `cifar` recipe: one
square gather a batch) and Food-101-shaped JPEGs (the `imagenet` recipe at 224 px: full-resolution rows, of which the
loader copies each example's crop, plus the stored original views). A row is checked once a run (the processes of a
DataLoader share which rows were checked), so the run's first epoch checks every row ("first epoch": the checks made
afresh each round) and the later ones only look up that their rows were checked ("later epochs"); "unchecked" is the
same store with its checks turned off. The loader's work is `SeededAugmentation.__getitems__` and the collator, one
torch thread, process CPU time, rounds interleaved, the median.

    python -m benchmarks.bench_store_checks [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.bench_crop_path import interleaved
from benchmarks.common import machine_section, median, table
from benchmarks.synthetic import write_image_dataset
from synermix_hf import ClassBalancedBatchSampler, PositionedBatchSampler, SeededAugmentation, SynerMixCollator
from synermix_hf import prepare_views
from synermix_hf.data.image_store import _changed_rows
from synermix_hf.data.transforms import TransformSpec

CASES = {  # name: (spec, images, writer keyword arguments, batch size)
    "cifar, 32 px (square gather)": (TransformSpec("cifar", 32), 4096, {"size": 32, "image_format": "png"}, 128),
    "imagenet, 224 px (full-resolution crops + original views)": (
        TransformSpec("imagenet", 224), 384,
        {"size": 0, "image_format": "jpeg", "shapes": [(384, 512), (512, 384), (375, 500), (512, 512)]}, 32),
}


def _stores(dataset) -> list:
    return [store for store in (dataset.store, dataset.originals) if store is not None]


def measure(spec, data, cache: str, batch_size: int, rounds: int) -> dict[str, float]:
    """Median CPU seconds an image of the loader's epoch, with and without the checks."""
    loaders = {}
    for name in ("first epoch", "later epochs", "unchecked"):
        prepared = prepare_views(data, None, spec, "image", "label", two_views=True, views_on="device",
                                 cache_dir=cache)
        if name == "unchecked":
            for store in _stores(prepared.train):
                store._checked = None  # the checks off: the store read as before they existed
        loaders[name] = (SeededAugmentation(prepared.train, seed=0), _stores(prepared.train))
    assert all(store.checksums is not None for store in loaders["first epoch"][1]), "the stores should have checksums"
    collate = SynerMixCollator()
    batches = list(PositionedBatchSampler(ClassBalancedBatchSampler(data["label"], batch_size=batch_size, seed=0)))
    examples = sum(len(batch) for batch in batches)

    def epoch(name: str):
        dataset, stores = loaders[name]

        def run() -> float:
            if name == "first epoch":
                for store in stores:
                    store._checked.zero_()  # every row checked again, as a store too large to check when opened
                    store._all_checked = False
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                start = time.process_time()
                for items in batches:
                    collate(dataset.__getitems__(items))
                return (time.process_time() - start) / examples
            finally:
                torch.set_num_threads(before)

        return run

    results = interleaved({name: epoch(name) for name in loaders}, rounds)

    def at_open() -> float:  # what a store small enough pays instead, once a run, when it is opened
        start = time.process_time()
        for store in loaders["first epoch"][1]:
            _changed_rows(store.pixels, store.index, store.checksums, np.arange(len(store)))
        return time.process_time() - start

    return {**{name: median(values) for name, values in results.items()}, "at open": median([at_open() for _ in
                                                                                             range(rounds)])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few images, two rounds")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for number, (case, (spec, images, writer, batch_size)) in enumerate(CASES.items()):
            images, batch_size = (min(images, 64), min(batch_size, 16)) if args.quick else (images, batch_size)
            data = write_image_dataset(Path(folder) / f"data{number}", images, num_classes=8, **writer)
            result = measure(spec, data, str(Path(folder) / "cache"), batch_size, 2 if args.quick else args.rounds)
            first, later, unchecked = result["first epoch"], result["later epochs"], result["unchecked"]
            rows.append([case, images, f"{unchecked * 1e6:.1f}", f"{first * 1e6:.1f} ({(first / unchecked - 1):+.1%})",
                         f"{later * 1e6:.1f} ({(later / unchecked - 1):+.1%})",
                         f"{result['at open'] * 1e3:.1f} ms ({result['at open'] / images * 1e6:.1f} us an image)"])
    print(machine_section())
    print(f"\ntorch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}\n")
    print(table(["store", "images", "unchecked", "checked: first epoch", "checked: later epochs",
                 "all checked when opened"], rows))
    print("\nThe loader's CPU time, microseconds an image (cost against unchecked); the CPU time of checking every "
          "row of the store(s) at once, as a run does when it opens a store of up to 1 GiB.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
