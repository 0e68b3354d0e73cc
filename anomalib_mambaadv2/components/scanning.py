# SPDX-License-Identifier: Apache-2.0
"""Scan orders that flatten a 2D token grid into the 1D sequences a state-space layer reads.

A feature map of ``h`` rows and ``w`` columns is stored as ``h * w`` tokens in raster order (token ``i * w + j`` is
row ``i``, column ``j``). A scan is a permutation of those tokens. Curves that keep consecutive tokens spatially
adjacent preserve locality in the recurrence:

* **Hilbert** — the space-filling curve MambaAD uses; only defined on square grids whose side is a power of two.
* **Snake** (boustrophedon) — rows alternate left→right and right→left; works on any grid and is still
  4-connected, so it is the fallback for non-square or non-power-of-two maps.
* **Raster** — plain row-major order, kept as a baseline (it jumps at every row end).

Each curve is read in eight *directions*: four orientations of the grid (identity, transpose, clockwise rot90,
rot90∘transpose), each forward and reversed. Direction ``k`` has orientation ``k // 2`` and is reversed when ``k`` is
odd; on any grid of at least 2x2 the eight orders are distinct. Orientations are built by running the base curve on
the (possibly transposed) grid and mapping its cells back into the original grid, so non-square maps work too.

*Semantics-adaptive progressive scanning* (SAPS) spends directions where they are cheap: shallow decoder stages have
long sequences and get few directions, deep stages have short sequences and get many (:data:`DEFAULT_SCHEDULE`),
while :func:`saps_directions` rotates the orientations a block uses with its depth, so a stack of blocks still sees
every orientation. :data:`MAMBAAD_SCHEDULE` reproduces MambaAD's eight directions everywhere.

Permutations are precomputed constant ``int64`` index tensors, so a scan is a plain gather; traced or ONNX-exported
graphs see constant gathers and no data-dependent control flow.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Curve = Literal["auto", "hilbert", "snake", "raster"]
Cell = tuple[int, int]

__all__ = [
    "CURVES",
    "DEFAULT_SCHEDULE",
    "MAMBAAD_SCHEDULE",
    "NUM_DIRECTIONS",
    "NUM_ORIENTATIONS",
    "VALID_NUM_DIRECTIONS",
    "Curve",
    "direction_order",
    "hilbert_curve",
    "raster_curve",
    "resolve_curve",
    "saps_directions",
    "scan_permutations",
    "scan_permutations_numpy",
    "snake_curve",
]

CURVES: tuple[str, ...] = ("auto", "hilbert", "snake", "raster")
NUM_ORIENTATIONS = 4
NUM_DIRECTIONS = 2 * NUM_ORIENTATIONS
VALID_NUM_DIRECTIONS: tuple[int, ...] = (1, 2, 4, 8)

# Directions per decoder stage 0..3 (stage 0 = deepest, shortest sequence): many where the sequence is short. One on
# the finest grid (was two before 2026-12-04: same quality over three seeds, docs/benchmarks/saps.md).
DEFAULT_SCHEDULE: tuple[int, ...] = (8, 4, 2, 1)
# MambaAD scans every stage in all eight directions.
MAMBAAD_SCHEDULE: tuple[int, ...] = (8, 8, 8, 8)


# --------------------------------------------------------------------------------------------------------------------
# Base curves, as lists of (row, col) cells
# --------------------------------------------------------------------------------------------------------------------
def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_grid(h: int, w: int) -> None:
    if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, int) or not isinstance(w, int):
        msg = f"Grid size must be integers, got h={h!r}, w={w!r}."
        raise TypeError(msg)
    if h < 1 or w < 1:
        msg = f"Grid size must be positive, got {h}x{w}."
        raise ValueError(msg)


def hilbert_curve(n: int) -> list[Cell]:
    """Hilbert curve over an ``n`` × ``n`` grid.

    The curve starts at ``(0, 0)`` and ends at ``(n - 1, 0)``; consecutive cells are 4-neighbours. Ending in the
    starting column makes the reversed curve the top-bottom mirror of the forward one, which the orientations of
    :func:`direction_order` are chosen around so that all eight scan directions differ.

    Args:
        n: Side length, a power of two (``1`` allowed).

    Returns:
        All ``n * n`` cells as ``(row, col)`` in visiting order.

    Raises:
        ValueError: If ``n`` is not a positive power of two.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not _is_power_of_two(n):
        msg = f"Hilbert curve needs a side that is a power of two, got n={n!r}."
        raise ValueError(msg)
    cells: list[Cell] = [(0, 0)]
    m = 1
    # Build order 2m from order m (which runs (0,0) -> (m-1,0)): a U through the quadrants top-left, top-right,
    # bottom-right, bottom-left. The first and last sub-curves are reflected so each one ends next to where the
    # following one starts.
    while m < n:
        last = m - 1
        top_left = [(c, r) for r, c in cells]  # transpose: (0,0) -> (0,m-1)
        top_right = [(r, c + m) for r, c in cells]  # (0,m) -> (m-1,m)
        bottom_right = [(r + m, c + m) for r, c in cells]  # (m,m) -> (2m-1,m)
        bottom_left = [(last - c + m, last - r) for r, c in cells]  # anti-transpose: (2m-1,m-1) -> (2m-1,0)
        cells = top_left + top_right + bottom_right + bottom_left
        m *= 2
    return cells


def snake_curve(h: int, w: int) -> list[Cell]:
    """Boustrophedon order: even rows left→right, odd rows right→left.

    Args:
        h: Number of rows.
        w: Number of columns.

    Returns:
        All ``h * w`` cells as ``(row, col)``; consecutive cells are 4-neighbours.
    """
    _check_grid(h, w)
    return [(r, c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]


def raster_curve(h: int, w: int) -> list[Cell]:
    """Row-major order, every row left→right.

    Args:
        h: Number of rows.
        w: Number of columns.

    Returns:
        All ``h * w`` cells as ``(row, col)``.
    """
    _check_grid(h, w)
    return [(r, c) for r in range(h) for c in range(w)]


def _hilbert_rect(h: int, w: int) -> list[Cell]:
    if h != w or not _is_power_of_two(h):
        msg = (
            f"Hilbert scan needs a square grid with a power-of-two side, got {h}x{w}; "
            'use curve="snake" (or "auto") for this grid.'
        )
        raise ValueError(msg)
    return hilbert_curve(h)


_BASE_CURVES: dict[str, Callable[[int, int], list[Cell]]] = {
    "hilbert": _hilbert_rect,
    "snake": snake_curve,
    "raster": raster_curve,
}


def resolve_curve(h: int, w: int, curve: str = "auto") -> str:
    """Pick the concrete curve for a grid.

    Args:
        h: Number of rows.
        w: Number of columns.
        curve: ``"auto"``, ``"hilbert"``, ``"snake"`` or ``"raster"``. ``"auto"`` is Hilbert on square power-of-two
            grids (where it is defined) and snake elsewhere.

    Returns:
        ``"hilbert"``, ``"snake"`` or ``"raster"``.

    Raises:
        ValueError: If ``curve`` is unknown.
    """
    _check_grid(h, w)
    if curve not in CURVES:
        msg = f"Unknown scan curve {curve!r}; expected one of {CURVES}."
        raise ValueError(msg)
    if curve == "auto":
        return "hilbert" if h == w and _is_power_of_two(h) else "snake"
    return curve


# --------------------------------------------------------------------------------------------------------------------
# Orientations and directions
# --------------------------------------------------------------------------------------------------------------------
def _oriented_cells(curve: str, h: int, w: int, orientation: int) -> list[Cell]:
    """Run ``curve`` on the oriented grid and map its cells back to ``(row, col)`` of the original ``h`` × ``w`` grid.

    Orientation ``o`` reads the curve on the image ``g_o(x)`` with ``g_0 = id``, ``g_1 = transpose``,
    ``g_2 = rot90`` clockwise (``torch.rot90(x, -1)``) and ``g_3 = rot90∘transpose`` (a left-right flip). Only the
    transposing orientations swap the grid shape, so each one is a bijection onto the original grid, and as the maps
    are isometries neighbouring cells stay neighbours.

    Clockwise rather than counter-clockwise rotation is deliberate: a curve's reversal is itself a symmetry of the grid
    (top-bottom flip for Hilbert and even-height snake, half-turn for odd-height snake), and only with the clockwise
    set is no reversed direction a copy of another orientation. Counter-clockwise would make half of the eight snake
    directions duplicates on even grids such as 14x14.
    """
    base = _BASE_CURVES[curve]
    if orientation == 0:
        return base(h, w)
    if orientation == 1:
        # transpose(x)[r, c] = x[c, r]
        return [(c, r) for r, c in base(w, h)]
    if orientation == 2:
        # rot90(x, -1)[r, c] = x[h - 1 - c, r]; the rotated image is w x h
        return [(h - 1 - c, r) for r, c in base(w, h)]
    if orientation == 3:
        # rot90(transpose(x), -1)[r, c] = x[r, w - 1 - c]
        return [(r, w - 1 - c) for r, c in base(h, w)]
    msg = f"Orientation must be in 0..{NUM_ORIENTATIONS - 1}, got {orientation}."
    raise ValueError(msg)


def direction_order(h: int, w: int, direction: int, curve: str = "auto") -> list[int]:
    """Raster indices of an ``h`` × ``w`` grid in the order scan direction ``direction`` visits them.

    Args:
        h: Number of rows.
        w: Number of columns.
        direction: ``0..7``; orientation ``direction // 2``, reversed when ``direction`` is odd.
        curve: Curve name, see :func:`resolve_curve`.

    Returns:
        A permutation of ``range(h * w)``.

    Raises:
        ValueError: For an unknown curve or direction, or ``"hilbert"`` on a grid it does not fit.
    """
    curve = resolve_curve(h, w, curve)
    if isinstance(direction, bool) or not isinstance(direction, int) or not 0 <= direction < NUM_DIRECTIONS:
        msg = f"Direction must be an int in 0..{NUM_DIRECTIONS - 1}, got {direction!r}."
        raise ValueError(msg)
    order = [r * w + c for r, c in _oriented_cells(curve, h, w, direction // 2)]
    return order[::-1] if direction % 2 else order


@lru_cache(maxsize=64)
def _cached_permutations(h: int, w: int, curve: str) -> tuple[np.ndarray, np.ndarray]:
    # NumPy, not torch: a torch tensor first built while torch.export traces would be a FakeTensor, cached for good.
    perm = np.array([direction_order(h, w, k, curve) for k in range(NUM_DIRECTIONS)], dtype=np.int64)
    inv = np.argsort(perm, axis=1)
    perm.flags.writeable = inv.flags.writeable = False
    return perm, inv


def scan_permutations_numpy(h: int, w: int, curve: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_permutations` as the cached, read-only NumPy arrays (safe to use while an exporter traces)."""
    return _cached_permutations(h, w, resolve_curve(h, w, curve))


def scan_permutations(h: int, w: int, curve: str = "auto") -> tuple[Tensor, Tensor]:
    """Gather indices for all eight scan directions of an ``h`` × ``w`` grid.

    ``tokens[:, perm[k]]`` puts a raster-ordered ``(B, L, C)`` sequence into direction ``k``'s order and
    ``scanned[:, inv[k]]`` puts it back.

    Note:
        The orders are computed once per ``(h, w, curve)``; each call returns fresh CPU tensors built from that cache
        (so the export tracer sees constants).

    Args:
        h: Number of rows.
        w: Number of columns.
        curve: ``"auto"`` (Hilbert on square power-of-two grids, snake elsewhere), ``"hilbert"``, ``"snake"`` or
            ``"raster"``.

    Returns:
        ``(perm, inv)``, both ``int64`` of shape ``(8, h * w)`` with ``perm[k][inv[k]] == arange(h * w)``.

    Raises:
        ValueError: For an unknown curve, or ``"hilbert"`` on a non-square or non-power-of-two grid.
    """
    # Resolve first so "auto" and the curve it picks share one cache entry.
    perm, inv = _cached_permutations(h, w, resolve_curve(h, w, curve))
    return torch.tensor(perm), torch.tensor(inv)


# --------------------------------------------------------------------------------------------------------------------
# Semantics-adaptive progressive scanning (SAPS)
# --------------------------------------------------------------------------------------------------------------------
def saps_directions(num_directions: int, block_index: int) -> list[int]:
    """Directions block ``block_index`` of a stage scans when the stage uses ``num_directions`` of them.

    With ``K = num_directions`` and ``n = K // 2`` orientations per block, block ``j`` uses orientations
    ``(j * n + m) mod 4`` for ``m < n``, each forward and reversed, so consecutive blocks pick up where the previous
    one stopped and depth cycles through all orientations. ``K = 1`` takes the single forward direction of
    orientation ``j mod 4``.

    Args:
        num_directions: ``K``, one of 1, 2, 4, 8.
        block_index: Position ``j >= 0`` of the block inside its stage.

    Returns:
        ``K`` distinct direction indices in ``0..7``.

    Raises:
        ValueError: If ``num_directions`` is not 1, 2, 4 or 8, or ``block_index`` is negative.
    """
    if isinstance(num_directions, bool) or num_directions not in VALID_NUM_DIRECTIONS:
        msg = f"num_directions must be one of {VALID_NUM_DIRECTIONS}, got {num_directions!r}."
        raise ValueError(msg)
    if block_index < 0:
        msg = f"block_index must be non-negative, got {block_index}."
        raise ValueError(msg)
    if num_directions == 1:
        return [2 * (block_index % NUM_ORIENTATIONS)]
    n = num_directions // 2
    orientations = [(block_index * n + m) % NUM_ORIENTATIONS for m in range(n)]
    return [d for o in orientations for d in (2 * o, 2 * o + 1)]
