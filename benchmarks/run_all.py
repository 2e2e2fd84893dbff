"""Run every benchmark and print (optionally save) markdown tables of absolute times and ratios.

python -m benchmarks                 # everything, about 10 minutes on 2 CPU cores
python -m benchmarks --quick         # smoke run on minimal sizes
python -m benchmarks --out results.md --only intra,step
python -m benchmarks --only crop     # the imagenet family (224 px) on each data path: not in the default set (minutes;
                                     # against earlier commits: python -m benchmarks.bench_crop_path --baseline COMMIT)
"""

from __future__ import annotations

import argparse
import time

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import load_average, machine_section, other_python_processes

SECTIONS = ("intra", "step", "data", "memory", "device", "gpu")
OPTIONAL_SECTIONS = ("crop",)  # run with --only


def run_section(name: str, quick: bool, threads: int | None) -> str:
    if name == "intra":
        from benchmarks import bench_intra_mixup as bench

        body = bench.report(bench.run(quick=quick))
        if not quick and torch.get_num_threads() > 1:
            # The vectorised functions are small ops that torch spreads over threads; show one thread too.
            default = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                body += "\n\nThe same with 1 torch thread:\n\n" + bench.report(bench.run(quick=quick))
            finally:
                torch.set_num_threads(default)
        return "## 1. intra_class_mixup: vectorised vs the reference per-class loop\n\n" + body
    if name == "step":
        from benchmarks import bench_train_step as bench

        return "## 2. Training step time\n\n" + bench.report(bench.run(quick=quick))
    if name == "memory":
        from benchmarks import bench_memory as bench

        return "## 4. Peak memory of each step variant\n\n" + bench.report(bench.run(quick=quick, threads=threads))
    if name == "data":
        from benchmarks import bench_data_pipeline as bench

        return "## 3. Data pipeline: two views vs one view\n\n" + bench.report(bench.run(quick=quick))
    if name == "device":
        from benchmarks import bench_device_path as bench

        return "## 5. Device data path vs per-image path\n\n" + bench.report(bench.run(quick=quick))
    if name == "crop":
        from benchmarks import bench_crop_path as bench

        return ("## 7. The imagenet family (224 px): device path vs per-image path (CPU)\n\n"
                + bench.report(bench.run(quick=quick)))
    if name == "gpu":
        from benchmarks import gpu_check

        text, _ = gpu_check.run(quick=quick)
        return text if text is not None else "## GPU check\n\nCUDA is not available: skipped, nothing measured on GPU."
    raise ValueError(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="minimal sizes and one round: a smoke run (seconds)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS + OPTIONAL_SECTIONS)} (default: "
                        f"{','.join(SECTIONS)})")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _run(parser, args)
    finally:
        torch.set_num_threads(default_threads)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS + OPTIONAL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS + OPTIONAL_SECTIONS)}")

    started = time.time()
    parts = [
        "# synermix-hf benchmark results"
        + (" (quick smoke run: sizes too small to mean anything)" if args.quick else ""),
        "",
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "",
        machine_section(),
        "",
    ]
    print("\n".join(parts), flush=True)
    for name in sections:
        section_start = time.time()
        text = run_section(name, args.quick, args.threads)
        text += f"\n\n_{name}: {time.time() - section_start:.0f} s, load average after: {load_average()}_\n"
        print(text, flush=True)
        parts.append(text)
    busy = other_python_processes()
    tail = (
        f"Total {time.time() - started:.0f} s. Load average at the end: {load_average()}. Other Python processes at the "
        "end: " + ("; ".join(busy) if busy else "none") + "."
    )
    print(tail)
    parts.append(tail)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
