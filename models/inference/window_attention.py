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

Only the no-gradient SDPA path changes: with gradients on (training) or ``use_flash_attention`` off
(the fp32 reference path), MONAI's own code runs.
"""

from __future__ import annotations

import functools
import math

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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.use_flash_attention or torch.is_grad_enabled() or torch.jit.is_scripting():
            return super().forward(x, mask)
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        layout = self._layout(n, mask, q.dtype)
        if mask is None:  # one bias for every window of the batch, broadcast
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.biases[0], dropout_p=0.0, scale=self.scale)
        else:  # the windows of each mask pattern together, against that pattern's bias
            out = torch.empty_like(q)
            for index, bias in zip(layout.windows_by_pattern(b), layout.biases, strict=True):
                out[index] = F.scaled_dot_product_attention(q[index], k[index], v[index], attn_mask=bias,
                                                            dropout_p=0.0, scale=self.scale)  # fmt: skip
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    def _layout(self, n: int, mask: torch.Tensor | None, dtype: torch.dtype) -> BiasLayout:
        cache = self.__dict__.setdefault("_bias_cache", {})
        key = (n, dtype, mask is None)
        version = self.relative_position_bias_table._version
        hit = cache.get(key)
        if hit is not None and hit[0] is mask and hit[1] == version:
            return hit[2]
        table = self.relative_position_bias_table
        rel = table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        layout = BiasLayout.build(rel, mask, dtype)
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
        self._positions: dict[int, list[torch.Tensor]] = {}

    @classmethod
    def build(cls, rel: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> BiasLayout:
        """From the (heads, n, n) relative-position bias and the block's (windows, n, n) mask, if shifted."""
        if mask is None:
            return cls([rel.unsqueeze(0).to(dtype).contiguous()], None)
        patterns, pattern_of_window = torch.unique(mask, dim=0, return_inverse=True)
        biases = [(rel + pattern).unsqueeze(0).to(dtype).contiguous() for pattern in patterns]
        return cls(biases, pattern_of_window)

    def windows_by_pattern(self, batch: int) -> list[torch.Tensor]:
        """Per pattern, its positions in a batch of ``batch`` windows (whole images' windows, in order)."""
        if batch not in self._positions:
            assert self.pattern_of_window is not None, "an unshifted block has one bias for all windows"
            pattern = self.pattern_of_window[torch.arange(batch) % len(self.pattern_of_window)]
            self._positions[batch] = [(pattern == p).nonzero().squeeze(1) for p in range(len(self.biases))]
        return self._positions[batch]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.biases)


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
    if enabled:
        swin_unetr.compute_mask = cached_compute_mask
