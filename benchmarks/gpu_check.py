"""GPU check: intra-class mixup on CUDA, host-device synchronisation inside the SynerMix step, step time and memory.

Skips cleanly (exit code 0) when CUDA is not available. On a GPU it runs, in a few minutes:

1. `bench_intra_mixup` on CUDA at both sizes (reference per-class loop against the vectorised functions).
2. The sync check. `torch.cuda.set_sync_debug_mode("error")` around the SynerMix loss and its backward
   (`trainer.training_step` on a batch already on the GPU) for beta > 0 with none / MixUp / Manifold MixUp and for
   beta = 0 with MixUp, with the trainer's deliberate finite-loss check (`_check_finite`, one `.item()` per step)
   switched off. Any synchronising call raises, and the check reports it as FAIL. Then the full step as the Trainer
   runs it (training step with `_check_finite`, the Trainer's NaN filter and gradient norm, optimizer step) under
   mode "warn", listing every synchronising call it makes.
3. Step time of every variant of `bench_train_step` (isolated step) and `torch.cuda.max_memory_allocated` per step.

    python -m benchmarks.gpu_check [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
import warnings

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import machine_section, table

SYNC_SPECS = (
    "SynerMix beta=0.5, none",
    "SynerMix beta=0.1, MixUp",
    "SynerMix beta=0.1, Manifold MixUp",
    "SynerMix beta=0, MixUp",
)


def sync_check(batch_size: int) -> str:
    from benchmarks import bench_train_step as bts

    rows = []
    store = bts.make_store(batch_size)
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_") as tmp:
        for name in SYNC_SPECS:
            spec = next(s for s in bts.SPECS if s.name == name)
            variant = bts.build_variant(spec, store, batch_size, tmp)
            trainer = variant.trainer
            batch = bts.make_batch(store, batch_size, two_view=spec.beta > 0, device=variant.device)
            step = bts.step_fn(variant)
            for _ in range(3):  # warm-up: cuDNN autotuning, lazy initialisation, optimizer state
                step(batch)
            torch.cuda.synchronize()

            # (a) strict: the loss and its backward, without the deliberate finite-loss check
            check_finite = trainer._check_finite
            trainer._check_finite = lambda loss, components: None
            strict = "PASS (no synchronising call)"
            try:
                torch.cuda.set_sync_debug_mode("error")
                trainer.training_step(trainer.model, dict(batch))
            except RuntimeError as error:
                strict = "FAIL: " + str(error).splitlines()[0] + " at " + _caller(error)
            finally:
                torch.cuda.set_sync_debug_mode(0)
                trainer._check_finite = check_finite
                trainer.model.zero_grad()
            torch.cuda.synchronize()

            # (b) the full step as the Trainer runs it: list what synchronises
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step(batch)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [
                str(w.message).splitlines()[0] + f" ({w.filename.split('/')[-1]}:{w.lineno})"
                for w in caught
                if "synchroniz" in str(w.message)
            ]
            rows.append((name, strict, len(syncs), "; ".join(syncs) or "none"))
    return table(["variant", "loss + backward under mode 'error'", "syncs in full step", "where"], rows)


def _caller(error: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "synermix_hf" in f.filename]
    frame = frames[-1] if frames else traceback.extract_tb(error.__traceback__)[-1]
    return f"{frame.filename.split('/')[-1]}:{frame.lineno} ({frame.line})"


def cuda_memory_and_time(batch_size: int, rounds: int, steps: int) -> str:
    from benchmarks import bench_train_step as bts
    from benchmarks.common import fmt_ms

    store = bts.make_store(batch_size * 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="synermix_gpu_") as tmp:
        variants = [bts.build_variant(s, store, batch_size, tmp) for s in bts.SPECS]
        times = bts.measure_steps(variants, store, batch_size, rounds, steps, warmup=2)
        wall = {name: bts.median([t[0] for t in ts]) for name, ts in times.items()}
        base = wall["plain Trainer"]
        for v in variants:
            batch = bts.make_batch(store, batch_size, two_view=v.spec.beta > 0, device=v.device)
            step = bts.step_fn(v)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step(batch)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            med = wall[v.spec.name]
            pair = f"{med / wall[v.spec.pair]:.2f}x" if v.spec.pair else ""
            rows.append(
                (
                    v.spec.name,
                    fmt_ms(med),
                    f"{med / base:.2f}x",
                    pair,
                    f"{before / 2**20:.0f}",
                    f"{(peak - before) / 2**20:.0f}",
                )
            )
            v.model.to("cpu")
            del step, batch
            torch.cuda.empty_cache()
    return table(
        [
            "variant",
            "median step (ms)",
            "x plain Trainer",
            "x hand-written loop",
            "allocated before (MiB)",
            "step peak increase (MiB)",
        ],
        rows,
    )


def run(quick: bool = False) -> str | None:
    if not torch.cuda.is_available():
        return None
    from benchmarks import bench_intra_mixup

    batch_size = 16 if quick else 128
    parts = ["## GPU check\n", machine_section(), "\n### intra_class_mixup on CUDA\n"]
    parts.append(bench_intra_mixup.report(bench_intra_mixup.run(quick=quick, device="cuda")))
    parts.append("\n### Host-device synchronisation in the SynerMix step\n")
    parts.append(sync_check(batch_size))
    parts.append("\n### Step time and memory on CUDA (isolated step, fp32)\n")
    parts.append(cuda_memory_and_time(batch_size, rounds=1 if quick else 3, steps=2 if quick else 5))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="also write the markdown to this file")
    args = parser.parse_args(argv)
    text = run(quick=args.quick)
    if text is None:
        print("CUDA is not available: GPU check skipped (nothing measured on GPU).")
        return
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
