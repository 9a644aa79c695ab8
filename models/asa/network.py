"""The ASA network: MONAI's SwinUNETR plus the order head and the global and local projectors.

Stock ``SwinUNETR.forward`` returns only the decoder output, but ASA also needs the encoder's
1/16-resolution tokens (one per 16³ sub-volume). :meth:`ASANetwork.forward` runs the U-Net once and
returns both; :meth:`ASANetwork.encode` stops after stage 3, which is all phase 2 and the teacher need.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from monai.networks.nets import SwinUNETR
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import NetworkConfig


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@dataclass
class ASAOutput:
    """What one pass gives. ``tokens`` is (B, N, C) in raster order of the sub-volume grid."""

    tokens: Tensor
    recon: Tensor | None = None


class ASANetwork(nn.Module):
    """Swin UNETR with ASA's heads. The same class serves as student and teacher."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = SwinUNETR(
            in_channels=1,
            out_channels=1,
            feature_size=cfg.feature_size,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            dropout_path_rate=cfg.drop_path,
            use_checkpoint=cfg.use_checkpoint,
            use_flash_attention=cfg.fused_attention,  # MONAI applies it only with gradients off
        )
        channels = 8 * cfg.feature_size  # stage 3 (+ patch merging) width: 384 for feature size 48
        self.token_dim = channels
        self.order_head = mlp([channels, channels, channels, 3])
        self.global_projector = mlp([channels, cfg.projector_hidden, cfg.projector_hidden, cfg.projector_dim])
        self.local_projector = mlp([channels, cfg.local_dim, cfg.local_dim, cfg.local_dim])

    # -- encoder / decoder -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> ASAOutput:
        """Encoder up to the 1/16 tokens only (stage 4 and the decoder are skipped)."""
        vit = self.backbone.swinViT
        x0 = vit.pos_drop(vit.patch_embed(x))
        x1 = vit.layers1[0](x0.contiguous())
        x2 = vit.layers2[0](x1.contiguous())
        x3 = vit.layers3[0](x2.contiguous())
        return ASAOutput(tokens=_flatten_tokens(vit.proj_out(x3, self.backbone.normalize)))

    def forward(self, x: Tensor) -> ASAOutput:
        """Full U-Net pass: tokens and the 1-channel appearance recovery, from one encoder run."""
        net = self.backbone
        hidden = net.swinViT(x, net.normalize)
        enc0 = net.encoder1(x)
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        dec3 = net.decoder5(net.encoder10(hidden[4]), hidden[3])
        dec0 = net.decoder2(net.decoder3(net.decoder4(dec3, enc3), enc2), enc1)
        recon = net.out(net.decoder1(dec0, enc0))
        return ASAOutput(tokens=_flatten_tokens(hidden[3]), recon=recon)

    # -- heads -------------------------------------------------------------------------------------
    def predict_order(self, tokens: Tensor) -> Tensor:
        """(B, N, C) -> (B, N, 3) source coordinates of each token's content, scaled to [-3, 3]."""
        return self.order_head(tokens)

    def global_embedding(self, tokens: Tensor) -> Tensor:
        """Mean of the tokens through the global projector, L2-normalised: (B, D)."""
        return F.normalize(self.global_projector(tokens.mean(dim=1)), dim=-1)

    def local_embedding(self, tokens: Tensor) -> Tensor:
        """Per-token local projection: (B, N, D), L2-normalised unless configured otherwise."""
        z = self.local_projector(tokens)
        return F.normalize(z, dim=-1) if self.cfg.normalize_local else z


def _flatten_tokens(feature_map: Tensor) -> Tensor:
    """(B, C, gd, gh, gw) -> (B, gd·gh·gw, C), raster order of the grid (last axis fastest)."""
    return feature_map.flatten(2).transpose(1, 2)


def build_network(cfg: NetworkConfig) -> ASANetwork:
    return ASANetwork(cfg)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
