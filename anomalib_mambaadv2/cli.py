# SPDX-License-Identifier: Apache-2.0
"""``anomalib-mambaadv2``: Anomalib's CLI with MambaADv2 registered, so ``--model MambaADv2`` resolves.

Every Anomalib subcommand works (``fit``, ``train``, ``test``, ``predict``, ``export``, …)::

    anomalib-mambaadv2 train --model MambaADv2 --data anomalib.data.MVTecAD --data.category bottle
"""

from __future__ import annotations


def register() -> None:
    """Import the model so Anomalib's argument parser can find ``MambaADv2`` by its bare name."""
    from . import lightning_model  # noqa: F401


def main() -> None:
    """Run Anomalib's CLI with the plugin registered."""
    register()
    from anomalib.cli.cli import main as anomalib_main

    anomalib_main()


if __name__ == "__main__":
    main()
