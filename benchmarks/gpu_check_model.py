# SPDX-License-Identifier: Apache-2.0
"""Model section of ``benchmarks/gpu_check.py``: training step and inference throughput of the whole model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from gpu_check_common import Config, FusedStatus, Report, cell, release, short_error, sync
from gpu_check_ssd import median_ms, rel_diff, timed
from torch import Tensor


@contextlib.contextmanager
def peak_memory(device: torch.device, out: list[str]) -> Iterator[None]:
    """Append the peak allocated memory (MiB) of the block to ``out``."""
    if device.type != "cuda":
        yield
        out.append("n/a (CPU)")
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    sync(device)
    out.append(f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}")


def model_row(backend: str, device: torch.device, cfg: Config, amap_ref: list[Tensor]) -> str:
    """One table row for ``ssd_backend=backend``; ``amap_ref`` holds the torch backend's anomaly map (or is filled)."""
    from anomalib_mambaadv2.loss import ReconstructionLoss
    from anomalib_mambaadv2.torch_model import MambaADv2Model

    torch.manual_seed(0)  # the same weights for every backend
    model = MambaADv2Model(
        backbone=cfg.backbone,
        pre_trained=False,
        image_size=(cfg.image, cfg.image),
        depths=cfg.depths,
        ssd_backend=backend,
    ).to(device)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(cfg.model_batch, 3, cfg.image, cfg.image, generator=gen).to(device)
    # bf16 autocast on CUDA; on the CPU bf16 is mostly emulated (several times slower), so float32 there.
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    mem: list[str] = []

    # Inference first, on the freshly initialised weights, so the anomaly maps of the backends are comparable.
    model.eval()

    def infer() -> Tensor:
        with torch.inference_mode(), autocast:
            return model(images).anomaly_map

    with peak_memory(device, mem):
        got: list[Tensor] = []
        first_s = timed(lambda: got.append(infer().float().cpu()), device)
        infer_ms, _ = median_ms(infer, device, cfg, first_s=first_s)
        amap = got[0]
    if amap_ref:
        diff = f"{rel_diff(amap, amap_ref[0])[1]:.2e}"
    else:
        amap_ref.append(amap)
        diff = "(reference)"

    model.train()
    loss_fn = ReconstructionLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def train_step() -> None:
        with autocast:
            enc, dec = model(images)
            loss = loss_fn(enc, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with peak_memory(device, mem):
        train_ms, _ = median_ms(train_step, device, cfg)
    b = cfg.model_batch
    return (
        f"| {backend} | {b / train_ms * 1e3:.1f} | {train_ms:.1f} | {mem[1]} | {b / infer_ms * 1e3:.1f} | "
        f"{infer_ms:.1f} | {mem[0]} | {diff} |"
    )


def model_throughput(report: Report, device: torch.device, status: FusedStatus, cfg: Config) -> None:
    report.add(
        "## 4. Model throughput",
        "",
        f"MambaADv2Model({cfg.backbone}, pre_trained=False, {cfg.image}×{cfg.image}, depths {cfg.depths}), batch "
        f"{cfg.model_batch}, {'bf16 autocast' if device.type == 'cuda' else 'float32 (no autocast on the CPU)'}. "
        "Train step = forward + ReconstructionLoss + backward + AdamW step; "
        f"inference = eval-mode forward under inference_mode. Median of up to {cfg.repeat} steps after "
        f"{cfg.warmup} warm-up steps. Peak memory = torch.cuda.max_memory_allocated over the timed block "
        "(weights included). Anomaly-map difference (info, not a check): max |map − map_torch| / max |map_torch| "
        "for the same weights and images.",
        "",
        "| ssd_backend | train images/s | train ms/step | train peak MiB | inference images/s | inference ms/batch "
        "| inference peak MiB | anomaly map rel diff vs torch |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    )
    amap_ref: list[Tensor] = []
    for backend in ("torch", "fused"):
        if backend == "fused" and not status.available:
            report.add(f"| fused | unavailable ({cell(status.reason)}) | — | — | — | — | — | — |")
            continue
        try:
            report.add(model_row(backend, device, cfg, amap_ref))
            release(device)  # the model and its optimizer went with model_row's frame
        except Exception as exc:
            report.failures.append(f"model {backend}: {short_error(exc)}")
            report.add(f"| {backend} | **ERROR** ({cell(short_error(exc))}) | — | — | — | — | — | — |")
            release(device)
    report.add("")
