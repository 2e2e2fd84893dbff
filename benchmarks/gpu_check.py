"""GPU check: mixed-precision training, intra-class mixup on CUDA, host-device synchronisation inside the SynerMix
step, step time and memory.

Skips cleanly (exit code 0) when CUDA is not available, unless `--device cpu` asks for a CPU smoke run of the
training check. On a GPU it runs, in a few minutes:

1. Mixed-precision training: fp16 (with the Trainer's gradient scaler) and bf16 runs of resnet18 at 32 px on
   synthetic data, baseline and SynerMix (beta 0.1 + MixUp) through `SynerMixTrainer`: every loss finite and the loss
   falling, images/s after warm-up. A failed check makes the command exit with status 1.
2. `bench_intra_mixup` on CUDA at both sizes (reference per-class loop against the vectorised function).
3. The sync check. `torch.cuda.set_sync_debug_mode("error")` around the SynerMix loss and its backward
   (`trainer.training_step` on a batch already on the GPU) for beta > 0 with none / MixUp / Manifold MixUp and for
   beta = 0 with MixUp, with the trainer's deliberate finite-loss check (`_check_finite`, one `.item()` per step)
   switched off. Any synchronising call raises, and the check reports it as FAIL. Then the full step as the Trainer
   runs it (training step with `_check_finite`, the Trainer's NaN filter and gradient norm, optimizer step) under
   mode "warn", listing every synchronising call it makes.
4. Step time of every variant of `bench_train_step` (isolated step) and `torch.cuda.max_memory_allocated` per step.

    python -m benchmarks.gpu_check [--quick]
    python -m benchmarks.gpu_check --only training --device cpu --steps 6 --batch_size 16 --precisions bf16  # CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/gpu_check.py`: the repository root holds `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments
from synermix_hf.models import build_torchvision_classifier

from benchmarks.common import TrainTimer, machine_section, table

# ---- 1. Mixed-precision training ----

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


def train_precision(variant: str, precision: str, steps: int, batch_size: int, device: str, output_dir: Path) -> dict:
    torch.manual_seed(0)
    model = build_torchvision_classifier("resnet18", NUM_CLASSES, image_size=32)
    args = SynerMixTrainingArguments(
        output_dir=str(output_dir / f"{variant}-{precision}"), report_to=[], save_strategy="no", seed=0,
        per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=0.05, optim="sgd",
        logging_steps=1, disable_tqdm=True, dataloader_drop_last=True, use_cpu=device == "cpu",
        fp16=precision == "fp16", bf16=precision == "bf16", **VARIANTS[variant],
    )  # fmt: skip
    timer = TrainTimer(sync_steps=True)
    dataset = SyntheticTwoViews(size=batch_size * steps)
    trainer = SynerMixTrainer(model=model, args=args, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    times = timer.step_times(warmup=min(5, steps // 2))
    seconds = sum(wall for wall, _ in times)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    window = max(1, len(losses) // 4)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    images = len(times) * batch_size
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


def training_check(precisions: list[str], steps: int, batch_size: int, device: str) -> tuple[str, bool]:
    """Markdown of the mixed-precision training runs, and whether every loss was finite and falling."""
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_") as tmp:
        results = [train_precision(v, p, steps, batch_size, device, Path(tmp)) for p in precisions for v in VARIANTS]
    rows = [(r["precision"], r["variant"], r["finite"], r["falling"], f"{r['first_loss']:.3f}",
             f"{r['last_loss']:.3f}", f"{r['images_per_s']:.0f}", r["scaler"]) for r in results]
    text = table(["precision", "variant", "finite", "falling", "first loss", "last loss", "images/s", "grad scaler"],
                 rows)
    for precision in precisions:
        by_variant = {r["variant"]: r for r in results if r["precision"] == precision}
        ratio = by_variant["baseline"]["images_per_s"] / by_variant["synermix"]["images_per_s"]
        text += f"\n{precision}: the SynerMix step costs {ratio:.2f}x the baseline step (images/s ratio)\n"
    failed = [(r["precision"], r["variant"]) for r in results if not (r["finite"] and r["falling"])]
    text += f"\nFAILED: {failed}\n" if failed else "\nOK: all losses finite and falling\n"
    return text, not failed


# ---- 3. Host-device synchronisation ----

SYNC_SPECS = (
    "SynerMix beta=0.5, none",
    "SynerMix beta=0.1, MixUp",
    "SynerMix beta=0.1, Manifold MixUp",
    "SynerMix beta=0, MixUp",
)


def sync_check(batch_size: int) -> str:
    from benchmarks import bench_train_step as bts

    rows = []
    store = bts.make_store(batch_size)
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_") as tmp:
        for name in SYNC_SPECS:
            spec = next(s for s in bts.SPECS if s.name == name)
            variant = bts.build_variant(spec, store, batch_size, tmp)
            trainer = variant.trainer
            batch = bts.make_batch(store, batch_size, two_view=spec.beta > 0, device=variant.device)
            step = bts.step_fn(variant)
            for _ in range(3):  # warm-up: cuDNN autotuning, lazy initialisation, optimizer state
                step(batch)
            torch.cuda.synchronize()

            # (a) strict: the loss and its backward, without the deliberate finite-loss check
            check_finite = trainer._check_finite
            trainer._check_finite = lambda loss, components: None
            strict = "PASS (no synchronising call)"
            try:
                torch.cuda.set_sync_debug_mode("error")
                trainer.training_step(trainer.model, dict(batch))
            except RuntimeError as error:
                strict = "FAIL: " + str(error).splitlines()[0] + " at " + _caller(error)
            finally:
                torch.cuda.set_sync_debug_mode(0)
                trainer._check_finite = check_finite
                trainer.model.zero_grad()
            torch.cuda.synchronize()

            # (b) the full step as the Trainer runs it: list what synchronises
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step(batch)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [
                str(w.message).splitlines()[0] + f" ({w.filename.split('/')[-1]}:{w.lineno})"
                for w in caught
                if "synchroniz" in str(w.message)
            ]
            rows.append((name, strict, len(syncs), "; ".join(syncs) or "none"))
    return table(["variant", "loss + backward under mode 'error'", "syncs in full step", "where"], rows)


def _caller(error: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "synermix_hf" in f.filename]
    frame = frames[-1] if frames else traceback.extract_tb(error.__traceback__)[-1]
    return f"{frame.filename.split('/')[-1]}:{frame.lineno} ({frame.line})"


def cuda_memory_and_time(batch_size: int, rounds: int, steps: int) -> str:
    from benchmarks import bench_train_step as bts
    from benchmarks.common import fmt_ms

    store = bts.make_store(batch_size * 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_") as tmp:
        variants = [bts.build_variant(s, store, batch_size, tmp) for s in bts.SPECS]
        times = bts.measure_steps(variants, store, batch_size, rounds, steps, warmup=2)
        wall = {name: bts.median([t[0] for t in ts]) for name, ts in times.items()}
        base = wall["plain Trainer"]
        for v in variants:
            batch = bts.make_batch(store, batch_size, two_view=v.spec.beta > 0, device=v.device)
            step = bts.step_fn(v)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step(batch)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            med = wall[v.spec.name]
            pair = f"{med / wall[v.spec.pair]:.2f}x" if v.spec.pair else ""
            rows.append(
                (
                    v.spec.name,
                    fmt_ms(med),
                    f"{med / base:.2f}x",
                    pair,
                    f"{before / 2**20:.0f}",
                    f"{(peak - before) / 2**20:.0f}",
                )
            )
            v.model.to("cpu")
            del step, batch
            torch.cuda.empty_cache()
    return table(
        [
            "variant",
            "median step (ms)",
            "x plain Trainer",
            "x hand-written loop",
            "allocated before (MiB)",
            "step peak increase (MiB)",
        ],
        rows,
    )


SECTIONS = ("training", "intra", "sync", "memory")


def run(quick: bool = False, only: tuple[str, ...] = SECTIONS, device: str = "cuda", steps: int | None = None,
        batch_size: int | None = None, precisions: tuple[str, ...] = ("fp16", "bf16")) -> tuple[str | None, bool]:
    """The markdown of the sections in `only`, and whether the training check passed. None without CUDA (unless
    `device` is "cpu", which runs the training check only)."""
    if device == "cuda" and not torch.cuda.is_available():
        return None, True
    from benchmarks import bench_intra_mixup

    batch_size = batch_size or (16 if quick else 128)
    parts, passed = ["## GPU check\n", machine_section()], True
    if "training" in only:
        parts.append("\n### Mixed-precision training (losses finite and falling)\n")
        text, passed = training_check(list(precisions), steps or (8 if quick else 60), batch_size, device)
        parts.append(text)
    if device == "cuda":
        if "intra" in only:
            parts.append("\n### intra_class_mixup on CUDA\n")
            parts.append(bench_intra_mixup.report(bench_intra_mixup.run(quick=quick, device="cuda")))
        if "sync" in only:
            parts.append("\n### Host-device synchronisation in the SynerMix step\n")
            parts.append(sync_check(batch_size))
        if "memory" in only:
            parts.append("\n### Step time and memory on CUDA (isolated step, fp32)\n")
            parts.append(cuda_memory_and_time(batch_size, rounds=1 if quick else 3, steps=2 if quick else 5))
    return "\n".join(parts), passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="also write the markdown to this file")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke run of the training check only")
    parser.add_argument("--steps", type=int, help="training steps per run of the training check (default 60)")
    parser.add_argument("--batch_size", type=int, help="batch size (default 128, 16 with --quick)")
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    text, passed = run(quick=args.quick, only=only, device=args.device, steps=args.steps, batch_size=args.batch_size,
                       precisions=tuple(args.precisions))
    if text is None:
        print("CUDA is not available: GPU check skipped (nothing measured on GPU).")
        return 0
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
