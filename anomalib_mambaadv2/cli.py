# SPDX-License-Identifier: Apache-2.0
"""``anomalib-mambaadv2``: Anomalib's CLI with MambaADv2 registered, so ``--model MambaADv2`` resolves.

Every Anomalib subcommand works (``fit``, ``train``, ``test``, ``predict``, ``export``, …)::

    anomalib-mambaadv2 train --model MambaADv2 --data anomalib.data.MVTecAD --data.category bottle

plus ``infer``: batch inference with an exported OpenVINO or ONNX model, without PyTorch
(see :mod:`anomalib_mambaadv2.deploy`)::

    anomalib-mambaadv2 infer --model model.xml --input images/ --output predictions/
"""

from __future__ import annotations

import sys


def register() -> None:
    """Import the model so Anomalib's argument parser can find ``MambaADv2`` by its bare name."""
    from . import lightning_model  # noqa: F401


def main() -> None:
    """Run ``infer``, or Anomalib's CLI with the plugin registered."""
    if sys.argv[1:2] == ["infer"]:
        from .deploy import main as infer

        sys.exit(infer(sys.argv[2:]))
    register()
    from anomalib.cli.cli import main as anomalib_main

    anomalib_main()


if __name__ == "__main__":
    main()
