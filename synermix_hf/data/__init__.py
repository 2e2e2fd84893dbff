"""The data layer: how images become the two views SynerMix trains on. One module per concern:

* `views`: the two views of every image (`TwoViewTransform`, `SingleViewTransform`), the collator, each example
  appearance's augmentation seed (`SeededAugmentation`) and the labels the sampler needs;
* `transforms`: the paper's recipes (`TransformSpec`) as per-image torchvision transforms;
* `batch_transforms`: the same recipes made on a whole batch on the training device;
* `crop_views`: the RandomResizedCrop recipe made on a whole batch of stored images on the training device;
* `decoded`: images decoded once into a memory-mapped store, square (`decoded`) or of their own size (`image_store`);
* `pipeline`: where the views are made, on the device or in the loader (`prepare_views`);
* `device_datasets`: the device path's datasets, a batch of decoded images at a time;
* `sampler`: class-balanced batches, and their shards under data parallelism;
* `bad_images`: images that cannot be decoded;
* `catalog` and `loading/`: the paper's datasets by name, and how any dataset is loaded and split.
"""

from .bad_images import BadImageError, BadImagePolicy
from .batch_transforms import BatchViews
from .crop_views import CropViews
from .catalog import load_image_classification_data
from .decoded import decoded_images
from .image_store import ImageStore, stored_images
from .device_datasets import StoredImageDataset, views_of
from .pipeline import DATA_PATHS, VIEWS_ON, PreparedViews, prepare_views
from .sampler import ClassBalancedBatchSampler, PositionedBatchSampler, StepShards
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
    "DATA_PATHS",
    "VIEWS_ON",
    "BadImageError",
    "BadImagePolicy",
    "BatchViews",
    "ClassBalancedBatchSampler",
    "CropViews",
    "Cutout",
    "ImageStore",
    "PositionedBatchSampler",
    "PreparedViews",
    "SeededAugmentation",
    "SingleViewTransform",
    "StepShards",
    "StoredImageDataset",
    "SynerMixCollator",
    "TransformSpec",
    "TwoViewTransform",
    "build_transforms",
    "dataset_labels",
    "decoded_images",
    "load_image_classification_data",
    "original_view",
    "prepare_views",
    "stored_images",
]
