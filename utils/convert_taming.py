"""Convert an official taming-transformers VQGAN (Lightning .ckpt + its YAML) into this project's checkpoint.

    python -m utils.convert_taming --ckpt last.ckpt --config model.yaml --out vqgan.pt

The result loads with `VQGAN.from_checkpoint` and behaves as the official model: same architecture,
plain (non-normalised) codes, no dead-code restart.
"""
import argparse
import sys
import warnings

import torch
import yaml

from utils.core.checkpoint import FORMAT, save_atomic
from utils.core.config import ConfigError, load_config, to_dict
from utils.train.stage1_config import Stage1Config
from utils.core.errors import UserError, command
from vqgan.discriminator import PatchDiscriminator
from vqgan.model import VQGAN

_PREFIXES = {"encoder.": "encoder.", "decoder.": "decoder.", "quant_conv.": "quant_conv.",
             "post_quant_conv.": "post_quant_conv.", "quantize.embedding.": "codebook.embedding."}


def _load_lightning(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at '{path}'") from None
    except Exception as e:
        warnings.warn(f"'{path}' holds pickled objects besides tensors ({type(e).__name__}); loading it in full. "
                      "Only do this with a file from a trusted source: unpickling can run code.")
        print(f"warning: full (unsafe) load of '{path}': only use checkpoints from a trusted source", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)


def official_to_config(params: dict) -> Stage1Config:
    """The `model.params` section of an official YAML -> our Stage1Config (the discriminator's shape from its
    lossconfig, with the official defaults)."""
    try:
        dd = params["ddconfig"]
        if dd.get("double_z", False):
            raise UserError("ddconfig.double_z=True is a KL autoencoder, not a VQGAN")
        if dd["in_channels"] != dd["out_ch"]:
            raise UserError(f"in_channels={dd['in_channels']} != out_ch={dd['out_ch']} is not supported")
        model = {"ch": dd["ch"], "ch_mult": list(dd["ch_mult"]), "num_res_blocks": dd["num_res_blocks"],
                 "attn_resolutions": list(dd["attn_resolutions"]), "z_channels": dd["z_channels"],
                 "dropout": float(dd.get("dropout", 0.0)), "codebook_size": params["n_embed"],
                 "codebook_dim": params["embed_dim"], "codebook_l2_norm": False, "codebook_restart_after": 0}
        data = {"image_size": dd["resolution"], "channels": dd["in_channels"]}
        lp = (params.get("lossconfig") or {}).get("params") or {}
        loss = {"disc_layers": lp.get("disc_num_layers", 3), "disc_channels": lp.get("disc_ndf", 64)}
    except KeyError as e:
        raise UserError(f"the official config lacks model.params key {e}") from None
    try:
        return load_config(Stage1Config, base={"run": {"name": "converted"}, "model": model, "data": data,
                                               "loss": loss},
                           base_name="the official config", overrides=["loss.disc_start=1000000000"])
    except ConfigError as e:
        raise UserError(f"cannot express the official config here: {e}") from None


def convert(ckpt_path: str, config_path: str) -> dict:
    try:
        with open(config_path) as f:
            params = yaml.safe_load(f)["model"]["params"]
    except FileNotFoundError:
        raise UserError(f"no config at '{config_path}'") from None
    except (KeyError, TypeError):
        raise UserError(f"'{config_path}' has no model.params section (an official taming YAML has one)") from None
    cfg = official_to_config(params)
    raw = _load_lightning(ckpt_path)
    sd = raw.get("state_dict", raw)
    model = VQGAN(cfg.model)
    state = model.state_dict()  # fresh usage buffers, weights replaced below
    loaded = set()
    for k, v in sd.items():
        for src, dst in _PREFIXES.items():
            if k.startswith(src):
                name = dst + k[len(src):]
                if name not in state or state[name].shape != v.shape:
                    raise UserError(f"official key '{k}' {tuple(v.shape)} does not fit this architecture")
                state[name] = v.float()
                loaded.add(name)
    missing = [k for k, _ in model.named_parameters() if k not in loaded]
    if missing:
        raise UserError(f"the official checkpoint lacks {len(missing)} weights, e.g. '{missing[0]}'")
    model.load_state_dict(state, strict=True)
    out = {"kind": "vqgan", "format": FORMAT, "config": to_dict(cfg), "model_args": model.model_args,
           "model": model.state_dict(), "step": int(raw.get("global_step", 0)), "converted_from": ckpt_path}
    disc = convert_discriminator(sd, cfg)
    if disc is not None:
        out["disc"] = disc
    return out


def convert_discriminator(sd: dict, cfg: Stage1Config):
    """The official PatchGAN's weights (`loss.discriminator.*`, the same layers as ours) as our discriminator's
    state dict, so that fine-tuning (train.init_from) continues with the trained discriminator; None when the
    checkpoint has none, or one of another design (then fine-tuning starts a new one, and this says so)."""
    prefix = "loss.discriminator."
    weights = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    if not weights:
        return None
    disc = PatchDiscriminator(cfg.data.channels, cfg.loss.disc_channels, cfg.loss.disc_layers)
    try:
        disc.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        print(f"note: the official discriminator was not converted ({str(e).splitlines()[0][:120]}); fine-tuning "
              "from this file starts a new one", file=sys.stderr)
        return None
    return disc.state_dict()


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="official Lightning checkpoint (.ckpt)")
    p.add_argument("--config", required=True, help="its YAML (with model.params)")
    p.add_argument("--out", required=True, help="where to write this project's checkpoint (.pt)")
    args = p.parse_args(argv)
    ckpt = convert(args.ckpt, args.config)
    save_atomic(ckpt, args.out)
    m = ckpt["config"]["model"]
    print(f"wrote {args.out}: {m['codebook_size']} codes x {m['codebook_dim']}, "
          f"{ckpt['config']['data']['image_size']}px, step {ckpt['step']}"
          + (", with its discriminator" if "disc" in ckpt else ""))


if __name__ == "__main__":
    main()
