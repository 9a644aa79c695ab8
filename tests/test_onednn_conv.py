"""Single-window 3D convolutions go to oneDNN on the CPU fast path, with PyTorch's own output."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from models.inference.onednn_conv import OneDnnConv3d, enable_onednn_convolutions


def _kernels(module: nn.Module, x: torch.Tensor) -> set[str]:
    """The convolution kernels that one forward of ``module`` on ``x`` ran: "native" and/or "onednn"."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    keys = {e.key for e in prof.key_averages()}
    return {name for name, op in (("native", "aten::slow_conv3d"), ("onednn", "aten::mkldnn_convolution"))
            if any(k.startswith(op) for k in keys)}


def _pytorch_routed(module: nn.Module, x: torch.Tensor) -> int:
    """How many convolutions of one forward went through PyTorch's ``aten::convolution`` (its own choice).

    The direct oneDNN call skips that op, whichever kernel PyTorch would have picked, so this tells the
    two routes apart even where both end in oneDNN (a batch of two).
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::convolution")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2, padding=1))


def test_a_single_small_window_runs_on_onednn_with_the_same_output() -> None:
    """PyTorch picks its native kernel for this input (1 x 4 x 16 x 16 < 20,480); the switch picks oneDNN."""
    net, x = _net(), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        reference = net(x)
        assert _kernels(net, x) == {"native"}
        enable_onednn_convolutions(net, True)
        assert all(isinstance(m, OneDnnConv3d) for m in net if not isinstance(m, nn.ReLU))
        assert _kernels(net, x) == {"onednn"} and _pytorch_routed(net, x) == 0
        torch.testing.assert_close(net(x), reference, atol=1e-5, rtol=0)
        enable_onednn_convolutions(net, False)
        assert _kernels(net, x) == {"native"}
    assert set(net.state_dict()) == set(_net().state_dict())  # the class swap keeps the weights' keys


@pytest.mark.parametrize("case", ["batch of two", "gradients on", "bf16 autocast"])
def test_other_inputs_keep_pytorch_s_own_choice(case: str) -> None:
    """Batches of two or more, training and autocast go through ``nn.Conv3d.forward`` unchanged."""
    net, x = _net(), torch.rand(2 if case == "batch of two" else 1, 1, 16, 16, 16)
    enable_onednn_convolutions(net, True)
    reference = _net()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16 autocast"):
        with torch.set_grad_enabled(case == "gradients on"):
            got, want = net(x), reference(x)
            kernels, reference_kernels = _kernels(net, x), _kernels(reference, x)
            routed = _pytorch_routed(net, x)
    assert kernels == reference_kernels
    assert routed == 2  # both convolutions: PyTorch chose, not the direct call
    torch.testing.assert_close(got, want, atol=0, rtol=0)
