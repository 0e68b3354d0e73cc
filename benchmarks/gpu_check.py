# SPDX-License-Identifier: Apache-2.0
"""GPU check: parity and speed of the fused ``mamba_ssm`` SSD path against the pure-PyTorch one, and model throughput.

Writes a markdown report to ``--out`` and prints it. Sections:

1. Environment: Python, torch (and its CUDA), device, Triton, whether ``mamba_ssm`` imports (and its version).
2. Parity: ``ssd(backend="torch")`` against ``ssd(backend="fused")`` at the decoder's stage sizes (stage width C =
   512/256/128/64 → inner 2C, heads 2C/64, and the model's head dim 64, state 16 and chunk 32; L =
   64/256/1024/4096, batch 16) for the Mamba-2 case (``lam = omega = None``) and trapezoid + rotation, with float32
   and bf16 inputs (bf16: the fused output against the float32 pure-PyTorch output on the same bf16-rounded inputs),
   forward and input gradients. Plus a float64 sanity row: ``ssd`` against the token loop ``ssd_reference`` (L=256,
   batch 2). Tolerances are in the report.
3. Speed of both paths, forward and forward+backward, median of several synchronised calls, bf16 inputs,
   trapezoid + rotation (as the model calls it under bf16 autocast).
4. The full model (resnet34 encoder, ``pre_trained=False``, 256×256, batch 16, bf16 autocast), ``ssd_backend="torch"``
   against ``"fused"``: training step (forward + loss + backward + AdamW step) and inference throughput, peak memory.

Without CUDA or without ``mamba_ssm`` every fused part reads "unavailable (reason)"; with ``--device cpu`` (or when
there is no CUDA) the pure-PyTorch parts run at the ``--quick`` sizes (L ≤ 256, batch 2, 64×64 images, resnet18,
decoder depths (1, 2, 2, 1)). Exit code 0 when every check that could run passed, 1 when a parity check failed or a
measurement raised an error.

On a GPU machine without internet: build the ``mamba_ssm`` wheel where there is internet (it is pure Python when
the CUDA extensions are skipped; ``--no-build-isolation`` because its ``setup.py`` imports torch)::

    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \\
        pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.2.post1 -d wheels
    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \\
        pip wheel --no-deps --no-build-isolation wheels/mamba_ssm-2.3.2.post1.tar.gz -w wheels

then, on the GPU machine (torch with CUDA and Triton already installed, as in ``.venv``)::

    pip install --no-build-isolation --no-deps wheels/mamba_ssm-*.whl
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --out gpu_check.md     # target ≤ 8 min on an H100/H200
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --quick --out q.md     # smoke run, reduced sizes

The report's summary gives each section's seconds. CPU smoke run (as the test does)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out gpu_check_cpu.md

``mamba_ssm`` 2.3.2.post1's package ``__init__`` imports the Mamba-1 CUDA extension ``selective_scan_cuda`` (absent
when built with ``MAMBA_SKIP_CUDA_BUILD``) and ``transformers``; where ``import mamba_ssm`` fails for such a reason
this script loads ``mamba_ssm.ops.triton.ssd_combined`` without running the package ``__init__`` and says so in the
report (``--no-bare-import`` turns that off). The Triton kernels multiply float32 tiles in TF32 unless
``TRITON_F32_DEFAULT=ieee`` is set; the report's "vs float64" columns show which path carries the error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch
from benchinfo import git_commit
from gpu_check_common import FULL, QUICK, Config, FusedStatus, Report, cell, fused_status, short_error
from gpu_check_model import model_throughput
from gpu_check_ssd import parity, speed


def environment(report: Report, device: torch.device, status: FusedStatus, cfg: Config, quick: bool) -> None:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    try:
        import triton

        triton_v = triton.__version__
    except Exception as exc:
        triton_v = f"not importable ({short_error(exc)})"
    fused = "available" if status.available else f"unavailable ({status.reason})"
    rows = [
        ("commit", git_commit()),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else torch.__version__),
        ("device", dev),
        ("triton", triton_v),
        ("mamba_ssm", status.mamba),
        ("fused SSD path", fused),
        ("TRITON_F32_DEFAULT", os.environ.get("TRITON_F32_DEFAULT", "unset (float32 tl.dot in TF32)")),
        ("torch float32 matmul precision", torch.get_float32_matmul_precision()),
        ("sizes", "quick (reduced)" if quick else "full"),
        ("SSD stages (C, L)", ", ".join(f"({c}, {length})" for c, length in cfg.stages) + f"; batch {cfg.batch}"),
    ]
    report.add("## 1. Environment", "", "| item | value |", "|:---|:---|")
    report.add(*(f"| {k} | {cell(v)} |" for k, v in rows))
    report.add("")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown report path")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if present")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (always on without CUDA)")
    parser.add_argument(
        "--no-bare-import",
        dest="bare_import",
        action="store_false",
        help="do not load mamba_ssm's Triton kernels when `import mamba_ssm` itself fails",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every check, write and print the report; 0 when all checks that could run passed, else 1."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    notes = []
    want_cuda = args.device in {"auto", "cuda"}
    if args.device == "cuda" and not torch.cuda.is_available():
        notes.append("- `--device cuda` asked for, but CUDA is not available: ran on the CPU.")
    device = torch.device("cuda" if want_cuda and torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"
    cfg = QUICK if quick else FULL
    if device.type == "cpu":  # a smoke run: no warm-up calls (there is nothing to compile or autotune)
        cfg = dataclasses.replace(cfg, warmup=0)

    report = Report()
    report.add(
        "# MambaADv2 GPU check",
        "",
        f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:] if argv is None else argv)}` on {device.type}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
    )
    status = fused_status(device, args.bare_import)
    environment(report, device, status, cfg, quick)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    phases = [f"set-up {time.perf_counter() - t_start:.0f} s"]
    for name, section in (("parity", parity), ("speed", speed), ("model", model_throughput)):
        t0 = time.perf_counter()
        section(report, device, status, cfg)
        phases.append(f"{name} {time.perf_counter() - t0:.0f} s")

    report.add("## Summary", "")
    report.add(*notes)
    if report.failures:
        report.add(f"- **{len(report.failures)} check(s) failed or raised**:")
        report.add(*(f"  - {cell(f)}" for f in report.failures))
    else:
        report.add("- All checks that could run passed.")
    if not status.available:
        report.add(f"- Fused path not checked: unavailable ({status.reason}).")
    report.add(f"- Wall time {time.perf_counter() - t_start:.0f} s ({', '.join(phases)}).")

    text = report.text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"# wrote {args.out}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
