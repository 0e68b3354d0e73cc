# SPDX-License-Identifier: Apache-2.0
"""What every benchmark script shares: where a report ran (CPU, load, the git commit of the code it measured), a
restart with the environment set, interleaved timing, and the guard that keeps an earlier report."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def git_commit() -> str:
    """The commit of the code being measured, with ``+uncommitted changes`` when the tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} + uncommitted changes" if dirty else commit


def say(message: str) -> None:
    """Print and flush (the benchmarks interleave their output with libraries' logs)."""
    print(message, flush=True)


PLAIN_ENV_FLAG = "--plain-env"
PLAIN_ENV_HELP = (
    "run in the environment a plain `anomalib train` has: glibc's adaptive allocator thresholds and OpenMP's own "
    "thread waiting, i.e. without the benchmark's MALLOC_MMAP_THRESHOLD_ and OMP_WAIT_POLICY (times as a user sees "
    "them on an idle machine; peak RSS then includes freed memory that glibc keeps)"
)
TUNING_KEYS = ("MALLOC_MMAP_THRESHOLD_", "OMP_WAIT_POLICY")


def benchmark_env(env: Mapping[str, str], plain: bool | None = None) -> dict[str, str]:
    """``env`` without its allocator and thread-waiting settings (:data:`TUNING_KEYS`) when ``plain``; ``None``:
    when the command line has ``--plain-env`` (read raw: the restart that sets them comes before argument parsing)."""
    plain = PLAIN_ENV_FLAG in sys.argv if plain is None else plain
    return {key: value for key, value in env.items() if not (plain and key in TUNING_KEYS)}


def reexec_with_env(env: Mapping[str, str]) -> None:
    """Restart the interpreter once with ``env`` set where unset (glibc, libgomp and OpenMP read theirs at start-up).

    The marker variable is per script, so a benchmark started by another one still sets its own variables.
    """
    marker = f"_BENCH_REEXEC_{Path(sys.argv[0]).stem.upper()}"
    missing = {key: value for key, value in env.items() if key not in os.environ}
    if missing and not os.environ.get(marker):
        os.environ.update(missing, **{marker: "1"})
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, *sys.argv])


def interleaved_times(
    runners: Mapping[Hashable, Callable[[], Any]],
    repeats: int,
    warmups: int = 1,
    after_repeat: Callable[[int], None] | None = None,
) -> dict[Hashable, list[float]]:
    """Seconds per call of each runner: all runners alternate within every repeat, and the start rotates.

    So every runner sees the same machine state on average; ratios of medians are then less noisy than each time.
    ``after_repeat(r)`` is called after repeat ``r`` (e.g. to log the load).
    """
    keys = list(runners)
    for key in keys:
        for _ in range(warmups):
            runners[key]()
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    gc.collect()
    for r in range(max(repeats, 1)):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            runners[key]()
            times[key].append(time.perf_counter() - start)
        if after_repeat is not None:
            after_repeat(r)
    return times


class OutputExistsError(FileExistsError):
    """A benchmark's report is already there and ``--overwrite`` was not given."""


def claim_output(path: Path, overwrite: bool) -> Path:
    """``path``, with its folder made; refuses (:class:`OutputExistsError`) to replace it without ``overwrite``."""
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass --overwrite to replace it, or choose another --out."
        raise OutputExistsError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _product_flops(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``self + a @ b`` (addmm / baddbmm shapes): 2 · (entries of a) · (columns of b)."""
    count = 2 * b_shape[-1]
    for size in a_shape:
        count *= size
    return count


def count_gmacs(fn: Callable[[], Any]) -> float:
    """Multiply-adds (G) of ``fn()`` under ``no_grad``: ``torch.utils.flop_counter``'s FLOPs / 2.

    The counter knows only the out-of-place matrix products; the scan accumulates some in place (``baddbmm_``),
    so those are counted here too.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    in_place = {torch.ops.aten.baddbmm_: _product_flops, torch.ops.aten.addmm_: _product_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9
