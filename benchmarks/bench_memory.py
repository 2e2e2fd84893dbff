"""Benchmark 4: peak memory of each training-step variant of `bench_train_step`.

Each variant runs in a fresh subprocess (so one variant's allocations cannot hide another's). After two warm-up steps
(which allocate the optimizer state) the peak resident set size is reset (`/proc/self/clear_refs`, Linux) and three
more steps run on the prepared batch. Reported: the resident set before the step (model, optimizer state, runtime)
and its high-water mark during the steps (`VmHWM`); their difference is what the step itself needs (activations,
gradients, temporaries). Children run with a fixed glibc mmap threshold (`MALLOC_ENV`) so that freed tensors leave the
resident set instead of staying cached by the allocator. On CUDA the child reports `torch.cuda.max_memory_allocated` over the same steps.

    python -m benchmarks.bench_memory [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, table

MIB = 2**20
# glibc keeps freed memory and raises its mmap threshold dynamically, so the resident set would keep the previous
# step's buffers. A fixed threshold returns every large buffer (all tensors that matter) to the system when freed,
# so the resident set follows the live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec_name: str, batch_size: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from benchmarks import bench_train_step as bts

    spec = next(s for s in bts.SPECS if s.name == spec_name)
    store = bts.make_store(batch_size)
    with tempfile.TemporaryDirectory(prefix="synermix_mem_") as tmp:
        variant = bts.build_variant(spec, store, batch_size, tmp)
        step = bts.step_fn(variant)
        batch = bts.make_batch(store, batch_size, two_view=spec.beta > 0, device=variant.device)
        del store
        for _ in range(2):
            step(batch)
        gc.collect()
        cuda = variant.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_before = torch.cuda.memory_allocated()
        reset = _reset_peak_rss()
        rss_before = _status_kib("VmRSS")
        for _ in range(3):
            step(batch)
        out = {
            "variant": spec_name,
            "rss_before_mib": rss_before / 1024,
            "rss_peak_mib": _status_kib("VmHWM") / 1024,
            "peak_reset": reset,
        }
        if cuda:
            torch.cuda.synchronize()
            out["cuda_before_mib"] = cuda_before / MIB
            out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    return out


def run(quick: bool = False, batch_size: int | None = None, threads: int | None = None) -> dict:
    from benchmarks.bench_train_step import SPECS

    batch_size = batch_size or (8 if quick else 128)
    specs = [s for s in SPECS if s.name in ("plain Trainer", "SynerMix beta=0.1, MixUp")] if quick else SPECS
    results = []
    for spec in specs:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", spec.name, "--batch-size", str(batch_size)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.update(MALLOC_ENV)
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child for {spec.name!r} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1]))
    return {"batch_size": batch_size, "results": results}


def report(res: dict) -> str:
    results = res["results"]
    base = next(r for r in results if r["variant"] == "plain Trainer")
    base_step = base["rss_peak_mib"] - base["rss_before_mib"]
    rows = []
    for r in results:
        step = r["rss_peak_mib"] - r["rss_before_mib"]
        row = [
            r["variant"],
            f"{r['rss_before_mib']:.0f}",
            f"{r['rss_peak_mib']:.0f}",
            f"{step:.0f}",
            f"{step / base_step:.2f}x" if base_step > 0 else "",
        ]
        if "cuda_peak_mib" in r:
            row += [f"{r['cuda_peak_mib']:.0f}", f"{r['cuda_peak_mib'] - r['cuda_before_mib']:.0f}"]
        rows.append(row)
    headers = [
        "variant",
        "RSS before step (MiB)",
        "peak RSS in step (MiB)",
        "step peak - before (MiB)",
        "x plain Trainer",
    ]
    if any("cuda_peak_mib" in r for r in results):
        headers += ["CUDA max allocated (MiB)", "CUDA step increase (MiB)"]
    text = (
        f"Batch {res['batch_size']}, same model and data as the step benchmark; one fresh process per variant. "
        "'peak RSS in step' is VmHWM after resetting it following two warm-up steps"
        + ("" if all(r["peak_reset"] for r in results) else " (reset not available here: it includes start-up)")
        + ".\n\n"
    )
    return text + table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8, two variants (smoke run)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch_size or 128, args.threads)))
        return
    print(report(run(quick=args.quick, batch_size=args.batch_size, threads=args.threads)))


if __name__ == "__main__":
    main()
