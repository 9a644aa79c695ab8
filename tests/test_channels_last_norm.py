"""Channels-last instance norm: PyTorch's values, channels-last out, PyTorch's own code for everything else."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn
from torch.profiler import ProfilerActivity, profile

from models.inference import channels_last_norm
from models.inference.channels_last_norm import (
    ChannelsLastInstanceNorm3d,
    channels_last_instance_norm,
    enable_channels_last_norm,
)
from models.inference.predict import predict_probabilities

CL = torch.channels_last_3d


def _norm(channels: int, affine: bool, seed: int = 0) -> nn.InstanceNorm3d:
    torch.manual_seed(seed)
    norm = nn.InstanceNorm3d(channels, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    return norm.eval()


@pytest.mark.parametrize("shape", [(1, 12, 16, 16, 16), (2, 24, 8, 8, 8), (1, 5, 7, 5, 3), (1, 48, 2, 2, 2)])
@pytest.mark.parametrize("affine", [False, True])
def test_values_are_pytorch_s_and_the_output_stays_channels_last(shape: tuple[int, ...], affine: bool) -> None:
    """Positions divisible by the group and not (7 x 5 x 3), with and without weights; an offset mean."""
    norm = _norm(shape[1], affine)
    x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=CL)
    with torch.no_grad():
        want = norm(x.contiguous())
        got = channels_last_instance_norm(x, norm.weight, norm.bias, norm.eps)
    assert got.is_contiguous(memory_format=CL) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def _copies(module: nn.Module, x: torch.Tensor) -> int:
    """How many copies of a tensor of ``x``'s size one forward makes (small per-channel ones not counted).

    PyTorch's route copies a channels-last input to channels-first first.
    """
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        module(x)
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
               if e.key == "aten::copy_" and e.input_shapes and math.prod(e.input_shapes[0]) == x.numel())


def test_the_switch_takes_the_channels_last_route_without_copies_and_back() -> None:
    norm = _norm(12, affine=True)
    reference = _norm(12, affine=True)
    x = torch.randn(1, 12, 8, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad():
        assert _copies(norm, x) > 0  # PyTorch's own route: the detour through channels-first
        enable_channels_last_norm(norm, True)
        assert isinstance(norm, ChannelsLastInstanceNorm3d)
        assert _copies(norm, x) == 0
        out = norm(x)
        assert out.is_contiguous(memory_format=CL)
        torch.testing.assert_close(out, reference(x), rtol=0, atol=2e-6)
        enable_channels_last_norm(norm, False)
        assert _copies(norm, x) > 0
    assert set(norm.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("case", ["channels first", "gradients on", "bf16", "running statistics"])
def test_other_inputs_take_pytorch_s_code(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    norm = nn.InstanceNorm3d(6, affine=True, track_running_stats=case == "running statistics").eval()
    enable_channels_last_norm(norm, True)
    x = torch.randn(1, 6, 4, 4, 4, dtype=torch.bfloat16 if case == "bf16" else torch.float32)
    x = x if case == "channels first" else x.contiguous(memory_format=CL)
    calls = []
    monkeypatch.setattr(channels_last_norm, "channels_last_instance_norm", lambda *args: calls.append(args))
    with torch.set_grad_enabled(case == "gradients on"):
        norm(x)
    assert calls == []
    norm.channels_last, norm.track_running_stats = True, False  # the same call with the route's conditions met
    with torch.no_grad():
        norm(x.float().contiguous(memory_format=CL))
    assert len(calls) == 1


def test_a_swin_unetr_forward_on_the_fast_path_matches_pytorch_s_norm() -> None:
    """The whole network, channels-last as ``asa segment`` runs it, with and without the switch."""
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_flash_attention=True).eval()
    x = torch.rand(1, 1, 64, 64, 64)
    kwargs = {"device": torch.device("cpu"), "sw_batch_size": 1, "overlap": 0.0, "fast_path": True}
    with_switch = predict_probabilities(net, x[0], (64, 64, 64), **kwargs)
    assert any(isinstance(m, ChannelsLastInstanceNorm3d) and m.channels_last for m in net.modules())
    enable_channels_last_norm(net, False)
    with torch.inference_mode():
        logits = net(x.contiguous(memory_format=CL))
    torch.testing.assert_close(with_switch, torch.softmax(logits, 1)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 24, 8, 8, 8), (1, 5, 7, 5, 3)])
def test_the_squares_summed_chunk_by_chunk_give_the_same_values(shape, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks (one row at a time; 100 rows then a partial 5) against PyTorch, as at 64³ in use."""
    monkeypatch.setattr(channels_last_norm, "CHUNK_FLOATS", 500)
    norm = _norm(shape[1], affine=True)
    x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(channels_last_instance_norm(x, norm.weight, norm.bias, norm.eps),
                                   norm(x.contiguous()), rtol=0, atol=2e-6)
