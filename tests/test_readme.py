"""The documentation's Python snippets run as written: the recipe snippet of docs/python_api.md (on a local copy, for a
few steps), whose output loads in `pipeline("image-classification")`, and the metrics snippet of docs/paper_recipe.md."""

import re
from pathlib import Path

import datasets

from synermix_hf.testing import tiny_images, write_parquet_copy

DOCS = Path(__file__).resolve().parents[1] / "docs"
PYTHON_API = DOCS / "python_api.md"
PAPER_RECIPE = DOCS / "paper_recipe.md"


def _snippet(heading: str, page: Path) -> str:
    """The first ```python block after `heading` in `page`."""
    text = page.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_recipe_snippet_output_loads_in_a_pipeline(tmp_path, monkeypatch):
    code = _snippet("## The paper's recipe and data from Python", PYTHON_API)
    # The same code on a local CIFAR-100-shaped copy (32 px images), for two steps, in a temporary directory.
    labels = [y for y in range(3) for _ in range(8)]
    names = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a", "b", "c"])})
    copy = write_parquet_copy(tmp_path / "cifar", {"train": {"img": tiny_images(labels, size=32), "fine_label": labels},
                                                   "test": {"img": tiny_images(labels[:6], size=32, seed=1),
                                                            "fine_label": labels[:6]}}, names)
    replacements = {
        'load_image_classification_data("cifar100")': f'load_image_classification_data("cifar100", dataset_path="{copy}")',
        "do_train=True, do_eval=True)": "do_train=True, do_eval=True, max_steps=2, per_device_train_batch_size=8,\n"
        "                              dataloader_num_workers=0, report_to=[], disable_tqdm=True)",
    }
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(PYTHON_API), "exec"), namespace)  # noqa: S102 - the documentation's own code
    prediction = namespace["classify"](tiny_images([1], size=32)[0])
    assert prediction[0]["label"] in {"a", "b", "c"}
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


def test_metrics_snippet_runs_from_any_directory(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)  # not the repository root: the shipped modules are found by the package
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(12, 4)), np.repeat(np.arange(3), 4)
    namespace = {"features": features, "labels": labels}
    exec(_snippet("They ship as `evaluate` modules", PAPER_RECIPE), namespace)
    cohesion = namespace["cohesion"].compute(features=features, references=labels)["cohesion"]
    separability = namespace["separability"].compute(features=features, references=labels)["separability"]
    # Independent computation: mean cosine similarity of each feature to its class mean; tr(S_B) / tr(S_W).
    means = {c: features[labels == c].mean(0) for c in range(3)}
    cosines = [f @ means[c] / np.linalg.norm(f) / np.linalg.norm(means[c]) for f, c in zip(features, labels)]
    assert np.isclose(cohesion, np.mean(cosines))
    overall = features.mean(0)
    between = sum((labels == c).sum() * np.sum((means[c] - overall) ** 2) for c in range(3))
    within = sum(np.sum((f - means[c]) ** 2) for f, c in zip(features, labels))
    assert np.isclose(separability, between / within)
