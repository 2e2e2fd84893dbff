"""Test-wide settings (no hub access, quiet logs) and fixtures of tiny local data (`synermix_hf.testing`)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

import pytest  # noqa: E402
import torch  # noqa: E402

from synermix_hf.testing import build_hub_copies  # noqa: E402

FRESH_PROCESS_TORCH_THREADS = torch.get_num_threads()  # before any test sets it


@pytest.fixture(scope="session")
def hub_copies(tmp_path_factory):
    """Tiny parquet copies of the catalog's five Hub datasets, in their schemas."""
    return build_hub_copies(tmp_path_factory.mktemp("hub_copies"))


@pytest.fixture(scope="session")
def script_in_process():
    """Run the command line in this process: `script_in_process(argv, torch_threads=None)` -> its exit status.

    A run in a subprocess spends most of a test's time importing torch and transformers again. A run whose weights are
    compared with a subprocess's (a killed run resumed here) trains on the subprocess's torch thread count, so that
    both sum in the same order: `torch_threads`, or by default the count a fresh process starts with.
    """
    from synermix_hf.cli.train import main

    def run(argv, torch_threads=None):
        before = torch.get_num_threads()
        torch.set_num_threads(torch_threads or FRESH_PROCESS_TORCH_THREADS)
        try:
            return main([str(arg) for arg in argv])
        finally:
            torch.set_num_threads(before)

    return run
