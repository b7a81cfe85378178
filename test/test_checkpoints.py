"""Checkpoints written before the code was reshaped into packages by layer (test/fixtures/format1_before_layout: a
weights-only stage-1 file and a class-conditional transformer over it, both written by that code) still load, sample
exactly the tokens that code sampled, and resume."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from helpers import load
from transformer.draw import SampleConfig, draw
from transformer.loading import load_transformer
from transformer.sampling import raster_prefix
from utils.core.config import load_config
from vqgan.model import VQGAN

FIXTURES = os.path.join(ROOT, "test", "fixtures", "format1_before_layout")


@pytest.mark.slow
def test_checkpoints_written_before_the_layout_change(tmp_path, monkeypatch):
    for f in os.listdir(FIXTURES):
        shutil.copy(os.path.join(FIXTURES, f), tmp_path / f)
    monkeypatch.chdir(tmp_path)  # the transformer names its stage-1 file relative to where it was trained
    vq = VQGAN.from_checkpoint("stage1.pt")
    assert (vq.image_size, vq.cfg.codebook_size, vq.cfg.codebook_dim) == (8, 16, 4)
    gpt, vq, cond_vq, ckpt = load_transformer("gpt.pt")
    assert ckpt["format"] == 1 and gpt.cfg.num_classes == 5 and gpt.cfg.window == (8, 8) and cond_vq is None
    settings = load_config(SampleConfig, base=ckpt["config"]["sample"])
    assert (settings.top_p, settings.cfg_scale) == (0.9, 2.0)
    then = load("drawn.pt")
    assert torch.equal(draw(gpt, 4, settings, generator=torch.Generator().manual_seed(3)), then["samples_seed3"])
    done = draw(gpt, 3, settings, None, [0, 1, 2], tokens=then["val_tokens"], keep=raster_prefix((8, 8), 32),
                generator=torch.Generator().manual_seed(4))
    assert torch.equal(done, then["completions_seed4"])

    def script(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=tmp_path, text=True,
                              capture_output=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    r = script("generate.py", "--checkpoint", "gpt.pt", "--num", "2", "--class", "ring", "--out", "s.png")
    assert r.returncode == 0 and os.path.isfile(tmp_path / "s.png"), r.stderr
    r = script("train_transformer.py", "--resume", "gpt.pt", "train.max_steps=8")  # re-encodes its tokens, goes on
    assert r.returncode == 0, r.stderr
    resumed = load(str(tmp_path / "runs" / "g" / "checkpoints" / "last.pt"))
    assert resumed["step"] == 8 and resumed["stage1"]["sha256"] == ckpt["stage1"]["sha256"]
