"""F_perm and F_src bookkeeping, proven on volumes whose every voxel holds its own id."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.asa import pretext


def unique_ids(batch: int, size: int) -> torch.Tensor:
    n = batch * size**3
    return torch.arange(n, dtype=torch.float64).reshape(batch, 1, size, size, size)


def test_subvolume_roundtrip_is_exact() -> None:
    x = unique_ids(2, 64)
    cells = pretext.to_subvolumes(x)
    assert cells.shape == (2, 64, 1, 16, 16, 16)
    assert torch.equal(pretext.from_subvolumes(cells, (4, 4, 4)), x)
    # cell n in raster order (last axis fastest) is the block at its grid coordinates
    d, h, w = pretext.cell_coordinates((4, 4, 4))[6].tolist()
    assert torch.equal(cells[0, 6, 0], x[0, 0, d * 16 : d * 16 + 16, h * 16 : h * 16 + 16, w * 16 : w * 16 + 16])


def test_permutations_are_bijections_and_differ_per_sample() -> None:
    perm = pretext.random_permutations(3, 64, torch.Generator().manual_seed(0))
    for row in perm:
        assert torch.equal(row.sort().values, torch.arange(64))
    assert not torch.equal(perm[0], perm[1])


def test_shuffle_moves_each_subvolume_where_the_permutation_says() -> None:
    x = unique_ids(2, 64)
    perm = pretext.random_permutations(2, 64, torch.Generator().manual_seed(1))
    shuffled = pretext.shuffle_subvolumes(x, perm)
    src, dst = pretext.to_subvolumes(x), pretext.to_subvolumes(shuffled)
    for b in range(2):
        for j in range(64):
            assert torch.equal(dst[b, j], src[b, perm[b, j]])
    # a permutation only moves voxels: same multiset, and the inverse restores the original exactly
    assert torch.equal(shuffled.flatten().sort().values, x.flatten().sort().values)
    inverse = torch.argsort(perm, dim=1)
    assert torch.equal(pretext.shuffle_subvolumes(shuffled, inverse), x)


def test_order_targets_are_the_source_coordinates_scaled_to_pm3() -> None:
    perm = pretext.random_permutations(1, 64, torch.Generator().manual_seed(2))
    target = pretext.order_targets(perm, (4, 4, 4))
    coords = pretext.cell_coordinates((4, 4, 4))
    expected = coords[perm[0]].float() / 3 * 6 - 3
    assert torch.allclose(target[0], expected)
    assert target.min() == -3 and target.max() == 3
    assert torch.allclose(pretext.target_to_coords(target, (4, 4, 4))[0], coords[perm[0]].float())


def test_order_error_is_zero_for_perfect_prediction_and_baseline_is_mean_distance() -> None:
    perm = pretext.random_permutations(2, 64, torch.Generator().manual_seed(3))
    target = pretext.order_targets(perm, (4, 4, 4))
    assert pretext.order_error_voxels(target, perm, (4, 4, 4)).item() == pytest.approx(0.0, abs=1e-5)
    centre = torch.zeros_like(target)  # the target scale is centred on 0: the grid centre
    baseline = pretext.mean_position_error_voxels((4, 4, 4))
    assert pretext.order_error_voxels(centre, perm, (4, 4, 4)).item() == pytest.approx(baseline, rel=1e-5)


def test_per_axis_order_error_isolates_the_axis_that_is_wrong() -> None:
    perm = pretext.random_permutations(2, 64, torch.Generator().manual_seed(4))
    pred = pretext.order_targets(perm, (4, 4, 4)).clone()
    pred[..., 2] = 0.0  # right in x and y, always the centre along z
    axes = pretext.order_error_per_axis_voxels(pred, perm, (4, 4, 4))
    assert axes[:2].tolist() == pytest.approx([0.0, 0.0], abs=1e-4)
    assert axes[2].item() == pytest.approx(16.0, rel=1e-5)  # |±8|, |±24| voxels from the centre, on average 16


@pytest.mark.parametrize("roi,max_shift,every", [(64, 2, 1), (128, 2, 37), (64, 1, 1)])
def test_src_matching_pairs_exactly_the_same_voxels(roi: int, max_shift: int, every: int) -> None:
    size = roi + 16 * max_shift
    x = unique_ids(1, size)
    grid = roi // 16
    shifts = range(max_shift + 1)
    combos = list(itertools.product(itertools.product(shifts, repeat=3), repeat=2))
    for o1, o2 in combos[::every]:
        offsets = torch.tensor([[o1, o2]])
        c1, c2 = pretext.crop_pair(x, offsets, roi)
        i1, i2 = pretext.matching_tokens(offsets[0], grid)
        overlap = [grid - abs(a - b) for a, b in zip(o1, o2, strict=True)]
        assert len(i1) == len(i2) == overlap[0] * overlap[1] * overlap[2]
        s1, s2 = pretext.to_subvolumes(c1)[0], pretext.to_subvolumes(c2)[0]
        assert torch.equal(s1[i1], s2[i2])
        # and nothing else matches: voxel ids are unique, so unmatched cells share no voxel
        rest = torch.tensor(sorted(set(range(grid**3)) - set(i1.tolist())), dtype=torch.long)
        if len(rest):
            assert not torch.isin(s1[rest].flatten(), s2[i2].flatten()).any()


def test_crop_offsets_stay_in_range() -> None:
    off = pretext.random_crop_offsets(64, 2, torch.Generator().manual_seed(0))
    assert off.shape == (64, 2, 3) and off.min() == 0 and off.max() == 2


def test_grid_shape_rejects_sizes_that_are_not_multiples_of_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        pretext.grid_shape((64, 64, 60))
