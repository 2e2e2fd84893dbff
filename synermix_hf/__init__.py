"""SynerMix (arXiv:2403.14137) for Hugging Face `Trainer`: intra-class mixup of features plus inter-class mixup.

The layers, from the bottom: the mixing math (`mixup`) and the seeds (`seeding`); models and where SynerMix reaches
into them (`models`, `adapters`); the data layer (`data`); the Trainer integration (`training_args`, `recipe`,
`trainer`, with `checkpoints`, `resume`, `distributed` and `finite_loss`); the command line (`cli`) on top.
"""

from . import models  # registers TorchvisionForImageClassification with the Auto classes
from .adapters import INPUT_POINT, ModelAdapter, find_head, find_mixing_points
from .data import (
    VIEWS_ON,
    BatchViews,
    ClassBalancedBatchSampler,
    Cutout,
    PositionedBatchSampler,
    PreparedViews,
    SeededAugmentation,
    SingleViewTransform,
    SplitSteps,
    StoredImageDataset,
    DeviceViews,
    MadeOnDevice,
    views_of,
    SynerMixCollator,
    TwoViewTransform,
    dataset_labels,
    prepare_views,
)
from .mixup import (
    INTER_MIXUPS,
    InterMixup,
    cutmix_batch,
    cutmix_box,
    intra_class_loss,
    intra_class_mixup_all_classes,
    mixup_batch,
    mixup_cross_entropy,
    sample_mixup_lambda,
)
from .models import TorchvisionClassifierConfig, TorchvisionForImageClassification, build_torchvision_classifier
from .recipe import RecipeTrainingArguments
from .seeding import example_seeds, step_generators
from .trainer import SynerMixTrainer
from .training_args import SynerMixTrainingArguments, normalize_inter_mixup

__version__ = "0.8.0"


def __getattr__(name: str):
    if name == "RecipeTrainer":  # 0.5.0's name: SynerMixTrainer builds the recipe's optimizer and schedule itself now
        import warnings

        warnings.warn("`RecipeTrainer` is `SynerMixTrainer` since synermix-hf 0.6.0 (it builds the paper recipe's "
                      "optimizer and schedule from `RecipeTrainingArguments`); use `SynerMixTrainer`.", FutureWarning,
                      stacklevel=2)
        return SynerMixTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "INTER_MIXUPS",
    "InterMixup",
    "INPUT_POINT",
    "BatchViews",
    "ClassBalancedBatchSampler",
    "Cutout",
    "ModelAdapter",
    "PositionedBatchSampler",
    "PreparedViews",
    "RecipeTrainingArguments",
    "SeededAugmentation",
    "SingleViewTransform",
    "SplitSteps",
    "StoredImageDataset",
    "DeviceViews",
    "MadeOnDevice",
    "views_of",
    "SynerMixCollator",
    "SynerMixTrainer",
    "SynerMixTrainingArguments",
    "TorchvisionClassifierConfig",
    "TorchvisionForImageClassification",
    "TwoViewTransform",
    "VIEWS_ON",
    "build_torchvision_classifier",
    "cutmix_batch",
    "cutmix_box",
    "dataset_labels",
    "example_seeds",
    "find_head",
    "find_mixing_points",
    "intra_class_loss",
    "intra_class_mixup_all_classes",
    "mixup_batch",
    "mixup_cross_entropy",
    "normalize_inter_mixup",
    "prepare_views",
    "sample_mixup_lambda",
    "step_generators",
]
