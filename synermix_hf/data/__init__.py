"""The data layer: how images become the two views SynerMix trains on. One module per concern:

* `views`: the two views of every image (`TwoViewTransform`, `SingleViewTransform`), the collator, each example
  appearance's augmentation seed (`SeededAugmentation`) and the labels the sampler needs;
* `transforms`: the paper's recipes (`TransformSpec`) as per-image torchvision transforms;
* `pipeline`: where the views are made, on the device or in the loader, and from which images (`prepare_views`);
* `image_store`: images decoded once into a memory-mapped store (one format for every recipe: uint8 rows and their
  index), and `store_folder`, how its folder is built, shared and checked; the square recipes' store is one with `square=True`;
* `device_datasets`: the device path's dataset (`StoredImageDataset`), a batch of stored images at a time, and the
  declared interface between a dataset and the device (`DeviceViews`, `MadeOnDevice`, `views_of`);
* `batch_transforms`: the square recipes made on a whole batch on the training device (`BatchViews`), and the
  RandomResizedCrop recipe's `ToTensor` + `Normalize` of the crops the loader cut (`NormalizedViews`);
* `sampler`: class-balanced batches, and their shards under data parallelism;
* `bad_images`: images that cannot be decoded;
* `catalog` and `loading/`: the paper's datasets by name, and how any dataset is loaded and split.
"""

from .bad_images import BadImageError, BadImagePolicy
from .batch_transforms import BatchViews, NormalizedViews
from .catalog import load_image_classification_data
from .image_store import ImageStore
from .device_datasets import DeviceViews, MadeOnDevice, StoredImageDataset, views_of
from .pipeline import VIEWS_ON, PreparedViews, prepare_views
from .sampler import ClassBalancedBatchSampler, PositionedBatchSampler, SplitSteps
from .transforms import Cutout, TransformSpec, build_transforms
from .views import (
    SeededAugmentation,
    SingleViewTransform,
    SynerMixCollator,
    TwoViewTransform,
    dataset_labels,
    original_view,
)

__all__ = [
    "VIEWS_ON",
    "BadImageError",
    "BadImagePolicy",
    "BatchViews",
    "ClassBalancedBatchSampler",
    "Cutout",
    "DeviceViews",
    "ImageStore",
    "MadeOnDevice",
    "NormalizedViews",
    "PositionedBatchSampler",
    "PreparedViews",
    "SeededAugmentation",
    "SingleViewTransform",
    "SplitSteps",
    "StoredImageDataset",
    "SynerMixCollator",
    "TransformSpec",
    "TwoViewTransform",
    "build_transforms",
    "dataset_labels",
    "load_image_classification_data",
    "original_view",
    "prepare_views",
    "views_of",
]
