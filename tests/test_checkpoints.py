"""Checkpoints are complete or absent: a run interrupted while it saves continues from its last complete checkpoint
and ends with the weights of an uninterrupted run; `save_total_limit` never leaves only an incomplete checkpoint; a
checkpoint that another writer left incomplete (no whole `trainer_state.json`, the file the Trainer writes last) is
skipped by name and removed, and refused when asked for by path."""

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments
from synermix_hf.resume import STAGING_PREFIX, checkpoint_problem, last_complete_checkpoint, resolve_resume

ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())  # fmt: skip
        self.fc = nn.Linear(4, 3)

    def forward(self, pixel_values):
        return self.fc(self.features(pixel_values))


def _dataset(n=24):
    generator = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({
        "pixel_values": torch.rand(n, 3, 6, 6, generator=generator).numpy(),
        "original_pixel_values": torch.rand(n, 3, 6, 6, generator=generator).numpy(),
        "labels": [i % 3 for i in range(n)],
    }).with_format("torch")  # fmt: skip


def _trainer(output_dir, save_total_limit=None, trainer_class=SynerMixTrainer, processing_class=None, eval_dataset=None,
             **arguments):
    # 24 examples, batch 4: 6 steps an epoch, 2 epochs; checkpoints every 3 steps. SGD with momentum and a linear
    # schedule, so the optimizer's and the scheduler's state matter on resume; beta > 0 with MixUp draws every step.
    args = SynerMixTrainingArguments(
        output_dir=str(output_dir), report_to=[], use_cpu=True, disable_tqdm=True, seed=7, num_train_epochs=2,
        per_device_train_batch_size=4, balanced_sampler=False, learning_rate=0.05, optim="sgd",
        optim_args="momentum=0.9", beta=0.3, inter_mixup="mixup", save_strategy="steps", save_steps=3,
        save_total_limit=save_total_limit, logging_steps=100, **arguments,
    )  # fmt: skip
    torch.manual_seed(0)
    return trainer_class(model=TinyNet(), args=args, train_dataset=_dataset(), processing_class=processing_class,
                         eval_dataset=eval_dataset)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights of an uninterrupted run (checkpoints 3, 6, 9 and 12)."""
    trainer = _trainer(tmp_path_factory.mktemp("uninterrupted"))
    trainer.train()
    return {name: value.clone() for name, value in trainer.model.state_dict().items()}


def _assert_same_weights(model, expected):
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


class Interrupted(KeyboardInterrupt):
    """What Ctrl-C (SIGINT) raises in Python, at one chosen point of the save of checkpoint-6."""


def _interrupting_trainer(point):
    class InterruptingTrainer(SynerMixTrainer):
        def save_model(self, output_dir=None, _internal_call=False):
            super().save_model(output_dir, _internal_call)
            if self.state.global_step == 6 and _internal_call:
                if point == "weights cut short":  # as if the process died while writing the file
                    weights = os.path.join(output_dir, "model.safetensors")
                    with open(weights, "r+b") as handle:
                        handle.truncate(os.path.getsize(weights) // 2)
                if point in ("weights written", "weights cut short"):
                    raise Interrupted

        def _save_optimizer_and_scheduler(self, output_dir):
            super()._save_optimizer_and_scheduler(output_dir)
            if self.state.global_step == 6 and point == "optimizer written":
                raise Interrupted

        def _publish(self, staged, final, run_dir):
            if self.state.global_step == 6 and point == "all written, not renamed":
                raise Interrupted
            super()._publish(staged, final, run_dir)

        def _rotate_checkpoints_in(self, run_dir):
            if self.state.global_step == 6 and point == "renamed, older not rotated":
                raise Interrupted
            super()._rotate_checkpoints_in(run_dir)

    return InterruptingTrainer


@pytest.mark.parametrize(
    "point", ["weights written", "weights cut short", "optimizer written", "all written, not renamed",
              "renamed, older not rotated"],
)  # fmt: skip
def test_a_run_interrupted_during_a_save_continues_to_the_uninterrupted_weights(tmp_path, uninterrupted, point):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        _trainer(out, save_total_limit=1, trainer_class=_interrupting_trainer(point)).train()
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    # Complete or absent: checkpoint-6 exists only once it is whole, and checkpoint-3 is not rotated out before.
    if point == "renamed, older not rotated":
        assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    else:
        assert checkpoints == ["checkpoint-3"]
    assert all(checkpoint_problem(str(out / name)) is None for name in checkpoints)

    resumed = _trainer(out, save_total_limit=1)
    resumed.train(resume_from_checkpoint=True)
    _assert_same_weights(resumed.model, uninterrupted)
    left = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert left == ["checkpoint-12"], left  # the staging folder is gone, rotation kept the last one


def _incomplete_copy(complete: Path, target: Path, damage: str) -> Path:
    shutil.copytree(complete, target)
    if damage == "no trainer_state.json":
        (target / "trainer_state.json").unlink()
    elif damage == "trainer_state.json cut short":
        text = (target / "trainer_state.json").read_text()
        (target / "trainer_state.json").write_text(text[: len(text) // 2])
    return target


class StepCount(transformers.TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_a_checkpoint_of_a_run_that_saved_only_the_model_needs_no_optimizer(tmp_path, caplog):
    # It resumes, and says that the run will not end as an uninterrupted one: the Trainer starts a fresh optimizer and
    # schedule (the linear schedule's steps count from its start again) without a word.
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.save_only_model, trainer.args.max_steps = True, 3
    trainer.train()
    assert not {"optimizer.pt", "scheduler.pt"} & {p.name for p in (out / "checkpoint-3").iterdir()}
    resumed, counted = _trainer(out), StepCount()
    resumed.args.save_only_model, resumed.args.max_steps = True, 6
    resumed.add_callback(counted)
    with caplog.at_level("WARNING", logger="synermix_hf.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    assert counted.steps == 3 and resumed.state.global_step == 6  # from checkpoint-3, not from the beginning
    warnings = [r.getMessage() for r in caplog.records if "save_only_model" in r.getMessage()]
    assert len(warnings) == 1 and "optimizer.pt" in warnings[0] and "scheduler.pt" in warnings[0]
    assert resumed.lr_scheduler.last_epoch == 3  # the schedule stepped from its start, not from step 3 on
    caplog.clear()  # a rerun from the last step trains nothing: nothing to warn of
    with caplog.at_level("WARNING", logger="synermix_hf.checkpoints"):
        _trainer(out, save_only_model=True, max_steps=6).train(resume_from_checkpoint=True)
    assert not [r for r in caplog.records if "save_only_model" in r.getMessage()]


def test_a_rerun_from_the_last_step_of_a_fractional_number_of_epochs_trains_nothing_more(tmp_path):
    # 1.5 epochs of 6 steps end at step 9, within epoch 2, which checkpoint-9 holds (a run whose final save failed is
    # resumed from it): transformers' loop trained a step 10 past the run's end before it checked the step count.
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.num_train_epochs = 1.5
    trainer.train()
    assert trainer.state.global_step == 9
    resumed, counted = _trainer(out), StepCount()
    resumed.args.num_train_epochs = 1.5
    resumed.add_callback(counted)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-9"))
    assert counted.steps == 0 and resumed.state.global_step == 9
    _assert_same_weights(resumed.model, trainer.model.state_dict())


def test_a_rerun_from_the_last_step_ends_with_the_best_checkpoints_weights_as_the_run_did(tmp_path):
    # load_best_model_at_end: the run ends on its best checkpoint's weights, and so does the rerun from its last
    # checkpoint (its final save failed), which trains nothing; it ended on the last step's weights. The higher loss
    # counts as the better here, so that the best checkpoint (3) is not the last (6).
    out = tmp_path / "run"
    best = dict(max_steps=6, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                metric_for_best_model="eval_loss", greater_is_better=True)
    trainer = _trainer(out, eval_dataset=_dataset(12), **best)
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-3")
    resumed, counted = _trainer(out, eval_dataset=_dataset(12), **best), StepCount()
    resumed.add_callback(counted)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert counted.steps == 0 and resumed.state.global_step == 6
    _assert_same_weights(resumed.model, trainer.model.state_dict())


def test_the_trainer_takes_a_resolved_plan_as_it_is_and_clears_the_leftovers_it_names(tmp_path, monkeypatch,
                                                                                      caplog):
    # The command line resolves once and hands its plan to `train`, which neither resolves again nor removes more than
    # the plan says: the leftovers of the folder the run goes on saving into.
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    _incomplete_copy(out / "checkpoint-3", out / "checkpoint-9", "no trainer_state.json")
    (out / f"{STAGING_PREFIX}6").mkdir()
    plan = resolve_resume(str(out), "last")
    assert plan.checkpoint == str(out / "checkpoint-3") and plan.clears == str(out)

    def resolved_again(*args, **kwargs):
        raise AssertionError("resolved a second time")

    monkeypatch.setattr("synermix_hf.checkpoints.resolve_resume", resolved_again)
    resumed, counted = _trainer(out), StepCount()
    resumed.args.max_steps = 6
    resumed.add_callback(counted)
    with caplog.at_level("WARNING", logger="synermix_hf.checkpoints"):
        resumed.train(resume_from_checkpoint=plan)
    assert counted.steps == 3 and resumed.state.global_step == 6
    assert not [r for r in caplog.records if "save_only_model" in r.getMessage()]  # its optimizer state is there
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "checkpoint-6"]


@pytest.mark.parametrize("damage", ["no trainer_state.json", "trainer_state.json cut short"])
def test_a_checkpoint_left_incomplete_by_another_writer_is_skipped_named_and_removed(tmp_path, damage, caplog):
    # A plain Trainer writes in place, trainer_state.json last: its interrupted save leaves checkpoint-N without a
    # whole one.
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    complete = out / "checkpoint-3"
    assert checkpoint_problem(str(complete)) is None
    _incomplete_copy(complete, out / "checkpoint-9", damage)
    assert checkpoint_problem(str(out / "checkpoint-9")) is not None
    # transformers' own choice is the incomplete one, which the plain Trainer fails on.
    assert transformers.trainer_utils.get_last_checkpoint(str(out)) == str(out / "checkpoint-9")

    assert last_complete_checkpoint(str(out)) == (str(complete), [(str(out / "checkpoint-9"),
                                                                   checkpoint_problem(str(out / "checkpoint-9")))])
    resumed = _trainer(out, save_total_limit=1)
    with caplog.at_level("WARNING", logger="synermix_hf.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    skips = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(skips) == 1 and "checkpoint-9" in skips[0] and "checkpoint-3" in skips[0], skips
    assert resumed.state.global_step == 12
    # The incomplete checkpoint-9 was removed before training went on, so the run wrote a complete one in its place
    # and rotation (save_total_limit=1) kept the last complete checkpoint rather than the stale one.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-12"]


def test_resuming_from_an_incomplete_checkpoint_is_refused_with_the_reason(tmp_path):
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    broken = _incomplete_copy(out / "checkpoint-3", out / "checkpoint-6", "no trainer_state.json")
    with pytest.raises(ValueError, match=r"checkpoint-6 is not a complete checkpoint: it has no trainer_state\.json "
                       r"\(its save was interrupted\)\. The latest complete checkpoint next to it is .*checkpoint-3"):
        _trainer(out).train(resume_from_checkpoint=str(broken))


def test_the_same_step_saved_twice_replaces_the_checkpoint_whole(tmp_path):
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    first = load_file(out / "checkpoint-3" / "model.safetensors")
    with torch.no_grad():
        trainer.model.fc.bias.add_(1.0)
    trainer._save_checkpoint(trainer.model, None)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-3"]
    second = load_file(out / "checkpoint-3" / "model.safetensors")
    torch.testing.assert_close(second["fc.bias"], first["fc.bias"] + 1.0)
    assert checkpoint_problem(str(out / "checkpoint-3")) is None


def test_the_best_checkpoint_is_recorded_under_its_final_name(tmp_path):
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.eval_strategy = trainer.args.save_strategy
    trainer.args.eval_steps = 3
    trainer.args.load_best_model_at_end = True
    trainer.args.metric_for_best_model = "loss"
    trainer.eval_dataset = _dataset(6)
    trainer.args.max_steps = 6
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.dirname(best) == str(out) and STAGING_PREFIX not in best
    for name in ("checkpoint-3", "checkpoint-6"):
        state = json.loads((out / name / "trainer_state.json").read_text())
        assert STAGING_PREFIX not in (state["best_model_checkpoint"] or ""), state["best_model_checkpoint"]


SCRIPT_ARGS = [
    "--image_size", "8", "-mn", "resnet18", "-bs", "4", "-ep", "2", "-beta", "0.3", "-itrm", "Mixup", "-seed", "5",
    "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--dataloader_num_workers", "0",
    "--disable_tqdm", "true", "--do_train",
]  # fmt: skip


def _run_script(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def uninterrupted_script_weights(tmp_path_factory, hub_copies, script_in_process):
    out = tmp_path_factory.mktemp("uninterrupted_script")
    data = ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"])]
    assert script_in_process([*data, *SCRIPT_ARGS, "--output_dir", out], torch_threads=1) == 0  # as `_run_script`
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_the_script_interrupted_while_writing_a_checkpoint_continues_when_run_again(
    tmp_path, hub_copies, uninterrupted_script_weights, signal_name, script_in_process, capsys, monkeypatch
):
    """The user's view: a kill or Ctrl-C in the middle of writing checkpoint-4, the same command again, the same
    result. The run resolves where it continues from once, and the trainer continues from that."""
    common = ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), *SCRIPT_ARGS, "--output_dir",
              str(tmp_path / "b")]  # fmt: skip
    out = tmp_path / "b"
    interrupted = _run_script(str(ROOT / "tests" / "interrupt_during_save.py"), signal_name, "4", *common)
    if signal_name == "SIGKILL":
        assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr[-3000:]
        kept = "checkpoint-2"
    else:  # Ctrl-C is a request to stop, as SIGTERM is: the save goes on, and the run stops after the next step with
        # a checkpoint of it (the one the test cut short is skipped); one line, no traceback
        assert interrupted.returncode == 130, interrupted.stderr[-3000:]
        assert "Traceback" not in interrupted.stderr
        assert interrupted.stderr.strip().splitlines()[-1].startswith(
            f"SIGINT (Ctrl-C) received: training stopped after step 5 and saved {out / 'checkpoint-5'}.")
        kept = "checkpoint-5"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))[-1] == kept

    resolved = []

    def resolve_and_count(*args, **kwargs):
        resolved.append(resolve_resume(*args, **kwargs))
        return resolved[-1]

    for module in ("synermix_hf.cli.output_dir", "synermix_hf.checkpoints"):
        monkeypatch.setattr(f"{module}.resolve_resume", resolve_and_count)
    capsys.readouterr()
    assert script_in_process(common, torch_threads=1) == 0  # the same command again
    again = capsys.readouterr()
    assert [plan.checkpoint for plan in resolved] == [str(out / kept)]
    assert f"Continuing the interrupted run from {out / kept}" in again.out
    assert "Traceback" not in again.err
    actual = load_file(out / "model.safetensors")
    for name, tensor in uninterrupted_script_weights.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert not any(p.name.startswith(STAGING_PREFIX) for p in out.iterdir())


def test_the_script_refuses_an_incomplete_checkpoint_in_one_line(tmp_path, hub_copies, capsys):
    from synermix_hf.cli.train import main

    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    broken = _incomplete_copy(out / "checkpoint-3", out / "checkpoint-6", "trainer_state.json cut short")
    argv = ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "8", "--max_steps", "1",
            "--output_dir", str(tmp_path / "other"), "--resume_from_checkpoint", str(broken)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "checkpoint-6' is not a complete checkpoint: its trainer_state.json is cut short" in err
    assert "Continue from " + str(out / "checkpoint-3") in err
