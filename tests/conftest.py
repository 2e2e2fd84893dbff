"""Test-wide settings (no hub access, quiet logs) and fixtures of tiny local data (`synermix_hf.testing`)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

import pytest  # noqa: E402

from synermix_hf.testing import build_hub_copies  # noqa: E402


@pytest.fixture(scope="session")
def hub_copies(tmp_path_factory):
    """Tiny parquet copies of the catalog's five Hub datasets, in their schemas."""
    return build_hub_copies(tmp_path_factory.mktemp("hub_copies"))
