# SPDX-License-Identifier: Apache-2.0
"""Batch inference with an exported MambaADv2 model — OpenVINO or ONNX Runtime, no PyTorch needed.

The exported graph (``anomalib export`` / ``engine.export``) contains Anomalib's pre-processing (resize +
normalisation), the network and the post-processing (score normalisation and thresholds), so the runtime only needs
RGB pixels in [0, 1] at the export size. Normalised scores are in [0, 1] and 0.5 is the decision threshold.

Command line::

    anomalib-mambaadv2 infer --model results/.../openvino/model.xml --input images/ --output predictions/
    python -m anomalib_mambaadv2.deploy --model model.onnx --input images/ --output predictions/

writes ``predictions/predictions.csv`` (path, score, label) and one heatmap overlay PNG per image. An unreadable
image is reported by name and skipped; the command exits with status 1 at the end if any image failed. Existing
outputs are never overwritten unless ``--overwrite`` is given. If the output cannot be written (read-only folder,
full disk) the command stops with status 2 and leaves no ``predictions.csv``: the CSV is written under a temporary
name and renamed only when every row is on disk. 16-bit images are scaled, not clipped (``--bit-depth`` for 10-,
12- or 14-bit sensors; see :mod:`anomalib_mambaadv2.image_io`).

Python::

    from anomalib_mambaadv2.deploy import ExportedModel
    model = ExportedModel("model.xml")                  # or "model.onnx"
    result = model.predict(rgb_uint8_array)             # {"score": float, "label": bool, "anomaly_map": HxW}

Per-category thresholds (a model trained with a multi-class datamodule; see
:mod:`anomalib_mambaadv2.category_thresholds`): every export writes ``category_thresholds.json`` next to the model
file, and ``ExportedModel(path, category="bottle")`` / ``infer --category bottle`` labels with that category's
thresholds (``label = score >= image threshold``, and a ``"mask"``: ``anomaly_map >= pixel threshold``)::

    {"version": 1, "categories": {"bottle": {"image": 0.47, "pixel": 0.53, ...}, ...}, "normalisation": {...}}
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_SUFFIXES
from .image_io import load_rgb, to_rgb

CSV_NAME = "predictions.csv"
FIELDS = {"pred_score", "pred_label", "anomaly_map", "pred_mask"}
OVERLAY_DIR = "overlays"
THRESHOLDS_FILE = "category_thresholds.json"
THRESHOLDS_VERSION = 1


def precision_name(hint: object) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` property (an ``ov.Type``) as a name such as ``"f32"`` or ``"bf16"``."""
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def load_category_thresholds(model_path: str | Path, category: str) -> dict[str, float]:
    """The image and pixel thresholds of ``category`` from the ``category_thresholds.json`` next to ``model_path``.

    Raises:
        ValueError: If the file is missing, unreadable or of another version, or does not know ``category``; the
            message names the known categories and the fix.
    """
    path = Path(model_path).parent / THRESHOLDS_FILE
    if not path.is_file():
        msg = (
            f"category {category!r} asked for, but there is no {THRESHOLDS_FILE} next to {model_path}: this export has "
            "no per-category thresholds. Train with a multi-class datamodule (anomalib_mambaadv2.data.MultiClass*) "
            "and export again (the file is written next to model.onnx / model.xml), or leave out the category to use "
            "the global threshold."
        )
        raise ValueError(msg)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{path} cannot be read ({err}); export the model again to rewrite it."
        raise ValueError(msg) from err
    version = document.get("version") if isinstance(document, dict) else None
    if version != THRESHOLDS_VERSION:
        msg = f"{path} has version {version!r}; this runtime reads version {THRESHOLDS_VERSION}: export it again."
        raise ValueError(msg)
    categories = document.get("categories") or {}
    if category not in categories:
        msg = (
            f"Unknown category {category!r}: {path} has thresholds for {sorted(categories)}. Pass one of those, or "
            "leave out the category to use the global threshold."
        )
        raise ValueError(msg)
    entry = categories[category]
    return {level: float(entry[level]) for level in ("image", "pixel")}


class ExportedModel:
    """An exported MambaADv2 (or any Anomalib image model) run with OpenVINO (``.xml``) or ONNX Runtime (``.onnx``).

    Args:
        path: ``model.xml`` (OpenVINO IR) or ``model.onnx``.
        device: OpenVINO device (``"CPU"``, ``"GPU"``, …); ignored for ONNX.
        precision: OpenVINO inference precision hint: ``"f32"`` (exact), ``"bf16"``/``"f16"`` (faster where the
            hardware supports it), or None for OpenVINO's default (bf16 on CPUs that support it).
        bit_depth: Significant bits of 16-bit input images (e.g. 12); default: the full 16-bit range.
        category: Label with this category's thresholds from ``category_thresholds.json`` next to the model (a
            multi-class model); None: the exported model's global threshold.

    Raises:
        FileNotFoundError: If the model file does not exist.
        ValueError: For an unsupported model, or a category the model has no thresholds for (see
            :func:`load_category_thresholds`).
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        precision: str | None = "f32",
        bit_depth: int | None = None,
        category: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.bit_depth = bit_depth
        if not self.path.is_file():
            msg = f"Exported model {self.path} not found (expected model.xml or model.onnx from `anomalib export`)."
            raise FileNotFoundError(msg)
        self.category = category
        self.thresholds = None if category is None else load_category_thresholds(self.path, category)
        if self.path.suffix == ".xml":
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
            compiled = ov.Core().compile_model(str(self.path), device, config)
            self.precision = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))  # what it runs with
            # an output can carry several tensor names (e.g. "amax" and "pred_score"); prefer Anomalib's field names
            self._outputs = [
                next((n for n in sorted(o.get_names()) if n in FIELDS), o.get_any_name()) for o in compiled.outputs
            ]
            shape = compiled.inputs[0].get_partial_shape()
            self._run = lambda x: [np.asarray(v) for v in compiled(x).values()]
        elif self.path.suffix == ".onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.precision = "f32"
            self._outputs = [o.name for o in session.get_outputs()]
            shape = session.get_inputs()[0].shape
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})
        else:
            msg = f"Unsupported model file {self.path.name}: use the exported model.xml (OpenVINO) or model.onnx."
            raise ValueError(msg)
        dims = [d.get_length() if hasattr(d, "is_static") and d.is_static else d for d in shape]
        h, w = dims[-2], dims[-1]
        if not (isinstance(h, int) and isinstance(w, int)):
            msg = f"{self.path.name} has a dynamic input size {dims}; export it with a fixed input size."
            raise ValueError(msg)
        self.input_size = (h, w)

    def preprocess(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Image (PIL image or array, any size and depth; see :func:`to_rgb`) → (1, 3, h, w) float32 in [0, 1].

        Raises:
            ValueError: For float images, NaN/Inf pixels, or values beyond the bit depth (see :func:`to_rgb`).
        """
        pil = to_rgb(image, bit_depth=self.bit_depth).resize(self.input_size[::-1], Image.BILINEAR)
        return (np.asarray(pil, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]

    def predict_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch of model inputs, ``(N, 3, h, w)`` float32 in [0, 1] at :attr:`input_size`.

        Returns:
            ``{"score": (N,) float32, "label": (N,) bool, "anomaly_map": (N, h, w) float32}``, and with a
            ``category`` also ``"mask"`` ((N, h, w) bool): labels ``score >= `` its image threshold and masks
            ``anomaly_map >= `` its pixel threshold; without one the exported model's own labels.

        Raises:
            ValueError: If ``images`` is not a batch of 3-channel images at the model's input size.
        """
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            msg = (
                f"expected a batch of shape (N, 3, {self.input_size[0]}, {self.input_size[1]}), got {x.shape}; "
                "make each image with preprocess() (or use predict() for single images of any size)"
            )
            raise ValueError(msg)
        out = dict(zip(self._outputs, self._run(x), strict=True))
        scores = np.asarray(out["pred_score"], np.float32).reshape(len(x))
        maps = np.asarray(out["anomaly_map"], np.float32)
        result = {"score": scores, "anomaly_map": maps.reshape(len(x), *maps.shape[-2:])}
        if self.thresholds is not None:
            result["label"] = scores.astype(np.float64) >= self.thresholds["image"]
            result["mask"] = result["anomaly_map"] >= np.float32(self.thresholds["pixel"])
        elif "pred_label" in out:
            result["label"] = np.asarray(out["pred_label"]).reshape(len(x)).astype(bool)
        else:
            result["label"] = scores.astype(np.float64) >= 0.5
        return result

    def predict(self, image: np.ndarray | Image.Image) -> dict:
        """Score one image: ``{"score": float, "label": bool, "anomaly_map": (h, w) float32}``.

        With a ``category`` the label is ``score >= `` its image threshold and the result has a ``"mask"`` as well:
        ``anomaly_map >= `` its pixel threshold ((h, w) bool).
        """
        first = {name: values[0] for name, values in self.predict_batch(self.preprocess(image)).items()}
        return first | {"score": float(first["score"]), "label": bool(first["label"])}


def _jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map of values in [0, 1] → uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a heatmap of ``anomaly_map`` (normalised scores, 0.5 = threshold) over ``image``."""
    heat = Image.fromarray(_jet(anomaly_map)).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class OutputError(OSError):
    """The predictions could not be written (read-only folder, full disk, …)."""


def run(model: ExportedModel, inputs: Sequence[Path], root: Path, output: Path, progress: bool = True) -> list[str]:
    """Predict every image, write the CSV and overlays; return the failures as messages.

    The CSV is written as ``predictions.csv.partial`` and renamed when complete, so an interrupted run never leaves a
    ``predictions.csv`` that looks finished.

    Raises:
        OutputError: An output file could not be written; the partial CSV is removed.
    """
    from tqdm import tqdm

    failures = []
    final, partial = output / CSV_NAME, output / (CSV_NAME + ".partial")
    try:
        (output / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
        with partial.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "score", "label"])
            for path in tqdm(inputs, desc="Predicting", unit="img", disable=not progress):
                try:
                    image = load_rgb(path, bit_depth=model.bit_depth)
                except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
                    failures.append(f"{path}: cannot read image ({err})")
                    print(f"error: {path}: cannot read image ({err}); skipped", file=sys.stderr)
                    continue
                result = model.predict(image)
                rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
                writer.writerow([str(rel), f"{result['score']:.6f}", "anomalous" if result["label"] else "normal"])
                target = output / OVERLAY_DIR / rel.with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                overlay(image, result["anomaly_map"]).save(target)
            f.flush()
        partial.replace(final)
    except OSError as err:
        partial.unlink(missing_ok=True)
        msg = f"cannot write the predictions under {output}: {err}"
        raise OutputError(msg) from err
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="anomalib-mambaadv2 infer", description="Batch inference with an exported model (OpenVINO or ONNX)."
    )
    parser.add_argument("--model", required=True, type=Path, help="exported model.xml (OpenVINO) or model.onnx")
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for predictions.csv and overlays/")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    parser.add_argument("--precision", default="f32", help="OpenVINO precision hint: f32 (default), bf16, f16, auto")
    parser.add_argument(
        "--bit-depth", type=int, help="significant bits of 16-bit images, e.g. 12 (default: full 16-bit range)"
    )
    parser.add_argument(
        "--category", help="label with this category's thresholds (category_thresholds.json next to the model)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if not args.input.exists():
        parser.error(f"input {args.input} does not exist")
    inputs = [args.input] if args.input.is_file() else list_images(args.input)
    if not inputs:
        parser.error(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {args.input}")
    existing = [p for p in (args.output / CSV_NAME, args.output / OVERLAY_DIR) if p.exists()]
    if existing and not args.overwrite:
        parser.error(f"{', '.join(map(str, existing))} already exist; pass --overwrite to replace them")
    try:
        model = ExportedModel(
            args.model,
            device=args.device,
            precision=None if args.precision == "auto" else args.precision,
            bit_depth=args.bit_depth,
            category=args.category,
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    root = args.input if args.input.is_dir() else args.input.parent
    try:
        failures = run(model, inputs, root, args.output, progress=not args.no_progress)
    except OutputError as err:
        print(f"error: {err}; no predictions.csv was written, inputs are untouched", file=sys.stderr)
        return 2
    done = len(inputs) - len(failures)
    print(f"{done} of {len(inputs)} images predicted; results in {args.output / CSV_NAME}")
    if failures:
        print(f"{len(failures)} image(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
