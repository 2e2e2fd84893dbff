"""Shared helpers: import path, machine description, timing statistics, a `Trainer` timer and markdown tables."""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere finds synermix_hf and benchmarks
    sys.path.insert(0, str(REPO_ROOT))

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
    os.environ.setdefault(_key, _value)

# After the environment above: transformers reads it when imported.
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (the spread shown next to medians)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def intervals(stamps: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """`(wall, cpu)` seconds between consecutive `(time.perf_counter(), time.process_time())` stamps."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def one_thread_worker(worker_id: int) -> None:
    """`DataLoader` `worker_init_fn`: one torch thread per loader worker, so that workers do not fight over cores."""
    torch.set_num_threads(1)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class TrainTimer(TrainerCallback):
    """Times `Trainer.train()`: a stamp at the end of every optimizer step and at the start and end of every epoch.

    Step stamps are `(time.perf_counter(), time.process_time())` pairs in `step_ends`; epochs are `(start, end)` pairs
    of `time.time()` in `epochs`, the clock that other samples (nvidia-smi lines) are stamped with. CUDA is
    synchronised before each epoch stamp, so that it marks work done, not work queued; before each step stamp only with
    `sync_steps=True`, since a synchronisation per step stops the host from running ahead of the device and so changes
    what an epoch costs.

    Args:
        sync_steps: Synchronise CUDA before each step stamp (for step times on a GPU).
    """

    def __init__(self, sync_steps: bool = False):
        self.sync_steps = sync_steps
        self.step_ends: list[tuple[float, float]] = []
        self.epochs: list[tuple[float, float]] = []
        self._epoch_start = 0.0

    def clear(self) -> None:
        self.step_ends.clear()
        self.epochs.clear()

    def step_times(self, warmup: int = 1) -> list[tuple[float, float]]:
        """`(wall, cpu)` seconds of each step after the first `warmup` (at least 1: a step is timed from the end of
        the one before it)."""
        return intervals(self.step_ends[max(warmup, 1) - 1 :])

    def on_epoch_begin(self, args, state, control, **kwargs):
        _synchronize()
        self._epoch_start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.sync_steps:
            _synchronize()
        self.step_ends.append((time.perf_counter(), time.process_time()))

    def on_epoch_end(self, args, state, control, **kwargs):
        _synchronize()
        self.epochs.append((self._epoch_start, time.time()))


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def other_python_processes() -> list[str]:
    """Python processes not belonging to this benchmark run (a busy machine skews timings)."""
    own = {os.getpid(), os.getppid()}
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    busy = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        pid, ppid, pcpu, args = int(parts[0]), int(parts[1]), float(parts[2]), parts[3]
        if pid in own or ppid in own or "python" not in args.split()[0]:
            continue
        busy.append(f"pid {pid} ({pcpu:.0f}% cpu): {args[:80]}")
    return busy


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def measured_commit() -> str:
    """The checkout's commit, with `+ uncommitted changes` when tracked files differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info() -> dict[str, str]:
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    info = {
        "commit measured": measured_commit(),
        "started (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu,
        "cpu capability (torch)": torch.backends.cpu.get_cpu_capability(),
        "cores (nproc)": str(os.cpu_count()),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "load average (1, 5, 15 min)": load_average(),
    }
    return info


def machine_section() -> str:
    info = machine_info()
    rows = [(k, v) for k, v in info.items()]
    busy = other_python_processes()
    text = table(["machine", "value"], rows)
    text += "\n\nOther Python processes at start: " + ("; ".join(busy) if busy else "none") + "."
    return text
