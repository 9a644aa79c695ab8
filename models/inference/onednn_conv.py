"""3D convolutions of single windows on oneDNN, where PyTorch's CPU heuristic would pick its slow native kernel.

Why: for a batch of one, PyTorch runs a float32 3D convolution with its native ``slow_conv3d`` kernel
unless batch x channels x depth x height exceeds 20,480, on the grounds that it is faster for small
inputs. For Swin UNETR's windows that rule is wrong: at feature size 12 and 64³ windows the first
convolution (1 channel at 64³) and the 32³ and smaller stages all take the native kernel, 19 % of a
forward pass at one thread. ``asa segment`` runs one window per stream whenever a window batch is odd
or only one window per stream fits (roi 96). Calling oneDNN's convolution directly for those inputs
measured 1.18x for the whole forward of one 64³ window (``bench/onednn_conv.py``, one thread, medians
of 7, off and on alternating). The same bench on a batch of two, where the switch changes nothing
(identical outputs), measured 1.10x, which is this machine's noise. For batches of two PyTorch already
picks oneDNN (calling it directly there measured 0.95x), so they are left to PyTorch. Outputs differ by
float rounding (3e-6).
"""

from __future__ import annotations

import torch
from torch import nn

from models.inference.module_switch import switch_modules


class OneDnnConv3d(nn.Conv3d):
    """``nn.Conv3d`` that sends batch-1 float32 CPU inputs with gradients off to oneDNN (when ``onednn``).

    Made by :func:`enable_onednn_convolutions` by changing the class of an existing module, so weights,
    hooks and state-dict keys stay as they are.
    """

    onednn: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.onednn
            and x.shape[0] == 1
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")  # the direct call would bypass autocast's cast to bf16
        ):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super().forward(x)


def enable_onednn_convolutions(network: nn.Module, enabled: bool) -> None:
    """Switch the batch-1 oneDNN route on (or PyTorch's own choice back on) in every ``nn.Conv3d``."""
    switch_modules(network, nn.Conv3d, OneDnnConv3d, "onednn", enabled)
