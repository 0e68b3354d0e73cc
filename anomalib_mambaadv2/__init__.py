# SPDX-License-Identifier: Apache-2.0
"""MambaADv2 anomaly detector as an Anomalib model plugin.

``import anomalib_mambaadv2`` is cheap; the Anomalib-facing classes load on first use::

    from anomalib_mambaadv2 import MambaADv2        # the Anomalib (Lightning) model
    from anomalib_mambaadv2 import MambaADv2Model   # the plain PyTorch network
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {"MambaADv2": ".lightning_model", "MambaADv2Model": ".torch_model"}
__all__ = ["MambaADv2", "MambaADv2Model", "__version__"]  # noqa: F822 - resolved lazily by __getattr__


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
