"""The cached-bias window attention gives MONAI's outputs, follows new weights and leaves training alone."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR, swin_unetr

from models.inference import window_attention
from models.inference.window_attention import (
    CachedBiasWindowAttention,
    PaddingAwareSwinBlock,
    enable_fast_attention,
    mask_patterns,
    query_rows,
    window_bias_bytes,
)

ROI = (64, 32, 32)  # stage 1: 32 x 16 x 16 tokens in 5 x 3 x 3 shifted windows of 7³ (masks and padding exercised)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _pair(seed: int = 0) -> tuple[SwinUNETR, SwinUNETR]:
    torch.manual_seed(seed)
    reference = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_flash_attention=True).eval()
    for module in reference.modules():  # random relative-position biases (MONAI starts them near zero)
        if isinstance(module, swin_unetr.WindowAttention):
            torch.nn.init.normal_(module.relative_position_bias_table, std=1.0)
    fast = copy.deepcopy(reference)
    enable_fast_attention(fast, True)
    return reference, fast


def _attention_modules(net: torch.nn.Module) -> list[swin_unetr.WindowAttention]:
    return [m for m in net.modules() if isinstance(m, swin_unetr.WindowAttention)]


@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_match_monai_sdpa_and_default_attention(batch: int) -> None:
    reference, fast = _pair()
    x = torch.rand(batch, 1, *ROI)
    with torch.inference_mode():
        want = reference(x)
        got = fast(x)
        again = fast(x)  # second call: served from the cache
        enable_fast_attention(reference, False)  # MONAI's default attention (reference stays MONAI's class)
        default = reference(x)
    assert all(isinstance(m, CachedBiasWindowAttention) for m in _attention_modules(fast))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    torch.testing.assert_close(got, default, rtol=1e-4, atol=1e-4)


def test_batches_of_different_sizes_share_one_bias_per_layout() -> None:
    _, fast = _pair()
    with torch.inference_mode():
        fast(torch.rand(2, 1, *ROI))
        fast(torch.rand(1, 1, *ROI))  # a sliding window's last, smaller batch
    sizes = [len(m._bias_cache) for m in _attention_modules(fast)]
    assert max(sizes) == 1, sizes  # keyed by layout, not by batch size


def test_new_weights_rebuild_the_bias() -> None:
    _, fast = _pair(seed=0)
    other, _ = _pair(seed=1)
    x = torch.rand(1, 1, *ROI)
    with torch.inference_mode():
        fast(x)  # fills the cache with seed 0's bias
    fast.load_state_dict(other.state_dict())  # copy_ bumps the tables' version counters
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), other(x), rtol=1e-5, atol=1e-5)


def test_training_runs_monai_code_and_backpropagates_after_inference() -> None:
    reference, fast = _pair()
    x = torch.rand(1, 1, *ROI)
    with torch.inference_mode():
        fast(x)  # cached masks and biases now exist
    fast.train()
    reference.train()
    loss_fast = fast(x).square().mean()
    loss_ref = reference(x).square().mean()
    loss_fast.backward()
    loss_ref.backward()
    torch.testing.assert_close(loss_fast, loss_ref)
    table = _attention_modules(fast)[0].relative_position_bias_table
    torch.testing.assert_close(table.grad, _attention_modules(reference)[0].relative_position_bias_table.grad)


def test_disabling_restores_monai_default_attention() -> None:
    reference, fast = _pair()
    enable_fast_attention(fast, False)
    assert not any(m.use_flash_attention for m in _attention_modules(fast))
    enable_fast_attention(reference, False)
    x = torch.rand(1, 1, *ROI)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=0)


def test_cache_size_is_what_the_memory_estimate_reserves() -> None:
    _, fast = _pair()
    with torch.inference_mode():
        fast(torch.rand(2, 1, *ROI))
    cached = sum(entry[2].nbytes for m in _attention_modules(fast) for entry in m._bias_cache.values())
    # the real rows' biases (RowLayout) hold less than the full ones the estimate counts
    assert 0.5 * window_bias_bytes(ROI) < cached <= window_bias_bytes(ROI)
    assert 80e6 < window_bias_bytes((64, 64, 64)) < 100e6  # the cpu-demo model: the figure the docs quote


@pytest.mark.parametrize("size", [(8, 8, 8), (16, 9, 32), (10, 20, 7), (14, 21, 15)])
@pytest.mark.parametrize("shift", [(0, 0, 0), (3, 3, 3)])
def test_query_rows_are_the_real_tokens_of_monai_s_windows(size: tuple[int, int, int], shift) -> None:
    """Mark the real tokens, then pad, roll and partition them as MONAI's block does."""
    window = (7, 7, 7)
    rows = query_rows(size, window, shift)
    pad = [(7 - n % 7) % 7 for n in size]
    if not any(pad):
        assert rows is None
        return
    real = torch.nn.functional.pad(torch.ones(1, *size, 1), (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    real = torch.roll(real, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    windows = swin_unetr.window_partition(real, window)[..., 0]  # (windows, 343): 1 where a token is real
    assert len(rows.pattern_of_window) == len(windows)
    for w, marks in enumerate(windows):
        torch.testing.assert_close(rows.rows[int(rows.pattern_of_window[w])], marks.nonzero().squeeze(1))


def test_attention_runs_only_for_real_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    _, fast = _pair()
    assert sum(isinstance(m, PaddingAwareSwinBlock) for m in fast.modules()) == 8
    queries = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        if q.shape[1] == 3:  # the first stage's heads: 32 x 16 x 16 tokens, padded to 35 x 21 x 21
            queries.append(q.shape[0] * q.shape[2])
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(window_attention.F, "scaled_dot_product_attention", counting)
    with torch.inference_mode():
        fast(torch.rand(2, 1, *ROI))
    assert sum(queries) == 2 * 2 * 32 * 16 * 16  # two blocks, two images, real tokens only (padded: 15,435)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [14, 10])  # a multiple of the window (no padding, every row real), then padded
def test_a_basic_layer_matches_monai_with_and_without_padding(size: int, device: str) -> None:
    torch.manual_seed(0)
    reference = swin_unetr.BasicLayer(dim=12, depth=2, num_heads=3, window_size=(7, 7, 7), drop_path=[0.0, 0.0],
                                      use_flash_attention=True).eval()  # fmt: skip
    for module in reference.modules():
        if isinstance(module, swin_unetr.WindowAttention):
            torch.nn.init.normal_(module.relative_position_bias_table, std=1.0)
    reference = reference.to(device)  # on CUDA the masks and biases live there, the row indices start on the CPU
    fast = copy.deepcopy(reference)
    enable_fast_attention(fast, True)
    x = torch.rand(2, 12, size, size, size, device=device)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [(35, 21, 21), (14, 14, 14), (21, 14, 7)])
def test_mask_patterns_group_windows_as_comparing_whole_masks_does(dims: tuple[int, int, int]) -> None:
    mask = swin_unetr.compute_mask(list(dims), (7, 7, 7), (3, 3, 3), torch.device("cpu"))
    pattern, first = mask_patterns(mask)
    _, reference = torch.unique(mask, dim=0, return_inverse=True)
    assert torch.equal(pattern[:, None] == pattern[None, :], reference[:, None] == reference[None, :])
    assert torch.equal(mask[first[pattern]], mask)  # each window's pattern is represented by an equal slice
    assert all(int(first[p]) == int((pattern == p).nonzero()[0]) for p in range(len(first)))  # the first window
