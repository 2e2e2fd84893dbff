"""Benchmark 2: training step time of SynerMix against a plain `transformers.Trainer` and a hand-written loop.

Every variant trains the same model (torchvision ResNet-18, standard ImageNet stem, 100 classes) on the same data
(random 32x32 images, labels uniform over 100 classes), the same batch size, fp32, with the same optimizer (SGD, lr 0.1,
momentum 0.9, weight decay 5e-4, no gradient clipping as in the reference recipe). Two measurements:

* `train()`: the real `Trainer.train()` loop over an in-memory dataset (`max_steps`), timed between consecutive
  `on_step_end` callbacks, so it includes data loading, the Trainer's per-step bookkeeping and the optimizer step.
  The hand-written loops iterate a `DataLoader` over the same dataset with the same collator.
* `step`: one prepared batch, timing `trainer.training_step` plus the rest of the Trainer's per-step sequence
  (NaN/inf filter, gradient norm, `optimizer.step`, `lr_scheduler.step`, `zero_grad`), against the hand-written step.

The variants run interleaved, round after round, so machine noise hits all alike; the tables give medians.

    python -m benchmarks.bench_train_step [--quick] [--rounds N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_callback import PrinterCallback

from benchmarks.common import TrainTimer, fmt_ms, fmt_ratio, intervals, iqr, median, table, verdict
from synermix_hf import (
    ClassBalancedBatchSampler,
    SynerMixCollator,
    SynerMixTrainer,
    SynerMixTrainingArguments,
    intra_class_loss,
    intra_class_mixup_all_classes,
    mixup_batch,
    mixup_cross_entropy,
)

NUM_CLASSES = 100
IMAGE_SIZE = 32
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4

TARGET_BETA0_MIXUP = 1.05  # x plain Trainer
TARGET_BETA_POS = 2.1  # x plain Trainer
TARGET_VS_HAND = 1.05  # x hand-written loop


# ---------------------------------------------------------------- model and data


class Classifier(nn.Module):
    """A torchvision ResNet behind the interface the plain `Trainer` needs (`pixel_values`, `labels` -> loss).

    SynerMix uses the same module: it calls `model(pixel_values)` and finds the head `net.fc` by itself.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.net(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def make_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(torchvision.models.resnet18(num_classes=NUM_CLASSES))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


class TensorImages(Dataset):
    """In-memory examples: `pixel_values`, `labels` and (two-view) `original_pixel_values`."""

    def __init__(self, store: dict[str, torch.Tensor], two_view: bool):
        self.store = store
        self.two_view = two_view

    def __len__(self) -> int:
        return len(self.store["labels"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = {"pixel_values": self.store["pixel_values"][index], "labels": int(self.store["labels"][index])}
        if self.two_view:
            example["original_pixel_values"] = self.store["original_pixel_values"][index]
        return example


def make_store(num_examples: int, image_size: int = IMAGE_SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(num_examples, 3, image_size, image_size, generator=gen),
        "original_pixel_values": torch.randn(num_examples, 3, image_size, image_size, generator=gen),
        "labels": torch.randint(0, NUM_CLASSES, (num_examples,), generator=gen),
    }


# ---------------------------------------------------------------- the hand-written loop


class HandWrittenLoop:
    """A minimal PyTorch SynerMix step, in the style of the reference code: an explicit ResNet forward (with the
    Manifold MixUp points written in), the library's pure mixing functions, SGD. No Trainer, no hooks."""

    def __init__(self, model: Classifier, beta: float, inter_mixup: str, alpha: float = 1.0, seed: int = 123):
        self.model = model
        self.net = model.net
        self.beta = beta
        self.inter_mixup = inter_mixup
        self.alpha = alpha
        self.optimizer = make_optimizer(model)
        self.rng = np.random.default_rng(seed)

    def features(self, x: torch.Tensor, mix: tuple[int, float, torch.Tensor] | None = None) -> torch.Tensor:
        net = self.net
        if mix is not None and mix[0] == 0:
            x = mixup_batch(x, mix[1], mix[2])
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer1(x)
        if mix is not None and mix[0] == 1:
            x = mixup_batch(x, mix[1], mix[2])
        x = net.layer2(x)
        if mix is not None and mix[0] == 2:
            x = mixup_batch(x, mix[1], mix[2])
        x = net.layer4(net.layer3(x))
        return torch.flatten(net.avgpool(x), 1)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.train()
        x, y = batch["pixel_values"], batch["labels"]
        loss = torch.zeros((), device=x.device)
        if self.beta > 0:
            h = self.features(batch["original_pixel_values"])
            synthesized, present = intra_class_mixup_all_classes(h, y, NUM_CLASSES)
            classes = torch.arange(NUM_CLASSES, device=y.device)
            loss = loss + self.beta * intra_class_loss(self.net.fc(synthesized), classes, present)
        if self.beta < 1:
            if self.inter_mixup == "none":
                loss_inter = F.cross_entropy(self.net.fc(self.features(x)), y)
            else:
                lam = float(self.rng.beta(self.alpha, self.alpha))
                perm = torch.randperm(len(y), device=y.device)
                point = 0 if self.inter_mixup == "mixup" else int(self.rng.integers(3))
                logits = self.net.fc(self.features(x, (point, lam, perm)))
                loss_inter = mixup_cross_entropy(logits, y, perm, lam)
            loss = loss + (1 - self.beta) * loss_inter
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # after the step, as the Trainer does: no gradients between steps
        return loss.detach()


# ---------------------------------------------------------------- variants


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # "plain", "synermix" or "hand"
    beta: float = 0.0
    inter_mixup: str = "none"
    balanced_sampler: bool = False
    pair: str | None = None  # the hand-written loop this Trainer variant is compared with


SPECS = (
    Spec("plain Trainer", "plain", pair="hand: plain CE"),
    Spec("SynerMix beta=0, none", "synermix", 0.0, "none", pair="hand: plain CE"),
    Spec("SynerMix beta=0, MixUp", "synermix", 0.0, "mixup", pair="hand: beta=0, MixUp"),
    Spec("SynerMix beta=0.5, none", "synermix", 0.5, "none", pair="hand: beta=0.5, none"),
    Spec("SynerMix beta=0.1, MixUp", "synermix", 0.1, "mixup", pair="hand: beta=0.1, MixUp"),
    Spec("SynerMix beta=0.1, Manifold MixUp", "synermix", 0.1, "manifold_mixup", pair="hand: beta=0.1, Manifold MixUp"),
    Spec("hand: plain CE", "hand", 0.0, "none"),
    Spec("hand: beta=0, MixUp", "hand", 0.0, "mixup"),
    Spec("hand: beta=0.5, none", "hand", 0.5, "none"),
    Spec("hand: beta=0.1, MixUp", "hand", 0.1, "mixup"),
    Spec("hand: beta=0.1, Manifold MixUp", "hand", 0.1, "manifold_mixup"),
)
# Only in the `train()` measurement: the default sampler for beta > 0, whose batches are larger than batch_size.
BALANCED_SPEC = Spec("SynerMix beta=0.1, MixUp, balanced sampler (default)", "synermix", 0.1, "mixup", True)


@dataclass
class Variant:
    spec: Spec
    model: Classifier
    trainer: Trainer | None = None
    hand: HandWrittenLoop | None = None
    timer: TrainTimer | None = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.trainer.args.device if self.trainer is not None else next(self.model.parameters()).device


def build_variant(spec: Spec, store: dict[str, torch.Tensor], batch_size: int, output_dir: str) -> Variant:
    """One variant with its own copy of the same initial model, optimizer and (for Trainers) a `Trainer`."""
    model = make_model()
    if spec.kind == "hand":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        return Variant(spec, model, hand=HandWrittenLoop(model, spec.beta, spec.inter_mixup))
    common = {
        "output_dir": output_dir,
        "per_device_train_batch_size": batch_size,
        "max_grad_norm": 0.0,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "seed": 123,
        "dataloader_num_workers": 0,
        "dataloader_drop_last": True,
        "use_cpu": not torch.cuda.is_available(),
    }
    timer = TrainTimer()
    optimizer = make_optimizer(model)
    if spec.kind == "plain":
        trainer: Trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=TensorImages(store, two_view=False),
            data_collator=SynerMixCollator(),
            optimizers=(optimizer, None),
            callbacks=[timer],
        )
    else:
        args = SynerMixTrainingArguments(
            **common, beta=spec.beta, inter_mixup=spec.inter_mixup, alpha=1.0, balanced_sampler=spec.balanced_sampler
        )
        trainer = SynerMixTrainer(
            model=model,
            args=args,
            train_dataset=TensorImages(store, two_view=spec.beta > 0),
            data_collator=SynerMixCollator(),
            optimizers=(optimizer, None),
            callbacks=[timer],
            train_labels=store["labels"].numpy(),
        )
    trainer.remove_callback(PrinterCallback)  # no end-of-train() metrics printout between measurements
    return Variant(spec, model, trainer=trainer, timer=timer)


def make_batch(store: dict[str, torch.Tensor], batch_size: int, two_view: bool, device: torch.device) -> dict:
    batch = {"pixel_values": store["pixel_values"][:batch_size], "labels": store["labels"][:batch_size]}
    if two_view:
        batch["original_pixel_values"] = store["original_pixel_values"][:batch_size]
    return {k: v.to(device) for k, v in batch.items()}


def trainer_step_fn(trainer: Trainer) -> Callable[[dict], None]:
    """The per-step sequence of `Trainer._inner_training_loop` for one optimizer step without accumulation."""
    if trainer.lr_scheduler is None:
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # set by the inner loop before each step
    model = trainer.model

    def step(inputs: dict) -> None:
        loss = trainer.training_step(model, dict(inputs))
        if torch.isnan(loss) or torch.isinf(loss):
            raise FloatingPointError("non-finite loss in benchmark")
        clip = trainer.args.max_grad_norm > 0
        if hasattr(trainer, "_get_grad_norm"):  # later transformers 5 releases: the norm is computed even unclipped
            trainer._get_grad_norm(model, grad_norm=trainer._clip_grad_norm(model) if clip else None)
        elif clip:  # earlier ones clip in the loop and compute no norm otherwise
            trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        trainer.state.global_step += 1

    return step


def step_fn(variant: Variant) -> Callable[[dict], None]:
    if variant.hand is not None:
        return variant.hand.step
    return trainer_step_fn(variant.trainer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- measurements


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def measure_steps(
    variants: list[Variant], store: dict, batch_size: int, rounds: int, steps: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """Prepared batch; each round runs every variant (in a shuffled order) for `warmup + steps` steps.

    Returns `(wall, cpu)` seconds per step; cpu is the process CPU time (all threads)."""
    times: dict[str, list[tuple[float, float]]] = {v.spec.name: [] for v in variants}
    fns = {v.spec.name: step_fn(v) for v in variants}
    batches = {v.spec.name: make_batch(store, batch_size, two_view=v.spec.beta > 0, device=v.device) for v in variants}
    order = list(variants)
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for v in order:
            fn, batch = fns[v.spec.name], batches[v.spec.name]
            for i in range(warmup + steps):
                _sync(v.device)
                start = _now()
                fn(batch)
                _sync(v.device)
                if i >= warmup:
                    times[v.spec.name].extend(intervals([start, _now()]))
    return times


def measure_train(
    variants: list[Variant], store: dict, batch_size: int, rounds: int, steps: int
) -> dict[str, list[tuple[float, float]]]:
    """`trainer.train(max_steps=steps + 1)` per round; the time between consecutive step ends (the first step of each
    call, which builds the data iterator, is left out). Hand-written loops iterate an equivalent DataLoader."""
    times: dict[str, list[tuple[float, float]]] = {v.spec.name: [] for v in variants}
    order = list(variants)
    shuffler = random.Random(1)
    for round_index in range(rounds):
        shuffler.shuffle(order)
        for v in order:
            if v.trainer is not None:
                v.trainer.args.max_steps = steps + 1
                v.timer.clear()
                v.trainer.train()
                ends = v.timer.step_ends
            else:
                loader = DataLoader(
                    TensorImages(store, two_view=v.spec.beta > 0),
                    batch_size=batch_size,
                    shuffle=True,
                    drop_last=True,
                    collate_fn=SynerMixCollator(),
                    generator=torch.Generator().manual_seed(round_index),
                )
                ends = []
                for i, batch in enumerate(loader):
                    v.hand.step({k: t.to(v.device) for k, t in batch.items()})
                    _sync(v.device)
                    ends.append(_now())
                    if i == steps:
                        break
            times[v.spec.name].extend(intervals(ends))
    return times


def balanced_batch_growth(labels: np.ndarray, batch_size: int) -> float:
    sampler = ClassBalancedBatchSampler(labels, batch_size=batch_size, seed=123)
    sizes = [len(b) for b in sampler]
    return float(np.mean(sizes))


def run(
    quick: bool = False, rounds: int | None = None, batch_size: int | None = None, steps: int | None = None
) -> dict:
    batch_size = batch_size or (4 if quick else 128)
    rounds = rounds or (1 if quick else 5)
    steps = steps or (1 if quick else 4)
    warmup = 1
    num_examples = batch_size * (steps + 4)
    store = make_store(num_examples)
    specs = list(SPECS)
    with tempfile.TemporaryDirectory(prefix="synermix_bench_") as tmp:
        variants = [build_variant(s, store, batch_size, tmp) for s in specs]
        step_times = measure_steps(variants, store, batch_size, rounds, steps, warmup)
        train_variants = variants + [build_variant(BALANCED_SPEC, store, batch_size, tmp)]
        train_times = measure_train(train_variants, store, batch_size, rounds, steps)
    growth = balanced_batch_growth(store["labels"].numpy(), batch_size)
    return {
        "batch_size": batch_size,
        "rounds": rounds,
        "steps": steps,
        "device": str(variants[0].device),
        "threads": torch.get_num_threads(),
        "specs": specs + [BALANCED_SPEC],
        "step": step_times,
        "train": train_times,
        "balanced_mean_batch": growth,
    }


def _medians(times: dict[str, list[tuple[float, float]]], column: int) -> dict[str, float]:
    return {name: median([t[column] for t in ts]) for name, ts in times.items() if ts}


def _rows(res: dict, key: str, with_cpu: bool) -> list[tuple]:
    times = res[key]
    wall, cpu = _medians(times, 0), _medians(times, 1)
    rows = []
    for spec in res["specs"]:
        if spec.name not in wall:
            continue
        q1, q3 = iqr([t[0] for t in times[spec.name]])
        row = [spec.name, fmt_ms(wall[spec.name]), f"{fmt_ms(q1)}-{fmt_ms(q3)}"]
        if with_cpu:
            row.append(fmt_ms(cpu[spec.name]))
        row.append(len(times[spec.name]))
        for med in (wall, cpu) if with_cpu else (wall,):
            row.append(fmt_ratio(med[spec.name] / med["plain Trainer"]))
        for med in (wall, cpu) if with_cpu else (wall,):
            row.append(fmt_ratio(med[spec.name] / med[spec.pair]) if spec.pair in med else "")
        rows.append(tuple(row))
    return rows


def targets(med: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, measured ratio, limit) for every target of the issue."""
    base = med["plain Trainer"]
    out = [("beta=0 + MixUp vs plain Trainer", med["SynerMix beta=0, MixUp"] / base, TARGET_BETA0_MIXUP)]
    for name in ("SynerMix beta=0.5, none", "SynerMix beta=0.1, MixUp", "SynerMix beta=0.1, Manifold MixUp"):
        out.append((f"{name.removeprefix('SynerMix ')} vs plain Trainer", med[name] / base, TARGET_BETA_POS))
    for name, hand in (
        ("SynerMix beta=0.5, none", "hand: beta=0.5, none"),
        ("SynerMix beta=0.1, MixUp", "hand: beta=0.1, MixUp"),
        ("SynerMix beta=0.1, Manifold MixUp", "hand: beta=0.1, Manifold MixUp"),
        ("SynerMix beta=0, MixUp", "hand: beta=0, MixUp"),
    ):
        out.append(
            (f"Trainer {name.removeprefix('SynerMix ')} vs hand-written loop", med[name] / med[hand], TARGET_VS_HAND)
        )
    return out


def report(res: dict) -> str:
    with_cpu = res["device"] == "cpu"
    headers = ["variant", "wall median (ms)", "wall IQR (ms)"] + (["CPU median (ms)"] if with_cpu else []) + ["n"]
    headers += ["x plain Trainer (wall)"] + (["x plain Trainer (CPU)"] if with_cpu else [])
    headers += ["x hand-written loop (wall)"] + (["x hand-written loop (CPU)"] if with_cpu else [])
    text = (
        f"ResNet-18 (torchvision, standard stem), {IMAGE_SIZE}x{IMAGE_SIZE} inputs, {NUM_CLASSES} classes, batch "
        f"{res['batch_size']}, fp32, SGD, device {res['device']}, {res['threads']} torch threads; "
        f"{res['rounds']} interleaved rounds x {res['steps']} timed steps per variant. "
        "The 'x hand-written loop' column compares each Trainer variant with the hand-written loop doing the same "
        "step (the plain Trainer with a plain cross-entropy loop)."
        + (
            " CPU = process CPU time (all threads) per step: unlike wall time it does not count time the process "
            "waits for a core, so it is the steadier figure on a shared machine."
            if with_cpu
            else ""
        )
        + "\n\n"
    )
    for key, title in (
        ("train", "`trainer.train()` loop (time between step ends)"),
        ("step", "isolated step (prepared batch)"),
    ):
        text += f"**{title}**\n\n" + table(headers, _rows(res, key, with_cpu)) + "\n\nTargets:\n"
        wall = targets(_medians(res[key], 0))
        cpu = targets(_medians(res[key], 1)) if with_cpu else [None] * len(wall)
        for (label, value, limit), cpu_target in zip(wall, cpu):
            line = f"- {label} (target <= {limit}x): wall {fmt_ratio(value)} {verdict(value <= limit)}"
            if cpu_target is not None:
                line += f"; CPU time {fmt_ratio(cpu_target[1])} {verdict(cpu_target[1] <= limit)}"
            text += line + "\n"
        text += "\n"
    text += (
        f"The balanced sampler (the default when beta > 0) grows batches of {res['batch_size']} to "
        f"{res['balanced_mean_batch']:.1f} on average here ({NUM_CLASSES} classes, uniform labels): the variant marked "
        "'balanced sampler (default)' pays for those extra examples; the others use plain shuffled batches so that "
        "every variant sees the same batch size."
    )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4, one round, one timed step (smoke run)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per variant per round")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv)
    print(report(run(quick=args.quick, rounds=args.rounds, batch_size=args.batch_size, steps=args.steps)))


if __name__ == "__main__":
    main()
