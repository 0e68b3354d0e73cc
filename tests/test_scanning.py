# SPDX-License-Identifier: Apache-2.0
"""Scan orders: permutations, locality, orientation semantics, SAPS schedule and caching."""

import itertools

import pytest
import torch

from anomalib_mambaadv2.components.scanning import (
    DEFAULT_SCHEDULE,
    MAMBAAD_SCHEDULE,
    direction_order,
    hilbert_curve,
    raster_curve,
    resolve_curve,
    saps_directions,
    scan_permutations,
    snake_curve,
)

BASE = {"snake": snake_curve, "raster": raster_curve}
GRIDS = [(1, 1), (2, 2), (8, 8), (16, 16), (14, 14), (7, 5), (16, 20), (3, 9)]


def assert_neighbours(order, w):
    """Consecutive raster indices of a w-wide grid are 4-neighbours."""
    for a, b in itertools.pairwise(order):
        (ra, ca), (rb, cb) = divmod(a, w), divmod(b, w)
        assert abs(ra - rb) + abs(ca - cb) == 1, (a, b)


# --------------------------------------------------------------------------------------------------------------------
# Base curves
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_hilbert_visits_every_cell_through_neighbours(n):
    cells = hilbert_curve(n)
    assert sorted(cells) == [(r, c) for r in range(n) for c in range(n)]
    assert_neighbours([r * n + c for r, c in cells], n)


@pytest.mark.parametrize("n", [0, 3, 6, 12, -4])
def test_hilbert_rejects_non_power_of_two(n):
    with pytest.raises(ValueError, match="power of two"):
        hilbert_curve(n)


def test_snake_and_raster_small():
    assert snake_curve(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    assert raster_curve(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


# --------------------------------------------------------------------------------------------------------------------
# Permutations
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), GRIDS)
@pytest.mark.parametrize("curve", ["auto", "snake", "raster"])
def test_perm_is_permutation_and_inv_inverts(h, w, curve):
    perm, inv = scan_permutations(h, w, curve)
    n = h * w
    assert perm.shape == inv.shape == (8, n)
    assert perm.dtype == inv.dtype == torch.int64
    ar = torch.arange(n)
    x = torch.randn(3, n, 5, generator=torch.Generator().manual_seed(h * 100 + w))
    for k in range(8):
        assert torch.equal(perm[k].sort().values, ar)
        assert torch.equal(perm[k][inv[k]], ar)
        assert torch.equal(inv[k][perm[k]], ar)
        scanned = x[:, perm[k]]
        assert torch.equal(scanned[:, inv[k]], x)
        if n > 1 and k % 2 == 0:
            # A real reordering, not the identity in disguise.
            assert not torch.equal(x[:, perm[k + 1]], x[:, perm[k]])


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_hilbert_directions_keep_neighbours(n):
    perm, _ = scan_permutations(n, n, "hilbert")
    for k in range(8):
        assert_neighbours(perm[k].tolist(), n)


@pytest.mark.parametrize(("h", "w"), [(7, 5), (14, 14), (16, 20), (5, 7), (1, 6)])
def test_snake_directions_keep_neighbours(h, w):
    perm, _ = scan_permutations(h, w, "snake")
    for k in range(8):  # all 4 orientations, forward and reversed
        assert_neighbours(perm[k].tolist(), w)


def test_raster_is_not_connected():
    # Sanity check that the neighbour test can fail.
    with pytest.raises(AssertionError):
        assert_neighbours(scan_permutations(4, 4, "raster")[0][0].tolist(), 4)


@pytest.mark.parametrize(("h", "w", "curve"), [(8, 8, "auto"), (8, 8, "hilbert"), (2, 2, "hilbert")])
def test_hilbert_directions_distinct(h, w, curve):
    perm, _ = scan_permutations(h, w, curve)
    assert len({tuple(p) for p in perm.tolist()}) == 8


@pytest.mark.parametrize(("h", "w"), [(8, 8), (14, 14), (7, 7), (7, 5), (16, 20), (2, 3), (6, 9)])
@pytest.mark.parametrize("curve", ["snake", "raster"])
def test_snake_raster_directions_distinct(h, w, curve):
    # Guards the orientation choice: with counter-clockwise rot90, snake on even grids repeats half its directions.
    perm, _ = scan_permutations(h, w, curve)
    assert len({tuple(p) for p in perm.tolist()}) == 8


def image_order(curve_cells, image):
    """Raster index read at each curve cell of an index image."""
    return [int(image[r, c]) for r, c in curve_cells]


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 5), (4, 6)])
@pytest.mark.parametrize("curve", ["auto", "snake", "raster"])
def test_orientations_match_image_transforms(h, w, curve):
    # Independent definition: read the base curve off the transformed index image.
    idx = torch.arange(h * w).view(h, w)
    images = [idx, idx.T, torch.rot90(idx, -1), torch.rot90(idx.T, -1)]
    resolved = resolve_curve(h, w, curve)
    perm, _ = scan_permutations(h, w, curve)
    for o, img in enumerate(images):
        gh, gw = img.shape
        cells = hilbert_curve(gh) if resolved == "hilbert" else BASE[resolved](gh, gw)
        expected = image_order(cells, img)
        assert perm[2 * o].tolist() == expected
        assert perm[2 * o + 1].tolist() == expected[::-1]


def test_direction_order_matches_perm():
    perm, _ = scan_permutations(7, 5)
    for k in range(8):
        assert direction_order(7, 5, k) == perm[k].tolist()
    with pytest.raises(ValueError, match="Direction"):
        direction_order(7, 5, 8)


def test_auto_curve_choice():
    assert resolve_curve(16, 16) == "hilbert"
    assert resolve_curve(14, 14) == "snake"
    assert resolve_curve(16, 8) == "snake"
    assert torch.equal(scan_permutations(16, 16)[0], scan_permutations(16, 16, "hilbert")[0])
    assert torch.equal(scan_permutations(14, 14)[0], scan_permutations(14, 14, "snake")[0])
    assert not torch.equal(scan_permutations(16, 16)[0], scan_permutations(16, 16, "snake")[0])


@pytest.mark.parametrize(("h", "w"), [(14, 14), (16, 8), (6, 6)])
def test_hilbert_on_bad_grid_raises(h, w):
    with pytest.raises(ValueError, match="snake") as info:
        scan_permutations(h, w, "hilbert")
    assert f"{h}x{w}" in str(info.value)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Unknown scan curve"):
        scan_permutations(8, 8, "zigzag")
    with pytest.raises(ValueError, match="positive"):
        scan_permutations(0, 8)


def test_cache_computes_once_and_returns_fresh_tensors():
    from anomalib_mambaadv2.components.scanning import _cached_permutations

    _cached_permutations.cache_clear()
    perm_a, _ = scan_permutations(12, 10, "snake")
    perm_b, _ = scan_permutations(12, 10)  # "auto" resolves to snake and shares the entry
    assert _cached_permutations.cache_info().misses == 1
    assert _cached_permutations.cache_info().hits == 1
    assert perm_a is not perm_b and torch.equal(perm_a, perm_b)
    perm_a.zero_()  # a caller's in-place change does not reach the cache
    assert torch.equal(scan_permutations(12, 10, "snake")[0], perm_b)
    assert perm_b.device.type == "cpu"
    assert torch.equal(perm_b, torch.tensor([direction_order(12, 10, k, "snake") for k in range(8)]))


# --------------------------------------------------------------------------------------------------------------------
# SAPS schedule
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("j", range(6))
def test_saps_eight_covers_all(j):
    assert sorted(saps_directions(8, j)) == list(range(8))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("j", range(6))
def test_saps_shape(k, j):
    dirs = saps_directions(k, j)
    assert len(dirs) == k
    assert len(set(dirs)) == k
    assert all(0 <= d < 8 for d in dirs)
    if k > 1:  # each orientation forward and reversed
        assert {d // 2 for d in dirs} == {d // 2 for d in dirs if d % 2 == 0} == {d // 2 for d in dirs if d % 2}


def test_saps_one_direction_cycles_forward():
    assert [saps_directions(1, j) for j in range(5)] == [[0], [2], [4], [6], [0]]


def test_saps_two_directions_visit_all_orientations():
    assert [saps_directions(2, j) for j in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert {d // 2 for j in range(4) for d in saps_directions(2, j)} == {0, 1, 2, 3}


def test_saps_four_directions_two_blocks_cover_all():
    first, second = saps_directions(4, 0), saps_directions(4, 1)
    assert {d // 2 for d in first} | {d // 2 for d in second} == {0, 1, 2, 3}
    assert sorted(first + second) == list(range(8))
    assert saps_directions(4, 2) == first


@pytest.mark.parametrize("k", [0, 3, 5, 6, 16, -1])
def test_saps_bad_count_raises(k):
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 8\)"):
        saps_directions(k, 0)


def test_saps_negative_block_raises():
    with pytest.raises(ValueError, match="block_index"):
        saps_directions(4, -1)


def test_schedules():
    assert DEFAULT_SCHEDULE == (8, 4, 2, 1)
    assert MAMBAAD_SCHEDULE == (8, 8, 8, 8)
    for k in DEFAULT_SCHEDULE + MAMBAAD_SCHEDULE:
        saps_directions(k, 0)  # every scheduled count is valid
