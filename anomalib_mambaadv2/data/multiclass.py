# SPDX-License-Identifier: Apache-2.0
"""Unified multi-class datamodules: one model trained on the normal images of several categories at once.

MambaAD's setting (and the one papers report) is one model for all categories of a data set, tested on all their
test images and reported per category. Anomalib 2.7's MVTecAD, Visa and Folder datamodules hold one category each;
these datamodules concatenate them and keep every sample's category (:meth:`MultiClassDataModule.category_of`).

Validation split: by default ``val_split_mode="synthetic"``: a held-out 10 % of the *normal training* images, half of
them given synthetic anomalies (Anomalib's Perlin-noise generator). The post-processor's image and pixel thresholds
and its score normalisation are fitted there, never on test labels; the test set stays whole. The reported metrics
(AUROC, AUPR, F1Max, AUPRO) do not depend on those thresholds.

Nothing here downloads: a missing root is an error that names the path.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from . import IMAGE_SUFFIXES


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


class MultiClassDataModule(AnomalibDataModule):
    """Base class: the union of per-category datasets, with each sample's category kept.

    Subclasses say where a category lives (:meth:`category_root`), which categories a root holds
    (:meth:`available_categories`) and how to build one category's dataset (:meth:`make_dataset`).

    Args:
        root: Data set root.
        categories: ``"all"`` or a list of category names.
        train_batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: Data loader workers.
        train_augmentations: Augmentations of training images.
        val_augmentations: Augmentations of validation images.
        test_augmentations: Augmentations of test images.
        augmentations: Augmentations for every split without its own.
        val_split_mode: How the validation set is made (default: synthetic anomalies on held-out normal images).
        val_split_ratio: Fraction of training images held out for validation.
        seed: Seed of the splits.
    """

    def __init__(
        self,
        root: str | Path,
        categories: str | Sequence[str] = "all",
        train_batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.SYNTHETIC,
        val_split_ratio: float = 0.1,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = Path(root)
        self.requested_categories = categories
        self.category = "multiclass"  # results land in <results>/<model>/<datamodule>/multiclass/…

    # ---- what subclasses provide ----------------------------------------------------------------------------------
    def available_categories(self) -> list[str]:
        """Categories present under the root."""
        raise NotImplementedError

    def category_root(self, category: str) -> Path:
        """Folder holding one category."""
        return self.root / category

    def make_dataset(self, category: str, split: Split) -> AnomalibDataset:
        """One category's dataset for ``split``."""
        raise NotImplementedError

    # ---- shared logic ---------------------------------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        """Resolved category list; unknown names raise a ValueError naming the valid ones."""
        if not self.root.is_dir():
            msg = f"Dataset root {self.root} does not exist; point `root` at your local copy (nothing is downloaded)."
            raise FileNotFoundError(msg)
        available = self.available_categories()
        if not available:
            msg = f"No categories found under {self.root} (expected one folder per category with its images)."
            raise FileNotFoundError(msg)
        if isinstance(self.requested_categories, str):
            if self.requested_categories == "all":
                return available
            requested = [self.requested_categories]
        else:
            requested = list(self.requested_categories)
        unknown = [c for c in requested if c not in available]
        if unknown:
            msg = (
                f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} under {self.root}; valid: {available}."
            )
            raise ValueError(msg)
        return requested

    def prepare_data(self) -> None:
        """Check that every requested category is there (no download)."""
        for category in self.categories:
            folder = self.category_root(category)
            if not _has_images(folder):
                msg = f"Category {category!r} has no images under {folder}."
                raise FileNotFoundError(msg)

    def _setup(self, _stage: str | None = None) -> None:
        self.prepare_data()
        train, test = [], []
        for category in self.categories:
            train_data = self.make_dataset(category, Split.TRAIN)
            if len(train_data) == 0:
                msg = f"Category {category!r} has no training images under {self.category_root(category)}."
                raise FileNotFoundError(msg)
            train.append(train_data)
            test.append(self.make_dataset(category, Split.TEST))
        self.train_data = functools.reduce(operator.add, train)
        self.test_data = functools.reduce(operator.add, test)

    def category_of(self, image_path: str | Path) -> str:
        """Category of a sample from its path (the category folder it lies in)."""
        if getattr(self, "_category_roots", None) is None:
            self._category_roots = {c: self.category_root(c).resolve() for c in self.categories}
        path = Path(image_path).resolve()
        for category, folder in self._category_roots.items():
            if path.is_relative_to(folder):
                return category
        msg = f"{image_path} lies in none of the categories {list(self._category_roots)} under {self.root}."
        raise ValueError(msg)


class MultiClassMVTecAD(MultiClassDataModule):
    """MVTec AD (or any MVTec-layout root, such as the embedded demo data), several categories in one model.

    Example:
        >>> dm = MultiClassMVTecAD(root="./datasets/MVTecAD", categories="all")  # doctest: +SKIP
    """

    def __init__(self, root: str | Path = "./datasets/MVTecAD", **kwargs) -> None:
        super().__init__(root=root, **kwargs)

    def available_categories(self) -> list[str]:
        """Sub-folders with a ``train/good`` folder."""
        return sorted(p.name for p in self.root.iterdir() if (p / "train" / "good").is_dir())

    def make_dataset(self, category: str, split: Split) -> AnomalibDataset:
        """Anomalib's MVTecAD dataset of one category."""
        return MVTecADDataset(root=self.root, category=category, split=split)


class MultiClassVisa(MultiClassDataModule):
    """VisA, several categories in one model. Expects Anomalib's split layout ``<root>/visa_pytorch/<category>``.

    A raw VisA copy (``<root>/<category>`` with ``image_anno.csv``) is split once with Anomalib's own code.
    """

    def __init__(self, root: str | Path = "./datasets/visa", **kwargs) -> None:
        super().__init__(root=root, **kwargs)

    @property
    def split_root(self) -> Path:
        """Anomalib's split layout."""
        return self.root / "visa_pytorch"

    def available_categories(self) -> list[str]:
        """Split categories, or raw ones that can be split."""
        found = set()
        if self.split_root.is_dir():
            found |= {p.name for p in self.split_root.iterdir() if (p / "train" / "good").is_dir()}
        found |= {p.name for p in self.root.iterdir() if (p / "image_anno.csv").is_file()}
        return sorted(found)

    def category_root(self, category: str) -> Path:
        """Split folder of a category."""
        return self.split_root / category

    def prepare_data(self) -> None:
        """Apply Anomalib's train/test split to raw categories that lack it; never download."""
        from anomalib.data import Visa

        for category in self.categories:
            if not (self.split_root / category).is_dir():
                Visa(root=self.root, category=category).apply_cls1_split()
        super().prepare_data()

    def make_dataset(self, category: str, split: Split) -> AnomalibDataset:
        """Anomalib's Visa dataset of one category."""
        return VisaDataset(root=self.split_root, category=category, split=split)


class MultiClassFolder(MultiClassDataModule):
    """Your own data: one sub-folder per category, each laid out like Anomalib's ``Folder`` datamodule expects.

    Args:
        root: Folder with one sub-folder per category.
        normal_dir: Normal training images, relative to a category folder.
        abnormal_dir: Anomalous test images (relative), or None.
        normal_test_dir: Normal test images (relative), or None to hold out some training images.
        mask_dir: Ground-truth masks of the anomalous images (relative), or None.
        extensions: Image file extensions to read.
        **kwargs: Arguments of :class:`MultiClassDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str = "train/good",
        abnormal_dir: str | None = "test/defect",
        normal_test_dir: str | None = "test/good",
        mask_dir: str | None = "ground_truth/defect",
        extensions: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.normal_dir, self.abnormal_dir, self.normal_test_dir = normal_dir, abnormal_dir, normal_test_dir
        self.mask_dir, self.extensions = mask_dir, tuple(extensions) if extensions else None

    def available_categories(self) -> list[str]:
        """Sub-folders that have the normal image folder."""
        return sorted(p.name for p in self.root.iterdir() if (p / self.normal_dir).is_dir())

    def make_dataset(self, category: str, split: Split) -> AnomalibDataset:
        """Anomalib's Folder dataset of one category."""
        return FolderDataset(
            name=category,
            root=self.category_root(category),
            normal_dir=self.normal_dir,
            abnormal_dir=self.abnormal_dir,
            normal_test_dir=self.normal_test_dir,
            mask_dir=self.mask_dir,
            split=split,
            extensions=self.extensions,
        )
