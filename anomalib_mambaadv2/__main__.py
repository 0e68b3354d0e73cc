# SPDX-License-Identifier: Apache-2.0
"""``python -m anomalib_mambaadv2 <subcommand>``: same as the ``anomalib-mambaadv2`` console script."""

from anomalib_mambaadv2.cli import main

main()
