"""The Trainer's whole surface, walked: every argument of the installed transformers is classified
(`synermix_hf.trainer_surface`), the refusals the table claims happen, the tests it names exist, and the arguments the
Trainer's own code reads take effect through SynerMixTrainer."""

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, ViTConfig
from transformers import ViTForImageClassification, ViTImageProcessor

from synermix_hf import RecipeTrainingArguments, SynerMixTrainer, SynerMixTrainingArguments
from synermix_hf import trainer_surface
from synermix_hf.trainer_surface import (STATUSES, SYNERMIX_ARGUMENTS, TRAINER_PARAMETERS, TRAINING_ARGUMENTS,
                                         UNDECIDED, render_markdown, surface_of)

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"TRAINING_ARGUMENTS": TRAINING_ARGUMENTS, "TRAINER_PARAMETERS": TRAINER_PARAMETERS,
          "SYNERMIX_ARGUMENTS": SYNERMIX_ARGUMENTS, "UNDECIDED": UNDECIDED}


def _installed_training_arguments() -> set[str]:
    return {field.name for field in dataclasses.fields(TrainingArguments)}


def _installed_trainer_parameters() -> set[str]:
    parameters = inspect.signature(Trainer.__init__).parameters.values()
    return {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# ---- the walk ----

def test_every_training_argument_and_trainer_parameter_of_the_installed_transformers_is_classified():
    import transformers

    names = _installed_training_arguments() | _installed_trainer_parameters()
    names |= {field.name for field in dataclasses.fields(RecipeTrainingArguments)}
    names |= set(inspect.signature(SynerMixTrainer.__init__).parameters) - {"self", "args", "kwargs"}
    missing = sorted(name for name in names if surface_of(name) is None)
    assert not missing, (
        f"transformers {transformers.__version__} has arguments that synermix_hf/trainer_surface.py does not "
        f"classify: {', '.join(missing)}. Read what each does with SynerMixTrainer and add it as honoured (with its "
        "test), refused (with the error) or not_applicable (why).")


def test_each_entry_is_honoured_refused_or_not_applicable_with_a_reason():
    for table_name, table in TABLES.items():
        for name, entry in table.items():
            expected = ("dropped",) if table is UNDECIDED else STATUSES
            assert entry.status in expected, (table_name, name, entry.status)
            assert entry.why.strip() and "\n" not in entry.why, (table_name, name)
            if entry.status == "refused":
                assert entry.has_refused_value and entry.refused_by in (
                    "SynerMixTrainingArguments", "RecipeTrainingArguments", "SynerMixTrainer"), name
            assert entry.test is None or re.fullmatch(r"tests/test_\w+\.py::test_\w+", entry.test), entry.test


def _tests_defined() -> set[str]:
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                defined.add(f"tests/{path.name}::{node.name}")
    return defined


def test_every_test_the_table_names_exists():
    defined = _tests_defined()
    named = {entry.test for table in TABLES.values() for entry in table.values() if entry.test}
    missing = sorted(named - defined)
    assert not missing, f"tests named in trainer_surface.py that do not exist: {missing}"


@pytest.mark.parametrize("name", sorted(n for n, e in {**TRAINING_ARGUMENTS, **TRAINER_PARAMETERS}.items()
                                        if e.status == "refused"))
def test_every_refused_argument_is_refused_before_training_naming_it(tmp_path, name):
    entry = surface_of(name)
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    if entry.refused_by == "SynerMixTrainer":
        with pytest.raises((ValueError, TypeError), match=name):
            SynerMixTrainer(model=_tiny_vit(), args=SynerMixTrainingArguments(**common), **{name: entry.refused_value})
        return
    if name not in _installed_training_arguments():
        pytest.skip(f"the installed transformers has no `{name}`")
    refusing = RecipeTrainingArguments if entry.refused_by == "RecipeTrainingArguments" else SynerMixTrainingArguments
    with pytest.raises(ValueError, match=name):
        refusing(**common, **{name: entry.refused_value})
    if refusing is RecipeTrainingArguments:  # refused by the paper recipe only: elsewhere it is the Trainer's
        for accepted in (SynerMixTrainingArguments(**common, **{name: entry.refused_value}),
                         RecipeTrainingArguments(**common, recipe="trainer", **{name: entry.refused_value})):
            assert getattr(accepted, name) is not None


def test_nothing_is_left_undecided():
    # An argument found dropped is decided: honoured with a test, or refused with the reason.
    assert not UNDECIDED, "dropped or broken, to decide: " + "; ".join(f"{n}: {e.why}" for n, e in UNDECIDED.items())


def test_the_committed_doc_is_the_rendered_table():
    committed = (ROOT / "docs" / "trainer_surface.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), ("docs/trainer_surface.md is out of date: write "
                                            "synermix_hf.trainer_surface.render_markdown() to it")
    for name in (*TRAINING_ARGUMENTS, *TRAINER_PARAMETERS, *SYNERMIX_ARGUMENTS, *UNDECIDED):
        assert f"| `{name}`" in committed, name
    assert "trainer_surface.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "trainer_surface.md" in (ROOT / "docs" / "python_api.md").read_text(encoding="utf-8")


# ---- the Trainer's own arguments, through SynerMixTrainer ----

NUM_CLASSES = 4


def _tiny_vit(seed=0, layers=1):
    torch.manual_seed(seed)
    config = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=16, num_labels=NUM_CLASSES, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config)


def _examples(n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(3, 8, 8, generator=generator) + i % NUM_CLASSES,
             "original_pixel_values": torch.randn(3, 8, 8, generator=generator) + i % NUM_CLASSES,
             "labels": i % NUM_CLASSES} for i in range(n)]


class _Record(TrainerCallback):
    def __init__(self):
        self.saved_at, self.evaluated_at = [], []

    def on_save(self, args, state, control, **kwargs):
        self.saved_at.append(state.global_step)

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated_at.append(state.global_step)


def test_the_trainers_own_arguments_take_effect_through_synermix_trainer(tmp_path):
    """One short run with non-default values of arguments that the Trainer's own code reads, each checked."""
    built, batches = [], []

    def model_init():
        built.append(_tiny_vit(seed=len(built)))
        return built[-1]

    def compute_metrics(prediction, compute_result):  # batch_eval_metrics: called per batch
        inputs = prediction.inputs  # with batch_eval_metrics, the Trainer passes the whole batch
        pixels = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
        batches.append((tuple(prediction.predictions.shape), prediction.losses is not None, tuple(pixels.shape)))
        return {"batches": float(len(batches))} if compute_result else {}

    args = SynerMixTrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], seed=3, beta=0.5, inter_mixup="mixup",
        per_device_train_batch_size=4, max_steps=4, learning_rate=0.01,
        logging_strategy="steps", logging_steps=2, logging_first_step=True,
        eval_strategy="steps", eval_steps=2, eval_delay=3, eval_on_start=True, per_device_eval_batch_size=6,
        include_for_metrics=["loss", "inputs"], batch_eval_metrics=True,
        save_strategy="steps", save_steps=2, save_total_limit=1,
        disable_tqdm=True,
    )  # fmt: skip
    record = _Record()
    trainer = SynerMixTrainer(
        model_init=model_init, args=args, train_dataset=_examples(), eval_dataset=_examples(16, seed=1),
        processing_class=ViTImageProcessor(size={"height": 8, "width": 8}), compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1), callbacks=[record],
    )  # fmt: skip
    trainer.train()

    # model_init: train() built the model again, and SynerMix's adapter follows it.
    assert len(built) == 2 and trainer.model is built[1] and trainer.adapter.model is built[1]
    # max_steps; logging_first_step + logging_steps (SynerMix's components in each log).
    assert trainer.state.global_step == 4
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 4]
    assert all("loss_intra" in entry and "loss_inter" in entry for entry in logged)
    # eval_on_start, eval_steps, eval_delay (step 2 < 3 is skipped); callbacks.
    evaluated = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated == [0, 4] == record.evaluated_at
    # compute_metrics with batch_eval_metrics (16 examples in batches of 6: 3 calls per evaluation),
    # preprocess_logits_for_metrics (predicted classes, not logits) and include_for_metrics (losses, pixel inputs).
    assert batches[:3] == [((6,), True, (6, 3, 8, 8)), ((6,), True, (6, 3, 8, 8)), ((4,), True, (4, 3, 8, 8))]
    assert [entry["eval_batches"] for entry in trainer.state.log_history if "eval_loss" in entry] == [3.0, 6.0]
    # save_steps, save_total_limit (checkpoint-2 rotated out); processing_class saved with the model.
    assert record.saved_at == [2, 4]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]
    assert (out / "checkpoint-4" / "preprocessor_config.json").is_file()
    # disable_tqdm.
    assert any(isinstance(callback, PrinterCallback) for callback in trainer.callback_handler.callbacks)
    # prediction_loss_only: the loss alone, no metrics.
    trainer.args.prediction_loss_only = True
    calls = len(batches)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_batches" not in metrics and len(batches) == calls


def test_activation_checkpointing_trains_like_without_it_with_the_synermix_hooks(tmp_path):
    """The intra-class term and Manifold MixUp hook the head and a mixing point; checkpointed layers run their
    forward again in the backward pass, which must mix as the first time. transformers before 5.25 (5.0 tested)
    recompute the layer's call, hooks included, where the mixing hook no longer runs: refused there."""
    # transformers 5.0 names it gradient_checkpointing, which later releases keep as a deprecated alias.
    flag = ("activation_checkpointing" if "activation_checkpointing" in _installed_training_arguments()
            else "gradient_checkpointing")
    from synermix_hf.adapters import ModelAdapter

    # Mix at a layer that is checkpointed (not at the input), where the hook runs inside the checkpointed call.
    layer = [p for p in ModelAdapter.from_model(_tiny_vit(layers=2), need_mixing_points=True).mixing_points
             if p != "input"][-1]
    from synermix_hf.training_args import _checkpoints_layer_calls

    if _checkpoints_layer_calls():
        with pytest.raises(ValueError, match="gradient_checkpointing"):
            SynerMixTrainingArguments(output_dir=str(tmp_path), use_cpu=True, inter_mixup="manifold_mixup",
                                      **{flag: True})
        return
    runs = {}
    for checkpointing in (False, True):
        args = SynerMixTrainingArguments(
            output_dir=str(tmp_path / str(checkpointing)), use_cpu=True, report_to=[], save_strategy="no", seed=2,
            beta=0.5, inter_mixup="manifold_mixup", per_device_train_batch_size=4, max_steps=2, logging_steps=1,
            learning_rate=0.05, disable_tqdm=True, manifold_mixup_modules=[layer], **{flag: checkpointing},
        )  # fmt: skip
        trainer = SynerMixTrainer(model=_tiny_vit(layers=2), args=args, train_dataset=_examples())
        trainer.train()
        checkpointed = any(getattr(module, "gradient_checkpointing", False) for module in trainer.model.modules())
        assert checkpointed == checkpointing
        losses = [(e["loss_intra"], e["loss_inter"]) for e in trainer.state.log_history if "loss" in e]
        runs[checkpointing] = losses, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert len(runs[True][0]) == 2
    torch.testing.assert_close(runs[True][0], runs[False][0])
    torch.testing.assert_close(runs[True][1], runs[False][1])


def test_data_seed_draws_the_batches_whatever_the_seed(tmp_path):
    def order(seed, data_seed, balanced):
        args = SynerMixTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], seed=seed,
                                         data_seed=data_seed, per_device_train_batch_size=4, beta=0.5,
                                         balanced_sampler=balanced)
        examples = [{"pixel_values": torch.full((3, 8, 8), float(i)), "original_pixel_values": torch.zeros(3, 8, 8),
                     "labels": i % NUM_CLASSES} for i in range(32)]
        trainer = SynerMixTrainer(model=_tiny_vit(), args=args, train_dataset=examples)
        return [batch["pixel_values"][:, 0, 0, 0].tolist() for batch in trainer.get_train_dataloader()]

    for balanced in (True, False):
        assert order(1, 7, balanced) == order(2, 7, balanced), balanced  # the seed alone does not change them
        assert order(1, 7, balanced) != order(1, 8, balanced), balanced
        assert order(1, None, balanced) != order(2, None, balanced), balanced  # without data_seed, the seed does


def test_the_recipe_evaluates_per_epoch_with_do_eval(tmp_path):
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert RecipeTrainingArguments(**common, do_eval=True).eval_strategy == "epoch"
    assert RecipeTrainingArguments(**common).eval_strategy == "no"
    assert RecipeTrainingArguments(**common, do_eval=True, eval_strategy="steps").eval_strategy == "steps"


def test_the_tables_cover_the_floor_and_the_newer_fields_they_name():
    # FLOOR_ONLY / NEWER_ONLY only label rows of the doc; each is a classified field.
    for name in trainer_surface.FLOOR_ONLY | trainer_surface.NEWER_ONLY:
        assert surface_of(name) is not None, name
