"""What a Hugging Face user runs into with the command line: model card and push, rerunning an interrupted command,
no network, mistakes caught before training, predictions, a single class, `--help`, bf16 on a CPU."""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synermix_hf.cli.arguments import ScriptArgumentParser
from synermix_hf.cli.model import check_model_outputs
from synermix_hf.cli.train import main
from synermix_hf.models import build_torchvision_classifier
from synermix_hf.testing import build_image_folder, run_log_values

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["-bs", "8", "--image_size", "8", "--max_steps", "2", "--dataloader_num_workers", "0", "--save_strategy", "no",
        "--disable_tqdm", "true", "--per_device_eval_batch_size", "32"]


def _data(hub_copies, tmp_path):
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--cache_dir", str(tmp_path / "cache")]


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.rindex("error: "):].strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


# ---- 2. The model card, and --push_to_hub checked before training ----


def test_every_run_writes_a_model_card_with_the_synermix_settings_metrics_and_command(hub_copies, tmp_path):
    out = tmp_path / "out"
    argv = [*_data(hub_copies, tmp_path), *FAST, "-beta", "0.1", "-itrm", "Mixup", "--gradient_accumulation_steps",
            "2", "--output_dir", str(out)]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    results = json.loads((out / "all_results.json").read_text())
    assert card.startswith("---\n") and "synermix" in card.split("---")[1]  # the Trainer's metadata, our tags
    assert "## SynerMix" in card and "| beta | 0.1 |" in card and "| inter_mixup | mixup |" in card
    assert f"| eval_accuracy | {results['eval_accuracy']:.4f} |" in card
    assert "run_image_classification.py -ds cifar100" in card and "-beta 0.1 -itrm Mixup" in card
    # Which module is the head and where Manifold MixUp would mix: in the card and in the run log.
    assert "| head | network.fc (Linear: 512 features -> 3 outputs) |" in card
    assert "| Manifold MixUp points | - (--inter_mixup mixup) |" in card
    log = run_log_values(out / "training_log.txt")
    assert (log["head"], log["manifold mixup points"]) == ("network.fc (Linear: 512 features -> 3 outputs)",
                                                           "- (--inter_mixup mixup)")
    # The batch line says what of the split step is not the one-batch update; the versions that decide the pixels
    # and the draws are recorded.
    assert log["total train batch size"] == ("8 (1 process x 4 per process x 2 accumulation steps, plus the balanced "
                                             "sampler's partners; the update of one balanced batch, but BatchNorm "
                                             "statistics and MixUp pairs per micro-batch)")
    import numpy
    import PIL
    import torch
    import torchvision

    assert (log["Pillow"], log["torchvision"], log["torch"], log["numpy"]) == \
        (PIL.__version__, torchvision.__version__, torch.__version__, numpy.__version__)


def test_push_to_hub_is_refused_before_training_without_hub_access(hub_copies, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = [*_data(hub_copies, tmp_path), *FAST, "--push_to_hub", "--hub_model_id", "someone/model",
            "--output_dir", str(out)]
    _one_line_error(capsys, argv, "--push_to_hub", "offline mode is on")  # the suite runs with HF_HUB_OFFLINE=1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    _one_line_error(capsys, argv, "--push_to_hub: cannot reach the Hugging Face Hub")
    assert not (out / "all_results.json").exists() and not list(out.glob("checkpoint-*"))


# ---- 3. Running the same command again continues the interrupted run ----


def test_rerunning_the_same_command_continues_in_the_same_default_directory(hub_copies, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*_data(hub_copies, tmp_path), "-bs", "8", "--image_size", "8", "-ep", "2", "--dataloader_num_workers",
            "0", "--disable_tqdm", "true", "--save_strategy", "epoch"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (out,) = list(Path("runs").iterdir())
    assert f"Output directory: {Path('runs') / out.name}" in printed
    # Interrupted after the first epoch's checkpoint: the same command continues from it.
    state = json.loads((out / "trainer_state.json").read_text())
    last = f"checkpoint-{state['global_step']}"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", last] and last == "checkpoint-4"
    for name in ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
                 "model.safetensors", "config.json", "README.md"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / last)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Continuing the interrupted run from {Path('runs') / out.name / 'checkpoint-2'}" in printed
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert list(Path("runs").iterdir()) == [out]
    assert "(continuing the interrupted run)" in (out / "training_log.txt").read_text()


def test_a_directory_with_only_the_run_log_is_started_again(hub_copies, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_log.txt").write_text("run started, stopped before its first checkpoint\n")
    assert main([*_data(hub_copies, tmp_path), *FAST, "--output_dir", str(out)]) == 0
    assert "stopped before its first checkpoint: starting again" in capsys.readouterr().out
    log = (out / "training_log.txt").read_text()
    assert log.startswith("run started, stopped before its first checkpoint")  # what was there is kept
    # A file the script did not write still stops it: nothing a user wrote is lost.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    _one_line_error(capsys, [*_data(hub_copies, tmp_path), *FAST, "--output_dir", str(other)], "notes.txt")


# ---- 4. No network: one line within seconds, also under accelerate launch ----


def _offline_env():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    return env


def test_without_network_a_hub_dataset_fails_fast_with_one_line_also_under_accelerate_launch(tmp_path):
    # The bound is relative to importing the script's modules in the same process (seconds on a quiet machine, far
    # more on a loaded one): the failure must add little to that, where the Hub client's retries used to add about
    # 48 s. tests/timed_main.py is the script's `main` reporting both durations on stdout; stderr is what the user
    # sees (accelerate adds its own notes, no traceback).
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
                             str(REPO_ROOT / "tests" / "timed_main.py"), "--dataset_name", "food101", "--output_dir",
                             str(tmp_path / "o")],
                            capture_output=True, text=True, env=_offline_env(), cwd=tmp_path, timeout=300, check=False)
    assert result.returncode != 0
    startup, failure = map(float, result.stdout.split()[-2:])
    assert failure < startup + 15, (startup, failure)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --dataset_name (-ds) food101: cannot reach the Hugging "
                                                     "Face Hub to load 'ethz/food101'"), result.stderr


# ---- 5. Mistakes caught before training, one line each ----


def test_report_to_an_integration_that_is_not_installed(hub_copies, tmp_path, capsys, monkeypatch):
    for module in ("tensorboard", "tensorboardX", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # as on a machine without them
    _one_line_error(capsys, [*_data(hub_copies, tmp_path), *FAST, "--report_to", "tensorboard", "--output_dir",
                             str(tmp_path / "o")], "--report_to tensorboard", "Install it")
    assert not (tmp_path / "o" / "all_results.json").exists()


def test_resume_from_a_directory_that_is_not_a_checkpoint(hub_copies, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "some_dir"
    not_a_checkpoint.mkdir()
    _one_line_error(capsys, [*_data(hub_copies, tmp_path), *FAST, "--resume_from_checkpoint", str(not_a_checkpoint),
                             "--output_dir", str(tmp_path / "o")], "is not a checkpoint", "trainer_state.json")


def test_views_on_the_device_where_that_does_not_apply_names_the_flags(hub_copies, tmp_path, capsys):
    _one_line_error(capsys, [*_data(hub_copies, tmp_path), *FAST, "--views_on", "device", "--decode_budget_gib", "0",
                             "--output_dir", str(tmp_path / "o")], "--views_on 'device' does not apply",
                    "--decode_budget_gib")  # fmt: skip


def test_a_head_or_mixing_point_that_is_not_a_module_names_the_flag(hub_copies, tmp_path, capsys):
    common = [*_data(hub_copies, tmp_path), *FAST, "--output_dir", str(tmp_path / "o")]
    _one_line_error(capsys, [*common, "--head_module", "fcc"], "--head_module 'fcc' is not a module",
                    "network.fc")
    _one_line_error(capsys, [*common, "-itrm", "Manifold_Mixup", "--manifold_mixup_modules", "input,layer9"],
                    "--manifold_mixup_modules has names that are not modules", "layer9")
    assert not (tmp_path / "o" / "training_log.txt").exists()  # before training


def test_a_model_with_another_number_of_outputs_than_classes():
    from synermix_hf.cli.errors import UsageError

    check_model_outputs(build_torchvision_classifier("resnet18", 3, image_size=8), 3, "resnet18")
    with pytest.raises(UsageError, match="head has 2 outputs, but the dataset has 3 classes.*--ignore_mismatched"):
        check_model_outputs(build_torchvision_classifier("resnet18", 2, image_size=8), 3, "./two-class-model")


# ---- 6. --do_predict writes predictions ----


def test_do_predict_writes_the_top_classes_of_every_evaluation_image(tmp_path):
    train = build_image_folder(tmp_path / "train", [4, 4, 4])
    val = build_image_folder(tmp_path / "val", [2, 2, 2], seed=1)
    out = tmp_path / "out"
    argv = ["--train_dir", str(train), "--validation_dir", str(val), *FAST, "--do_train", "--do_predict",
            "--output_dir", str(out)]
    assert main(argv) == 0
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert list(rows[0]) == ["id", "label", "prediction_1", "score_1", "prediction_2", "score_2", "prediction_3",
                             "score_3"]  # 3 classes: top-3
    assert {row["id"] for row in rows} == {p.name for p in val.glob("*/*.png")}
    for row in rows:
        scores = [float(row[f"score_{i}"]) for i in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert {row[f"prediction_{i}"] for i in (1, 2, 3)} == {"class_0", "class_1", "class_2"}
    assert "predict_loss" in json.loads((out / "all_results.json").read_text())


def test_do_predict_on_the_device_data_path(hub_copies, tmp_path):
    # CIFAR-100's square recipe takes the device path (decoded once, batched views): predictions work there too.
    out = tmp_path / "out"
    argv = [*_data(hub_copies, tmp_path), *FAST, "--do_train", "--do_predict", "--output_dir", str(out)]
    assert main(argv) == 0
    assert re.search(r"views +: device", (out / "training_log.txt").read_text())
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    predicted = json.loads((out / "all_results.json").read_text())["predict_samples"]
    assert len(rows) == predicted > 0
    assert all(float(row["score_1"]) >= float(row["score_2"]) for row in rows)


# ---- 7. A single class is refused ----


def test_a_single_class_image_folder_is_refused(tmp_path, capsys):
    folder = build_image_folder(tmp_path / "one", [6])
    _one_line_error(capsys, ["--train_dir", str(folder), "--output_dir", str(tmp_path / "o")],
                    "--train_dir", "1 class subfolder", "at least 2 classes")


# ---- 8. --help: one group per dataclass, SynerMix's flags with their short forms, the do_train default ----


def test_help_groups_the_flags_per_dataclass_and_tells_the_do_train_default():
    text = ScriptArgumentParser().format_help()
    lines = text.splitlines()

    def first(start):
        return next(i for i, line in enumerate(lines) if line.strip().startswith(start))

    groups = [first("The model:"), first("The data:"), first("What the script writes:"),
              first("Training: SynerMix, the authors' recipe and every TrainingArguments flag:")]
    assert groups == sorted(groups)
    assert groups[0] < first("--model_name ") < groups[1] < first("--views_on") < groups[2]
    assert groups[2] < first("--feature_metrics") < groups[3]
    # SynerMix's and the recipe's flags, with the reference's short flags, close the list.
    for flag, short in (("--beta", "-beta"), ("--inter_mixup", "-itrm"), ("--alpha", "-alpha"), ("--momentum", "-mo"),
                        ("--total_train_batch_size", "-bs")):
        assert groups[3] < first(flag) and short in lines[first(flag)].split(), flag
    assert first("--beta") > 0.85 * len(lines) and first("--no_balanced_sampler") > groups[3]
    do_train = " ".join(" ".join(lines[first("--do_train"):first("--do_eval")]).split())
    assert "the script trains and evaluates" in do_train and "default: False" not in do_train


# ---- 9. --bf16 on a CPU ----


def test_bf16_runs_on_a_cpu_and_warns_without_native_bf16(hub_copies, tmp_path, caplog):
    import logging

    import torch

    from synermix_hf.recipe import cpu_has_native_bf16

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    args = ScriptArgumentParser().parse([*_data(hub_copies, tmp_path), "--bf16"])[2]
    assert args.bf16 and args.use_cpu
    with caplog.at_level(logging.WARNING, logger="synermix_hf.recipe"):
        ScriptArgumentParser().parse(["--bf16"])
    assert ("emulated" in caplog.text) == (cpu_has_native_bf16() is False)
    out = tmp_path / "out"
    assert main([*_data(hub_copies, tmp_path), *FAST, "--max_steps", "1", "--model_name", "resnet18", "--bf16",
                 "--output_dir", str(out)]) == 0
    assert json.loads((out / "all_results.json").read_text())["train_loss"] > 0

