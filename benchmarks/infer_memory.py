# SPDX-License-Identifier: Apache-2.0
"""Memory of batch inference: does the process RSS stay flat over thousands of images?

Usage::

    python benchmarks/infer_memory.py                       # 2000 images, tiny MambaADv2, report in docs/benchmarks/
    python benchmarks/infer_memory.py --images 500 --out /tmp/infer_memory.md
    python benchmarks/infer_memory.py --model results/.../openvino/model.xml --overwrite

Generates ``--images`` PNGs (64–128 px, varied sizes; textures, noise, gradients, bright "defects"; RGB, gray,
RGBA, palette, 16-bit gray) in a temporary folder and runs batch inference as a user does, per runtime (ONNX Runtime;
OpenVINO with ``INFERENCE_PRECISION_HINT`` f32 set explicitly, as ``ExportedModel`` does by default) and path:

- ``run``: :func:`anomalib_mambaadv2.deploy.run`, what ``anomalib-mambaadv2 infer`` calls (CSV + overlay PNGs);
- ``predict``: ``ExportedModel.predict(load_rgb(path))`` in a loop, keeping only the scores.

The process RSS (psutil, else ``VmRSS`` of ``/proc/self/status``) is sampled every ``--every`` images; growth is the
RSS at the end minus the RSS after ``--warmup`` images (the first ones page in library code and size the runtimes'
arenas), against a 50 MB bound (1 MB = 2**20 bytes); the slope is a least-squares fit after warm-up. The default
model is a real, untrained MambaADv2 (resnet18, ``pre_trained=False``, depths 1 1 1 1, 64 px) exported by the
package's ``to_onnx`` and converted to an f32 IR as ``to_openvino`` does, in a child process: the measuring process
never imports torch (a deployment does not). ``--tiny-graph``: a hand-made ONNX graph with the exported models'
input/output names (used by the test). The report (default ``docs/benchmarks/infer_memory.md``) is never replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from benchinfo import OutputExistsError, claim_output, cpu_name, git_commit, load_average
from PIL import Image

try:
    import psutil
except ImportError:  # pragma: no cover - then /proc/self/status
    psutil = None

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "infer_memory.md"
BOUND_MB = 50.0
RUNTIMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
MODES = ("run", "predict")
TINY = {"backbone": "resnet18", "pre_trained": False, "depths": [1, 1, 1, 1]}


def rss_mb() -> float:
    """Resident set size of this process in MB (2**20 bytes): psutil where installed, else ``VmRSS``."""
    if psutil is not None:
        return psutil.Process().memory_info().rss / 2**20
    status = Path("/proc/self/status").read_text().splitlines()
    return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")), float("nan"))


def make_images(folder: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write ``n`` varied PNGs into ``folder``; return the count per PIL mode."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modes: dict[str, int] = {}
    for i in range(n):
        h, w = (int(v) for v in rng.integers(64, 129, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        kind = i % 4
        if kind == 0:  # sinusoidal texture
            f, phase = rng.uniform(0.1, 0.4), rng.uniform(0, 2 * np.pi, 3)
            img = 127 + 80 * np.stack([np.sin(f * (xx + 2 * yy) * (1 + 0.3 * k) + phase[k]) for k in range(3)], -1)
        elif kind == 1:  # noise
            img = rng.normal(128, 40, (h, w, 3))
        elif kind == 2:  # gradient
            img = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255
        else:  # flat with a bright defect
            img = np.full((h, w, 3), rng.uniform(60, 180))
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0 : y0 + h // 4, x0 : x0 + w // 4] = (250, 30, 30)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if i % 20 == 7:
            pil = Image.fromarray((np.asarray(pil.convert("L"), np.uint16) * 257).astype(np.uint16))  # 16-bit gray
        elif i % 7 == 3:
            pil = pil.convert("L")
        elif i % 11 == 5:
            pil.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        elif i % 13 == 9:
            pil = pil.convert("P")
        pil.save(folder / f"img_{i:05d}.png")
        modes[pil.mode] = modes.get(pil.mode, 0) + 1
    return modes


def tiny_graph(folder: Path, size: int = 64) -> dict[str, Path]:
    """A hand-made ONNX graph with the exported models' interface (map = mean of RGB, score = max) and its f32 IR."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper

    node, value, f32 = helper.make_node, helper.make_tensor_value_info, TensorProto.FLOAT
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [
        node("ReduceMean", ["input"], ["anomaly_map"], axes=[1], keepdims=1),
        node("ReduceMax", ["anomaly_map"], ["score4"], axes=[2, 3], keepdims=1),
        node("Reshape", ["score4", "shape"], ["pred_score"]),
        node("GreaterOrEqual", ["pred_score", "half"], ["pred_label"]),
    ]
    outputs = [value("pred_score", f32, [1, 1]), value("pred_label", TensorProto.BOOL, [1, 1])]
    outputs.append(value("anomaly_map", f32, [1, 1, size, size]))
    consts = [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 1]), helper.make_tensor("half", f32, [], [0.5])]
    graph = helper.make_graph(nodes, "tiny", [value("input", f32, [1, 3, size, size])], outputs, consts)
    onnx_path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), onnx_path)
    xml_path = folder / "model.xml"
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    return {"onnxruntime": onnx_path, "openvino": xml_path}


def export_child(folder: Path, size: int) -> None:
    """In the child process: export an untrained tiny MambaADv2 to ONNX and an f32 IR; write ``paths.json``."""
    import openvino as ov
    import torch

    from anomalib_mambaadv2 import MambaADv2

    start = time.perf_counter()
    torch.manual_seed(0)
    onnx_path = MambaADv2(**TINY, image_size=size).eval().to_onnx(folder, input_size=(size, size))
    xml_path = folder / "openvino" / "model.xml"
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    paths = {"onnxruntime": str(onnx_path), "openvino": str(xml_path), "seconds": time.perf_counter() - start}
    (folder / "paths.json").write_text(json.dumps(paths), encoding="utf-8")


def export_mambaadv2(folder: Path, size: int) -> tuple[dict[str, Path], float]:
    """Run :func:`export_child` in a fresh interpreter (output in ``folder/export.log``); its paths and seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with (folder / "export.log").open("w", encoding="utf-8") as log:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--export-only", str(folder), "--size", str(size)]
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    paths = json.loads((folder / "paths.json").read_text(encoding="utf-8"))
    return {k: Path(paths[k]) for k in RUNTIMES}, float(paths["seconds"])


@dataclass
class Measurement:
    """RSS samples of one (runtime, path) pass over the images."""

    runtime: str
    mode: str
    precision: str = ""
    samples: list[tuple[int, float]] = field(default_factory=list)  # (images done, RSS MB)
    seconds: float = 0.0
    warmup: int = 100

    def rss_at(self, count: int) -> float:
        """RSS of the first sample taken after ``count`` images."""
        return next(rss for done, rss in self.samples if done >= count)

    @property
    def images(self) -> int:
        """Images predicted."""
        return self.samples[-1][0]

    @property
    def growth(self) -> float:
        """RSS at the end minus RSS after warm-up, in MB."""
        return self.samples[-1][1] - self.rss_at(self.warmup)

    @property
    def peak(self) -> float:
        """Largest RSS sample, in MB."""
        return max(rss for _, rss in self.samples)

    @property
    def slope(self) -> float:
        """Least-squares RSS growth after warm-up, MB per 1000 images."""
        x, y = np.array([(d, r) for d, r in self.samples if d >= self.warmup], dtype=np.float64).T
        return float(np.polyfit(x, y, 1)[0] * 1000) if len(x) > 1 else float("nan")


class SampledModel:
    """Wraps an ``ExportedModel`` for :func:`deploy.run`: records the RSS before every ``every``-th prediction."""

    def __init__(self, model: Any, record: Callable[[], None]) -> None:
        self.model, self.bit_depth, self._record = model, model.bit_depth, record

    def predict(self, image: Any) -> dict:
        """Record, then predict."""
        self._record()
        return self.model.predict(image)


def measure(
    model_path: Path, images: Sequence[Path], work: Path, mode: str, every: int = 50, warmup: int = 100
) -> Measurement:
    """Predict every image of ``images`` with ``model_path`` along ``mode`` ("run" or "predict"), sampling RSS.

    ``run`` writes the CSV and overlays under ``work`` (removed afterwards); OpenVINO runs with the f32 hint.
    """
    from anomalib_mambaadv2.deploy import ExportedModel, run
    from anomalib_mambaadv2.image_io import load_rgb

    runtime = "openvino" if model_path.suffix == ".xml" else "onnxruntime"
    result = Measurement(runtime, mode, warmup=warmup)
    gc.collect()
    model = ExportedModel(model_path, precision="f32")
    result.precision = model.precision
    done = 0

    def record() -> None:
        nonlocal done
        if done % every == 0:
            result.samples.append((done, rss_mb()))
        done += 1

    start, output, failures, scores = time.perf_counter(), work / f"predictions_{runtime}", [], []
    if mode == "run":
        failures = run(SampledModel(model, record), list(images), images[0].parent, output, progress=False)
    else:
        for path in images:
            record()
            scores.append(model.predict(load_rgb(path))["score"])
    result.seconds = time.perf_counter() - start
    result.samples.append((done, rss_mb()))
    shutil.rmtree(output, ignore_errors=True)
    if failures:
        raise RuntimeError(f"{len(failures)} images failed: {failures[:3]}")
    del model
    return result


def report(results: Sequence[Measurement], info: dict[str, Any], bound: float = BOUND_MB) -> str:
    """The markdown report."""
    import onnxruntime
    import openvino
    import PIL

    worst = max(results, key=lambda m: m.growth)
    verdict = "PASS" if worst.growth <= bound else "FAIL"
    rss_with = f"psutil {psutil.__version__}" if psutil else "/proc/self/status VmRSS"
    modes = ", ".join(f"{mode} {count}" for mode, count in sorted(info["modes"].items()))
    lines = [
        f"# Batch-inference memory over {info['images']} images",
        "",
        f"Run {info['date']} with:\n\n```bash\n{' '.join(['python benchmarks/infer_memory.py', *info['argv']])}\n```\n",
        f"- git commit: {info['git']}",
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable); ONNX Runtime "
        "and OpenVINO with their default thread pools (as `ExportedModel` creates them)",
        f"- Python {platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, openvino {openvino.__version__}; RSS read with {rss_with}",
        f"- model: {info['model']}",
        f"- images: {info['images']} PNG, 64–128 px per side (random sizes), modes: {modes}",
        f"- RSS sampled every {info['every']} images; growth = RSS at the end − RSS after the first {info['warmup']} "
        "images (warm-up); slope: least-squares fit after warm-up; 1 MB = 2**20 bytes",
        f"- load average (1/5/15 min) at start {info['load_start']}, at end {info['load_end']}",
        "",
        "| runtime | precision | path | RSS after warm-up (MB) | RSS at end (MB) | growth (MB) | peak (MB) "
        "| slope (MB / 1000 img) | img/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| {RUNTIMES[m.runtime]} | {m.precision} | {m.mode} | {m.rss_at(m.warmup):.1f} | {m.samples[-1][1]:.1f} "
            f"| {m.growth:+.1f} | {m.peak:.1f} | {m.slope:+.2f} | {m.images / m.seconds:.1f} |"
        )
    lines += [
        f"\n**{verdict}**: largest growth after warm-up {worst.growth:+.1f} MB ({RUNTIMES[worst.runtime]}, "
        f"{worst.mode}), bound ≤ {bound:.0f} MB.\n",
        "Paths: `run` is `anomalib_mambaadv2.deploy.run` (what `anomalib-mambaadv2 infer` calls: CSV and one overlay "
        "PNG per image); `predict` is `ExportedModel.predict(load_rgb(path))` in a loop keeping the scores. The "
        "passes run one after another in one process (no torch imported), each with a fresh `ExportedModel`.\n",
        "RSS trace (MB, about ten evenly spaced samples per pass):\n",
    ]
    for m in results:
        step = max(1, len(m.samples) // 10)
        trace = ", ".join(f"{rss:.0f}" for _, rss in [*m.samples[:-1:step], m.samples[-1]])
        lines.append(f"- {RUNTIMES[m.runtime]} {m.mode}: {trace}")
    lines += ["", f"Wall time of the run: {info['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/infer_memory.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=2000, help="number of generated images (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=100, help="images before the baseline RSS (default %(default)s)")
    parser.add_argument("--every", type=int, default=50, help="sample the RSS every N images (default %(default)s)")
    parser.add_argument("--model", type=Path, help="an exported model.xml or model.onnx (default: export a tiny one)")
    parser.add_argument("--tiny-graph", action="store_true", help="a hand-made ONNX graph instead of MambaADv2")
    parser.add_argument("--size", type=int, default=64, help="input size of the exported model (default %(default)s)")
    parser.add_argument("--runtimes", default="onnxruntime,openvino", help="comma-separated (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="images, exports and predictions (default: temporary, removed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--export-only", type=Path, help=argparse.SUPPRESS)  # the child process of the export
    args = parser.parse_args(argv)
    args.runtime_list = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if unknown := set(args.runtime_list) - set(RUNTIMES):
        parser.error(f"unknown runtime(s) {sorted(unknown)}; choose from {', '.join(RUNTIMES)}")
    if args.every < 1 or args.warmup % args.every or not 0 <= args.warmup < args.images:
        parser.error("--warmup must be a multiple of --every and below --images")
    if args.model is not None and args.model.suffix not in {".xml", ".onnx"}:
        parser.error(f"--model must be a model.xml or model.onnx, got {args.model}")
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the images, measure every (runtime, path), write the report; 0 if within the bound, else 1."""
    parser, args = parse_args(argv)
    if args.export_only:
        export_child(args.export_only, args.size)
        return 0
    try:
        claim_output(args.out, args.overwrite)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")
    wall = time.perf_counter()
    load_start = load_average()
    temp = None if args.workdir else tempfile.mkdtemp(prefix="infer_memory_")
    work = (args.workdir or Path(temp)).resolve()
    try:
        print(f"infer memory: generating {args.images} images in {work / 'images'}", flush=True)
        modes = make_images(work / "images", args.images)
        images = sorted((work / "images").glob("*.png"))
        if args.model:
            runtime = "openvino" if args.model.suffix == ".xml" else "onnxruntime"
            models, described = {runtime: args.model}, f"`{args.model}` (given)"
        elif args.tiny_graph:
            models = tiny_graph(work / "model", args.size)
            described = f"hand-made ONNX graph, {args.size}×{args.size} (map = mean of RGB, score = max; no network)"
        else:
            print("exporting a tiny untrained MambaADv2 (child process) …", flush=True)
            models, seconds = export_mambaadv2(work / "model", args.size)
            described = (
                f"MambaADv2({', '.join(f'{k}={v!r}' for k, v in TINY.items())}, image_size={args.size}), untrained; "
                f"`to_onnx` + f32 IR (`ov.convert_model`, `compress_to_fp16=False`), exported in {seconds:.0f} s"
            )
        results = []
        for runtime in (r for r in args.runtime_list if r in models):
            for mode in MODES:
                m = measure(models[runtime], images, work, mode, args.every, args.warmup)
                results.append(m)
                print(f"  {RUNTIMES[runtime]} {mode}: growth {m.growth:+.1f} MB, peak {m.peak:.1f} MB, "
                      f"{m.images / m.seconds:.1f} img/s", flush=True)  # fmt: skip
        if not results:
            parser.exit(2, f"error: no runtime of {args.runtime_list} can run {list(models.values())}\n")
        info = dict(images=args.images, warmup=args.warmup, every=args.every, modes=modes, model=described,
                    git=git_commit(), argv=list(sys.argv[1:] if argv is None else argv), load_start=load_start,
                    date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), wall_s=time.perf_counter() - wall,
                    load_end=load_average())  # fmt: skip
        text = report(results, info)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"\n{text}report written to {args.out}", flush=True)
        return 0 if max(m.growth for m in results) <= BOUND_MB else 1
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
