"""Swin UNETR's window attention for inference: the attention bias is built once per window layout.

Why: on every call MONAI's ``WindowAttention`` (its SDPA path) gathers the relative-position bias, adds the
shifted-window mask and expands the sum to every window of the batch, a (batch x windows, heads, 343, 343)
float tensor per shifted block (350 MB for two 64³ windows at the first stage), after ``BasicLayer`` has
rebuilt that mask in a Python loop over 27 regions. With frozen weights and a fixed window size both are
constants, so here they are computed once and reused by every window batch of a scan (and every scan of
the same size). Only the distinct mask patterns get a bias (at most 8: :class:`BiasLayout`), and SDPA runs
once per pattern on that pattern's windows. The arithmetic is MONAI's (bias + mask, then SDPA with the same
scale), so outputs are identical (``tests/test_window_attention.py``). Measured with
``bench/network_profile.py`` (docs/results.md): faster than MONAI's SDPA path, and the first window batch
no longer pays for building a 300 MB bias.

Queries are computed for real tokens only (:class:`PaddingAwareSwinBlock`): MONAI pads each block's
tokens up to a multiple of the window and crops the padding's outputs away afterwards, and at 64³ windows
24-81 % of a stage's rows are padding. The padding stays among the keys, as in MONAI. 1.2x for a whole
forward pass (one or two 64³ windows, AVX-512 EPYC, ``bench/network_profile.py``); outputs agree to 2e-6.

Only the no-gradient SDPA path changes: with gradients on (training) or ``use_flash_attention`` off
(the fp32 reference path), MONAI's own code runs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import swin_unetr
from torch import nn

_MONAI_COMPUTE_MASK = swin_unetr.compute_mask


@functools.lru_cache(maxsize=8)
def _cached_mask(
    dims: tuple[int, ...], window_size: tuple[int, ...], shift_size: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: training may reuse it
        return _MONAI_COMPUTE_MASK(list(dims), window_size, shift_size, device)


def cached_compute_mask(dims, window_size, shift_size, device) -> torch.Tensor:
    """MONAI's ``compute_mask`` with its result kept (same values; callers only read it)."""
    return _cached_mask(tuple(int(d) for d in dims), tuple(window_size), tuple(shift_size), torch.device(device))


class CachedBiasWindowAttention(swin_unetr.WindowAttention):
    """MONAI's ``WindowAttention`` whose inference path reuses bias + mask (see the module docstring).

    Instances are made by :func:`enable_fast_attention` by changing the class of an existing module, so
    parameters, buffers and state-dict keys stay MONAI's. The cache is keyed by token count and dtype and
    checked against the mask object and the bias table's version counter, so new weights or a new mask
    rebuild it.
    """

    _bias_cache: dict

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: QueryRows | None = None) -> torch.Tensor:
        """MONAI's arguments, plus ``rows``: which query rows are real tokens (:class:`PaddingAwareSwinBlock`)."""
        if not self.use_flash_attention or torch.is_grad_enabled() or torch.jit.is_scripting():
            return super().forward(x, mask)
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if rows is None and mask is None:  # one bias for every window of the batch, broadcast
            layout = self._layout(n, mask, q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.biases[0], dropout_p=0.0, scale=self.scale)
        else:  # windows grouped by (mask pattern, real rows); padding rows stay zero: the block crops them away
            rows = rows if rows is not None else _all_rows(len(mask), n)
            out = torch.zeros_like(q)
            for index, bias, real in self._layout(n, mask, q.dtype, rows).groups(b):
                if real is None:
                    out[index] = F.scaled_dot_product_attention(q[index], k[index], v[index], attn_mask=bias,
                                                                dropout_p=0.0, scale=self.scale)  # fmt: skip
                else:
                    part = F.scaled_dot_product_attention(q[index][:, :, real], k[index], v[index], attn_mask=bias,
                                                          dropout_p=0.0, scale=self.scale)  # fmt: skip
                    out[index[:, None], :, real[None, :]] = part.transpose(1, 2)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    def _layout(
        self, n: int, mask: torch.Tensor | None, dtype: torch.dtype, rows: QueryRows | None = None
    ) -> BiasLayout | RowLayout:
        """The block's :class:`BiasLayout`, or with ``rows`` its :class:`RowLayout` (cached)."""
        cache = self.__dict__.setdefault("_bias_cache", {})
        key = (n, dtype, mask is None, rows)
        version = self.relative_position_bias_table._version
        hit = cache.get(key)
        if hit is not None and hit[0] is mask and hit[1] == version:
            return hit[2]
        table = self.relative_position_bias_table
        rel = table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        layout = BiasLayout.build(rel, mask, dtype)
        if rows is not None:
            layout = RowLayout.build(layout, rows)
        cache[key] = (mask, version, layout)
        return layout


class BiasLayout:
    """The distinct (1, heads, n, n) biases of one window layout, and which windows take which.

    A shifted block's mask has one (n, n) slice per window, but only the windows on the last row of an
    axis straddle the roll's seam, so the slices take at most 2**3 distinct values (interior, last in x,
    ...). Grouping the windows by pattern keeps at most 8 biases instead of one per window (90 MB instead
    of 310 MB for the cpu-demo model's 64³ windows, most of it at the third stage, whose 8 windows are 8
    patterns; the first stage's 125 windows need 11 MB instead of 180 MB). Each window's arithmetic is
    unchanged (bias + mask in fp32, then the run's dtype), so the outputs are identical.
    """

    def __init__(self, biases: list[torch.Tensor], pattern_of_window: torch.Tensor | None) -> None:
        self.biases = biases
        self.pattern_of_window = pattern_of_window

    @classmethod
    def build(cls, rel: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> BiasLayout:
        """From the (heads, n, n) relative-position bias and the block's (windows, n, n) mask, if shifted."""
        if mask is None:
            return cls([rel.unsqueeze(0).to(dtype).contiguous()], None)
        pattern_of_window, first = mask_patterns(mask)
        biases = [(rel + mask[window]).unsqueeze(0).to(dtype).contiguous() for window in first.tolist()]
        return cls(biases, pattern_of_window)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.biases)


def mask_patterns(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows with equal (n, n) slices of a shifted block's mask: (pattern of each window, first window of each).

    MONAI's mask is 0 between two tokens of the same region of the rolled volume and -100 between regions,
    so a slice is fixed by which tokens share a region: per token, the first token of its region (the first
    zero of its row). Comparing those n numbers per window instead of the n² mask entries (``torch.unique``
    over the whole mask sorted 125 x 343² floats, 0.15-0.3 s of a process's first window batch) gives the
    same grouping.
    """
    first_of_region = (mask == 0).to(torch.uint8).argmax(-1)  # (windows, n): argmax gives the first maximum
    _, pattern_of_window = torch.unique(first_of_region, dim=0, return_inverse=True)
    windows = torch.arange(len(mask), device=mask.device)
    first = torch.full((int(pattern_of_window.max()) + 1,), len(mask), dtype=torch.long, device=mask.device)
    first.scatter_reduce_(0, pattern_of_window, windows, reduce="amin")
    return pattern_of_window, first


class RowLayout:
    """A block's biases for its windows' real rows (:class:`QueryRows`), by (mask pattern, row pattern).

    Every block with several biases runs through it: a shifted block without padding has one row pattern
    with every row real (:func:`_all_rows`), so its windows are simply grouped by mask pattern.

    Each combination of a mask pattern and a row pattern that occurs keeps one bias: the whole
    pattern's where every row is real, else only the real rows' (a copy). The full biases of
    :class:`BiasLayout` are not kept, so this holds less (68 against 90 MB for the cpu-demo model's 64³
    windows); :func:`window_bias_bytes` remains its upper bound.
    """

    def __init__(self, combos: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], windows: int) -> None:
        self.combos = combos  # (windows of one image with this combination, bias, real rows or None)
        self.windows = windows
        self._groups: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]] = {}

    @classmethod
    def build(cls, layout: BiasLayout, rows: QueryRows) -> RowLayout:
        windows = len(rows.pattern_of_window)
        if layout.pattern_of_window is None:
            mask_pattern = torch.zeros(windows, dtype=torch.long)
        else:
            assert len(layout.pattern_of_window) == windows, "the mask and the rows describe different layouts"
            mask_pattern = layout.pattern_of_window.cpu()  # on the mask's device; the row patterns are on the CPU
        combined = mask_pattern * len(rows.rows) + rows.pattern_of_window
        combos = []
        for combo in torch.unique(combined).tolist():
            bias, real = layout.biases[combo // len(rows.rows)], rows.rows[combo % len(rows.rows)]
            full = len(real) == bias.shape[-2]
            combos.append(((combined == combo).nonzero().squeeze(1), bias if full else bias[:, :, real].contiguous(),
                           None if full else real))
        return cls(combos, windows)

    def groups(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per combination: its positions in a batch of ``batch`` windows (whole images'), bias, real rows.

        The index tensors are put on the bias's device once here, so a GPU run does not copy them from
        the host on every call.
        """
        if batch not in self._groups:
            images = torch.arange(0, batch, self.windows)
            self._groups[batch] = [
                ((images[:, None] + where[None, :]).reshape(-1).sort().values.to(bias.device), bias,
                 None if real is None else real.to(bias.device))
                for where, bias, real in self.combos
            ]  # fmt: skip
        return self._groups[batch]

    @property
    def nbytes(self) -> int:
        return sum(bias.nbytes for _, bias, _ in self.combos)


@dataclass(frozen=True, eq=False)
class QueryRows:
    """Which rows (tokens) of each window are the block's own tokens, not the padding MONAI adds.

    MONAI pads every block's input up to a multiple of the window (7): at 64³ windows the stages see
    32, 16 and 8 tokens per axis, padded to 35, 21 and 14, so 24 %, 56 % and 81 % of their attention rows
    belong to padding. The block crops those rows away after attention, so their queries need not be
    computed; they still count as keys (MONAI does not mask them), so every key stays. Windows fall into
    a few patterns (along each axis: full, or the last window's few real rows; in a shifted block, the
    rolled equivalents).
    """

    pattern_of_window: torch.Tensor  # (windows of one image,) index into ``rows``
    rows: tuple[torch.Tensor, ...]  # per pattern, the real rows of a window (ascending)


@functools.lru_cache(maxsize=64)
def _all_rows(windows: int, n: int) -> QueryRows:
    """Every row of every window real (a shifted block without padding): one row pattern."""
    return QueryRows(torch.zeros(windows, dtype=torch.long), (torch.arange(n),))


@functools.lru_cache(maxsize=64)
def query_rows(
    size: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]
) -> QueryRows | None:
    """:class:`QueryRows` of a block whose input has ``size`` tokens per axis (None: no padding).

    The block pads each axis to ``padded``, rolls by ``-shift``, and partitions into windows in C order
    (MONAI's ``window_partition``); window ``w``'s row ``i`` along an axis holds padded position
    ``(w * window + i + shift) % padded``, a real token when that is below ``size``.
    """
    padded = [n + (w - n % w) % w for n, w in zip(size, window, strict=True)]
    if padded == list(size):
        return None
    per_axis = [
        [tuple(i for i in range(w) if (start * w + i + s) % p < n) for start in range(p // w)]
        for n, p, w, s in zip(size, padded, window, shift, strict=True)
    ]
    patterns: dict[tuple[tuple[int, ...], ...], int] = {}
    pattern_of_window = [
        patterns.setdefault((a, b, c), len(patterns)) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]
    ]
    _, w1, w2 = window
    rows = tuple(
        torch.tensor([i * w1 * w2 + j * w2 + k for i in a for j in b for k in c], dtype=torch.long)
        for a, b, c in patterns
    )
    return QueryRows(torch.tensor(pattern_of_window, dtype=torch.long), rows)


class PaddingAwareSwinBlock(swin_unetr.SwinTransformerBlock):
    """MONAI's ``SwinTransformerBlock`` whose inference path computes attention for real tokens only.

    ``forward_part1`` is MONAI's (3D: norm, pad, roll, windows, attention, reverse, roll back, crop), with
    the windows' real rows (:func:`query_rows`) passed to :class:`CachedBiasWindowAttention`, which skips
    the padding's queries. Each real row's arithmetic is unchanged. Training, 2D inputs and MONAI's own
    attention take MONAI's code.
    """

    def forward_part1(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        attn = self.attn
        if (x.dim() != 5 or torch.is_grad_enabled() or not isinstance(attn, CachedBiasWindowAttention)
                or not attn.use_flash_attention):  # fmt: skip
            return super().forward_part1(x, mask_matrix)
        b, d, h, w, c = x.shape
        window, shift = swin_unetr.get_window_size((d, h, w), self.window_size, self.shift_size)
        rows = query_rows((d, h, w), tuple(window), tuple(shift))
        if rows is None:
            return super().forward_part1(x, mask_matrix)
        x = self.norm1(x)
        pad = [(ws - n % ws) % ws for n, ws in zip((d, h, w), window, strict=True)]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        dims = [b, *x.shape[1:4]]
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = attn(swin_unetr.window_partition(x, window), mask=mask_matrix if shifted else None, rows=rows)
        x = swin_unetr.window_reverse(windows.view(-1, *window, c), window, dims)
        if shifted:
            x = torch.roll(x, shifts=tuple(shift), dims=(1, 2, 3))
        return x[:, :d, :h, :w, :].contiguous()


def window_bias_bytes(
    roi: tuple[int, ...],
    num_heads: tuple[int, ...] = (3, 6, 12, 24),
    depths: tuple[int, ...] = (2, 2, 2, 2),
    window: int = 7,
) -> int:
    """Bytes the cached float32 biases of a SwinUNETR hold for ``roi`` windows (see :class:`BiasLayout`).

    Stage ``i`` sees ``roi / 2**(i + 1)`` tokens per axis in windows of ``window`` (smaller where the
    stage is smaller, and then unshifted along that axis, as MONAI's ``get_window_size``). Every other
    block is shifted; its mask takes 2 patterns along each shifted axis (interior windows and the last),
    an unshifted block's one; each pattern holds a (heads, n, n) bias. For the cpu-demo model (roi 64)
    this is ~90 MB, a constant of the model, where MONAI builds a bias per window on every call.
    """
    total = 0
    for stage, (heads, depth) in enumerate(zip(num_heads, depths, strict=True)):
        tokens = [r // 2 ** (stage + 1) for r in roi]
        n = math.prod(min(window, t) for t in tokens)
        patterns = math.prod(2 if t > window else 1 for t in tokens)
        for block in range(depth):
            total += (patterns if block % 2 else 1) * heads * n * n * 4
    return total


def enable_fast_attention(network: nn.Module, enabled: bool) -> None:
    """Switch SDPA attention with cached bias on (or MONAI's default attention back on) in every block.

    It only takes effect with gradients off. The first call also makes MONAI's ``compute_mask`` keep its
    results (process-wide; the values are unchanged, so other models and training are unaffected).
    """
    for module in network.modules():
        if isinstance(module, swin_unetr.WindowAttention):
            module.use_flash_attention = enabled
            if enabled and not isinstance(module, CachedBiasWindowAttention):
                module.__class__ = CachedBiasWindowAttention
        elif enabled and type(module) is swin_unetr.SwinTransformerBlock:
            module.__class__ = PaddingAwareSwinBlock
    if enabled:
        swin_unetr.compute_mask = cached_compute_mask
