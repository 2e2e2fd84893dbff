"""GPU check (about a minute on one H100): fp16 and bf16 SynerMix steps of resnet18 at 32 px on synthetic data.

For each precision it trains the baseline (plain cross-entropy) and SynerMix (beta 0.1 + MixUp) through
`SynerMixTrainer` for a few dozen steps, checks that every loss is finite and that the loss falls, and prints
images/s measured after warm-up. fp16 runs with the Trainer's gradient scaler (through Accelerate).

    python scripts/gpu_check.py                 # on CUDA
    python scripts/gpu_check.py --device cpu --steps 6 --batch_size 16 --precisions bf16   # a CPU smoke run

Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments  # noqa: E402
from synermix_hf.models import build_torchvision_classifier  # noqa: E402

NUM_CLASSES = 10
VARIANTS = {"baseline": {"beta": 0.0, "inter_mixup": "none"}, "synermix": {"beta": 0.1, "inter_mixup": "mixup"}}


class SyntheticTwoViews(torch.utils.data.Dataset):
    """Learnable synthetic images: the class sets a per-channel mean; the augmented view adds noise."""

    def __init__(self, size: int, image_size: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % NUM_CLASSES
        class_means = torch.randn(NUM_CLASSES, 3, 1, 1, generator=generator)
        noise = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.original = class_means[self.labels] + 0.8 * noise
        self.augmented = self.original + 0.3 * torch.randn(self.original.shape, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "pixel_values": self.augmented[index],
            "original_pixel_values": self.original[index],
            "labels": int(self.labels[index]),
        }


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.started, self.steps = warmup, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.started = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1

    def seconds(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - self.started


def run(variant: str, precision: str, cli: argparse.Namespace, output_dir: Path) -> dict:
    torch.manual_seed(0)
    model = build_torchvision_classifier("resnet18", NUM_CLASSES, image_size=32)
    args = SynerMixTrainingArguments(
        output_dir=str(output_dir / f"{variant}-{precision}"), report_to=[], save_strategy="no", seed=0,
        per_device_train_batch_size=cli.batch_size, max_steps=cli.steps, learning_rate=0.05, optim="sgd",
        logging_steps=1, disable_tqdm=True, dataloader_drop_last=True, use_cpu=cli.device == "cpu",
        fp16=precision == "fp16", bf16=precision == "bf16", **VARIANTS[variant],
    )  # fmt: skip
    timer = StepTimer(warmup=min(5, cli.steps // 2))
    dataset = SyntheticTwoViews(size=cli.batch_size * cli.steps)
    trainer = SynerMixTrainer(model=model, args=args, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    seconds = timer.seconds()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    window = max(1, len(losses) // 4)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    images = timer.steps * cli.batch_size
    return {
        "variant": variant,
        "precision": precision,
        "finite": all(math.isfinite(loss) for loss in losses),
        "falling": last < first,
        "first_loss": first,
        "last_loss": last,
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "scaler": type(getattr(trainer.accelerator, "scaler", None)).__name__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])
    parser.add_argument("--output_dir", default="/tmp/synermix_gpu_check")
    cli = parser.parse_args()
    if cli.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: nothing to check (use --device cpu for a smoke run).")
        return 0
    hf_logging.set_verbosity_error()
    device_name = torch.cuda.get_device_name() if cli.device == "cuda" else "cpu"
    print(f"device: {device_name}; torch {torch.__version__}; batch {cli.batch_size}; {cli.steps} steps")
    results = [run(v, p, cli, Path(cli.output_dir)) for p in cli.precisions for v in VARIANTS]
    print("| precision | variant | finite | falling | first loss | last loss | images/s | grad scaler |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['precision']} | {r['variant']} | {r['finite']} | {r['falling']} | {r['first_loss']:.3f} "
            f"| {r['last_loss']:.3f} | {r['images_per_s']:.0f} | {r['scaler']} |"
        )
    for precision in cli.precisions:
        by_variant = {r["variant"]: r for r in results if r["precision"] == precision}
        ratio = by_variant["baseline"]["images_per_s"] / by_variant["synermix"]["images_per_s"]
        print(f"{precision}: SynerMix step costs {ratio:.2f}x the baseline step (images/s ratio)")
    failed = [r for r in results if not (r["finite"] and r["falling"])]
    if failed:
        print(f"FAILED: {[(r['precision'], r['variant']) for r in failed]}")
        return 1
    print("OK: all losses finite and falling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
