"""Resume has one owner: `resume.resolve_resume` resolves "last" and judges a checkpoint, once a run, for the Trainer
and the command line alike; the command line only words its refusals in its flags."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from synermix_hf.resume import ResumeError, ResumePlan, resolve_resume
from synermix_hf.cli import output_dir
from synermix_hf.cli.errors import UsageError
from synermix_hf.cli.output_dir import prepare_output_dir


def _complete(folder):
    """A checkpoint that `checkpoint_problem` passes: its `trainer_state.json`, the file the Trainer writes last."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return str(folder)


def _interrupted(folder):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    return str(folder)


def _args(out, resume=None, **kwargs):
    return SimpleNamespace(output_dir=str(out), resume_from_checkpoint=resume, should_save=True, do_train=True,
                           **kwargs)


def test_last_is_the_newest_complete_checkpoint_passing_over_newer_incomplete_ones(tmp_path):
    out = tmp_path / "run"
    complete = _complete(out / "checkpoint-3")
    newer = _interrupted(out / "checkpoint-6")
    for given in (True, "last", "LAST", " True "):
        plan = resolve_resume(str(out), given)
        assert plan == ResumePlan(complete, ((newer, "it has no trainer_state.json (its save was interrupted)"),),
                                  clears=str(out))
    assert (out / "checkpoint-6").is_dir()  # resolving removes nothing
    assert resolve_resume(str(out), None) == resolve_resume(str(out), False) == ResumePlan(None)
    assert resolve_resume(str(out), complete) == ResumePlan(complete, clears=str(out))
    assert resolve_resume(str(tmp_path / "other"), complete) == ResumePlan(complete)  # nothing of `other` to clear


def test_last_without_a_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    newer = _interrupted(out / "checkpoint-6")
    with pytest.raises(ResumeError) as raised:
        resolve_resume(str(out), "last")
    assert raised.value.kind == "none complete" and raised.value.given == "last"
    assert str(raised.value).startswith(f"`resume_from_checkpoint`: `output_dir` {out} holds no complete checkpoint (")
    assert resolve_resume(str(out), "last", required=False).skipped == raised.value.skipped == (
        (newer, "it has no trainer_state.json (its save was interrupted)"),)
    assert resolve_resume(str(out), "last", required=False).checkpoint is None


@pytest.mark.parametrize("kind", ["missing", "not a checkpoint", "incomplete"])
def test_a_path_that_is_no_complete_checkpoint_is_refused_naming_the_latest_complete_one(tmp_path, kind):
    out = tmp_path / "run"
    latest = _complete(out / "checkpoint-3")
    path = {"missing": lambda: str(out / "checkpoint-9"), "not a checkpoint": lambda: _interrupted(out / "other"),
            "incomplete": lambda: _interrupted(out / "checkpoint-6")}[kind]()
    with pytest.raises(ValueError, match=f"is not a complete checkpoint: .*The latest complete checkpoint next to it "
                       f"is {latest}") as raised:
        resolve_resume(str(tmp_path / "elsewhere"), path)
    assert raised.value.kind == kind and raised.value.latest == latest and raised.value.checkpoint == path


def test_the_command_line_words_the_resolvers_refusals_in_its_flags(tmp_path):
    out = tmp_path / "run"
    latest = _complete(out / "checkpoint-3")
    incomplete = _interrupted(out / "checkpoint-6")
    lonely = _interrupted(tmp_path / "lonely" / "checkpoint-1")
    other = _interrupted(tmp_path / "other")
    cases = {
        str(tmp_path / "nowhere"): f"--resume_from_checkpoint {str(tmp_path / 'nowhere')!r} does not exist (it must be "
                                   "a checkpoint-* directory).",
        other: f"--resume_from_checkpoint {other!r} is not a checkpoint: it has no trainer_state.json. Checkpoints are "
               "the checkpoint-* directories in an --output_dir (or give --resume_from_checkpoint last).",
        incomplete: f"--resume_from_checkpoint {incomplete!r} is not a complete checkpoint: it has no "
                    f"trainer_state.json (its save was interrupted). Continue from {latest}, the latest complete one, "
                    "or give --resume_from_checkpoint last.",
        lonely: f"--resume_from_checkpoint {lonely!r} is not a complete checkpoint: it has no trainer_state.json (its "
                "save was interrupted). Its folder holds no complete checkpoint: start the run again without "
                "--resume_from_checkpoint.",
    }
    for given, message in cases.items():
        with pytest.raises(UsageError) as raised:
            prepare_output_dir(_args(tmp_path / "fresh", given))
        assert str(raised.value) == message
    with pytest.raises(UsageError) as raised:
        prepare_output_dir(_args(tmp_path / "lonely", "Last"))
    assert str(raised.value) == (f"--resume_from_checkpoint Last: --output_dir {tmp_path / 'lonely'} holds no complete "
                                 "checkpoint-* directory (checkpoint-1 is skipped and removed: it has no "
                                 "trainer_state.json (its save was interrupted)).")
    plan = ResumePlan(latest, ((incomplete, "it has no trainer_state.json (its save was interrupted)"),), str(out))
    assert prepare_output_dir(_args(out)) == (plan, True, "; checkpoint-6 is skipped and removed: it has no "
                                                          "trainer_state.json (its save was interrupted)")
    assert (out / "checkpoint-6").is_dir()  # removed by the trainer, once, before it trains
    # Nothing complete to continue from: the run starts again, and the trainer clears what the interrupted one left.
    lonely_dir = str(tmp_path / "lonely")
    assert prepare_output_dir(_args(lonely_dir)) == (
        ResumePlan(None, ((lonely, "it has no trainer_state.json (its save was interrupted)"),), lonely_dir), True,
        "; checkpoint-1 is skipped and removed: it has no trainer_state.json (its save was interrupted)")
    # Nothing is resolved or judged in the command line itself.
    assert not {"checkpoint_problem", "last_complete_checkpoint", "_check_checkpoint"} & set(vars(output_dir))
