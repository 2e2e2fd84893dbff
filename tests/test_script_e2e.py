"""run_image_classification.py end to end, in-process, on tiny local copies of every dataset it names.

Each run trains a couple of steps, evaluates, and is checked through what it writes to --output_dir.
"""

import json
import re
from pathlib import Path

import pytest

from synermix_hf.cli.methods import METHODS_BY_NAME
from synermix_hf.cli.train import main
from synermix_hf.testing import build_image_folder, run_log_values, tiny_images

# Every dataset schema the script names, and a local image folder. Each runs the paper's six configurations (the
# command line's table, `METHODS_BY_NAME`) with ResNet-18, and one of them (the second column) with another of the
# paper's architectures.
DATASETS = {
    # dataset: (configuration, model) for the other architecture, image size, (train, eval) examples after the
    # paper's split of the tiny copy
    "cifar100": (("w-RA&ER(MM)", "resnet34"), 8, (18, 9)),
    "food101": (("w-ER(M)", "mobilenet"), 16, (18, 9)),
    "oxfordiiipet": (("wo-RA&ER", "tiny-swin"), 16, (18, 9)),
    "caltech256": (("w-RA", "resnet50"), 8, (120, 20)),  # 70 images per class: first 60 train, next 10 test
    "miniimagenet": (("w-ER(MM)", "resnet101"), 8, (28, 8)),  # train + validation pooled (36), 80 / 20, seed 100
    "imagefolder": (("w-RA&ER(M)", "mobilenet"), 8, (12, 6)),
}
FAST = ["-bs", "8", "--max_steps", "2", "--per_device_eval_batch_size", "32", "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--disable_tqdm", "true"]


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _check_outputs(out: Path, class_names, method: str, train_lines: bool = True, steps: int = 2):
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "all_results.json",
                 "train_results.json", "eval_results.json", "trainer_state.json", "training_log.txt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(class_names))] == list(class_names)
    log = (out / "training_log.txt").read_text()
    assert f"method                 : {method}" in log
    assert "  eval   loss " in log and "\nfinal  eval_loss" in log
    assert ("  train  loss " in log) == train_lines
    results = _results(out)
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["train_loss"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    return results


@pytest.mark.parametrize("configuration", list(METHODS_BY_NAME))
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_paper_configurations_on_each_dataset_schema(hub_copies, tmp_path, dataset, configuration):
    (other_configuration, other_model), size, sizes = DATASETS[dataset]
    model = other_model if configuration == other_configuration else "resnet18"
    if dataset == "imagefolder":
        data = ["--train_dir", str(build_image_folder(tmp_path / "train", [4, 4, 4])),
                "--validation_dir", str(build_image_folder(tmp_path / "val", [2, 2, 2], seed=1))]
        class_names = ["class_0", "class_1", "class_2"]
    else:
        data = ["-ds", dataset, "--dataset_path", str(hub_copies[dataset])]
        import datasets

        class_names = datasets.load_dataset(str(hub_copies[dataset]), split="train").features[
            "fine_label" if dataset == "cifar100" else "label"].names
    out = tmp_path / "out"
    method = METHODS_BY_NAME[configuration]
    argv = ["-mn", model, *data, *method.flags(), "--image_size", str(size), *FAST,
            "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    results = _check_outputs(out, class_names, method.slug)
    assert (results["train_samples"], results["eval_samples"]) == sizes
    assert "eval_top5_accuracy" not in results  # 3 classes or fewer: top-5 is meaningless


def test_builtin_default_runs_offline_into_a_fresh_runs_directory(tmp_path, monkeypatch, capsys):
    from transformers import pipeline

    monkeypatch.chdir(tmp_path)
    assert main(["--max_steps", "2", "--disable_tqdm", "true"]) == 0
    assert "built-in default: scikit-learn's digits" in capsys.readouterr().out
    (out,) = list((tmp_path / "runs").iterdir())
    assert out.name.startswith("digits-resnet18-synermix-b0.1-manifold_mixup-")
    results = _check_outputs(out, [str(d) for d in range(10)], "synermix-b0.1-manifold_mixup")
    assert results["eval_samples"] == 360 and 0.0 <= results["eval_top5_accuracy"] <= 1.0  # 10 classes: top-5 too
    log = run_log_values(out / "training_log.txt")  # the paper's points of a ResNet (torchvision's, in our wrapper)
    assert log["manifold mixup points"] == "input, network.layer2, network.layer3"
    # The saved torchvision model works in a pipeline, grayscale input included.
    predictions = pipeline("image-classification", model=str(out), device="cpu")(tiny_images([3], mode="L")[0])
    assert predictions[0]["label"] in {str(d) for d in range(10)}

    # A second run into the same directory is refused; --overwrite_output_dir allows it (here: evaluation only,
    # of the saved model reloaded through the Auto classes).
    assert main(["--output_dir", str(out), "--max_steps", "1"]) == 2
    assert "already holds the results" in capsys.readouterr().err
    assert main(["--model_name_or_path", str(out), "--do_eval", "--output_dir", str(out),
                        "--overwrite_output_dir", "--disable_tqdm", "true"]) == 0
    again = _results(out)
    assert again["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    assert "train_loss" not in again  # the old results were replaced, not merged


def test_hugging_face_command_line_runs_unchanged_on_local_folder_and_model(tmp_path, capsys):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp_path / "vit"
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=2)
    ViTForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(model_dir)
    folder = build_image_folder(tmp_path / "beans", [6, 6, 6], size=20)
    # As in Hugging Face's examples/pytorch/image-classification README, with a local folder and model.
    hf_command = ["--model_name_or_path", str(model_dir), "--train_dir", str(folder), "--output_dir",
                  str(tmp_path / "out"), "--remove_unused_columns", "False", "--do_train", "--do_eval",
                  "--learning_rate", "2e-5", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                  "--per_device_eval_batch_size", "8", "--logging_strategy", "steps", "--logging_steps", "10",
                  "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "True",
                  "--save_total_limit", "3", "--seed", "1337"]
    synermix = ["--beta", "0.1", "--inter_mixup", "manifold_mixup", "--dataloader_num_workers", "0",
                "--disable_tqdm", "true"]
    # The checkpoint has 2 classes and the folder 3: the error says what to add.
    assert main(hf_command + synermix) == 2
    assert "--ignore_mismatched_sizes" in capsys.readouterr().err
    assert main(hf_command + synermix + ["--ignore_mismatched_sizes"]) == 0
    out = tmp_path / "out"
    # --logging_steps 10 with 2 steps: evaluation lines only.
    results = _check_outputs(out, ["class_0", "class_1", "class_2"], "synermix-b0.1-manifold_mixup", train_lines=False,
                             steps=1)  # 15 training images, batches of 8, incomplete batch dropped
    assert json.loads((out / "config.json").read_text())["model_type"] == "vit"
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"].startswith("ViT")
    assert results["train_samples"] + results["eval_samples"] == 18  # --train_val_split 0.15 of the folder
    log = run_log_values(out / "training_log.txt")
    assert log["head"] == "classifier (Linear: 32 features -> 3 outputs)"
    # 2 layers: the output of the first (transformers 5.9 renamed vit.encoder.layer to vit.layers)
    assert re.fullmatch(r"input, vit\.(layers|encoder\.layer)\.1", log["manifold mixup points"])


def test_resume_from_a_checkpoint_of_the_script(hub_copies, tmp_path):
    common = ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "-bs", "8", "--image_size", "8",
              "-beta", "0.1", "-itrm", "Mixup", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
              "--cache_dir", str(tmp_path / "cache")]
    first = tmp_path / "first"
    assert main([*common, "-ep", "1", "--output_dir", str(first)]) == 0
    checkpoint = first / "checkpoint-2"  # 18 images, batches of 8: 2 steps per epoch, a checkpoint per epoch
    assert checkpoint.is_dir()
    second = tmp_path / "second"
    assert main([*common, "-ep", "2", "--output_dir", str(second), "--resume_from_checkpoint",
                        str(checkpoint)]) == 0
    assert json.loads((second / "trainer_state.json").read_text())["global_step"] == 4
    log = (second / "training_log.txt").read_text()
    assert f"resumed from : {checkpoint}" in log and "epoch     2/2  step      4  train" in log
