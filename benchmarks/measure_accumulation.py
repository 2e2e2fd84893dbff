"""How far gradient accumulation is from the one-batch update where it cannot equal it (docs/many_gpus.md).

A step of 16 as 1 x 16, 2 x 8 and 4 x 4 accumulated, five SGD steps (lr 0.1, no clipping) on 64 fixed random
examples of 6 classes, the balanced sampler on: the weights of the accumulated runs against the one-batch run's, as the
largest difference and as the norm of the difference over the distance the one-batch run moved the weights. A ViT
without BatchNorm and without inter-class mixup equals the one-batch update (to float rounding); BatchNorm statistics
per micro-batch and MixUp pairs within a micro-batch do not. For scale, the plain Trainer's own accumulation on the
same BatchNorm model (cross-entropy only, the balanced sampler off) is measured too.

    python benchmarks/measure_accumulation.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torchvision
from transformers import ViTConfig, ViTForImageClassification

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments

CLASSES, EXAMPLES, STEP, STEPS = 6, 64, 16, 5


def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, num_labels=CLASSES, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config)


def examples() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (EXAMPLES,), generator=generator)
    return [{"pixel_values": torch.randn(3, 16, 16, generator=generator),
             "original_pixel_values": torch.randn(3, 16, 16, generator=generator), "labels": int(label)}
            for label in labels]


def trained(build, accumulation: int, folder: str, **method) -> torch.Tensor:
    args = SynerMixTrainingArguments(
        output_dir=folder, report_to=[], use_cpu=True, save_strategy="no", seed=5, learning_rate=0.1,
        lr_scheduler_type="constant", optim="sgd", max_grad_norm=0.0, disable_tqdm=True, dataloader_num_workers=0,
        per_device_train_batch_size=STEP // accumulation, gradient_accumulation_steps=accumulation, max_steps=STEPS,
        **method)
    trainer = SynerMixTrainer(model=build(), args=args, train_dataset=examples())
    trainer.train()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def main() -> None:
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    settings = [
        ("ViT (no BatchNorm)", vit, dict(beta=0.5, balanced_sampler=True)),
        ("ViT (no BatchNorm)", vit, dict(beta=0.1, inter_mixup="mixup", balanced_sampler=True)),
        ("ResNet (BatchNorm)", resnet, dict(beta=0.5, balanced_sampler=True)),
        ("ResNet (BatchNorm)", resnet, dict(beta=0.1, inter_mixup="mixup", balanced_sampler=True)),
        ("ResNet (BatchNorm), plain cross-entropy", resnet, dict(beta=0.0, balanced_sampler=False)),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, build, method in settings:
            one = trained(build, 1, folder, **method)
            moved = (one - torch.cat([p.detach().flatten() for p in build().parameters()])).norm().item()
            for accumulation in (2, 4):
                difference = trained(build, accumulation, folder, **method) - one
                print(f"{name}, {method}: {accumulation} x {STEP // accumulation} against 1 x {STEP} after {STEPS} "
                      f"steps: largest weight difference {difference.abs().max().item():.2g}, "
                      f"relative {difference.norm().item() / moved:.2g}")


if __name__ == "__main__":
    main()
