"""Benchmarks of synermix-hf: what SynerMix costs against a plain `Trainer` and a hand-written loop.

Run everything with `python -m benchmarks` (add `--quick` for a smoke run, `--out FILE` to save the tables). Each
benchmark also runs alone: `python -m benchmarks.bench_intra_mixup`, `bench_train_step`, `bench_memory`,
`bench_data_pipeline`, and `gpu_check` (CUDA only; skips cleanly without a GPU). See BENCHMARKS.md.
"""

import os as _os

# Before anything imports transformers or datasets: offline, quiet.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}.items():
    _os.environ.setdefault(_key, _value)
