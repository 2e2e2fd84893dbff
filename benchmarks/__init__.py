"""Benchmarks of synermix-hf: what SynerMix costs against a plain `Trainer` and a hand-written loop.

Run everything with `python -m benchmarks` (add `--quick` for a smoke run, `--out FILE` to save the tables). Each
benchmark also runs alone: `python -m benchmarks.bench_intra_mixup`, `bench_train_step`, `bench_memory`,
`bench_data_pipeline`, and `gpu_check` (CUDA only; skips cleanly without a GPU). See BENCHMARKS.md.
"""

# Importing `common` first sets the offline, quiet environment before anything imports transformers or datasets.
from . import common as _common  # noqa: F401, E402
