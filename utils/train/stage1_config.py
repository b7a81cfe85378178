"""The stage-1 config schema (`configs/*_vqgan.yaml`): every key, its type, default and meaning.

The `model` section is the VQGAN's own config (`vqgan.model.VQGANConfig`); `run`, `data` and the shared
part of `train` are reused by the stage-2 schema.
"""
from dataclasses import dataclass, field, fields
from typing import Optional

from utils.core.config import ConfigError, choices, num
from utils.data.conditions import CONDITION_FACTOR, condition_channels
from utils.data.registry import DATASETS
from vqgan.discriminator import PatchDiscriminator
from vqgan.model import VQGANConfig


@dataclass
class RunConfig:
    name: str = "shapes_vqgan"       # the run folder's name: {out_dir}/{name}/
    out_dir: str = "runs"            # where run folders (and stage 2's token cache, cache/) go
    seed: int = num(0, min=0)        # weights, data order, augmentation and generated sets follow it


@dataclass
class DataConfig:
    dataset: str = choices(*DATASETS, default="shapes")  # utils/data/registry.py
    root: str = "data"                  # dataset files (mnist/fashion_mnist/cifar10) or the image tree (folder)
    val_root: Optional[str] = None      # folder only: a separate validation tree instead of val_fraction
    val_fraction: float = num(0.05, min=0, below=1)  # folder only: deterministic held-out fraction (at least one image)
    image_size: int = num(32, min=1)  # images are brought to this size (the shorter side, then a centre crop)
    crop_size: Optional[int] = num(None, min=1)  # stage 1: train on random crops of this size of the images brought
                                        # to image_size (image and map alike); null: the whole image
    channels: int = choices(1, 3, default=3)  # 1: grayscale, 3: RGB
    batch_size: int = num(32, min=1)  # images per optimizer step and process (before train.grad_accum)
    num_workers: int = num(0, min=0)  # DataLoader worker processes; 0: load in the training process
    download: bool = False              # torchvision datasets: download into root when missing
    labels: str = choices("none", "subfolders", default="none")  # folder only: classes from first-level subfolders
    condition: str = choices("none", "segmentation", "edges", "lowres", "paired", default="none")  # a map beside
                                        # each image, for conditional synthesis (utils/data/conditions.py)
    tokenize: str = choices("image", "condition", default="image")  # stage 1: what the tokenizer learns
    condition_root: Optional[str] = None  # folder only: the parallel tree of maps (segmentation, paired)
    condition_factor: int = num(CONDITION_FACTOR, min=1)  # lowres: the downsampling factor
    condition_classes: int = num(0, min=0)  # segmentation: classes of the masks, background included
                                        # (0: the dataset's own, as for shapes)
    num_train: int = num(8000, min=1)   # shapes only: generated training images
    num_val: int = num(512, min=1)      # shapes only: generated validation images

    def check(self) -> None:
        """What the dataset can make: labels, condition maps. A segmentation condition without data.condition_classes
        takes the classes of the dataset's own masks."""
        spec = DATASETS[self.dataset]
        if self.labels != "none" and not spec.subfolder_labels:
            raise ConfigError(f"data.labels={self.labels} is for data.dataset=folder; {self.dataset} has its own labels")
        kind = self.condition
        if kind == "none":
            if self.tokenize == "condition":
                raise ConfigError("data.tokenize=condition needs a data.condition (segmentation, edges, lowres or "
                                  "paired)")
            return
        if kind in ("segmentation", "paired") and not spec.map_root and not (kind == "segmentation" and
                                                                            spec.mask_classes):
            masked = [s.name for s in DATASETS.values() if s.mask_classes]
            have = f"the {masked[0]} set has" if len(masked) == 1 else f"the {' and '.join(masked)} sets have"
            raise ConfigError(f"data.condition={kind} needs maps: " + (f"{have} masks, a folder dataset takes "
                              "them from data.condition_root" if kind == "segmentation" else "a folder dataset takes "
                              "them from data.condition_root"))
        if spec.map_root and kind in ("segmentation", "paired") and not self.condition_root:
            raise ConfigError(f"data.condition={kind} with a folder dataset needs data.condition_root: the folder of "
                              "maps with the same relative names as the images")
        if kind == "segmentation":
            if spec.mask_classes:
                self.condition_classes = self.condition_classes or spec.mask_classes
                if self.condition_classes != spec.mask_classes:
                    raise ConfigError(f"data.condition_classes={self.condition_classes}, but the {self.dataset} set's "
                                      f"masks have {spec.mask_classes} classes (background included)")
            elif self.condition_classes < 2:
                raise ConfigError("data.condition=segmentation needs data.condition_classes: the number of classes of "
                                  "the masks, background included (at least 2)")
        if kind == "lowres" and self.image_size % self.condition_factor:
            raise ConfigError(f"data.image_size={self.image_size} is not a multiple of data.condition_factor="
                              f"{self.condition_factor}")


@dataclass
class LossConfig:
    l1_weight: float = num(1.0, min=0)  # weight of |x - x_rec|_1 in the reconstruction loss
    l2_weight: float = num(0.0, min=0)  # weight of an optional squared-error term
    perceptual_weight: float = num(0.0, min=0)  # LPIPS; 0 builds no VGG at all
    lpips_vgg_weights: str = "imagenet"  # "imagenet" (torchvision download), a local VGG16 state dict, or "random"
    codebook_weight: float = num(1.0, min=0)  # weight of the quantization loss (codebook and commitment)
    disc_weight: float = num(0.8, min=0)  # multiplies the adaptive weight
    disc_start: int = num(2000, min=0)  # optimizer step at which the GAN terms switch on
    disc_loss: str = choices("hinge", "vanilla", default="hinge")  # the discriminator's loss (hinge: the paper's)
    disc_layers: int = num(3, min=1)    # the PatchGAN's strided layers: more see larger patches
    disc_channels: int = num(64, min=1)  # the PatchGAN's first layer width
    disc_lr: Optional[float] = num(None, above=0)  # defaults to train.lr


@dataclass
class BaseTrainConfig:
    """The `train` keys of both stages."""
    lr: float = num(2e-4, above=0)      # peak learning rate (after warm-up)
    betas: list[float] = num(factory=lambda: [0.5, 0.9], min=0, below=1)  # Adam(W) betas
    weight_decay: float = num(0.0, min=0)  # decoupled weight decay (AdamW)
    warmup_steps: int = num(0, min=0)  # linear warm-up from 0 over this many steps
    lr_schedule: str = choices("constant", "cosine", default="constant")  # after warm-up
    min_lr_ratio: float = num(0.1, min=0, max=1)  # cosine floor, as a fraction of lr
    grad_clip: float = num(0.0, min=0)  # max global grad norm; 0 = off
    grad_accum: int = num(1, min=1)      # micro-batches per optimizer step
    max_steps: int = num(3000, min=0)   # optimizer steps of the run
    log_every: int = num(50, min=1)     # steps between TensorBoard scalars
    eval_every: int = num(500, min=1)   # steps between validations (and at the end)
    ckpt_every: int = num(500, min=1)   # steps between checkpoints/last.pt writes (and at the end)
    keep_last: int = num(0, min=0)      # periodic step_XXXXXXX.pt kept besides last.pt; 0 = none
    precision: str = choices("auto", "fp32", "bf16", "fp16", default="auto")  # auto: bf16 where the hardware
                                        # computes it natively (CUDA with bf16, CPUs with avx512_bf16/amx_bf16), else
                                        # fp16 on CUDA and fp32 on CPUs (utils/core/precision.py)
    compile: bool = False               # torch.compile the model's forward
    device: str = "auto"                # auto | cpu | cuda | cuda:N | mps
    eval_batches: int = num(0, min=0)   # validation batches per evaluation; 0 = the whole val split
    init_from: Optional[str] = None     # a checkpoint of this stage whose weights a new run starts from (fine-tuning)

    def check(self, where: str) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be a list of two floats, got {self.betas} ({where})")


@dataclass
class TrainConfig(BaseTrainConfig):
    ema_decay: float = num(0.0, min=0, below=1)  # EMA of the autoencoder weights, used for validation; 0 = off
    rfid: bool = False                  # rFID on the val split (needs Inception weights)


@dataclass
class Stage1Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: VQGANConfig = field(default_factory=VQGANConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def init_keys(self, init: dict) -> list[str]:
        """The keys a train.init_from checkpoint fixes: its model section, the image channels, and the
        discriminator's shape when it carries a discriminator."""
        keys = [f"model.{f.name}" for f in fields(VQGANConfig)] + ["data.channels"]
        return keys + (["loss.disc_layers", "loss.disc_channels"] if init.get("disc") is not None else [])

    def check(self, where: str) -> None:
        """Impossible combinations are errors; model.image_size and model.channels left null take the data's."""
        m, d = self.model, self.data
        d.check()
        seen = d.channels  # the tokenizer sees images, or condition maps (their own channels)
        if d.tokenize == "condition":
            seen = condition_channels(d)
            if d.condition == "segmentation" and (self.loss.disc_start < self.train.max_steps or
                                                  self.loss.perceptual_weight > 0):
                raise ConfigError(f"a segmentation tokenizer learns class maps with a cross-entropy loss, without the "
                                  f"GAN or LPIPS ({where}): set loss.disc_start >= train.max_steps and "
                                  f"loss.perceptual_weight=0")
        if m.channels is not None and m.channels != seen:
            raise ConfigError(f"model.channels={m.channels} but the tokenizer sees {seen} channels ({where}); "
                              "leave model.channels null")
        m.image_size = d.image_size if m.image_size is None else m.image_size
        m.channels = seen
        m.tile = d.crop_size if m.tile is None else m.tile  # a tokenizer trained on crops tiles larger images
        m.check(where)
        f = m.downsample_factor
        if d.image_size % f:
            raise ConfigError(f"data.image_size={d.image_size} is not divisible by the downsampling factor {f} "
                              f"of model.ch_mult={m.ch_mult} ({where}); use a multiple of {f}")
        if d.crop_size is not None and (d.crop_size > d.image_size or d.crop_size % f):
            raise ConfigError(f"data.crop_size={d.crop_size} must be at most data.image_size={d.image_size} and a "
                              f"multiple of the downsampling factor {f} of model.ch_mult={m.ch_mult} ({where}); use "
                              f"e.g. {min(d.image_size, max(f, d.crop_size - d.crop_size % f))}, or null for whole "
                              "images")
        seen_size = d.crop_size or d.image_size  # what training (and the discriminator) is shown
        seen = f"data.{'crop' if d.crop_size else 'image'}_size={seen_size}"
        if m.tile is not None and m.tile < seen_size:
            raise ConfigError(f"model.tile={m.tile} is smaller than the training images ({seen}) ({where}); the "
                              "tiles are for images larger than those trained on: leave model.tile null")
        if self.loss.disc_start < self.train.max_steps and \
                PatchDiscriminator.output_size(seen_size, self.loss.disc_layers) < 1:
            raise ConfigError(f"{seen} is too small for loss.disc_layers={self.loss.disc_layers} ({where}); use "
                              "fewer layers or a later loss.disc_start")
        self.train.check(where)
