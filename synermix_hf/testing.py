"""Tiny local data and models for tests: images, parquet copies of the catalog's Hub datasets, image folders, a
tiny ViT, a tiny timm checkpoint. Nothing is downloaded; everything is small enough for a CPU test suite.

The repository's tests use these through fixtures (`tests/conftest.py`); they serve just as well for testing code
built on synermix_hf.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["build_hub_copies", "build_image_folder", "run_log_values", "save_tiny_timm", "save_tiny_vit", "tiny_images",
           "write_parquet_copy"]


def tiny_images(labels, size=8, mode="RGB", seed=0):
    """One small PIL image per label; each class has its own mean colour, so tiny models have something to learn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for label in labels:
        base = np.array([(37 * label) % 256, (91 * label + 50) % 256, (53 * label + 120) % 256], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        images.append(image.convert(mode) if mode != "RGB" else image)
    return images


def write_parquet_copy(root, splits, features, seed=0):
    """Write `{split: columns}` as `root/data/<split>-00000-of-00001.parquet`, the layout of a Hub parquet export."""
    import datasets

    (Path(root) / "data").mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        dataset = datasets.Dataset.from_dict(columns, features=features)
        dataset.to_parquet(str(Path(root) / "data" / f"{split}-00000-of-00001.parquet"))
    return Path(root)


def _labels(counts):
    return [label for label, count in enumerate(counts) for _ in range(count)]


def build_hub_copies(root):
    """Tiny local copies of the five Hub datasets of the catalog, in their schemas (columns, types, splits)."""
    import datasets

    root = Path(root)
    copies = {}
    names3 = ["apple", "bus", "cat"]

    train, test = _labels([6, 6, 6]), _labels([3, 3, 3])
    copies["cifar100"] = write_parquet_copy(
        root / "cifar100",
        {
            "train": {"img": tiny_images(train, seed=1), "fine_label": train, "coarse_label": [y % 2 for y in train]},
            "test": {"img": tiny_images(test, seed=2), "fine_label": test, "coarse_label": [y % 2 for y in test]},
        },
        datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=names3),
                "coarse_label": datasets.ClassLabel(names=["fruit", "vehicle"]),
            }
        ),
    )

    image_label = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names3)})
    train, validation = _labels([6, 6, 6]), _labels([3, 3, 3])
    copies["food101"] = write_parquet_copy(
        root / "food101",
        {
            "train": {"image": tiny_images(train, size=12, seed=3), "label": train},
            "validation": {"image": tiny_images(validation, size=12, seed=4), "label": validation},
        },
        image_label,
    )

    train, test = _labels([6, 6, 6]), _labels([3, 3, 3])
    copies["oxfordiiipet"] = write_parquet_copy(
        root / "oxfordiiipet",
        {
            split: {
                "image": tiny_images(labels, size=10, seed=5 + i),
                "label": labels,
                "image_id": [f"{names3[y]}_{j}" for j, y in enumerate(labels)],
                "label_cat_dog": [y % 2 for y in labels],
            }
            for i, (split, labels) in enumerate((("train", train), ("test", test)))
        },
        datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=names3),
                "image_id": datasets.Value("string"),
                "label_cat_dog": datasets.ClassLabel(names=["cat", "dog"]),
            }
        ),
    )

    # Caltech-256: 70 images per class over the copy's splits, so the per-class 60 / 20 split gives 60 / 10.
    pooled = {"train": _labels([50, 50]), "validation": _labels([10, 10]), "test": _labels([10, 10])}
    copies["caltech256"] = write_parquet_copy(
        root / "caltech256",
        {split: {"image": tiny_images(labels, seed=8 + i), "label": labels} for i, (split, labels) in
         enumerate(pooled.items())},
        datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ak47", "clutter"])}),
    )

    # mini-ImageNet (timm layout): train + validation are the pooled data; test is not used by the paper's protocol.
    splits = {"train": _labels([10, 10, 10]), "validation": _labels([2, 2, 2]), "test": _labels([1, 1, 1])}
    copies["miniimagenet"] = write_parquet_copy(
        root / "miniimagenet",
        {split: {"image": tiny_images(labels, size=12, seed=12 + i), "label": labels} for i, (split, labels) in
         enumerate(splits.items())},
        datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["n01532829", "n01558993", "n01704323"])}
        ),
    )
    return copies


def build_image_folder(root, counts, size=8, seed=0):
    """An image folder (root/<class>/<n>.png) as Hugging Face's script expects for --train_dir."""
    root = Path(root)
    labels = _labels(counts)
    for index, (label, image) in enumerate(zip(labels, tiny_images(labels, size=size, seed=seed), strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index}.png")
    return root


def save_tiny_vit(path, num_labels: int = 3, image_size: int = 8):
    """A Hugging Face ViT with its image processor in `path`, small enough that a run is mostly overhead."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=image_size, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=num_labels)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return Path(path)


TINY_TIMM_PRETRAINED_CFG = {"input_size": (3, 24, 24), "interpolation": "bicubic", "crop_pct": 0.8,
                            "crop_mode": "center", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
"""The preprocessing `save_tiny_timm` gives its checkpoint: none of it is a default of timm or of a recipe."""


def save_tiny_timm(path, num_labels: int = 3, architecture: str = "test_efficientnet", pretrained_cfg=None):
    """A timm checkpoint in the Hub's format (config.json with `architecture` and `pretrained_cfg`, model.safetensors),
    saved by timm's own `save_for_hf`, as `push_to_hub` uploads it. Needs timm.

    Args:
        architecture: A timm model name; timm's `test_*` models have about 100k parameters.
        pretrained_cfg: Overrides of the model's preprocessing (`TINY_TIMM_PRETRAINED_CFG` if not given).
    """
    import timm
    from timm.models import save_for_hf

    overlay = dict(TINY_TIMM_PRETRAINED_CFG if pretrained_cfg is None else pretrained_cfg)
    model = timm.create_model(architecture, pretrained=False, num_classes=num_labels, pretrained_cfg_overlay=overlay)
    save_for_hf(model, str(path), safe_serialization=True)
    return Path(path)


def run_log_values(path) -> dict[str, str]:
    """The `key : value` lines of a run log's header (training_log.txt), the first of each key."""
    values: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") and " : " in line:
            key, value = line.strip().split(" : ", 1)
            values.setdefault(key.strip(), value)
    return values
