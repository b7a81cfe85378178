"""YAML configs mapped onto nested dataclasses, with dotted command-line overrides.

    cfg = load_config(Stage1Config, "configs/shapes_vqgan.yaml", ["train.max_steps=200", "model.ch_mult=[1,2,2]"])

Every value is typed by its field: ints widen to floats, `1e-3` is a float, bools are strict, lists
parse as YAML. Unknown keys, wrong types, missing required values and impossible combinations raise
`ConfigError`, one line naming the key, where it came from, and the closest valid key.
"""
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from utils.errors import UserError
from vqgan.discriminator import PatchDiscriminator
from vqgan.model import VQGANConfig


class ConfigError(UserError):
    pass


def choices(*values, default):
    return field(default=default, metadata={"choices": values})


@dataclass
class RunConfig:
    name: str = "shapes_vqgan"
    out_dir: str = "runs"
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = choices("shapes", "mnist", "fashion_mnist", "cifar10", "folder", default="shapes")
    root: str = "data"                  # dataset files (mnist/fashion_mnist/cifar10) or the image tree (folder)
    val_root: Optional[str] = None      # folder only: a separate validation tree instead of val_fraction
    val_fraction: float = 0.05          # folder only: deterministic held-out fraction (at least one image)
    image_size: int = 32
    channels: int = choices(1, 3, default=3)
    batch_size: int = 32
    num_workers: int = 0
    download: bool = False              # torchvision datasets: download into root when missing
    num_train: int = 8000               # shapes only: generated training images
    num_val: int = 512                  # shapes only: generated validation images


@dataclass
class LossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0      # LPIPS; 0 builds no VGG at all
    lpips_vgg_weights: str = "imagenet"  # "imagenet" (torchvision download), a local VGG16 state dict, or "random"
    codebook_weight: float = 1.0
    disc_weight: float = 0.8            # multiplies the adaptive weight
    disc_start: int = 2000              # optimizer step at which the GAN terms switch on
    disc_loss: str = choices("hinge", "vanilla", default="hinge")
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: Optional[float] = None     # defaults to train.lr


@dataclass
class BaseTrainConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = choices("constant", "cosine", default="constant")
    min_lr_ratio: float = 0.1           # cosine floor, as a fraction of lr
    grad_clip: float = 0.0              # max global grad norm; 0 = off
    grad_accum: int = 1
    max_steps: int = 3000
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 0                  # periodic step_XXXXXXX.pt kept besides last.pt; 0 = none
    precision: str = choices("fp32", "bf16", "fp16", default="fp32")
    compile: bool = False
    device: str = "auto"                # auto | cpu | cuda | cuda:N | mps
    eval_batches: int = 0               # validation batches per evaluation; 0 = the whole val split


@dataclass
class TrainConfig(BaseTrainConfig):
    ema_decay: float = 0.0              # EMA of the autoencoder weights, used for validation; 0 = off
    rfid: bool = False                  # rFID on the val split (needs Inception weights)


@dataclass
class Stage1Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: VQGANConfig = field(default_factory=VQGANConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self, where: str) -> None:
        m, d = self.model, self.data
        f = m.downsample_factor
        if d.image_size % f:
            raise ConfigError(f"data.image_size={d.image_size} is not divisible by the downsampling factor {f} "
                              f"of model.ch_mult={m.ch_mult} ({where}); use a multiple of {f}")
        for c in [m.ch * k for k in m.ch_mult] + [m.z_channels]:
            if c % 32:
                raise ConfigError(f"model.ch x model.ch_mult and model.z_channels must be multiples of 32 "
                                  f"(GroupNorm with 32 groups), got {c} ({where})")
        if self.loss.disc_start < self.train.max_steps and \
                PatchDiscriminator.output_size(d.image_size, self.loss.disc_layers) < 1:
            raise ConfigError(f"data.image_size={d.image_size} is too small for loss.disc_layers="
                              f"{self.loss.disc_layers} ({where}); use fewer layers or a later loss.disc_start")
        _check_train(self.train, where)


# ----------------------------------------------------------------------------- stage 2

@dataclass
class Stage1Ref:
    checkpoint: str = field(default="runs/shapes_vqgan/checkpoints/last.pt", metadata={"required": True})


@dataclass
class TokenDataConfig:
    dataset: str = choices("shapes", "mnist", "fashion_mnist", "cifar10", "folder", default="shapes")
    root: str = "data"
    val_root: Optional[str] = None
    val_fraction: float = 0.05
    image_size: Optional[int] = None    # None: the stage-1 model's
    channels: Optional[int] = None      # None: the stage-1 model's
    batch_size: int = 64
    num_workers: int = 0                # used only while encoding the dataset once
    download: bool = False
    num_train: int = 8000
    num_val: int = 512


@dataclass
class GPTSection:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    window: list[int] = field(default_factory=list)  # [h, w] tokens per training crop; [] = the whole grid
    class_conditional: bool = False


@dataclass
class SampleConfig:
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    cfg_scale: float = 1.0              # classifier-free guidance (class-conditional models)
    num: int = 8                        # images sampled at each evaluation


@dataclass
class Train2Config(BaseTrainConfig):
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    warmup_steps: int = 100
    lr_schedule: str = choices("constant", "cosine", default="cosine")
    grad_clip: float = 1.0
    pkeep: float = 1.0                  # probability of keeping each input token (else a random code)
    class_dropout: float = 0.1          # probability of the null class, for classifier-free guidance


@dataclass
class Stage2Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="shapes_gpt"))
    stage1: Stage1Ref = field(default_factory=Stage1Ref)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    model: GPTSection = field(default_factory=GPTSection)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: Train2Config = field(default_factory=Train2Config)

    def check(self, where: str) -> None:
        w = self.model.window
        if w and (len(w) != 2 or min(w) < 1):
            raise ConfigError(f"model.window must be [] (the whole grid) or [h, w] with h, w >= 1, got {w} ({where})")
        if self.model.n_embd % self.model.n_head:
            raise ConfigError(f"model.n_embd={self.model.n_embd} is not divisible by model.n_head="
                              f"{self.model.n_head} ({where})")
        if not 0 < self.train.pkeep <= 1:
            raise ConfigError(f"train.pkeep must be in (0, 1], got {self.train.pkeep} ({where})")
        if not 0 <= self.train.class_dropout < 1:
            raise ConfigError(f"train.class_dropout must be in [0, 1), got {self.train.class_dropout} ({where})")
        _check_train(self.train, where)


def _check_train(t, where: str) -> None:
    for key in ("log_every", "eval_every", "ckpt_every", "grad_accum"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)} ({where})")
    if t.max_steps < 0:
        raise ConfigError(f"train.max_steps must be >= 0, got {t.max_steps} ({where})")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas must be a list of two floats, got {t.betas} ({where})")


# ----------------------------------------------------------------------------- machinery

def load_config(cls, path: Optional[str] = None, overrides: typing.Sequence[str] = (),
                base: Optional[dict] = None, base_name: str = "checkpoint"):
    """Defaults of `cls`, then `base` (a plain dict, e.g. from a checkpoint), then the YAML file at
    `path`, then `overrides` ("section.key=value"); checked after each step's values are typed."""
    cfg = cls()
    if base is not None:
        _apply_dict(cfg, base, base_name)
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: '{path}'")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"'{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"'{path}' must hold a mapping of sections, got {type(raw).__name__}")
        _apply_dict(cfg, raw, path)
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{text}' is not of the form section.key=value")
        _set(cfg, key.strip(), value, f"override '{text}'", raw_text=True)
    _check_fields(cfg, "")
    where = path or (base_name if base is not None else "the default config")
    if overrides:
        where += " with overrides " + " ".join(overrides)
    if hasattr(cfg, "check"):
        cfg.check(where)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def all_keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out += all_keys(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [prefix + f.name]
    return out


def _closest(cfg, key: str) -> str:
    keys = all_keys(cfg)
    leaf = key.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5) or \
        difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6)
    if not match:
        return ""
    full = next((k for k in keys if k == match[0] or k.endswith("." + match[0])), match[0])
    return f"; did you mean '{full}'?"


def _apply_dict(cfg, raw: dict, source: str, prefix: str = "") -> None:
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and _is_section(cfg, key):
            _apply_dict(cfg, v, source, key + ".")
        else:
            _set(cfg, key, v, source)


def _is_section(cfg, key: str) -> bool:
    obj = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return dataclasses.is_dataclass(obj)


def _set(cfg, key: str, value: Any, source: str, raw_text: bool = False) -> None:
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
        if part not in names:
            raise ConfigError(f"unknown key '{key}' in {source}{_closest(cfg, key)}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    f = names[parts[-1]]
    if dataclasses.is_dataclass(getattr(obj, f.name)):
        raise ConfigError(f"'{key}' in {source} is a section, not a value; set its keys, e.g. '{key}.{dataclasses.fields(getattr(obj, f.name))[0].name}=...'")
    hint = typing.get_type_hints(type(obj))[f.name]
    value = _coerce(value, hint, key, source, raw_text)
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        opts = ", ".join(str(c) for c in f.metadata["choices"])
        near = difflib.get_close_matches(str(value), [str(c) for c in f.metadata["choices"]], n=1)
        raise ConfigError(f"{key}={value!r} in {source} is not one of: {opts}"
                          + (f"; did you mean '{near[0]}'?" if near else ""))
    setattr(obj, f.name, value)


def _coerce(value, hint, key: str, source: str, raw_text: bool = False):
    text = value if raw_text else None
    if raw_text:
        try:
            value = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            value = text
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(text if raw_text else value, args[0], key, source, raw_text)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} in {source}: expected a list of {args[0].__name__}s like [1, 2], got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if raw_text and text is not None:
            return text.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
    raise ConfigError(f"{key} in {source}: expected {name}, got {value!r}")


def _check_fields(cfg, prefix: str) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            _check_fields(v, f"{prefix}{f.name}.")
        elif f.metadata.get("required") and v in (None, ""):
            raise ConfigError(f"{prefix}{f.name} is required: set it in the config file or as {prefix}{f.name}=...")
