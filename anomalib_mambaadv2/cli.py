# SPDX-License-Identifier: Apache-2.0
"""``anomalib-mambaadv2``: Anomalib's CLI with MambaADv2 registered, so ``--model MambaADv2`` resolves.

Every Anomalib subcommand works (``fit``, ``train``, ``test``, ``predict``, ``export``, …)::

    anomalib-mambaadv2 train --model MambaADv2 --data anomalib.data.MVTecAD --data.category bottle

plus ``infer``: batch inference with an exported OpenVINO or ONNX model, without PyTorch
(see :mod:`anomalib_mambaadv2.deploy`)::

    anomalib-mambaadv2 infer --model model.xml --input images/ --output predictions/
    anomalib-mambaadv2 infer --model model.xml --input images/ --output predictions/ --category bottle

(``--category``: a multi-class model's per-category thresholds, from ``category_thresholds.json`` next to the model.)
"""

from __future__ import annotations

import sys
from pathlib import Path


def register() -> None:
    """Import the model so Anomalib's argument parser can find ``MambaADv2`` by its bare name."""
    from . import lightning_model  # noqa: F401


def _option(argv: list[str], *names: str) -> str | None:
    """The value of the first of ``names`` given in ``argv`` (``--name value`` or ``--name=value``)."""
    for name in names:
        for i, arg in enumerate(argv):
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{name}="):
                return arg.partition("=")[2]
    return None


def resolve_last_checkpoint(argv: list[str]) -> list[str]:
    """Replace ``--ckpt_path last`` with the newest checkpoint of the run's model under its results folder.

    Anomalib's ``Engine`` takes ``ckpt_path`` as a file path, so Lightning's ``"last"`` would name a missing file.

    Raises:
        FileNotFoundError: If there is no checkpoint to resume from.
    """
    if _option(argv, "--ckpt_path") != "last":
        return argv
    root = Path(_option(argv, "--trainer.default_root_dir", "--default_root_dir") or "results")
    model = (_option(argv, "--model") or "MambaADv2").rpartition(".")[2]
    found = sorted((root / model).glob("**/weights/lightning/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        msg = f"--ckpt_path last: no checkpoint under {root / model}; pass the path of the checkpoint to resume from"
        raise FileNotFoundError(msg)
    print(f"--ckpt_path last: resuming from {found[-1]}", file=sys.stderr)
    i = next(i for i, a in enumerate(argv) if a == "--ckpt_path" or a.startswith("--ckpt_path="))
    return [*argv[:i], f"--ckpt_path={found[-1]}", *argv[i + (argv[i] == "--ckpt_path") + 1 :]]


def main() -> None:
    """Run ``infer``, or Anomalib's CLI with the plugin registered."""
    if sys.argv[1:2] == ["infer"]:
        from .deploy import main as infer

        sys.exit(infer(sys.argv[2:]))
    from .checkpoint import check_checkpoint_file  # here, not at import: `infer` must not load torch

    try:
        sys.argv[1:] = resolve_last_checkpoint(sys.argv[1:])
        ckpt = _option(sys.argv[1:], "--ckpt_path")
        if ckpt and Path(ckpt).is_file():
            check_checkpoint_file(ckpt)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    register()
    from anomalib.cli.cli import main as anomalib_main

    anomalib_main()


if __name__ == "__main__":
    main()
