"""A timm checkpoint in the Hub's format trains with the preprocessing of its `pretrained_cfg`."""

import json

import pytest
import torch

timm = pytest.importorskip("timm")

from transformers import AutoImageProcessor  # noqa: E402

from synermix_hf.cli.train import main  # noqa: E402
from synermix_hf.testing import TINY_TIMM_PRETRAINED_CFG, run_log_values, save_tiny_timm, tiny_images  # noqa: E402
from synermix_hf.data.transforms import build_transforms, spec_from_image_processor  # noqa: E402


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    return save_tiny_timm(tmp_path_factory.mktemp("timm") / "tiny-timm")


def test_spec_is_what_timm_resolves_from_the_pretrained_cfg_and_evaluates_as_timm(timm_checkpoint):
    pretrained_cfg = json.loads((timm_checkpoint / "config.json").read_text())["pretrained_cfg"]
    resolved = timm.data.resolve_data_config(pretrained_cfg)
    assert resolved["input_size"] == TINY_TIMM_PRETRAINED_CFG["input_size"]  # the checkpoint holds what we gave it

    spec = spec_from_image_processor(AutoImageProcessor.from_pretrained(str(timm_checkpoint)), "imagenet")
    assert (spec.image_size, spec.mean, spec.std, spec.interpolation, spec.crop_pct) == (
        resolved["input_size"][1], tuple(resolved["mean"]), tuple(resolved["std"]), resolved["interpolation"],
        resolved["crop_pct"])

    # The evaluation view is timm's own evaluation transform, pixel for pixel (bicubic Resize(floor(24 / 0.8)),
    # CenterCrop(24)), on an image that is neither square nor of the model's size.
    train, evaluation = build_transforms(spec)
    reference = timm.data.create_transform(**resolved, is_training=False)
    image = tiny_images([1], size=40)[0].crop((0, 0, 40, 31))
    assert torch.equal(evaluation(image), reference(image))
    assert evaluation(image).shape == (3, 24, 24)
    crop = train.transforms[0]
    assert crop.size == (24, 24) and crop.interpolation.value == "bicubic"


def test_script_trains_a_timm_checkpoint_without_image_size(hub_copies, timm_checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(timm_checkpoint), "-ds", "food101",
            "--dataset_path", str(hub_copies["food101"]), "-beta", "0.1", "-alpha", "1", "-itrm", "Manifold_Mixup", "-bs", "8", "--max_steps", "2",
            "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true",
            "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    log = run_log_values(out / "training_log.txt")
    assert log["transforms"] == ("imagenet at 24px, bicubic, evaluation Resize(30) + CenterCrop(24) (crop fraction "
                                 "0.8), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]")
    assert log["class"] == "TimmWrapperForImageClassification"
    assert log["head"] == "timm_model.classifier (Linear: 256 features -> 3 outputs)"
    assert log["manifold mixup points"] == "input, timm_model.blocks.1, timm_model.blocks.2"
    card = (out / "README.md").read_text()
    assert "| head | timm_model.classifier (Linear: 256 features -> 3 outputs) |" in card
    assert "| Manifold MixUp points | input, timm_model.blocks.1, timm_model.blocks.2 |" in card
    assert 0.0 <= json.loads((out / "all_results.json").read_text())["eval_accuracy"] <= 1.0
