"""Student, EMA teacher and the two ASA phases in one module (DINOv2's SSLMetaArch pattern).

``ASA.phase1`` and ``ASA.phase2`` take a batch, draw their pretext randomness from the given
generator, and return the weighted loss plus detached metrics. The caller owns the optimiser and
calls :meth:`ASA.update_teacher` after every optimiser step, in both phases.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from models.asa import losses, pretext
from models.asa.network import ASANetwork
from models.config import SUBVOLUME, PretrainConfig


class ASA(nn.Module):
    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = ASANetwork(cfg.network)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> ASA:
        """The teacher always runs in eval mode (no drop-path), unlike the reference code's first epoch."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, every parameter; buffers are copied."""
        s_params = list(self.student.parameters())
        t_params = list(self.teacher.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)
        for b_t, b_s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            b_t.copy_(b_s)

    def _autocast(self, device: torch.device) -> AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- phase 1: order prediction + appearance recovery + global consistency ---------------------
    def phase1(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """``x``: (B, 1, roi, roi, roi) preprocessed volumes in [0, 1]."""
        grid = pretext.grid_shape(tuple(x.shape[2:]))
        n = grid[0] * grid[1] * grid[2]
        perm = pretext.random_permutations(x.shape[0], n, generator).to(x.device)
        shuffled = pretext.shuffle_subvolumes(x, perm)
        w = self.cfg.loss
        with self._autocast(x.device):
            out = self.student(shuffled)
            pred = self.student.predict_order(out.tokens)
            s_global = self.student.global_embedding(out.tokens)
            with torch.no_grad():
                t_input = x if self.cfg.teacher_input == "original" else shuffled
                t_global = self.teacher.global_embedding(self.teacher.encode(t_input).tokens)
        l_vop = losses.order_loss(pred, pretext.order_targets(perm, grid))
        l_var = losses.recovery_loss(out.recon, x)
        l_global = losses.global_loss(s_global, t_global)
        loss = w.vop * l_vop + w.var * l_var + w.global1 * l_global
        metrics = {
            "loss": loss.item(),
            "loss_vop": l_vop.item(),
            "loss_var": l_var.item(),
            "loss_global": l_global.item(),
            "order_error_vox": pretext.order_error_voxels(pred.detach(), perm, grid).item(),
        }
        return loss, metrics

    # -- phase 2: global + local consistency of two overlapping crops ------------------------------
    def phase2(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """``x``: (B, 1, S, S, S) with S = roi + 16·max_shift; two grid-aligned roi³ crops are cut from it."""
        roi, b = self.cfg.data.roi, x.shape[0]
        max_shift = (x.shape[2] - roi) // SUBVOLUME
        offsets = pretext.random_crop_offsets(b, max_shift, generator)
        c1, c2 = pretext.crop_pair(x, offsets, roi)
        crops = torch.cat([c1, c2])  # one pass for both views: no batch statistics in the encoder
        with self._autocast(x.device):
            s_tokens = self.student.encode(crops).tokens
            s_global = self.student.global_embedding(s_tokens)
            s_local = self.student.local_embedding(s_tokens)
            with torch.no_grad():
                t_tokens = self.teacher.encode(crops).tokens
                t_global = self.teacher.global_embedding(t_tokens)
                t_local = self.teacher.local_embedding(t_tokens)
        grid = roi // SUBVOLUME
        pairs = [pretext.matching_tokens(offsets[i], grid) for i in range(b)]
        swapped = [(j, i) for i, j in pairs]
        l_global = losses.global_loss(s_global[:b], t_global[b:]) + losses.global_loss(s_global[b:], t_global[:b])
        l_local = 0.5 * (
            losses.local_loss(s_local[:b], t_local[b:], pairs) + losses.local_loss(s_local[b:], t_local[:b], swapped)
        )
        w = self.cfg.loss
        loss = w.global2 * l_global + w.local * l_local
        return loss, {"loss": loss.item(), "loss_global": l_global.item(), "loss_local": l_local.item()}
