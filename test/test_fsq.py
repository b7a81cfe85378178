"""Finite scalar quantization: the index <-> code bijection, the straight-through gradient, the usage counters,
the VQGAN and stage 2 over it, and the config rule that keeps the GPT's vocabulary equal to the number of codes."""
import math

import pytest
import torch

import train_transformer
import train_vqgan
from conftest import tiny_model_config
from helpers import TINY_STAGE1, TINY_STAGE2, load
from transformer.gpt import GPT
from utils.core.config import ConfigError, load_config
from utils.train.stage1_config import Stage1Config
from vqgan.fsq import FSQ
from vqgan.model import VQGAN

FSQ_STAGE1 = ["model.quantizer=fsq", "model.fsq_levels=[4,3,2]", "model.codebook_size=24", "model.codebook_dim=3"]


def latent_of(q: FSQ, codes: torch.Tensor) -> torch.Tensor:
    """A latent (B, d, h, w) that FSQ rounds to `codes` (B, d, h, w) in [-1, 1]: the inverse of its bound."""
    shape = (1, -1, 1, 1)
    bounded = codes * q._width.view(shape)
    return torch.atanh((bounded + q._offset.view(shape)) / q._half.view(shape)) - q._shift.view(shape)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8], [2, 3], [7]])
def test_index_code_round_trip_is_exact_for_every_code(levels):
    q = FSQ(levels)
    K = math.prod(levels)
    assert q.codebook_size == K and q.codebook_dim == len(levels)
    idx = torch.arange(K).reshape(1, 1, K)
    codes = q.lookup(idx)  # (1, d, 1, K)
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c) for c in codes[0, :, 0].t().tolist()}) == K  # K distinct codes
    for d, L in enumerate(levels):  # each channel takes exactly L values
        assert codes[0, d].unique().numel() == L
    assert torch.equal(q.indices(latent_of(q, codes)), idx)  # code -> index
    z = torch.randn(64, len(levels), 3, 3) * 3
    z_q, loss, i = q(z)
    assert torch.equal(q.lookup(i), z_q) and loss.item() == 0.0  # index -> code, no auxiliary loss
    assert torch.equal(q.codes(), q.lookup(torch.arange(K)[None, None])[0, :, 0].t())


def test_digits_are_mixed_radix_first_channel_least_significant():
    q = FSQ([4, 3])
    codes = q.lookup(torch.tensor([[[0, 1, 3, 4, 11]]]))[0, :, 0].t()  # (5, 2)
    # channel 0 has 4 levels {-2,-1,0,1}/2, channel 1 has 3 levels {-1,0,1}
    assert codes.tolist() == [[-1.0, -1.0], [-0.5, -1.0], [0.5, -1.0], [-1.0, 0.0], [0.5, 1.0]]


def test_gradient_passes_straight_through_the_rounding():
    q = FSQ([8, 5])
    z = torch.randn(2, 2, 4, 4, requires_grad=True)
    z_q, _, _ = q(z)
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    zz = z.detach().clone().requires_grad_(True)  # the same function without the rounding
    bounded = torch.tanh(zz.permute(0, 2, 3, 1) + q._shift) * q._half - q._offset
    ((bounded / q._width).permute(0, 3, 1, 2) * w).sum().backward()
    assert torch.allclose(z.grad, zz.grad) and z.grad.abs().min() > 0


def test_usage_counters_and_the_vqgan_over_fsq():
    torch.manual_seed(0)
    model = VQGAN(tiny_model_config(quantizer="fsq", fsq_levels=[4, 3, 2], codebook_size=24, codebook_dim=3))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    model.train()
    _, _, info = model(x)
    assert model.codebook.step_update() == 0  # nothing to restart
    counts = torch.bincount(info["indices"].reshape(-1), minlength=24)
    used, ppl = model.codebook.usage_stats(reset=False)
    assert used == pytest.approx((counts > 0).float().mean().item())
    assert torch.equal(model.codebook.window_counts, counts.float())
    assert model.codebook.usage_stats(reset=True)[0] == used and model.codebook.window_counts.sum() == 0
    model.eval()
    idx = model.encode_to_indices(x)
    assert idx.shape == (4, 8, 8) and idx.max() < 24
    with torch.no_grad():
        assert torch.allclose(model.decode_indices(idx), model(x)[0], atol=1e-6)
    assert model.codebook.window_counts.sum() == 0  # evaluation counts nothing
    assert not [n for n, _ in model.codebook.named_parameters()]  # no codebook to learn


def test_fsq_config_must_match_the_codebook_size_and_dim(tmp_path):
    cfg = load_config(Stage1Config, overrides=FSQ_STAGE1)
    assert cfg.model.quantizer == "fsq" and cfg.model.fsq_levels == [4, 3, 2]
    with pytest.raises(ConfigError, match=r"model.fsq_levels=\[8, 5, 5, 5\] make 1000 codes of dimension 4, but "
                                          r"model.codebook_size=1024 and model.codebook_dim=8 .*set "
                                          r"model.codebook_size=1000 model.codebook_dim=4"):
        load_config(Stage1Config, overrides=["model.quantizer=fsq", "model.fsq_levels=[8,5,5,5]",
                                             "model.codebook_size=1024", "model.codebook_dim=8"])
    derived = load_config(Stage1Config, overrides=["model.quantizer=fsq", "model.fsq_levels=[8,5,5,5]"]).model
    assert (derived.codebook_size, derived.codebook_dim) == (1000, 4)  # derived from the levels, not restated
    stated = load_config(Stage1Config, overrides=["model.quantizer=fsq", "model.fsq_levels=[8,5,5,5]",
                                                  "model.codebook_size=1000", "model.codebook_dim=4"]).model
    assert stated == derived  # matching values still load
    vq = load_config(Stage1Config).model
    assert (vq.codebook_size, vq.codebook_dim) == (1024, 8)  # a VQ codebook left unsized: 1024 codes of dimension 8
    with pytest.raises(ConfigError, match="model.quantizer=fsq needs model.fsq_levels"):
        load_config(Stage1Config, overrides=["model.quantizer=fsq"])
    with pytest.raises(ConfigError, match="is for model.quantizer=fsq"):
        load_config(Stage1Config, overrides=["model.fsq_levels=[4,4]"])
    with pytest.raises(ConfigError, match="model.fsq_levels"):
        load_config(Stage1Config, overrides=["model.quantizer=fsq", "model.fsq_levels=[1,4]"])


def test_stage1_and_stage2_over_fsq_end_to_end(tmp_path):
    """A tiny FSQ tokenizer trains (no codebook loss), reloads from its checkpoint, and a GPT over its codes has
    exactly prod(levels) outputs."""
    train_vqgan.train(TINY_STAGE1 + FSQ_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=f", "train.max_steps=4",
                                                  "loss.codebook_weight=0"])
    ckpt = load(f"{tmp_path}/f/checkpoints/last.pt")
    assert ckpt["model_args"]["quantizer"] == "fsq" and ckpt["model_args"]["fsq_levels"] == [4, 3, 2]
    vq = VQGAN.from_checkpoint(f"{tmp_path}/f/checkpoints/last.pt")
    assert isinstance(vq.codebook, FSQ) and vq.codebook.codebook_size == 24
    import json
    m = json.load(open(f"{tmp_path}/f/metrics.json"))
    assert m["step"] == 4 and 0 < m["codebook_usage"] <= 1 and m["perplexity"] >= 1
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={tmp_path}", "run.name=g", "train.max_steps=2",
                                           f"stage1.checkpoint={tmp_path}/f/checkpoints/last.pt"])
    gpt = GPT.from_checkpoint(f"{tmp_path}/g/checkpoints/last.pt")
    assert gpt.cfg.codebook_size == 24 and gpt.head.out_features == 24
