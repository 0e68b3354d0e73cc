# SPDX-License-Identifier: Apache-2.0
"""Training, testing and measuring for ``benchmarks/compare.py``: data, ``engine.fit``/``test``, memory, latency."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import math
import os
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchinfo import (
    count_gmacs,
    cpu_name,
    git_commit,
    interleaved_times,
    say,
)
from contenders import (
    METRICS,
    VARIANTS,
    Built,
    Settings,
    add_per_category_metrics,
    encoder_difference,
    model_input,
    tensor_fingerprint,
)


def _status_mb(key: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (NaN where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``), so RSS is comparable."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(reset_worked: bool) -> float:
    """RSS high-water mark since :func:`reset_peak_rss` (or, if it failed, over the process lifetime) in MiB."""
    peak = _status_mb("VmHWM") if reset_worked else math.nan
    if math.isnan(peak):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak


def machine_info() -> dict[str, Any]:
    """Versions and hardware, for the report."""
    import anomalib
    import timm
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "commit": git_commit(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset"),
    }


def interleaved_median_ms(runners: dict[str, Callable[[], Any]], repeats: int, warmups: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each runner, timed interleaved (:func:`benchinfo.interleaved_times`)."""
    return {key: 1000 * statistics.median(t) for key, t in interleaved_times(runners, repeats, warmups).items()}


def encoder_prefix(name: str) -> str:
    """Name prefix of the frozen encoder's parameters inside ``module.model``."""
    return "feature_extractor." if name == "Patchcore" else "encoder."


def count_params(module: Any, name: str) -> tuple[float, float]:
    """(all, outside the frozen encoder) parameters of ``module.model``, in millions."""
    params = dict(module.model.named_parameters())
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for k, p in params.items() if not k.startswith(encoder_prefix(name)))
    return total / 1e6, trainable / 1e6


@dataclass(frozen=True)
class DataSource:
    """Where the data comes from.

    Attributes:
        kind: ``embedded``, ``mvtec`` or ``visa``.
        root: Dataset root (for ``embedded``: the generated folder).
        categories: Categories to use.
    """

    kind: str
    root: Path
    categories: tuple[str, ...]

    def datamodule(self, categories: Sequence[str], settings: Settings) -> Any:
        """A fresh multi-class datamodule of ``categories`` (synthetic-anomaly validation split, no workers)."""
        from anomalib_mambaadv2.data import MultiClassMVTecAD, MultiClassVisa

        cls = MultiClassVisa if self.kind == "visa" else MultiClassMVTecAD
        return cls(
            root=self.root,
            categories=list(categories),
            train_batch_size=settings.batch_size,
            eval_batch_size=settings.batch_size,
            num_workers=0,
            seed=settings.seed,
        )


def resolve_data(args: argparse.Namespace, settings: Settings) -> DataSource:
    """Generate (or reuse) the embedded data, or check a local MVTec AD / VisA root; resolve the categories."""
    if args.mvtec or args.visa:
        kind, root = ("mvtec", Path(args.mvtec)) if args.mvtec else ("visa", Path(args.visa))
    else:
        from anomalib_mambaadv2.data import prepare_dataset

        s = settings
        root, reused = prepare_dataset(args.root, s.image_size, s.n_train, s.n_test_good, s.n_test_defect, s.seed)
        say(f"embedded data: {'reusing' if reused else 'generated'} {root}")
        kind = "embedded"
    probe = DataSource(kind, root, ()).datamodule(args.categories or [], settings)
    if not args.categories or args.categories == ["all"]:
        probe.requested_categories = "all"
    return DataSource(kind, root, tuple(probe.categories))


def split_fingerprint(datamodule: Any) -> str:
    """Hash of the sorted training and test image paths, with the validation set's size."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name in ("train_data", "test_data"):
        data = getattr(datamodule, name, None)
        paths = sorted(str(p) for p in data.samples.image_path) if data is not None else []
        digest.update(f"{name}:{len(paths)}:".encode())
        digest.update("\n".join(paths).encode())
    val = getattr(datamodule, "val_data", None)
    n_val = len(val) if val is not None else 0
    return f"{digest.hexdigest()[:10]}+val{n_val}"


@dataclass
class Trained:
    """One trained model of one unit (all categories, or one category)."""

    name: str
    built: Built
    categories: list[str]
    results: dict[str, float]
    train_s: float
    test_s: float
    peak_rss_mb: float
    rss_before_fit_mb: float
    peak_gpu_mb: float
    memory: str
    encoder: str
    encoder_diff: float
    split: str


def quiet_warnings() -> None:
    """Silence notes about things done on purpose (no workers, frozen encoder, no logger)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)\b")
    for message in (
        r".*does not have many workers.*",
        r".*module\(s\) in eval mode.*",
        r".*no logger configured.*",
        r".*infer the `batch_size`.*",
        r".*LeafSpec.*",
        r".*Checkpoint directory.*exists and is not empty.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def train_and_test(
    name: str,
    build: Callable[[], Built],
    source: DataSource,
    categories: Sequence[str],
    settings: Settings,
    state: dict[str, Any],
    probe: tuple[Any, Sequence[Any]],
    run_dir: Path,
    accelerator: str = "cpu",
    callbacks: Sequence[Any] = (),
) -> Trained:
    """Build one model, copy the shared encoder weights in, ``engine.fit`` then ``engine.test``; time both.

    ``probe`` is a normalised image batch and the reference encoder's features of it; the model's encoder must give
    the same features after training (``Trained.encoder_diff``). ``callbacks`` go to the Engine (the learning curve's).
    """
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    release_memory()
    seed_everything(settings.seed, workers=True, verbose=False)
    built = build()
    built.encoder.load_state_dict(state, strict=True)  # every tensor of the reference encoder, nothing missing
    seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = source.datamodule(categories, settings)
    epochs = built.epochs or settings.epochs
    add_per_category_metrics(built.module)  # MambaADv2 has it already; the peers get it the same way
    engine = Engine(  # as the demo's engine: validation (thresholds, normalisation) once, after the last epoch
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        default_root_dir=run_dir,
        logger=False,
        check_val_every_n_epoch=epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    on_gpu = accelerator != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()

    release_memory()
    rss_before = _status_mb("VmRSS")
    reset_worked = reset_peak_rss()
    start = time.perf_counter()
    engine.fit(model=built.module, datamodule=datamodule)
    train_s = time.perf_counter() - start
    peak = peak_rss_mb(reset_worked)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else math.nan
    start = time.perf_counter()
    results = engine.test(model=built.module, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - start
    built.module.cpu().eval()  # latency, multiply-adds and the encoder check run on the CPU
    results = {k: float(v) for k, v in results.items()}
    if len(datamodule.categories) == 1:  # one category: its row must equal the evaluator's own metrics
        category = datamodule.categories[0]
        for metric in METRICS:
            mine, overall = results.get(f"{category}/{metric}", math.nan), results.get(metric, math.nan)
            if not (math.isclose(mine, overall, abs_tol=1e-6) or (math.isnan(mine) and math.isnan(overall))):
                built.notes.append(f"{category}/{metric} {mine:.4f} differs from the evaluator's {overall:.4f}")
    if name == "Patchcore":
        bank = tuple(built.module.model.memory_bank.shape)
        built.notes.append(f"memory bank {bank[0]}×{bank[1] if len(bank) > 1 else 0}")
    return Trained(
        name=name,
        built=built,
        categories=list(datamodule.categories),
        results=results,
        train_s=train_s,
        test_s=test_s,
        peak_rss_mb=peak,
        rss_before_fit_mb=rss_before,
        peak_gpu_mb=peak_gpu,
        memory="VmHWM during fit (reset via clear_refs)" if reset_worked else "ru_maxrss (process lifetime)",
        encoder=tensor_fingerprint(built.encoder.state_dict()),
        encoder_diff=encoder_difference(built.encoder, *probe),
        split=split_fingerprint(datamodule),
    )


def measure_unit(trained: Sequence[Trained], settings: Settings) -> dict[str, dict[str, float]]:
    """Latency (interleaved), multiply-adds and parameters of the models trained together."""
    import torch

    x = model_input(settings)
    runners = {}
    for t in trained:
        module = t.built.module.eval()

        def run(module: Any = module) -> Any:
            with torch.no_grad():
                return module(x)

        runners[t.name] = run
    latency = interleaved_median_ms(runners, settings.latency_repeats)
    costs = {}
    for t in trained:
        module = t.built.module
        normalised = module.pre_processor(x) if module.pre_processor else x
        total, trainable = count_params(module, t.name)
        costs[t.name] = {
            "latency_ms": latency[t.name],
            "gmacs": count_gmacs(lambda module=module, normalised=normalised: module.model(normalised)),
            "params_m": total,
            "trainable_params_m": trainable,
        }
    return costs


def result_rows(t: Trained, costs: dict[str, float], mode: str, extra_notes: Sequence[str] = ()) -> list[dict]:
    """One CSV row per category and one for their mean."""
    rows = []
    notes = "; ".join([*t.built.notes, *extra_notes])
    for category in [*t.categories, "mean"]:
        row: dict[str, Any] = {"mode": mode, "model": t.name, "category": category}
        for metric in METRICS:
            row[metric] = t.results.get(f"{category}/{metric}", t.results.get(metric, math.nan))
        row.update(
            train_s=t.train_s, test_s=t.test_s, peak_rss_mb=t.peak_rss_mb, rss_before_fit_mb=t.rss_before_fit_mb,
            peak_gpu_mb=t.peak_gpu_mb,
            encoder=t.encoder, encoder_diff=t.encoder_diff, split=t.split, memory=t.memory, notes=notes, **costs,
        )  # fmt: skip
        rows.append(row)
    return rows


def ablation_rows(trained: Sequence[Trained], settings: Settings, variants: Sequence[str]) -> list[dict]:
    """Quality, decoder latency (interleaved) and multiply-adds of each MambaADv2 variant."""
    import torch

    x = model_input(settings)
    runners, feats = {}, {}
    for t in trained:
        net = t.built.module.model.eval()
        normalised = t.built.module.pre_processor(x)
        with torch.no_grad():
            feats[t.name] = net.encoder(normalised)

        def run(net: Any = net, f: Any = feats[t.name]) -> Any:
            with torch.no_grad():
                return net.decode(f)

        runners[t.name] = run
    latency = interleaved_median_ms(runners, settings.latency_repeats)
    rows = []
    for t, variant in zip(trained, variants, strict=True):
        net = t.built.module.model
        normalised = t.built.module.pre_processor(x)
        total, trainable = count_params(t.built.module, "MambaADv2")
        costs = {
            "decoder_latency_ms": latency[t.name],
            "decoder_gmacs": count_gmacs(lambda net=net, f=feats[t.name]: net.decode(f)),
            "model_gmacs": count_gmacs(lambda net=net, n=normalised: net(n)),
            "params_m": total,
            "trainable_params_m": trainable,
        }
        settings_text = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "all on, SAPS directions"
        for row in result_rows(t, costs, "ablation"):
            row = {k: v for k, v in row.items() if k not in {"mode", "model"}}
            rows.append({"variant": variant, **row, "settings": settings_text})
    return rows
