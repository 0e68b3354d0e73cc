# SPDX-License-Identifier: Apache-2.0
"""Decoder time against input size: MambaADv2's HSS decoder vs the same decoder with self-attention blocks.

Usage::

    python benchmarks/scaling.py --out results/scaling                       # 128…512 px, resnet34, depths 3-4-6-3
    python benchmarks/scaling.py --sizes 128 256 512 --repeats 3 --out /tmp/scaling
    python benchmarks/scaling.py --tiny --out /tmp/scaling_tiny             # 64/96/128 px, resnet18, depths 1-1-1-1

For each input size a :class:`~anomalib_mambaadv2.torch_model.MambaADv2Model` is built (``pre_trained=False``: the
weights do not change the time) and copied; in the copy every HSS block (``model.stages[i].dss[j].blocks[k]``, an
``HSSBlock`` mapping a channels-last ``(B, H, W, C)`` grid to the same shape) is replaced by :class:`MHSABlock`, a
standard pre-norm multi-head self-attention block of the same width ``C``: ``u + proj(attention(LayerNorm(u)))`` over
all ``H·W`` tokens of the grid (``F.scaled_dot_product_attention``, heads of 32 channels where ``C`` allows, no MLP).
Everything else (bottleneck, patch expanding, the DSS modules' 7×7 and frequency branches, the fusion convolutions)
is shared, so the difference between the two decoders is the token mixer alone.

Both decoders run ``model.decode`` on the same encoder features (computed once per size), batch 1, ``torch.no_grad``,
eval mode, torch eager; they alternate within every repeat (the first one alternates too), after one warm-up call
each; the table gives medians. Time is plotted against the number of tokens of the finest decoder grid
(``(size / 4)²`` for stride-4 encoders, proportional to the pixel count) on log-log axes, and a straight line is
fitted to ``log(time)`` against ``log(tokens)``: slope ≈ 1 means linear cost, ≈ 2 quadratic. Two slopes are reported:
over all sizes, and between the two largest (where fixed per-call overheads matter least). Note that the DSS
modules' frequency branch (a matrix DFT, ``O(C·H·W·(H+W))``) is slightly super-linear and sits in both decoders.

Outputs in ``--out``: ``scaling.csv`` (one row per decoder and size, with both slopes), ``scaling.md`` (table, slopes,
the command and machine information) and ``scaling.png``. An existing ``scaling.csv`` is kept unless ``--overwrite``.
The default run takes about 3-5 minutes on 2 CPU cores (most of it the attention decoder at 512 px).
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from benchinfo import (
    OutputExistsError,
    claim_output,
    cpu_name,
    git_commit,
    interleaved_times,
    load_average,
    reexec_with_env,
)
from torch import Tensor, nn
from torch.nn import functional as F

DECODERS = ("MambaADv2 (HSS)", "MHSA")
DEFAULT_SIZES = (128, 192, 256, 384, 512)
TINY_SIZES = (64, 96, 128)
COLUMNS = (
    "decoder", "size", "tokens_finest", "tokens_all", "median_ms", "q1_ms", "q3_ms", "repeats", "params_m",
    "slope_all", "slope_tail",
)  # fmt: skip


class MHSABlock(nn.Module):
    """Pre-norm multi-head self-attention over all tokens of a channels-last grid, with a residual connection.

    Args:
        dim: Channels ``C`` of the grid (the attention width).
        headdim: Preferred channels per head (the HSS block's SSM head dim); the head count is the largest divisor of
            ``dim`` not above ``dim // headdim`` (at least one head).
    """

    def __init__(self, dim: int, headdim: int = 32) -> None:
        super().__init__()
        heads = max(dim // headdim, 1)
        while dim % heads:
            heads -= 1
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, u: Tensor) -> Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        b, h, w, c = u.shape
        qkv = self.qkv(self.norm(u).reshape(b, h * w, c))
        q, k, v = qkv.reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, C / heads)
        return u + self.proj(y.transpose(1, 2).reshape(b, h * w, c)).reshape(b, h, w, c)


def replace_hss_with_mhsa(model: nn.Module) -> int:
    """Swap every HSS block of a :class:`MambaADv2Model` for an :class:`MHSABlock` of its width, in place.

    Returns:
        The number of blocks replaced.
    """
    replaced = 0
    for stage in model.stages:
        for dss in stage.dss:
            dim = dss.fuse.out_channels  # the DSS module's (and its HSS blocks') width
            for index in range(len(dss.blocks)):
                dss.blocks[index] = MHSABlock(dim)
                replaced += 1
    return replaced


def build_pair(size: int, backbone: str, depths: Sequence[int]) -> tuple[nn.Module, nn.Module, int]:
    """MambaADv2Model at ``size`` and its copy with MHSA blocks (both eval mode), and the number of blocks swapped."""
    from anomalib_mambaadv2.torch_model import MambaADv2Model

    model = MambaADv2Model(backbone=backbone, pre_trained=False, image_size=(size, size), depths=depths).eval()
    attention = copy.deepcopy(model)
    replaced = replace_hss_with_mhsa(attention)
    return model, attention.eval(), replaced


def decoder_params(model: nn.Module) -> float:
    """Parameters (M) outside the encoder: bottleneck and decoder."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.")) / 1e6


def grid_tokens(model: nn.Module, size: int) -> tuple[int, int]:
    """Tokens of the finest decoder grid, and of all decoder stages together."""
    stride = model.encoder.reductions[-1] * 2
    grids = [(size * 2**i // stride) ** 2 for i in range(len(model.stages))]
    return grids[-1], sum(grids)


def time_interleaved(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each runner over ``repeats`` rounds (:func:`benchinfo.interleaved_times`)."""
    return {key: [1000 * t for t in times] for key, times in interleaved_times(runners, repeats).items()}


def fit_slope(tokens: Sequence[float], times: Sequence[float]) -> float:
    """Slope of the least-squares line through ``(log tokens, log time)`` (NaN with fewer than two sizes)."""
    points = [(math.log(t), math.log(y)) for t, y in zip(tokens, times, strict=True) if t > 0 and y > 0]
    if len(points) < 2:
        return math.nan
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx > 0 else math.nan


@dataclass
class Row:
    """One decoder at one size."""

    decoder: str
    size: int
    tokens_finest: int
    tokens_all: int
    times: list[float]
    params_m: float

    @property
    def median(self) -> float:
        """Median milliseconds."""
        return statistics.median(self.times)

    def quartiles(self) -> tuple[float, float]:
        """First and third quartile (ms)."""
        if len(self.times) < 2:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q3


def make_plot(rows: Sequence[Row], slopes: dict[str, tuple[float, float]], path: Path) -> None:
    """Log-log time against tokens, one line per decoder, with slope-1 and slope-2 guides."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for decoder, colour in zip(DECODERS, ("tab:red", "tab:blue"), strict=True):
        mine = [r for r in rows if r.decoder == decoder]
        if not mine:
            continue
        x, y = [r.tokens_finest for r in mine], [r.median for r in mine]
        ax.loglog(x, y, "o-", color=colour, label=f"{decoder}: slope {slopes[decoder][0]:.2f}")
        for r in mine:
            ax.annotate(f"{r.size}px", (r.tokens_finest, r.median), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")  # fmt: skip
    first = [r for r in rows if r.decoder == DECODERS[0]]
    if first:
        x0, y0 = first[0].tokens_finest, first[0].median
        xs = [r.tokens_finest for r in first]
        for power, style in ((1, ":"), (2, "--")):
            ax.loglog(xs, [y0 * (x / x0) ** power for x in xs], style, color="gray", lw=1, label=f"∝ tokens^{power}")
    ax.set_xlabel("tokens of the finest decoder grid (log)")
    ax.set_ylabel("decoder forward, batch 1 (ms, log)")
    ax.set_title("Decoder time against input size")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png")


def write_outputs(out: Path, rows: Sequence[Row], slopes: dict[str, tuple[float, float]], info: dict) -> None:
    """``scaling.csv``, ``scaling.md`` and ``scaling.png``."""
    with (out / "scaling.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for r in rows:
            q1, q3 = r.quartiles()
            writer.writerow([
                r.decoder, r.size, r.tokens_finest, r.tokens_all, f"{r.median:.4f}", f"{q1:.4f}", f"{q3:.4f}",
                len(r.times), f"{r.params_m:.4f}", f"{slopes[r.decoder][0]:.4f}", f"{slopes[r.decoder][1]:.4f}",
            ])  # fmt: skip
    make_plot(rows, slopes, out / "scaling.png")
    (out / "scaling.md").write_text(report(rows, slopes, info), encoding="utf-8")


def table(rows: Sequence[Row]) -> str:
    """Markdown table: one line per size, both decoders side by side."""
    sizes = sorted({r.size for r in rows})
    by = {(r.decoder, r.size): r for r in rows}
    lines = [
        f"| size (px) | tokens (finest / all stages) | {DECODERS[0]} (ms) | {DECODERS[1]} (ms) | MHSA / HSS |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        a, b = by.get((DECODERS[0], size)), by.get((DECODERS[1], size))
        ref = a or b
        ratio = b.median / a.median if a and b else math.nan
        lines.append(
            f"| {size} | {ref.tokens_finest} / {ref.tokens_all} | {a.median if a else math.nan:.1f} | "
            f"{b.median if b else math.nan:.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def report(rows: Sequence[Row], slopes: dict[str, tuple[float, float]], info: dict) -> str:
    """``scaling.md``."""
    slope_lines = "\n".join(
        f"- {decoder}: slope {all_:.2f} over all sizes, {tail:.2f} between the two largest"
        for decoder, (all_, tail) in slopes.items()
    )
    params = {r.decoder: r.params_m for r in rows}
    return f"""# Decoder time against input size

Run {info["started"]} with:

```bash
{info["command"]}
```

Code: commit {info["commit"]}.
Machine: {info["cpu"]}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads; Python
{platform.python_version()}, torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}.
Load average (1/5/15 min) at start {info["load_start"]}, at end {info["load_end"]}.

Model: `MambaADv2Model(backbone="{info["backbone"]}", depths={list(info["depths"])}, pre_trained=False)`;
{info["replaced"]} HSS blocks replaced by MHSA blocks of the same width in the copy. Bottleneck + decoder parameters:
{", ".join(f"{k} {v:.2f} M" for k, v in params.items())}. `model.decode` on precomputed encoder features, batch 1,
no_grad, eval mode, torch eager; median of {info["repeats"]} interleaved calls after one warm-up call each.

{table(rows)}

Fitted slopes of log(time) against log(tokens) (1 = linear, 2 = quadratic):

{slope_lines}

![decoder time against tokens](scaling.png)

Wall time of the run: {info["wall_s"]:.0f} s.
"""


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/scaling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", help=f"input sides in px (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, help="timed calls per decoder and size (default 5, --tiny 2)")
    parser.add_argument("--backbone", help="timm encoder (default resnet34, --tiny resnet18)")
    parser.add_argument("--depths", type=int, nargs=4, help="HSS blocks per stage (default 3 4 6 3, --tiny 1 1 1 1)")
    parser.add_argument("--tiny", action="store_true", help="64/96/128 px, resnet18, depths 1 1 1 1, 2 repeats")
    parser.add_argument("--out", default="results/scaling", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scaling.csv")
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure both decoders at every size and write the outputs.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        ``{"rows": [Row, ...], "slopes": {decoder: (all sizes, two largest)}, "out": folder}``.
    """
    parser, args = parse_args(argv)
    sizes = sorted(set(args.sizes or (TINY_SIZES if args.tiny else DEFAULT_SIZES)))
    repeats = args.repeats or (2 if args.tiny else 5)
    backbone = args.backbone or ("resnet18" if args.tiny else "resnet34")
    depths = tuple(args.depths or ((1, 1, 1, 1) if args.tiny else (3, 4, 6, 3)))
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    if any(s % 32 or s < 64 for s in sizes):
        parser.error(f"sizes must be multiples of 32 and at least 64, got {sizes}")
    out = Path(args.out)
    try:
        claim_output(out / "scaling.csv", args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    started = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start, wall = load_average(), time.perf_counter()
    torch.manual_seed(0)
    rows: list[Row] = []
    replaced = 0
    print(f"decoder scaling: {backbone}, depths {list(depths)}, sizes {sizes}, {repeats} repeats", flush=True)
    for size in sizes:
        model, attention, replaced = build_pair(size, backbone, depths)
        with torch.no_grad():
            feats = model.encoder(torch.rand(1, 3, size, size))
            runners = {
                DECODERS[0]: lambda model=model, feats=feats: model.decode(feats),
                DECODERS[1]: lambda attention=attention, feats=feats: attention.decode(feats),
            }
            times = time_interleaved(runners, repeats)
        finest, total = grid_tokens(model, size)
        for decoder, net in zip(DECODERS, (model, attention), strict=True):
            rows.append(Row(decoder, size, finest, total, times[decoder], decoder_params(net)))
        medians = ", ".join(f"{d} {statistics.median(times[d]):.1f} ms" for d in DECODERS)
        print(f"  {size:4d} px ({finest:6d} tokens): {medians}", flush=True)
        del model, attention, feats, runners
        gc.collect()

    slopes: dict[str, tuple[float, float]] = {}
    for decoder in DECODERS:
        mine = [r for r in rows if r.decoder == decoder]
        tokens, medians = [r.tokens_finest for r in mine], [r.median for r in mine]
        slopes[decoder] = (fit_slope(tokens, medians), fit_slope(tokens[-2:], medians[-2:]))
    info = {
        "started": started,
        "command": shlex.join(["python", "benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu_name(),
        "commit": git_commit(),
        "load_start": load_start,
        "load_end": load_average(),
        "backbone": backbone,
        "depths": depths,
        "repeats": repeats,
        "replaced": replaced,
        "wall_s": time.perf_counter() - wall,
    }
    write_outputs(out, rows, slopes, info)
    print(f"\n{table(rows)}\n")
    for decoder, (all_, tail) in slopes.items():
        print(f"{decoder}: slope {all_:.2f} (all sizes), {tail:.2f} (two largest)")
    print(f"wrote {out / 'scaling.csv'}, scaling.md, scaling.png", flush=True)
    return {"rows": rows, "slopes": slopes, "out": out}


if __name__ == "__main__":
    reexec_with_env({"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"})  # spinning pools distort shared-CPU timings
    main()
