"""The `imagenet` recipe at 224 px, measured in a process of its own with the synermix_hf of `--root`.

`benchmarks.bench_crop_path` runs every data path through this script, so that the current code and earlier commits
(a `git worktree` of each, `--baseline`) are measured alike, side by side in one run. Only the public API that all of
them have is used (`prepare_views`, `SeededAugmentation`, the samplers, `SynerMixCollator`, `SynerMixTrainer`,
`SynerMixTrainingArguments`). Each `--measure` runs in turn in this process:

* `prepare`: `prepare_views` only (the stores are built here, before anything is timed);
* `loader_cpu`: the process CPU time per example (1 torch thread) of making both views of one epoch's batches, as the
  training loop does on the CPU: `__getitems__` of a batch, the collator and, where the views are finished on the
  device, the dataset's `device_views` (run here on the CPU; the former `CropViews` resampled the crops there);
  its first batch is run once untimed, so that first-call costs do not count;
* `epoch:W`: one training epoch with W DataLoader workers (a tiny CNN: the data path sets the pace), `train_runtime`.

It prints one JSON line: `{"views": the run log's line, "views_on": "device" or "loader", "synermix_hf": its folder,
"loader_cpu_s": seconds per example, "examples": ..., "epoch:W": seconds, ...}`.

    python benchmarks/epoch_child.py --root . --data DIR --cache DIR --out DIR [--views_on loader] [--batch_size 64]
        [--measure prepare loader_cpu epoch:0 epoch:2]
"""

import argparse
import inspect
import json
import os
import sys
import time

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                   "WANDB_DISABLED": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}.items():
    os.environ.setdefault(key, value)


def _measures(values: list[str]) -> list[str]:
    for value in values:
        if value not in ("prepare", "loader_cpu") and not (value.startswith("epoch:") and value[6:].isdigit()):
            raise SystemExit(f"--measure: {value!r} is not prepare, loader_cpu or epoch:WORKERS (e.g. epoch:2)")
    return values


def loader_cpu(train, labels, batch_size: int) -> tuple[float, int]:
    """`(process CPU seconds per example, examples)` of making both views of one epoch's batches (1 torch thread)."""
    import torch

    from synermix_hf import ClassBalancedBatchSampler, PositionedBatchSampler, SeededAugmentation, SynerMixCollator

    dataset = SeededAugmentation(train, seed=0)
    # None: the loader makes the views. Commits before the wrappers forwarded them (e.g. 0a344fc): the dataset's own.
    device_views = getattr(dataset, "device_views", None) or getattr(train, "device_views", None)
    collate = SynerMixCollator()
    batches = list(PositionedBatchSampler(ClassBalancedBatchSampler(labels, batch_size=batch_size, seed=0)))

    def views(items) -> None:
        batch = collate(dataset.__getitems__(items))
        if device_views is not None:
            batch = device_views(batch)
        if "pixel_values" not in batch:
            raise SystemExit("loader_cpu: the batch has no pixel_values: this commit's device views were not found")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        views(batches[0])  # first-call costs (lazy imports, decoders) out of the timing
        start = time.process_time()
        for items in batches:
            views(items)
        seconds = time.process_time() - start
    finally:
        torch.set_num_threads(before)
    examples = sum(len(items) for items in batches)
    return seconds / examples, examples


def epoch(train, num_classes: int, out: str, batch_size: int, workers: int) -> float:
    """`train_runtime` of one epoch of a tiny CNN with `workers` DataLoader workers."""
    import torch
    from torch import nn
    from transformers.trainer_callback import PrinterCallback

    from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments

    class TinyNet(nn.Module):
        """A 4x4 average pool first (224 -> 56), then two 3x3 convolutions: the data path sets the pace."""

        def __init__(self, num_classes: int):
            super().__init__()
            self.features = nn.Sequential(
                nn.AvgPool2d(4), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.fc(self.features(x))

    args = SynerMixTrainingArguments(
        output_dir=out, report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no", disable_tqdm=True,
        logging_strategy="no", per_device_train_batch_size=batch_size, num_train_epochs=1, beta=0.1,
        inter_mixup="manifold_mixup", alpha=1.0, balanced_sampler=True, learning_rate=0.05,
        dataloader_num_workers=workers, seed=0)
    torch.manual_seed(0)
    trainer = SynerMixTrainer(model=TinyNet(num_classes), args=args, train_dataset=train)
    trainer.remove_callback(PrinterCallback)
    return trainer.train().metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="the checkout whose synermix_hf is measured")
    parser.add_argument("--data", required=True, help="a dataset saved with save_to_disk")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--views_on", default="auto", choices=["auto", "loader"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--measure", nargs="+", default=["epoch:0"], help="prepare, loader_cpu, epoch:WORKERS")
    cli = parser.parse_args()
    measures = _measures(cli.measure)
    root = os.path.realpath(cli.root)
    sys.path.insert(0, root)

    import datasets

    import synermix_hf
    from synermix_hf import prepare_views
    try:
        from synermix_hf.data.transforms import TransformSpec
    except ImportError:  # before the data layer became a package (e.g. 3210511, the per-image baseline of issue 32)
        from synermix_hf.transforms import TransformSpec

    package = os.path.dirname(os.path.realpath(synermix_hf.__file__))
    if os.path.dirname(package) != root:  # e.g. an editable install that wins over sys.path
        raise SystemExit(f"synermix_hf was imported from {package}, not from --root {root}")
    data = datasets.load_from_disk(cli.data)
    kwargs = {"views_on": cli.views_on, "cache_dir": cli.cache}
    if "views_on" not in inspect.signature(prepare_views).parameters:  # 3210511 named it data_path
        kwargs["data_path"] = {"loader": "per_image"}.get(kwargs.pop("views_on"), "auto")
    views = prepare_views(data, None, TransformSpec("imagenet", 224), "image", "label", two_views=True, **kwargs)
    taken = getattr(views, "views_on", None) or getattr(views, "data_path", None)
    result = {"views": views.description, "views_on": {"per_image": "loader"}.get(taken, taken),
              "synermix_hf": package}
    labels = list(data["label"])
    for measure in measures:
        if measure == "loader_cpu":
            result["loader_cpu_s"], result["examples"] = loader_cpu(views.train, labels, cli.batch_size)
        elif measure.startswith("epoch:"):
            workers = int(measure[6:])
            result[measure] = epoch(views.train, len(set(labels)), os.path.join(cli.out, f"w{workers}"),
                                    cli.batch_size, workers)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
