"""The private `transformers.Trainer` methods synermix-hf overrides, checked against the installed transformers.

A release that renames one of them, or changes what it takes, would otherwise bypass the override silently (the
checkpoint would no longer be staged, the legacy weight names no longer converted). So the overrides are few, all in
`synermix_hf/checkpoints.py`, and this fails loudly when transformers moves.
"""

import inspect

import transformers

from synermix_hf.checkpoints import LegacyWeightNames, StagedCheckpoints
from synermix_hf.cli.model_card import CardTrainer

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
    # The most derived trainer the script uses: everything synermix-hf defines on top of transformers.Trainer.
    ours = [klass for klass in CardTrainer.__mro__ if klass.__module__.startswith("synermix_hf")]
    overridden = {name for klass in ours for name in vars(klass)
                  if name.startswith("_") and not name.startswith("__") and hasattr(transformers.Trainer, name)}
    assert overridden == set(OVERRIDDEN)
