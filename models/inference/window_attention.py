"""Swin UNETR's window attention for inference: the attention bias is built once per window layout.

Why: on every call MONAI's ``WindowAttention`` (its SDPA path) gathers the relative-position bias, adds the
shifted-window mask and expands the sum to every window of the batch, a (batch x windows, heads, 343, 343)
float tensor per shifted block (350 MB for two 64³ windows at the first stage), after ``BasicLayer`` has
rebuilt that mask in a Python loop over 27 regions. With frozen weights and a fixed window size both are
constants, so here they are computed once and reused by every window batch of a scan (and every scan of
the same size), and SDPA runs once per image of the batch against the (windows, heads, n, n) bias instead
of an expanded copy. The arithmetic is MONAI's (bias + mask, then SDPA with the same scale), so outputs are
identical (``tests/test_window_attention.py``); two 64³ windows of the cpu-demo model take 1.05 s against
1.25 s for MONAI's SDPA path on 2 CPU threads (``bench/network_profile.py``; ~10 % less at roi 96).

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
        bias = self._bias(n, mask, q.dtype)  # (windows, heads, n, n), or (1, heads, n, n) without a mask
        step = b if mask is None else bias.shape[0]  # the batch holds whole images' windows in order
        out = torch.cat([
            F.scaled_dot_product_attention(q[i:i + step], k[i:i + step], v[i:i + step], attn_mask=bias,
                                           dropout_p=0.0, scale=self.scale)
            for i in range(0, b, step)
        ])  # fmt: skip
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    def _bias(self, n: int, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        cache = self.__dict__.setdefault("_bias_cache", {})
        key = (n, dtype, mask is None)
        version = self.relative_position_bias_table._version
        hit = cache.get(key)
        if hit is not None and hit[0] is mask and hit[1] == version:
            return hit[2]
        table = self.relative_position_bias_table
        rel = table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        windows = 1 if mask is None else mask.shape[0]
        bias = torch.empty((windows, *rel.shape), dtype=dtype, device=rel.device)  # one pass, in the run's dtype
        if mask is None:
            bias.copy_(rel.unsqueeze(0))
        else:
            torch.add(rel.unsqueeze(0), mask.unsqueeze(1).to(rel.dtype), out=bias)  # summed in fp32, then cast
        cache[key] = (mask, version, bias)
        return bias


def window_bias_bytes(
    roi: tuple[int, ...],
    num_heads: tuple[int, ...] = (3, 6, 12, 24),
    depths: tuple[int, ...] = (2, 2, 2, 2),
    window: int = 7,
) -> int:
    """Bytes the cached float32 biases of a SwinUNETR hold for ``roi`` windows (see the module docstring).

    Stage ``i`` sees ``roi / 2**(i + 1)`` tokens per axis in windows of ``window`` (smaller where the
    stage is smaller, and then unshifted, as MONAI's ``get_window_size``). Every other block is shifted;
    its bias has one (heads, n, n) slice per window, an unshifted block's a single one. For the
    cpu-demo model (roi 64) this is ~300 MB, for roi 96 ~700 MB: a constant of the model, where MONAI
    builds the shifted part anew, and once per window of the batch, on every call.
    """
    total = 0
    for stage, (heads, depth) in enumerate(zip(num_heads, depths, strict=True)):
        tokens = [r // 2 ** (stage + 1) for r in roi]
        sizes = [min(window, t) for t in tokens]
        shifted = any(t > window for t in tokens)
        n = math.prod(sizes)
        windows = math.prod(-(-t // w) for t, w in zip(tokens, sizes, strict=True))
        for block in range(depth):
            total += (windows if shifted and block % 2 else 1) * heads * n * n * 4
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
