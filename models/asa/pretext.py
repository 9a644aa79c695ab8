"""ASA's pretext-task bookkeeping as pure tensor functions: F_perm (phase 1) and F_src (phase 2).

Conventions: a volume is (B, C, D, H, W) with every spatial size a multiple of the sub-volume edge
``s`` (16). Its sub-volumes form a grid (gd, gh, gw) and are numbered in raster order (last axis
fastest), the same order in which :func:`models.asa.network._flatten_tokens` lays out the tokens, so
token ``n`` of the encoder sees sub-volume ``n``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.config import SUBVOLUME

ORDER_SCALE = 3.0  # order targets span [-ORDER_SCALE, ORDER_SCALE] on every axis (as in the reference code)


def grid_shape(spatial: tuple[int, ...], size: int = SUBVOLUME) -> tuple[int, int, int]:
    if len(spatial) != 3 or any(n % size for n in spatial):
        raise ValueError(f"spatial shape {tuple(spatial)} must be 3D and a multiple of {size}")
    return spatial[0] // size, spatial[1] // size, spatial[2] // size


def to_subvolumes(x: Tensor, size: int = SUBVOLUME) -> Tensor:
    """(B, C, D, H, W) -> (B, N, C, s, s, s), sub-volumes in raster order."""
    b, c = x.shape[:2]
    gd, gh, gw = grid_shape(tuple(x.shape[2:]), size)
    x = x.reshape(b, c, gd, size, gh, size, gw, size).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, gd * gh * gw, c, size, size, size)


def from_subvolumes(cells: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`to_subvolumes`."""
    b, _, c, s = cells.shape[:4]
    gd, gh, gw = grid
    x = cells.reshape(b, gd, gh, gw, c, s, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, c, gd * s, gh * s, gw * s)


def random_permutations(batch: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """A full random permutation of ``n`` sub-volumes for every sample: (B, N) long."""
    return torch.argsort(torch.rand(batch, n, generator=generator), dim=1)


def shuffle_subvolumes(x: Tensor, perm: Tensor, size: int = SUBVOLUME) -> Tensor:
    """F_perm: position ``j`` of the output holds sub-volume ``perm[b, j]`` of the input."""
    grid = grid_shape(tuple(x.shape[2:]), size)
    cells = to_subvolumes(x, size)
    batch_index = torch.arange(x.shape[0], device=x.device)[:, None]
    return from_subvolumes(cells[batch_index, perm.to(x.device)], grid)


def cell_coordinates(grid: tuple[int, int, int]) -> Tensor:
    """(N, 3) integer (d, h, w) grid coordinates of every sub-volume, raster order."""
    axes = [torch.arange(g) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def order_targets(perm: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Regression target of every token: the source coordinates of its content, in [-3, 3]: (B, N, 3)."""
    coords = cell_coordinates(grid).to(perm.device)[perm].float()  # (B, N, 3)
    return coords_to_target(coords, grid)


def coords_to_target(coords: Tensor, grid: tuple[int, int, int]) -> Tensor:
    extent = (torch.tensor(grid, dtype=coords.dtype, device=coords.device) - 1).clamp(min=1)
    return coords / extent * (2 * ORDER_SCALE) - ORDER_SCALE


def target_to_coords(target: Tensor, grid: tuple[int, int, int]) -> Tensor:
    extent = (torch.tensor(grid, dtype=target.dtype, device=target.device) - 1).clamp(min=1)
    return (target + ORDER_SCALE) / (2 * ORDER_SCALE) * extent


def order_error_voxels(pred: Tensor, perm: Tensor, grid: tuple[int, int, int], size: int = SUBVOLUME) -> Tensor:
    """Mean Euclidean distance, in voxels of the network input, between predicted and true origins."""
    true = cell_coordinates(grid).to(perm.device)[perm].float()
    return ((target_to_coords(pred.float(), grid) - true).norm(dim=-1) * size).mean()


def order_error_per_axis_voxels(
    pred: Tensor, perm: Tensor, grid: tuple[int, int, int], size: int = SUBVOLUME
) -> Tensor:
    """Mean absolute error along each array axis (RAS: left-right, posterior-anterior, inferior-superior): (3,).

    Tells which directions the order head has learnt; the mean-position baseline is 16 voxels per axis
    on a 4-cell axis.
    """
    true = cell_coordinates(grid).to(perm.device)[perm].float()
    return ((target_to_coords(pred.float(), grid) - true).abs() * size).reshape(-1, 3).mean(dim=0)


def mean_position_error_voxels(grid: tuple[int, int, int], size: int = SUBVOLUME) -> float:
    """Error of the trivial predictor that always answers the grid centre: the bar to beat."""
    coords = cell_coordinates(grid).float()
    centre = (torch.tensor(grid, dtype=torch.float32) - 1) / 2
    return float((coords - centre).norm(dim=-1).mean() * size)


# -- F_src: two spatially related crops ------------------------------------------------------------
def random_crop_offsets(batch: int, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Start of crops 1 and 2 in sub-volume units, independently per axis: (B, 2, 3) in [0, max_shift]."""
    return torch.randint(0, max_shift + 1, (batch, 2, 3), generator=generator)


def crop_pair(x: Tensor, offsets: Tensor, roi: int, size: int = SUBVOLUME) -> tuple[Tensor, Tensor]:
    """F_src: cut two grid-aligned ``roi``³ crops from every volume of ``x`` at ``offsets`` (B, 2, 3)."""
    crops: list[list[Tensor]] = [[], []]
    for b in range(x.shape[0]):
        for v in range(2):
            d, h, w = (int(o) * size for o in offsets[b, v])
            crops[v].append(x[b, :, d : d + roi, h : h + roi, w : w + roi])
    return torch.stack(crops[0]), torch.stack(crops[1])


def matching_tokens(offsets: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Token indices of the shared box in crop 1 and crop 2 of ONE sample (same raster order)."""
    ranges1, ranges2 = [], []
    for axis in range(3):
        o1, o2 = int(offsets[0, axis]), int(offsets[1, axis])
        lo, hi = max(o1, o2), min(o1, o2) + grid  # shared cells in the parent volume's grid
        ranges1.append(torch.arange(lo - o1, hi - o1))
        ranges2.append(torch.arange(lo - o2, hi - o2))

    def raster(r: list[Tensor]) -> Tensor:
        d, h, w = torch.meshgrid(*r, indexing="ij")
        return ((d * grid + h) * grid + w).reshape(-1)

    return raster(ranges1), raster(ranges2)
