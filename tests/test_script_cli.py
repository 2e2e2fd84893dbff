"""The command line (`synermix-train`, `run_image_classification.py`): the authors' short flags, JSON files, and errors for bad input."""

import dataclasses
import json
import os
import re
import subprocess
import sys

from pathlib import Path

import pytest

from synermix_hf.cli.arguments import BUILTIN_PRESET, ScriptArgumentParser
from synermix_hf.cli.methods import METHODS_BY_NAME
from synermix_hf.cli.train import main
from synermix_hf.testing import build_image_folder, tiny_images, write_parquet_copy
from synermix_hf.training_args import accelerator_available

REPO_ROOT = Path(__file__).resolve().parents[1]
# The six configurations exactly as the authors' README writes them (`main.py` -> our script): text of their README,
# not another declaration of the configurations, which live in synermix_hf/cli/methods.py.
README_COMMANDS = {
    "wo-RA&ER": "-mn resnet-18 -ds cifar100 -bs 128",
    "w-RA": "-mn resnet18 -ds cifar100 -bs 128 -beta 0.5 -phase test",
    "w-ER(M)": "-mn resnet18 -ds cifar100 -bs 128 -alpha 1 -itrm Mixup -phase test",
    "w-ER(MM)": "-mn resnet18 -ds cifar100 -bs 128 -alpha 1 -itrm Manifold_Mixup -phase test",
    "w-RA&ER(M)": "-mn resnet18 -ds cifar100 -bs 128 -alpha 1 -beta 0.1 -itrm Mixup -phase test",
    "w-RA&ER(MM)": "-mn resnet18 -ds cifar100 -bs 128 -alpha 1 -beta 0.1 -itrm Manifold_Mixup -phase test",
}
# The same run in long flags: the reference's model, data and batch, and the configuration's flags from the command
# line's table of the six (`synermix-compare` runs them with these flags).
LONG_BASE = "--model_name resnet18 --dataset_name cifar100 --total_train_batch_size 128 --phase test".split()
ALL_SHORT = "-mn resnet50 -ds food101 -pr True -bs 64 -alpha 0.4 -beta 0.2 -itrm Mixup -lr 0.05 -mo 0.8 -wd 1e-4 " \
    "-ss 20 -ga 0.1 -seed 7 -ep 30 -ne True -phase val -vr 0.2 -mp true"
ALL_LONG = "--model_name resnet50 --dataset_name food101 --pretrained --total_train_batch_size 64 --alpha 0.4 " \
    "--beta 0.2 --inter_mixup mixup --learning_rate 0.05 --momentum 0.8 --weight_decay 1e-4 --lr_step_size 20 " \
    "--lr_gamma 0.1 --seed 7 --num_train_epochs 30 --nesterov --phase val --val_ratio 0.2 --amp"


def _parse(command):
    return ScriptArgumentParser().parse(command.split())[:3]


def _as_dicts(groups):
    return [dataclasses.asdict(group) for group in groups]


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_authors_readme_commands_parse_like_the_long_flags(name):
    short = _parse(README_COMMANDS[name])
    assert _as_dicts(short) == _as_dicts(ScriptArgumentParser().parse(LONG_BASE + METHODS_BY_NAME[name].flags())[:3])
    model_args, data_args, training_args = short
    assert (model_args.model_name, data_args.dataset_name, training_args.per_device_train_batch_size) == (
        "resnet18", "cifar100", 128)


def test_every_short_flag_maps_to_its_long_name():
    short, long = _parse(ALL_SHORT), _parse(ALL_LONG)
    assert _as_dicts(short) == _as_dicts(long)
    model_args, data_args, args = short
    assert model_args.pretrained and args.nesterov and args.amp and data_args.phase == "val"
    assert (args.lr_step_size, args.lr_gamma, args.momentum, args.num_train_epochs) == (20, 0.1, 0.8, 30)
    assert args.bf16 or args.fp16  # -mp: fp16 on CUDA, bf16 on CPU


def test_defaults_are_the_reference_recipe():
    _, data_args, args = _parse("-ds cifar100")
    assert (args.learning_rate, args.momentum, args.weight_decay, args.nesterov) == (0.1, 0.9, 5e-4, False)
    assert (args.lr_step_size, args.lr_gamma, args.num_train_epochs, args.seed) == (10, 0.5, 120, 123)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (128, 48)
    assert (args.beta, args.inter_mixup, args.alpha) == (0, "none", 1)
    assert (data_args.phase, data_args.val_ratio) == ("test", 0.1)
    assert args.do_train and args.do_eval and args.recipe == "paper"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_arguments_from_a_json_or_yaml_file(tmp_path, suffix):
    import yaml

    values = {"model_name": "mobilenet", "dataset_name": "cifar100", "beta": 0.1, "inter_mixup": "Manifold_Mixup",
              "num_train_epochs": 3}
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    from_file = ScriptArgumentParser().parse([str(path)])
    from_cli = ScriptArgumentParser().parse("-mn mobilenet -ds cifar100 -beta 0.1 -itrm Manifold_Mixup -ep 3".split())
    assert _as_dicts(from_file[:4]) == _as_dicts(from_cli[:4]) and from_file.explicit == from_cli.explicit


def test_an_argument_file_that_is_missing_broken_or_has_an_unknown_name_is_refused(capsys, tmp_path):
    _fails(capsys, [str(tmp_path / "missing.json")], "missing.json", "cannot be read")
    (tmp_path / "broken.json").write_text('{"beta": 0.1,')
    _fails(capsys, [str(tmp_path / "broken.json")], "broken.json", "cannot be read")
    (tmp_path / "list.yaml").write_text("- beta\n")
    _fails(capsys, [str(tmp_path / "list.yaml")], "one mapping of argument names")
    (tmp_path / "unknown.json").write_text(json.dumps({"beta": 0.1, "betta": 0.2}))
    _fails(capsys, [str(tmp_path / "unknown.json")], "betta")
    (tmp_path / "null.json").write_text(json.dumps({"beta": None}))  # a bare TypeError ('<=' ... 'NoneType') before
    _fails(capsys, [str(tmp_path / "null.json")], "--beta (-beta)", "null is not valid")
    (tmp_path / "bad.json").write_text(json.dumps({"beta": 2}))
    _fails(capsys, [str(tmp_path / "bad.json")], "--beta (-beta) must be between 0 and 1")


def test_builtin_preset_fills_only_what_is_not_given():
    model_args, _, args, _, _ = ScriptArgumentParser().parse(["-ep", "2", "-beta", "0.3"])
    assert (args.num_train_epochs, args.beta) == (2, 0.3)
    assert model_args.image_size == BUILTIN_PRESET["image_size"]
    assert args.inter_mixup == BUILTIN_PRESET["inter_mixup"] and args.balanced_sampler


def test_builtin_preset_keeps_the_recipes_no_clipping_rule():
    # `synermix-compare` runs the six configurations on this preset: it must not clip where the reference does not.
    _, _, args, _, _ = ScriptArgumentParser().parse([])
    assert args.max_grad_norm == 0
    _, _, args, _, _ = ScriptArgumentParser().parse(["--max_grad_norm", "1"])
    assert args.max_grad_norm == 1


def test_an_output_dir_left_null_in_a_json_file_gets_the_default_directory(tmp_path, monkeypatch):
    # As on the command line without --output_dir: runs/<dataset>-<model>-<method>-<id>, which a rerun continues.
    from synermix_hf.cli.train import run

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": None, "max_steps": 1, "do_eval": False, "do_train": True}))
    explicit = ScriptArgumentParser().parse([str(path)]).explicit
    assert "output_dir" not in explicit
    monkeypatch.chdir(tmp_path)
    run([str(path)])
    made = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1 and made[0].startswith("digits-resnet18-"), made
    assert not (tmp_path / "trainer_output").exists()


def test_bs_is_the_batch_of_one_step_and_per_device_keeps_its_meaning():
    # -bs is the reference's batch of one SGD step: split over processes x accumulation steps (here 1 x 2; the
    # two-process split is tested in test_distributed.py and test_multinode.py).
    _, _, args, _, _ = ScriptArgumentParser().parse(["-ds", "cifar100", "-bs", "8", "--gradient_accumulation_steps", "2"])
    assert (args.per_device_train_batch_size, args.total_train_batch_size) == (4, 8)
    _, _, args, _, _ = ScriptArgumentParser().parse(["-ds", "cifar100", "--per_device_train_batch_size", "8",
                                                  "--gradient_accumulation_steps", "2"])
    assert (args.per_device_train_batch_size, args.total_train_batch_size) == (8, None)
    _, _, args, _, _ = ScriptArgumentParser().parse(["-ds", "cifar100", "--gradient_accumulation_steps", "4"])
    assert (args.per_device_train_batch_size, args.total_train_batch_size) == (32, 128)  # the reference's 128
    # The built-in run's batch gives way to a batch of either kind.
    _, _, args, _, _ = ScriptArgumentParser().parse(["--per_device_train_batch_size", "16"])
    assert (args.per_device_train_batch_size, args.total_train_batch_size) == (16, None)
    # --help says so.
    bs = next(a for a in ScriptArgumentParser()._actions if "-bs" in a.option_strings)
    assert bs.dest == "total_train_batch_size" and "one optimizer step, over all processes" in bs.help


def test_a_batch_that_does_not_split_or_two_that_disagree_are_refused(capsys):
    _fails(capsys, ["-ds", "cifar100", "-bs", "7", "--gradient_accumulation_steps", "2"],
           "--total_train_batch_size (-bs) 7 does not split evenly over 1 process x 2 gradient accumulation steps",
           "a multiple of 2", "--per_device_train_batch_size")
    _fails(capsys, ["-ds", "cifar100", "--gradient_accumulation_steps", "3"],
           "The reference's batch of 128 (the default --total_train_batch_size (-bs)) does not split evenly")
    _fails(capsys, ["-ds", "cifar100", "-bs", "8", "--per_device_train_batch_size", "4"],
           "--per_device_train_batch_size 4 and --total_train_batch_size (-bs) 8 disagree", "Give one of them")


def test_a_balanced_batch_larger_than_the_training_set_is_refused_before_training(capsys, tmp_path):
    # 16 per process x 2 accumulation steps: the balanced batch of one update, 32, is more than the 20 examples.
    _fails(capsys, ["--max_train_samples", "20", "-bs", "32", "--gradient_accumulation_steps", "2", "--output_dir",
                    str(tmp_path / "o")], "fewer than one batch of 32", "--balanced_sampler")
    assert not (tmp_path / "o" / "training_log.txt").exists()


@pytest.mark.skipif(accelerator_available(), reason="the refusal is for machines without GPU")
def test_use_cpu_false_is_refused_when_cpu_processes_were_launched(capsys, monkeypatch):
    # What torchrun sets for a second process; the refusal comes before any process group is made.
    monkeypatch.setenv("WORLD_SIZE", "2")
    _fails(capsys, ["-ds", "cifar100", "--use_cpu", "false"], "--use_cpu false: 2 processes were launched",
           "its own copy of the model", "Leave out --use_cpu")


# ---- bad input: one paragraph on stderr, status 2, no traceback, before training ----


def _fails(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err, err
    message = err[err.rindex("error: "):].strip()  # progress bars of `datasets` may come first
    assert "\n\n" not in message and len(message.splitlines()) <= 3, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_dataset_and_model_names_list_the_valid_ones(capsys, tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    valid = "cifar100, food101, oxfordiiipet, caltech256, miniimagenet, digits"
    _fails(capsys, ["-ds", "cifar1000", *out], "Did you mean 'cifar100'", valid)
    _fails(capsys, ["-ds", "imagenette", *out], "not one of the built-in short names", valid)
    _fails(capsys, ["-mn", "resnet19", *out], "resnet18, resnet34, resnet50, resnet101, mobilenet, tiny-swin")
    _fails(capsys, ["--phase", "train", *out], "invalid choice", "'test', 'val'")
    _fails(capsys, ["--no_such_flag", "1", *out], "--no_such_flag")


def test_missing_directories(capsys, tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    _fails(capsys, ["--train_dir", str(tmp_path / "missing"), *out], "--train_dir", "does not exist")
    _fails(capsys, ["--model_name_or_path", str(tmp_path / "no_model"), *out], "--model_name_or_path",
           "does not exist")
    _fails(capsys, ["--resume_from_checkpoint", str(tmp_path / "checkpoint-9"), *out],
           "--resume_from_checkpoint")


def test_unreadable_image_is_named(capsys, tmp_path):
    folder = build_image_folder(tmp_path / "images", [4, 4])
    (folder / "class_0" / "corrupt.png").write_bytes(b"\x89PNG truncated")
    _fails(capsys, ["--train_dir", str(folder), "--output_dir", str(tmp_path / "out")], "corrupt.png")


def test_label_column_that_is_not_a_class_label(capsys, tmp_path):
    import datasets

    labels = [0, 1] * 4
    copy = write_parquet_copy(
        tmp_path / "scores",
        {"train": {"image": tiny_images(labels), "label": labels, "score": [0.5 * i for i in range(8)]}},
        datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"]),
                           "score": datasets.Value("float32")}),
    )
    _fails(capsys, ["-ds", str(copy), "--label_column_name", "score", "--output_dir", str(tmp_path / "o")],
           "'score' is not a class label", "image, label, score")


def test_phase_val_with_too_few_samples_per_class(capsys, hub_copies, tmp_path):
    _fails(capsys, ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "-phase", "val",
                            "--max_train_samples", "4", "--output_dir", str(tmp_path / "o")], "--phase (-phase) 'val'")


def test_unreachable_hub_dataset(capsys, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1, as on a machine without network.
    _fails(capsys, ["-ds", "cifar100", "--output_dir", str(tmp_path / "o")],
           "cannot reach the Hugging Face Hub", "uoft-cs/cifar100")


def test_pretrained_weights_that_cannot_be_downloaded(capsys, monkeypatch, hub_copies, tmp_path):
    import urllib.error

    import torchvision.models._api as api

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", unreachable)
    _fails(capsys, ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "-pr", "True", "-bs", "8",
                    "--output_dir", str(tmp_path / "o")], "--pretrained", "download.pytorch.org")


def test_bad_input_from_the_shell_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_image_classification.py"), "-mn", "resnet-19", "--output_dir",
         str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.strip().startswith("error: Unknown --model_name (-mn) 'resnet-19'")
    assert not (tmp_path / "o").exists()


def test_log_level_warning_silences_the_scripts_info_lines(script_in_process, tmp_path, capfd):
    assert script_in_process(["--max_steps", "1", "--log_level", "warning", "--output_dir", tmp_path / "run"]) == 0
    out = capfd.readouterr().out
    assert " INFO " not in out and "Output directory" in out  # the script's own summary lines stay


@pytest.mark.parametrize("text, value", [('"false"', False), ('"true"', True)])
def test_a_switch_or_number_written_as_a_string_in_a_json_file_reads_as_on_the_command_line(tmp_path, text, value):
    # The dataclasses take a string as it is, and the string "false" is true: a run asked not to train trained.
    path = tmp_path / "args.json"
    path.write_text(f'{{"do_train": {text}, "do_eval": true, "beta": "0.3", "max_train_samples": "7"}}')
    _, data_args, args, _, _ = ScriptArgumentParser().parse([str(path)])
    assert args.do_train is value and (args.beta, data_args.max_train_samples) == (0.3, 7)


def test_a_string_that_its_flag_would_refuse_is_named_in_an_argument_file(capsys, tmp_path):
    (tmp_path / "switch.json").write_text('{"nesterov": "maybe"}')
    _fails(capsys, [str(tmp_path / "switch.json")], "--nesterov (-ne)", "'maybe'", "true or false")
    (tmp_path / "number.json").write_text('{"beta": "a tenth"}')
    _fails(capsys, [str(tmp_path / "number.json")], "--beta (-beta)", "'a tenth'", "a number")


@pytest.mark.parametrize("flags, done", [(["--do_train", "false"], (False, True, False)),
                                         (["--do_eval", "false"], (True, False, False)),
                                         (["--do_predict", "--do_train", "false"], (False, False, True))])
def test_a_do_flag_given_false_is_not_turned_back_on(flags, done):
    # Without any of them the script trains and evaluates; the one the user turned off stays off.
    _, _, args = _parse(" ".join(flags))
    assert (args.do_train, args.do_eval, args.do_predict) == done


def test_every_do_flag_given_false_is_refused_as_a_run_that_does_nothing(capsys):
    _fails(capsys, ["--do_train", "false", "--do_eval", "false"], "--do_train false --do_eval false", "nothing")


def test_an_argument_file_followed_by_flags_is_refused_saying_the_file_must_be_alone(capsys, tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"beta": 0.1}))
    _fails(capsys, [str(path), "--beta", "0.2"], "must be the only argument", "--beta 0.2")


def test_resume_from_checkpoint_in_a_run_that_does_not_train_is_refused(capsys, tmp_path):
    # Only training reads it: evaluation went on with the untrained model, the checkpoint silently left aside.
    trained = tmp_path / "trained"
    assert main(["--max_steps", "1", "--save_steps", "1", "--max_train_samples", "64", "--do_eval", "false",
                 "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--output_dir", str(trained)]) == 0
    checkpoint = str(trained / "checkpoint-1")
    for do in (["--do_eval"], ["--do_predict"], ["--do_train", "false"]):
        out = tmp_path / "out"
        _fails(capsys, [*do, "--resume_from_checkpoint", checkpoint, "--max_eval_samples", "8", "--output_dir",
                        str(out)], f"--resume_from_checkpoint {checkpoint}", "--model_name_or_path")
        assert not out.exists()


def test_evaluating_a_torchvision_model_that_this_run_does_not_train_is_warned_of(tmp_path, capsys):
    # As Hugging Face's script, the run evaluates what it was given; an untrained head is named, with the way out.
    capsys.readouterr()
    assert main(["--do_eval", "--max_eval_samples", "8", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
                 "--output_dir", str(tmp_path / "out")]) == 0
    assert re.search(r"does not train .* untrained classification head.*--model_name_or_path", capsys.readouterr().out)
    assert main(["--max_steps", "1", "--max_train_samples", "64", "--max_eval_samples", "8", "--disable_tqdm", "true",
                 "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "trained")]) == 0
    assert "untrained classification head" not in capsys.readouterr().out
