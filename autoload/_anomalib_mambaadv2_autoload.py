# SPDX-License-Identifier: Apache-2.0
"""Registers MambaADv2 with Anomalib's stock ``anomalib`` command (loaded from a .pth file at interpreter start).

Costs other Python programs one ``sys.argv`` check: the plugin is imported only when the running program is the
``anomalib`` console script, which imports Anomalib anyway.
"""

import os
import sys


def _autoload() -> None:
    argv0 = sys.argv[0] if getattr(sys, "argv", None) else ""
    if os.path.basename(argv0) != "anomalib":
        return
    try:
        from anomalib_mambaadv2.cli import register

        register()
    except Exception as err:
        sys.stderr.write(f"anomalib-mambaadv2: could not register MambaADv2 with anomalib ({err!r})\n")


_autoload()
