"""Benchmark 1: the vectorised intra-class mixup (`intra_class_mixup_all_classes`, the trainer's) against the
reference code's per-class Python loop.

The baseline is written here, independently of the library, the way the reference code does it: for every
class present, a boolean mask, one `torch.rand` per class, normalization, a weighted sum, in a Python loop.

    python -m benchmarks.bench_intra_mixup [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.benchmark import Timer

from benchmarks.common import fmt_ms, fmt_ratio, median, table, verdict
from synermix_hf import intra_class_mixup_all_classes

SIZES = ((128, 100, 512), (256, 1000, 2048))
QUICK_SIZES = ((32, 10, 16),)
TARGET_SPEEDUP_CPU = 20.0  # at the first size


def reference_per_class_loop(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: a Python loop over the classes present, one torch.rand per class."""
    classes = torch.unique(labels)
    synthesized = []
    for c in classes:
        members = features[labels == c]
        weights = torch.rand(members.shape[0], device=features.device)
        weights = weights / weights.sum()
        synthesized.append((weights.unsqueeze(1) * members).sum(dim=0))
    return torch.stack(synthesized), classes


def _implementations(num_classes: int):
    return {
        "reference per-class loop": lambda h, y: reference_per_class_loop(h, y)[0],
        "intra_class_mixup_all_classes": lambda h, y: intra_class_mixup_all_classes(h, y, num_classes)[0],
    }


def run(quick: bool = False, device: str = "cpu", rounds: int | None = None) -> dict:
    """Time every implementation, forward only and forward + backward, interleaved over rounds; return tables."""
    device = torch.device(device)
    sizes = QUICK_SIZES if quick else SIZES
    rounds = rounds or (1 if quick else 5)
    min_run_time = 0.02 if quick else 0.3
    threads = torch.get_num_threads()
    results = []
    for batch, num_classes, dim in sizes:
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
        features = torch.randn(batch, dim, generator=gen).to(device)
        present = int(torch.unique(labels).numel())
        impls = _implementations(num_classes)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for name, fn in impls.items():
                for mode in ("forward", "forward+backward"):
                    if mode == "forward":
                        stmt = "fn(h, y)"
                        h = features
                    else:
                        stmt = "fn(h, y).sum().backward()"
                        h = features.clone().requires_grad_(True)
                    timer = Timer(stmt=stmt, globals={"fn": fn, "h": h, "y": labels}, num_threads=threads)
                    if quick:  # a few calls, no calibration: a smoke run
                        measurement = timer.timeit(number=5)
                    else:
                        measurement = timer.blocked_autorange(min_run_time=min_run_time)
                    times.setdefault((name, mode), []).append(measurement.median)
        for mode in ("forward", "forward+backward"):
            ref = median(times[("reference per-class loop", mode)])
            for name in impls:
                t = median(times[(name, mode)])
                results.append(
                    {
                        "size": f"B={batch}, C={num_classes}, D={dim}",
                        "classes present": present,
                        "mode": mode,
                        "implementation": name,
                        "time_s": t,
                        "speedup": ref / t,
                    }
                )
    return {"device": str(device), "threads": threads, "rounds": rounds, "results": results, "sizes": sizes}


def report(res: dict) -> str:
    rows = [
        (r["size"], r["classes present"], r["mode"], r["implementation"], fmt_ms(r["time_s"]), fmt_ratio(r["speedup"]))
        for r in res["results"]
    ]
    text = (
        f"Device {res['device']}, {res['threads']} torch threads, median of {res['rounds']} interleaved rounds of "
        "`torch.utils.benchmark.Timer.blocked_autorange`. Labels uniform over C classes. Speed-up = reference time / "
        "time, measured in the same run.\n\n"
    )
    text += table(["size", "classes present", "mode", "implementation", "time (ms)", "speed-up vs loop"], rows)
    first = res["results"][0]["size"]
    lines = []
    for r in res["results"]:
        if r["size"] == first and r["implementation"] != "reference per-class loop":
            ok = r["speedup"] >= TARGET_SPEEDUP_CPU
            lines.append(
                f"- {r['implementation']}, {r['mode']}: {fmt_ratio(r['speedup'])} "
                f"(target >= {TARGET_SPEEDUP_CPU:.0f}x on CPU at {first}: {verdict(ok)})"
            )
    if res["device"] == "cpu" and tuple(res["sizes"][0]) == SIZES[0]:
        text += "\n\nTarget check at the first size:\n" + "\n".join(lines)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke run)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(report(run(quick=args.quick, device=args.device)))


if __name__ == "__main__":
    main()
