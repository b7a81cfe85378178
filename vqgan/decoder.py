"""Convolutional decoder: latent (B, z_channels, h, w) -> image (B, C, h*f, w*f)."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgan.blocks import AttnBlock, Normalize, ResnetBlock, Upsample


class Decoder(nn.Module):
    def __init__(self, *, out_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], z_channels: int, resolution: int, dropout: float = 0.0,
                 mid_attention: bool = True):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        # attention in the middle attends over every latent position; without it the network is convolutional
        self.mid.attn_1 = AttnBlock(block_in) if mid_attention else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        # built from the coarsest level up, stored finest first so that state-dict keys match the official model
        up = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, stage)
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv: the adaptive GAN weight compares gradient norms here."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, z_channels, h, w) -> (B, C, H, W) images, nominally in [-1, 1] (no tanh, as official)."""
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
