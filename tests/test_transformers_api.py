"""The private `transformers.Trainer` methods synermix-hf overrides, checked against the installed transformers.

A release that renames one of them, or changes what it takes, would otherwise bypass the override silently (the
checkpoint would no longer be staged, the legacy weight names no longer converted). So the overrides are few, all in
`synermix_hf/checkpoints.py`, and this fails loudly when transformers moves.
"""

import inspect

import pytest
import transformers

from synermix_hf.checkpoints import LegacyWeightNames, StagedCheckpoints
from synermix_hf.trainer import SynerMixTrainer

# name -> (the parameters transformers' method takes, the mixin that overrides it)
OVERRIDDEN = {
    "_save_checkpoint": (["self", "model", "trial"], StagedCheckpoints),
    "_get_output_dir": (["self", "trial"], StagedCheckpoints),
    "_push_from_checkpoint": (["self", "checkpoint_folder"], StagedCheckpoints),
    "_load_from_checkpoint": (["self", "resume_from_checkpoint", "model"], LegacyWeightNames),
    "_load_best_model": (["self"], LegacyWeightNames),
}


def test_the_private_trainer_methods_overridden_exist_with_the_signatures_relied_on():
    for name, (parameters, mixin) in OVERRIDDEN.items():
        assert hasattr(transformers.Trainer, name), f"transformers.Trainer.{name} is gone"
        assert list(inspect.signature(getattr(transformers.Trainer, name)).parameters) == parameters, name
        assert name in vars(mixin)
    # The staging works by redirecting the folder `_save_checkpoint` writes into, and deferring its push.
    source = inspect.getsource(transformers.Trainer._save_checkpoint)
    assert "self._get_output_dir(" in source and "_push_from_checkpoint(" in source


def test_no_other_private_trainer_method_is_overridden():
    # The trainer the script uses: everything synermix-hf defines on top of transformers.Trainer.
    ours = [klass for klass in SynerMixTrainer.__mro__ if klass.__module__.startswith("synermix_hf")]
    overridden = {name for klass in ours for name in vars(klass)
                  if name.startswith("_") and not name.startswith("__") and hasattr(transformers.Trainer, name)}
    assert overridden == set(OVERRIDDEN)


# Private Trainer members synermix-hf reads or calls without overriding them, where no public API gives the same:
# name -> the parameters it takes (a method) or None (an attribute the Trainer sets), and who relies on it.
USED = {
    "_prepare_inputs": (["self", "inputs"], "trainer.py: moves a batch to the device before its views are made"),
    "_get_train_sampler": (["self", "train_dataset"], "trainer.py: the Trainer's sampler when the balanced one is off"),
    "_get_eval_sampler": (["self", "eval_dataset"], "trainer.py: the evaluation loader's sampler, as the Trainer's"),
    "_eval_dataloaders": (None, "trainer.py: the evaluation loaders kept with persistent workers, by set name"),
    "_get_dataloader": (["self", "dataset", "description", "batch_size", "sampler_fn", "is_training", "dataloader_key"],
                        "trainer.py: builds the training loader over the seeded dataset with the sampler given"),
    "_train_batch_size": (None, "trainer.py: the per-process batch the Trainer resolved (auto_find_batch_size)"),
}
# Used only where the installed transformers has them (later 5.x releases; the benchmark asks `hasattr` first).
USED_WHERE_PRESENT = {
    "_clip_grad_norm": (["self", "model"], "benchmarks/bench_train_step.py: times the Trainer's clipping"),
    "_get_grad_norm": (["self", "model", "grad_norm"], "benchmarks/bench_train_step.py: times its norm"),
}


def test_the_trainer_is_one_subclass_of_transformers_trainer_with_only_checkpoint_mixins_beside_it():
    # A newcomer reads one class: SynerMixTrainer (the loss, the data path, the recipe's optimizer and schedule
    # through the public hooks, the model card), whose only other bases hold checkpoint logic.
    import synermix_hf
    import synermix_hf.cli.train  # noqa: F401 - the script's modules too

    assert SynerMixTrainer.__bases__[-1] is transformers.Trainer
    mixins = [klass for klass in SynerMixTrainer.__mro__[1:] if klass.__module__.startswith("synermix_hf")]
    assert mixins and {klass.__module__ for klass in mixins} == {"synermix_hf.checkpoints"}
    assert all(not issubclass(klass, transformers.Trainer) for klass in mixins)

    def subclasses(klass):
        for sub in klass.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {klass for klass in subclasses(transformers.Trainer) if klass.__module__.startswith("synermix_hf")}
    assert ours == {SynerMixTrainer}
    with pytest.warns(FutureWarning, match="SynerMixTrainer"):
        assert synermix_hf.RecipeTrainer is SynerMixTrainer  # 0.5.0's name, kept as an alias that warns


def test_the_private_trainer_members_used_exist_as_relied_on():
    source = inspect.getsource(transformers.Trainer)
    for name, (parameters, why) in USED.items():
        if parameters is None:
            assert f"self.{name} =" in source, f"transformers.Trainer no longer sets {name} ({why})"
        else:
            assert hasattr(transformers.Trainer, name), f"transformers.Trainer.{name} is gone ({why})"
            assert list(inspect.signature(getattr(transformers.Trainer, name)).parameters) == parameters, name
    present = [name for name in USED_WHERE_PRESENT if hasattr(transformers.Trainer, name)]
    assert present in ([], list(USED_WHERE_PRESENT)), present  # both or neither, as the benchmark expects
    for name in present:
        parameters, _ = USED_WHERE_PRESENT[name]
        assert list(inspect.signature(getattr(transformers.Trainer, name)).parameters) == parameters, name


def test_old_checkpoints_are_rotated_by_one_of_the_two_apis_transformers_has_had():
    # checkpoints.py rotates after renaming a staged checkpoint: transformers >= 5.2 has a function, earlier releases
    # the private method `_rotate_checkpoints(use_mtime, output_dir)`.
    try:
        from transformers.trainer_utils import rotate_checkpoints
    except ImportError:
        parameters = list(inspect.signature(transformers.Trainer._rotate_checkpoints).parameters)
        assert parameters[:3] == ["self", "use_mtime", "output_dir"]
    else:
        parameters = set(inspect.signature(rotate_checkpoints).parameters)
        assert {"output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"} <= parameters
