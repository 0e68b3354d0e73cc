# SPDX-License-Identifier: Apache-2.0
"""Embedded offline anomaly-detection dataset built from the texture photographs that scikit-image ships.

Three categories (``brick``, ``grass``, ``gravel``) come from ``skimage.data.brick()``, ``.grass()`` and
``.gravel()`` (512×512 grayscale photographs). Normal images are random crops of the photograph (resized with
antialiasing, flipped, rotated by multiples of 90°, with mild photometric jitter and sensor noise), converted to RGB
with a mild per-category tint (:mod:`.textures`). Test defects are drawn onto normal images (:mod:`.defects`):

* ``scratch``: a thin, tapered, curved dark or bright line (anti-aliased Bézier curve),
* ``hole``: a dark pit with a soft edge, darker towards its centre,
* ``foreign``: a patch of another category's texture pasted inside an irregular blob,
* ``stain``: a smooth colour / brightness change inside a smooth-noise-shaped blob.

Ground-truth masks are exact: a mask pixel is set if and only if the defect changed that pixel (changes of at most
``CHANGE_EPS`` grey levels are reverted to the clean value, so ``mask == (defective != clean).any(-1)``). The files
follow the MVTec AD layout, so ``anomalib.data.MVTecAD(root=root, category=...)`` and ``Folder`` read them::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect_type>/000.png
    root/<category>/ground_truth/<defect_type>/000_mask.png

Generation is deterministic (each image has its own random stream keyed by seed, category, split and index) and
cached through a manifest ``root/.embedded.json``.

Command line::

    python -m anomalib_mambaadv2.data.embedded --root datasets/embedded --size 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .defects import CHANGE_EPS, DEFECT_TYPES, DefectSample, render_defect_sample
from .textures import CATEGORIES, _check_category, render_normal_image

__all__ = [
    "CATEGORIES",
    "CHANGE_EPS",
    "DEFECT_TYPES",
    "MANIFEST_NAME",
    "DefectSample",
    "EmbeddedDatasetExistsError",
    "make_embedded_dataset",
    "prepare_dataset",
    "render_defect_sample",
    "render_normal_image",
]

MANIFEST_NAME = ".embedded.json"
GENERATOR_VERSION = 1


class EmbeddedDatasetExistsError(FileExistsError):
    """The target folder holds data that does not match the requested parameters (or was not made by this module)."""


# ----------------------------------------------------------------------------------------------------------------------
# Dataset on disk
# ----------------------------------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _expected_counts(n_train: int, n_test_good: int, n_test_defect: int) -> dict[str, int]:
    counts = {"train/good": n_train, "test/good": n_test_good}
    for k, defect in enumerate(DEFECT_TYPES):
        n = len(range(k, n_test_defect, len(DEFECT_TYPES)))
        if n:
            counts[f"test/{defect}"] = n
            counts[f"ground_truth/{defect}"] = n
    return counts


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _write_manifest(root: Path, params: dict[str, Any], complete: bool) -> None:
    manifest = {
        "generator": "anomalib_mambaadv2.data.embedded",
        "version": GENERATOR_VERSION,
        "params": params,
        "categories": list(params["categories"]),
        "counts": _expected_counts(params["n_train"], params["n_test_good"], params["n_test_defect"]),
        "complete": complete,
    }
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(root / MANIFEST_NAME)


def _files_present(root: Path, manifest: dict[str, Any]) -> bool:
    for category in manifest.get("categories", []):
        for sub, n in manifest.get("counts", {}).items():
            if sum(1 for _ in (root / category / sub).glob("*.png")) != n:
                return False
    return True


def _generate_category(root: Path, category: str, params: dict[str, Any]) -> None:
    size, seed = params["image_size"], params["seed"]
    base = root / category
    for sub in _expected_counts(params["n_train"], params["n_test_good"], params["n_test_defect"]):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(params["n_train"]):
        _save_png(render_normal_image(category, "train", i, size, seed), base / "train" / "good" / f"{i:03d}.png")
    for i in range(params["n_test_good"]):
        _save_png(render_normal_image(category, "test_good", i, size, seed), base / "test" / "good" / f"{i:03d}.png")
    for i in range(params["n_test_defect"]):
        sample = render_defect_sample(category, i, size, seed)
        name = f"{i // len(DEFECT_TYPES):03d}"
        _save_png(sample.image, base / "test" / sample.defect_type / f"{name}.png")
        _save_png(sample.mask.astype(np.uint8) * 255, base / "ground_truth" / sample.defect_type / f"{name}_mask.png")


def make_embedded_dataset(
    root: str | Path,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) the embedded texture dataset in MVTec AD layout under ``root``.

    The result is cached: a manifest ``root/.embedded.json`` records the parameters, and a later call with the same
    parameters returns at once without touching the files. Only the category folders named in that manifest are ever
    deleted; anything else under ``root`` is left alone.

    Args:
        root: Dataset root; ``root/<category>/...`` is written (``MVTecAD(root=root, category=...)`` reads it).
        image_size: Side of the square images in pixels (at least 32).
        n_train: Normal training images per category (``train/good``).
        n_test_good: Normal test images per category (``test/good``).
        n_test_defect: Defective test images per category, spread evenly over :data:`DEFECT_TYPES` in turn.
        categories: Subset of :data:`CATEGORIES` to write.
        seed: Non-negative seed; the same seed gives byte-identical files.
        overwrite: If ``root`` holds an embedded dataset made with other parameters, delete its category folders and
            regenerate. Without it such a mismatch raises :class:`EmbeddedDatasetExistsError`. A dataset whose
            parameters match is reused either way.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For invalid parameters.
        EmbeddedDatasetExistsError: If ``root`` holds a different embedded dataset and ``overwrite`` is false, or a
            category folder that this module did not create.
    """
    root = Path(root)
    categories = list(dict.fromkeys(categories))
    for category in categories:
        _check_category(category)
    if not categories:
        msg = "categories must name at least one of " + ", ".join(CATEGORIES)
        raise ValueError(msg)
    if int(image_size) < 32:
        msg = f"image_size must be at least 32, got {image_size}"
        raise ValueError(msg)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0 or seed < 0:
        msg = "n_train must be >= 1 and n_test_good, n_test_defect and seed must be >= 0"
        raise ValueError(msg)
    params = {
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "categories": categories,
        "seed": int(seed),
    }

    manifest = _read_manifest(root)
    ours: list[str] = []
    if manifest is not None:
        ours = [c for c in manifest.get("categories", []) if c in CATEGORIES]
        same = manifest.get("version") == GENERATOR_VERSION and manifest.get("params") == params
        if same and manifest.get("complete") and _files_present(root, manifest):
            return root
        if not same and not overwrite:
            msg = (
                f"{root} already holds an embedded dataset made with different parameters "
                f"({manifest.get('params')}, generator version {manifest.get('version')}); requested {params} "
                f"(version {GENERATOR_VERSION}). Pass overwrite=True to replace it, or choose another root."
            )
            raise EmbeddedDatasetExistsError(msg)
    foreign = [c for c in categories if (root / c).exists() and c not in ours]
    if foreign:
        msg = (
            f"{root} already contains folder(s) {foreign} that were not created by make_embedded_dataset "
            f"(no matching {MANIFEST_NAME}); refusing to write over them. Choose another root."
        )
        raise EmbeddedDatasetExistsError(msg)

    for category in ours:  # only folders this module made, as recorded in its manifest
        shutil.rmtree(root / category, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(root, params, complete=False)
    for category in categories:
        _generate_category(root, category, params)
    _write_manifest(root, params, complete=True)
    return root


def prepare_dataset(
    root: str | Path, image_size: int, n_train: int, n_test_good: int, n_test_defect: int, seed: int = 0
) -> tuple[Path, bool]:
    """Write the dataset of these parameters into its own sub-folder of ``root``, or reuse it.

    Each parameter set gets its sub-folder (``128px_n240-20-30_seed0``), so runs with other sizes never clash.

    Returns:
        The dataset root (MVTec AD layout) and whether it was reused.
    """
    path = Path(root) / f"{image_size}px_n{n_train}-{n_test_good}-{n_test_defect}_seed{seed}"
    manifest = path / MANIFEST_NAME
    before = manifest.read_text(encoding="utf-8") if manifest.is_file() else None
    make_embedded_dataset(
        path, image_size=image_size, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect, seed=seed
    )
    return path, before is not None and before == manifest.read_text(encoding="utf-8") and '"complete": true' in before


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: generate the dataset and print its path and file counts."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_mambaadv2.data.embedded",
        description="Generate the embedded texture anomaly dataset (MVTec AD layout) from scikit-image's photographs.",
    )
    parser.add_argument("--root", default="datasets/embedded", help="output folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=60, help="normal training images per category")
    parser.add_argument("--n-test-good", type=int, default=20, help="normal test images per category")
    parser.add_argument("--n-test-defect", type=int, default=30, help="defective test images per category")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an embedded dataset with other parameters")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        root = make_embedded_dataset(
            args.root,
            image_size=args.size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_defect=args.n_test_defect,
            categories=args.categories,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (EmbeddedDatasetExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    elapsed = time.perf_counter() - start
    print(f"{root.resolve()}  ({elapsed:.1f} s)")
    counts = _expected_counts(args.n_train, args.n_test_good, args.n_test_defect)
    for category in dict.fromkeys(args.categories):
        parts = ", ".join(f"{sub}: {n}" for sub, n in counts.items() if not sub.startswith("ground_truth"))
        print(f"  {category}: {parts}")


if __name__ == "__main__":
    main()
