"""One training epoch of the `imagenet` recipe at 224 px, in a process of its own, with the synermix_hf of `--root`.

`benchmarks.bench_crop_path` runs every data path through this script, so that the current code and an earlier commit
(a `git worktree` of it, `--baseline`) are timed alike, side by side in one run. It prints one JSON line:
`{"train_runtime": seconds, "views": the run log's line}`. Only the public API that both have is used
(`prepare_views`, `SynerMixTrainer`, `SynerMixTrainingArguments`).

    python benchmarks/epoch_child.py --root . --data DIR --cache DIR --out DIR [--views_on loader] [--short_side 256]
        [--budget_gib 0] [--batch_size 64] [--workers 0]
"""

import argparse
import json
import os
import sys

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                   "WANDB_DISABLED": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE"}.items():
    os.environ.setdefault(key, value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="the checkout whose synermix_hf is timed")
    parser.add_argument("--data", required=True, help="a dataset saved with save_to_disk")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--views_on", default="auto")
    parser.add_argument("--short_side", type=int, default=None)
    parser.add_argument("--budget_gib", type=float, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--prepare_only", action="store_true", help="build the stores, train nothing")
    cli = parser.parse_args()
    sys.path.insert(0, os.path.abspath(cli.root))

    import datasets
    import torch
    from torch import nn
    from transformers.trainer_callback import PrinterCallback

    from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments, prepare_views
    try:
        from synermix_hf.data.transforms import TransformSpec
    except ImportError:  # before the data layer became a package (e.g. 3210511, the per-image baseline of issue 32)
        from synermix_hf.transforms import TransformSpec

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

    data = datasets.load_from_disk(cli.data)
    kwargs = {"views_on": cli.views_on, "cache_dir": cli.cache}
    if cli.short_side is not None:
        kwargs["decode_short_side"] = cli.short_side
    if cli.budget_gib is not None:
        kwargs["decode_budget_gib"] = cli.budget_gib
    import inspect

    if "views_on" not in inspect.signature(prepare_views).parameters:  # 3210511 named it data_path
        kwargs["data_path"] = {"loader": "per_image"}.get(kwargs.pop("views_on"), "auto")
    views = prepare_views(data, None, TransformSpec("imagenet", 224), "image", "label", two_views=True, **kwargs)
    if cli.prepare_only:
        print(json.dumps({"views": views.description}))
        return
    args = SynerMixTrainingArguments(
        output_dir=cli.out, report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no", disable_tqdm=True,
        logging_strategy="no", per_device_train_batch_size=cli.batch_size, num_train_epochs=1, beta=0.1,
        inter_mixup="manifold_mixup", alpha=1.0, balanced_sampler=True, learning_rate=0.05,
        dataloader_num_workers=cli.workers, seed=0)
    torch.manual_seed(0)
    num_classes = len(set(data["label"]))
    trainer = SynerMixTrainer(model=TinyNet(num_classes), args=args, train_dataset=views.train)
    trainer.remove_callback(PrinterCallback)
    runtime = trainer.train().metrics["train_runtime"]
    print(json.dumps({"train_runtime": runtime, "views": views.description}))


if __name__ == "__main__":
    main()
