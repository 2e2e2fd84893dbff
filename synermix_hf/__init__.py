"""SynerMix (arXiv:2403.14137) for Hugging Face `Trainer`: intra-class mixup of features plus inter-class mixup."""

from . import models  # registers TorchvisionForImageClassification with the Auto classes
from .adapters import INPUT_POINT, ModelAdapter, find_head, find_mixing_points
from .batch_transforms import BatchViews
from .data import Cutout, SeededAugmentation, SingleViewTransform, SynerMixCollator, TwoViewTransform, dataset_labels
from .mixup import (
    cutmix_batch,
    cutmix_box,
    intra_class_loss,
    intra_class_mixup,
    intra_class_mixup_all_classes,
    mixup_batch,
    mixup_cross_entropy,
    sample_mixup_lambda,
)
from .data_path import DATA_PATHS, DecodedImageDataset, PreparedViews, prepare_views
from .decoded_cache import decoded_images
from .models import TorchvisionClassifierConfig, TorchvisionForImageClassification, build_torchvision_classifier
from .recipe import RecipeTrainer, RecipeTrainingArguments
from .sampler import ClassBalancedBatchSampler, PositionedBatchSampler
from .seeding import example_seeds
from .trainer import SynerMixTrainer, step_generators
from .training_args import INTER_MIXUP_CHOICES, SynerMixTrainingArguments, normalise_inter_mixup

__version__ = "0.1.0"

__all__ = [
    "DATA_PATHS",
    "INPUT_POINT",
    "INTER_MIXUP_CHOICES",
    "BatchViews",
    "ClassBalancedBatchSampler",
    "Cutout",
    "DecodedImageDataset",
    "ModelAdapter",
    "PositionedBatchSampler",
    "PreparedViews",
    "RecipeTrainer",
    "RecipeTrainingArguments",
    "SeededAugmentation",
    "SingleViewTransform",
    "SynerMixCollator",
    "SynerMixTrainer",
    "SynerMixTrainingArguments",
    "TorchvisionClassifierConfig",
    "TorchvisionForImageClassification",
    "TwoViewTransform",
    "build_torchvision_classifier",
    "cutmix_batch",
    "cutmix_box",
    "dataset_labels",
    "decoded_images",
    "example_seeds",
    "find_head",
    "find_mixing_points",
    "intra_class_loss",
    "intra_class_mixup",
    "intra_class_mixup_all_classes",
    "mixup_batch",
    "mixup_cross_entropy",
    "normalise_inter_mixup",
    "prepare_views",
    "sample_mixup_lambda",
    "step_generators",
]
