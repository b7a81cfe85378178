"""VQGAN: encoder -> 1x1 quant_conv -> codebook -> 1x1 post_quant_conv -> decoder.

Only the autoencoder and codebook live here; the perceptual net and discriminator are training
losses and are never part of a VQGAN checkpoint's model state.
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn as nn

from utils.core.checkpoint import load_checkpoint_file
from utils.core.config import ConfigError, choices, num
from utils.core.errors import UserError
from vqgan.codebook import Codebook
from vqgan.decoder import Decoder
from vqgan.encoder import Encoder
from vqgan.fsq import FSQ
from vqgan.tiles import decode_tiled, encode_tiled


@dataclass
class VQGANConfig:
    """Everything a VQGAN is rebuilt from (stored in its checkpoint as `model_args`)."""
    image_size: Optional[int] = num(None, min=1)      # the resolution the architecture is laid out for (where
                                                      # attention sits); null in a stage-1 config: data.image_size
    channels: Optional[int] = num(None, min=1)        # image channels; null in a stage-1 config: data.channels
    ch: int = num(64, min=1)                          # base channels
    ch_mult: list[int] = num(factory=lambda: [1, 2, 2], min=1)  # per level; f = 2**(levels-1)
    num_res_blocks: int = num(2, min=1)               # residual blocks per level
    attn_resolutions: list[int] = num(factory=lambda: [8], min=1)  # feature-map sides with attention
    mid_attention: bool = True                        # attention in the middle blocks, over every latent position;
                                                      # false: a fully convolutional tokenizer, which treats a whole
                                                      # canvas as it treats the crops it was trained on
    z_channels: int = num(64, min=1)                  # the encoder's output channels (before quant_conv)
    dropout: float = num(0.0, min=0, below=1)         # inside the residual blocks
    codebook_size: Optional[int] = num(None, min=2)   # number of codes; null: 1024 (vq), the levels' product (fsq)
    codebook_dim: Optional[int] = num(None, min=1)    # code vector size (official: embed_dim); null: 8 (vq), the
                                                      # number of levels (fsq)
    codebook_l2_norm: bool = True                     # cosine lookup on unit-norm codes
    codebook_beta: float = num(0.25, min=0)           # weight of the commitment term
    codebook_restart_after: int = num(100, min=0)     # restart codes unused this many steps; 0 = never
    quantizer: str = choices("vq", "fsq", default="vq")  # vq: a learnt codebook (the paper); fsq: finite scalar
                                                      # quantization (vqgan/fsq.py), no codebook, no codebook loss
    tile: Optional[int] = num(None, min=1)            # images larger than this are encoded and decoded in
                                                      # overlapping tiles of this size (vqgan/tiles.py); null in a
                                                      # stage-1 config: data.crop_size (none: whole images)
    fsq_levels: list[int] = num(factory=list, min=2)  # fsq: levels per latent channel, which make
                                                      # codebook_size (their product) and codebook_dim (their count)

    def check(self, where: str) -> None:
        """The model section's own rules; codebook_size and codebook_dim left null are derived (a value given must
        agree with the one derived)."""
        if self.quantizer == "fsq":
            if not self.fsq_levels:
                raise ConfigError(f"model.quantizer=fsq needs model.fsq_levels, e.g. [8, 5, 5, 5] for 1000 codes "
                                  f"({where})")
            n, dim = math.prod(self.fsq_levels), len(self.fsq_levels)
            if self.codebook_size not in (None, n) or self.codebook_dim not in (None, dim):
                raise ConfigError(f"model.fsq_levels={self.fsq_levels} make {n} codes of dimension {dim}, but "
                                  f"model.codebook_size={self.codebook_size} and model.codebook_dim="
                                  f"{self.codebook_dim} ({where}); leave them out, or set model.codebook_size={n} "
                                  f"model.codebook_dim={dim}")
        elif self.fsq_levels:
            raise ConfigError(f"model.fsq_levels={self.fsq_levels} is for model.quantizer=fsq, this model's is "
                              f"{self.quantizer} ({where})")
        else:
            n, dim = 1024, 8
        self.codebook_size = n if self.codebook_size is None else self.codebook_size
        self.codebook_dim = dim if self.codebook_dim is None else self.codebook_dim
        for c in [self.ch * k for k in self.ch_mult] + [self.z_channels]:
            if c % 32:
                raise ConfigError(f"model.ch x model.ch_mult and model.z_channels must be multiples of 32 "
                                  f"(GroupNorm with 32 groups), got {c} ({where})")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        if None in (cfg.image_size, cfg.channels, cfg.codebook_size, cfg.codebook_dim):
            raise ValueError("VQGANConfig.image_size, .channels, .codebook_size and .codebook_dim must be set (a "
                             "config's model section gets them from VQGANConfig.check and the data)")
        self.cfg, self.image_size, self.channels = cfg, cfg.image_size, cfg.channels
        arch = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout,
                    attn_resolutions=cfg.attn_resolutions, z_channels=cfg.z_channels, resolution=cfg.image_size,
                    mid_attention=cfg.mid_attention)
        self.encoder = Encoder(in_channels=cfg.channels, **arch)
        self.decoder = Decoder(out_channels=cfg.channels, **arch)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        if cfg.quantizer == "fsq":
            self.codebook = FSQ(cfg.fsq_levels)
        else:
            self.codebook = Codebook(cfg.codebook_size, cfg.codebook_dim, beta=cfg.codebook_beta,
                                     l2_norm=cfg.codebook_l2_norm, restart_after=cfg.codebook_restart_after)

    def encode(self, x: torch.Tensor):
        """x: (B, C, H, W) in [-1, 1] -> z_q (B, D, h, w), codebook loss, indices (B, h, w)."""
        return self.codebook(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q: (B, D, h, w) code vectors -> (B, C, H, W) images."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor):
        """Training forward. x: (B, C, H, W) -> x_rec (B, C, H, W), codebook loss, {"indices": (B, h, w)}. An image
        larger than the model's tile (one it was not trained on) goes through the tiles, with no loss."""
        if self._tiled(x.shape[-2:]):
            indices = self.encode_to_indices(x)
            return self.decode_indices(indices), x.new_zeros(()), {"indices": indices}
        z_q, vq_loss, indices = self.encode(x)
        return self.decode(z_q), vq_loss, {"indices": indices}

    def _tiled(self, size) -> bool:
        return self.cfg.tile is not None and max(size) > self.cfg.tile

    @torch.no_grad()
    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, h, w) long code indices."""
        if self._tiled(x.shape[-2:]):
            return encode_tiled(self.encode_to_indices, x, self.cfg.tile, self.cfg.downsample_factor)
        return self.codebook.indices(self.quant_conv(self.encoder(x)))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (B, h, w) long -> (B, C, H, W) images."""
        f = self.cfg.downsample_factor
        if self._tiled((indices.shape[-2] * f, indices.shape[-1] * f)):
            return decode_tiled(self.decode_indices, indices, self.cfg.tile, f)
        return self.decode(self.codebook.lookup(indices))

    @property
    def latent_size(self) -> int:
        return self.image_size // self.cfg.downsample_factor

    @property
    def model_args(self) -> dict:
        """The plain dict this model is rebuilt from: VQGAN(VQGANConfig(**model_args))."""
        return asdict(self.cfg)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", use_ema: bool = True) -> "VQGAN":
        """A stage-1 checkpoint (a path or its loaded dict) -> its VQGAN (EMA weights when it has them) in eval
        mode, frozen."""
        ckpt = load_checkpoint_file(path, "vqgan", map_location) if isinstance(path, str) else path
        model = cls(VQGANConfig(**model_args_of(ckpt)))
        state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise UserError(f"checkpoint '{path}' does not match its own model config: {str(e).splitlines()[0]}") from None
        return model.eval().requires_grad_(False)


def model_args_of(ckpt: dict) -> dict:
    """A stage-1 checkpoint's `model_args`; checkpoints written before they were stored give the same dict from
    their config's model and data sections."""
    if "model_args" in ckpt:
        args = dict(ckpt["model_args"])
    else:
        args, data = dict(ckpt["config"]["model"]), ckpt["config"]["data"]
        args["image_size"] = args.get("image_size") or int(data["image_size"])
        args["channels"] = args.get("channels") or int(data.get("channels", 3))
    unknown = sorted(set(args) - {f.name for f in fields(VQGANConfig)})
    if unknown:
        raise UserError(f"model config has unknown keys {unknown}; this checkpoint was written by another version")
    return args
