# SPDX-License-Identifier: Apache-2.0
"""Training cost: time per training step and peak RSS of MambaADv2 beside Anomalib's Reverse Distillation (CPU).

Usage::

    python benchmarks/train_cost.py                      # batch 16, 256×256, resnet34 and tf_efficientnet_lite0
    python benchmarks/train_cost.py --quick --out /tmp/train_cost.md    # 128 px, batch 4, 1 + 2 steps
    python benchmarks/train_cost.py --rounds 3 --overwrite               # the whole order three times, medians
    python benchmarks/train_cost.py --encoders resnet18 --size 64 --batch 2 --steps 1 --out /tmp/tc.md

One training step is what Lightning's automatic optimisation does with each module's own recipe: ``zero_grad``,
forward of the torch module in train mode, the module's loss (``module.loss(*module.model(images))``, as in both
``training_step``), ``backward``, the optimiser step of ``configure_optimizers`` (MambaADv2: AdamW over its parameter
groups, lr scaled by batch / 16, plus its step-wise scheduler; Reverse Distillation: Adam over bottleneck and
decoder), on random ``B×3×S×S`` batches. Every model is built with ``pre_trained=False`` (random encoder weights; the
cost does not depend on them). Reverse Distillation is built as ``benchmarks/compare.py`` builds it: with encoders it
has no decoder for (EfficientNet-Lite0), Anomalib's resnet18 bottleneck and decoder on zero-padded encoder features.

Each (model, encoder) runs in its own child process (this script with a hidden ``--child``), so its peak RSS
(``VmHWM`` of ``/proc/self/status`` after the steps; it includes the interpreter, torch and the model) is its own;
growth is that peak minus ``VmRSS`` before the first step. Step time: median of ``--steps`` steps after ``--warmup``
steps. The children run alternately (MambaADv2, RD, per encoder; ``--rounds R`` repeats that order R times and takes
per-configuration medians); the ratios MambaADv2 / RD are paired per round. Targets (the issue): time and peak RSS
each ≤ 1.5× RD's. Rows with ``activation_checkpointing=True`` are added (``--no-checkpointing`` drops them);
``--mamba-options`` passes further MambaADv2 arguments. The children get ``MALLOC_MMAP_THRESHOLD_=1048576``
(large buffers are mmapped and given back when freed, so RSS follows live memory), ``OMP_WAIT_POLICY=PASSIVE``,
``HF_HUB_OFFLINE=1`` and ``TQDM_DISABLE=1``, each only where not already set (``--plain-env``: the last two only, as a
plain ``anomalib train`` runs); the report records them. The report
(default ``docs/benchmarks/train_cost.md``) is never replaced without ``--overwrite``. Not a test: timings belong in
reports, never in assertions. ``--quick`` took about 2 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchinfo import (
    PLAIN_ENV_HELP,
    OutputExistsError,
    benchmark_env,
    claim_output,
    cpu_name,
    git_commit,
    load_average,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "train_cost.md"
ENCODERS = ("resnet34", "tf_efficientnet_lite0")
ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
MAMBA, RD, CKPT = "MambaADv2", "ReverseDistillation", "MambaADv2 + activation checkpointing"
TARGET = 1.5
MARKER = "TRAIN_COST_RESULT "  # prefix of the child's JSON line on stdout
GB = 2**30


def status_bytes(key: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status`` in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    msg = f"/proc/self/status has no {key} line"
    raise RuntimeError(msg)


def build(model: str, encoder: str, size: int, options: dict[str, Any]) -> tuple[Any, list[str]]:
    """The Lightning module of ``model`` on ``encoder`` at ``size`` (random weights) and notes for the report.

    ``options`` are further ``MambaADv2`` arguments (``--mamba-options``), e.g. an earlier default to compare with.
    """
    from contenders import Settings, build_rd, encoder_spec

    spec = encoder_spec(encoder, "none", None)  # layers of stride 4, 8, 16 and the normalisation; no weights
    if model == RD:
        built = build_rd(spec, Settings(image_size=size))
        return built.module, built.notes
    from anomalib_mambaadv2 import MambaADv2

    module = MambaADv2(backbone=encoder, layers=spec.layers, pre_trained=False, image_size=size, evaluator=False,
                       visualizer=False, activation_checkpointing=model == CKPT, **options)  # fmt: skip
    return module, [f"layers {', '.join(spec.layers)}"]


def optimizer_of(module: Any, batch: int) -> tuple[Any, Any]:
    """The module's own ``configure_optimizers`` result: (optimizer, step-wise scheduler or None).

    MambaADv2's recipe reads the trainer (batch size, devices, accumulation, total steps); a stand-in with one
    device, no accumulation and ``batch`` images per step is attached for the call and removed after it.
    """
    from types import SimpleNamespace

    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_batch_size=batch), world_size=1,
                                      accumulate_grad_batches=1, estimated_stepping_batches=10_000)  # fmt: skip
    try:
        config = module.configure_optimizers()
    finally:
        module._trainer = None
    if isinstance(config, dict):
        scheduler = config.get("lr_scheduler")
        return config["optimizer"], scheduler.get("scheduler") if isinstance(scheduler, dict) else scheduler
    return config, None


def child(args: argparse.Namespace) -> dict[str, Any]:
    """In a child process: build one configuration, run the steps, return times and memory."""
    import anomalib
    import timm
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, encoder = args.child.split("@", 1)
    module, notes = build(model, encoder, args.size, json.loads(args.mamba_options))
    optimizer, scheduler = optimizer_of(module, args.batch)
    module.train()
    batches = [torch.randn(args.batch, 3, args.size, args.size) for _ in range(2)]
    gc.collect()
    rss_before = status_bytes("VmRSS")
    times, loss = [], math.nan
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        value = module.loss(*module.model(batches[i % 2]))
        value.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        elapsed = time.perf_counter() - start
        loss = float(value.detach())
        if i >= args.warmup:
            times.append(elapsed)
    peak = status_bytes("VmHWM")
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return {
        "model": model, "encoder": encoder, "times": times, "rss_before": rss_before, "peak": peak, "loss": loss,
        "optimizer": type(optimizer).__name__, "trainable_m": trainable / 1e6, "notes": notes,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "anomalib": anomalib.__version__,
        "timm": timm.__version__, "env": {k: os.environ.get(k, "unset") for k in ENV},
    }  # fmt: skip


def run_child(config: tuple[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its result, or ``{"error": ...}``."""
    env = {**benchmark_env(ENV, args.plain_env), **os.environ}  # ours only where not already set
    if args.glibc_defaults and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)  # glibc's own dynamic threshold (already gone with --plain-env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "@".join(config), "--size", str(args.size),
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--threads", str(args.threads), "--mamba-options", args.mamba_options]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1].removeprefix(MARKER))
    if done.returncode < 0:  # 9: most likely the kernel's out-of-memory killer
        oom = " (out of memory?)" if done.returncode == -9 else ""
        return {"error": f"killed by signal {-done.returncode}{oom}"}
    tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0][:200]}"}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-configuration medians over the rounds (step time: of each round's median)."""
    good = [r for r in results if "error" not in r]
    if not good:
        return {"error": results[0]["error"]}
    return {
        "time": statistics.median(statistics.median(r["times"]) for r in good),
        "peak": statistics.median(r["peak"] for r in good),
        "growth": statistics.median(r["peak"] - r["rss_before"] for r in good),
        "before": statistics.median(r["rss_before"] for r in good),
        "rounds": [round(statistics.median(r["times"]), 3) for r in good],
        **{k: good[-1][k] for k in ("optimizer", "trainable_m", "notes", "loss")},
        "error": next((r["error"] for r in results if "error" in r), None),
    }


def paired(results: dict[tuple[str, str], list[dict]], model: str, encoder: str, key: str) -> float:
    """Median over rounds of ``model`` / RD on ``encoder`` (``key``: ``"time"``, ``"peak"`` or ``"growth"``)."""
    values = {
        "time": lambda r: statistics.median(r["times"]),
        "peak": lambda r: r["peak"],
        "growth": lambda r: r["peak"] - r["rss_before"],
    }[key]
    pairs = zip(results[model, encoder], results[RD, encoder], strict=True)
    ratios = [values(a) / values(b) for a, b in pairs if "error" not in a and "error" not in b and values(b) > 0]
    return statistics.median(ratios) if ratios else math.nan


def report(results: dict[tuple[str, str], list[dict]], info: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown report."""
    first = next((r for rs in results.values() for r in rs if "error" not in r), {})
    env = ", ".join(f"{k}={v}" for k, v in first.get("env", {}).items())
    lines = [
        "# Training cost: MambaADv2 vs Reverse Distillation",
        "",
        f"Run {info['date']} with:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        f"- code: commit {info['commit']}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch threads {first.get('threads', args.threads)}; "
        f"torch {first.get('torch', '?')}, anomalib {first.get('anomalib', '?')}, timm {first.get('timm', '?')}",
        f"- environment of the measuring processes: {env}",
        f"- load average (1/5/15 min): start {info['load_start']}, end {info['load_end']} (a 1-minute load above the "
        "core count means other work shared the CPU: the times are inflated, the side-by-side ratios less so)",
        "- step = zero_grad + forward (train mode) + loss + backward + optimizer step (+ scheduler step), each "
        f"model's own recipe; random {args.batch}×3×{args.size}×{args.size} batches, `pre_trained=False`; median of "
        f"{args.steps} steps after {args.warmup} warm-up step(s)",
        f"- every configuration in its own process, {args.rounds} round(s) in the order "
        f"{', '.join(f'{m} {e}' for m, e in results)}; medians over rounds, ratios paired per round",
        "- peak RSS: `VmHWM` of the process after the steps (interpreter, libraries, model, optimizer state, "
        "activations); growth: that peak minus `VmRSS` before the first step; GB = 2^30 bytes",
        "",
        "| model | encoder | batch | size | step time median (s) | img/s | peak RSS (GB) | RSS growth (GB) "
        "| ratio vs RD (time / peak RSS) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {key: summarise(rs) for key, rs in results.items()}
    for (model, encoder), s in summary.items():
        if "time" not in s:
            lines.append(f"| {model} | {encoder} | {args.batch} | {args.size} | failed: {s['error']} | | | | |")
            continue
        ratio = "—"
        if model != RD:
            ratio = f"{paired(results, model, encoder, 'time'):.2f}× / {paired(results, model, encoder, 'peak'):.2f}×"
        lines.append(
            f"| {model} | {encoder} | {args.batch} | {args.size} | {s['time']:.3f} | {args.batch / s['time']:.2f} | "
            f"{s['peak'] / GB:.2f} | {s['growth'] / GB:.3f} | {ratio} |"
        )
    lines += ["", f"Targets (MambaADv2 / Reverse Distillation, each ≤ {TARGET}×):", ""]
    verdicts = []
    for model, encoder in results:
        if model == RD:
            continue
        for key, label in (("time", "step time"), ("peak", "peak RSS")):
            ratio = paired(results, model, encoder, key)
            verdict = "PASS" if ratio <= TARGET else "FAIL"  # NaN (a failed run) fails
            verdicts.append(verdict)
            extra = (
                f" (growth {paired(results, model, encoder, 'growth'):.2f}×, for information)" if key == "peak" else ""
            )
            lines.append(f"- {model}, {encoder}: {label} {ratio:.2f}×{extra} (target ≤ {TARGET}): **{verdict}**")
    lines += ["", "Notes:", "", f"- activation checkpointing: {info['checkpointing']}"]
    for (model, encoder), s in summary.items():
        if "time" in s:
            lines.append(
                f"- {model}, {encoder}: {s['optimizer']} over {s['trainable_m']:.2f} M trainable parameters; "
                f"{'; '.join(s['notes'])}; RSS before the first step {s['before'] / GB:.2f} GB; last loss "
                f"{s['loss']:.4g}; step time per round (s) {s['rounds']}"
                + (f"; a round failed: {s['error']}" if s["error"] else "")
            )
    lines.append(f"- wall time of this run: {info['wall_s'] / 60:.1f} min")
    info["all_pass"] = bool(verdicts) and all(v == "PASS" for v in verdicts)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the command line (``--quick`` fills in what is not given)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/train_cost.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="128 px, batch 4, 1 warm-up + 2 steps")
    parser.add_argument("--size", type=int, help="square input size (default 256, --quick 128)")
    parser.add_argument("--batch", type=int, help="images per step (default 16, --quick 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default %(default)s)")
    parser.add_argument("--steps", type=int, help="timed steps (default 3, --quick 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole order R times (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument(
        "--encoders", default=",".join(ENCODERS), help="timm names, comma-separated (default %(default)s)"
    )
    parser.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add MambaADv2 rows with activation_checkpointing (default: on)",
    )
    parser.add_argument(
        "--mamba-options", default="{}", help="further MambaADv2 arguments as JSON, e.g. '{\"d_state\": 32}'"
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave glibc's allocator thresholds at their defaults (step times as a plain run has them; peak RSS then "
        "includes memory that glibc keeps after freeing it)",
    )
    parser.add_argument("--plain-env", action="store_true", help=PLAIN_ENV_HELP)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "<model>@<encoder>": measure one configuration
    args = parser.parse_args(argv)
    args.size = args.size or (128 if args.quick else 256)
    args.batch = args.batch or (4 if args.quick else 16)
    args.steps = args.steps or (2 if args.quick else 3)
    args.encoder_list = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if args.warmup < 0 or args.steps < 1 or args.rounds < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--warmup must be ≥ 0 and --steps, --rounds, --batch, --threads ≥ 1")
    if not args.encoder_list:
        parser.error("--encoders names no encoder")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration in child processes and write the report; 0 if every target passes, else 1."""
    parser, args = parse_args(argv)
    if args.child:
        print(MARKER + json.dumps(child(args)), flush=True)
        return 0
    try:
        claim_output(args.out, args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")
    wall, load_start = time.perf_counter(), load_average()
    with_ckpt = args.checkpointing
    checkpointing = "rows with `activation_checkpointing=True`" if with_ckpt else "rows left out (--no-checkpointing)"
    if json.loads(args.mamba_options):
        checkpointing += f"; MambaADv2 options {args.mamba_options}"
    models = [MAMBA, RD, *([CKPT] if with_ckpt else [])]
    order = [(model, encoder) for encoder in args.encoder_list for model in models]
    results: dict[tuple[str, str], list[dict]] = {key: [] for key in order}
    print(f"train cost: batch {args.batch}, {args.size}×{args.size}, {len(order)} configurations × {args.rounds} "
          f"round(s), {args.warmup} + {args.steps} steps each; checkpointing: {checkpointing}", flush=True)  # fmt: skip
    for r in range(args.rounds):
        for model, encoder in order:
            result = run_child((model, encoder), args)
            results[model, encoder].append(result)
            if "error" in result:
                print(f"  [{r + 1}/{args.rounds}] {model}, {encoder}: FAILED ({result['error']})", flush=True)
            else:
                print(f"  [{r + 1}/{args.rounds}] {model}, {encoder}: {statistics.median(result['times']):.3f} s/step, "
                      f"peak RSS {result['peak'] / GB:.2f} GB", flush=True)  # fmt: skip
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/train_cost.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": git_commit(), "load_start": load_start, "load_end": load_average(),
        "checkpointing": checkpointing, "wall_s": time.perf_counter() - wall,
    }  # fmt: skip
    text = report(results, info, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"\n{text}report written to {args.out}", flush=True)
    return 0 if info["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
