"""Tiny configs and subprocess helpers for the end-to-end tests."""
import os
import subprocess
import sys

import torch

from conftest import ROOT, TINY_MODEL

# 16x16 images, the narrowest widths, 8x8 tokens: a step takes a few milliseconds
TINY_STAGE1 = ["data.image_size=16", "data.batch_size=4", "data.num_train=64", "data.num_val=16",
               *[f"model.{k}={str(v).replace(' ', '')}" for k, v in TINY_MODEL.items()],
               "loss.disc_layers=2", "loss.disc_channels=8", "loss.disc_start=3",
               "train.lr_schedule=constant", "train.warmup_steps=0", "train.log_every=2", "train.eval_every=3",
               "train.ckpt_every=3", "train.max_steps=6", "train.precision=fp32"]


def run_script(script: str, *args: str, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=e)


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_weight_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())

TINY_STAGE2 = ["data.batch_size=8", "data.num_train=64", "data.num_val=16", "model.n_layer=1", "model.n_head=2",
               "model.n_embd=32", "sample.num=2", "train.warmup_steps=0", "train.lr_schedule=constant",
               "train.log_every=2", "train.eval_every=3", "train.ckpt_every=3", "train.max_steps=6"]
