"""Stage 2: the GPT, its KV cache, the samplers, the token cache, training, resume and generate.py."""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import train_transformer
import train_vqgan
import transformer.tokens
from conftest import ROOT
from helpers import TINY_STAGE1, TINY_STAGE2, load, max_weight_diff, run_script
from transformer.gpt import GPT, GPTConfig, KVCache, explicit_attention
from transformer.sampling import _Stepper, filter_logits, raster_prefix, sample, window_origin
from transformer.sequences import prefix_ids, sample_labels
from transformer.sequences import crop_windows, make_inputs
from utils.core.errors import UserError
from utils.train.loop import set_lr
from utils.train.optim import Muon, orthogonalize, stage2_optimizer
from utils.train.stage2_config import Train2Config


def tiny_gpt(num_classes=0, window=(3, 4), K=10, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(codebook_size=K, window=window, num_classes=num_classes, n_layer=2, n_head=2,
                         n_embd=16)).eval()


def test_special_tokens_never_collide_with_codes():
    u = GPTConfig(codebook_size=10, window=(2, 2))
    assert u.start_token == 10 and u.vocab_size == 11 and u.block_size == 4
    c = GPTConfig(codebook_size=10, window=(2, 2), num_classes=3)
    assert [c.class_token(i) for i in range(3)] == [10, 11, 12] and c.null_class_token == 13 and c.vocab_size == 14
    with pytest.raises(ValueError):
        c.start_token
    g = GPT(c)
    assert g.head.out_features == 10 and g.tok_emb.num_embeddings == 14  # only codes can be predicted
    toks = sample(g, 6, generator=torch.Generator().manual_seed(0))
    assert toks.max() < 10


def test_kv_cache_matches_full_forward():
    g = tiny_gpt(num_classes=2)
    seq = torch.randint(0, 10, (3, 12))
    seq[:, 0] = torch.tensor([10, 11, 12])
    with torch.no_grad():
        full, _ = g(seq)  # (B, T, K)
        cache = KVCache(g.cfg, 3, "cpu", torch.float32)
        first = g.forward_cached(seq[:, :5], cache, 0)  # a prefill, then one token at a time
        assert (first - full[:, 4]).abs().max() < 1e-5
        for p in range(5, 12):
            out = g.forward_cached(seq[:, p:p + 1], cache, p)
            assert (out - full[:, p]).abs().max() < 1e-5
    assert cache.length == 12


def test_cpu_bf16_attention_is_causal_and_close_to_fp32():
    """Under CPU bf16 autocast the attention takes the matmul + softmax path: still causal, and the same logits
    as the fp32 fused kernel up to bf16 rounding."""
    g = tiny_gpt()
    seq = torch.randint(0, 10, (2, 12))
    other = seq.clone()
    other[:, 7:] = (other[:, 7:] + 1) % 10
    with torch.no_grad():
        ref, _ = g(seq)
        with torch.autocast("cpu", torch.bfloat16):
            a, b = g(seq)[0].float(), g(other)[0].float()
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.equal(a[:, 7:], b[:, 7:])
    assert (a - ref).abs().max() < 0.05 * ref.abs().max()


def test_explicit_attention_matches_sdpa():
    """The CPU-autocast attention path computes what SDPA does: causal over a full sequence, and one
    query over every cached key, as in KV-cached decoding."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (explicit_attention(q, k, v, True) - ref).abs().max() < 1e-6
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, -1:], k, v)
    assert (explicit_attention(q[:, :, -1:], k, v, False) - ref).abs().max() < 1e-6
    assert not torch.allclose(explicit_attention(q, k, v, True), explicit_attention(q, k, v, False))


def test_cpu_autocast_attention_is_explicit_for_short_sequences_and_fused_for_long(monkeypatch):
    """Up to EXPLICIT_MAX keys the explicit path (faster there), beyond it SDPA's fused kernel; both give the
    same logits as fp32 within bf16 rounding."""
    import transformer.gpt as gpt_module
    calls = []
    monkeypatch.setattr(gpt_module, "explicit_attention", lambda *a: calls.append(a[1].shape[-2]) or
                        explicit_attention(*a))
    for window, explicit in (((8, 8), True), ((20, 20), False)):  # 64 and 400 keys
        torch.manual_seed(0)
        g = GPT(GPTConfig(codebook_size=10, window=window, n_layer=1, n_head=2, n_embd=16)).eval()
        seq = torch.randint(0, 10, (2, window[0] * window[1]))
        calls.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fast = g(seq)[0].float()
        assert calls == ([window[0] * window[1]] if explicit else [])
        with torch.no_grad():
            ref = g(seq)[0]
        assert (fast - ref).abs().max() < 0.05 * ref.abs().max()


def test_gpt_loss_and_weight_decay_groups():
    g = tiny_gpt()
    seq = torch.randint(0, 10, (2, 12))
    logits, loss = g(seq, seq)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 10), seq.reshape(-1)))
    same, none = g(seq)  # one return type: the loss is None without targets
    assert none is None and torch.equal(same, logits)
    opt = g.configure_optimizer(1e-3, (0.9, 0.95), 0.1)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(g.blocks[0].attn.qkv.weight) in decay and id(g.head.weight) in decay
    assert id(g.tok_emb.weight) not in decay and id(g.blocks[0].ln_1.weight) not in decay
    assert id(g.blocks[0].attn.qkv.bias) not in decay
    # the residual projections start smaller than the other linear layers
    assert g.blocks[0].attn.proj.weight.std() < 0.8 * g.blocks[0].attn.qkv.weight.std()


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(filter_logits(logits), torch.tensor([[0.5, 0.3, 0.15, 0.05]]), atol=1e-6)
    assert torch.allclose(filter_logits(logits, top_k=2), torch.tensor([[0.625, 0.375, 0, 0]]), atol=1e-6)
    assert torch.allclose(filter_logits(logits, top_p=0.7), torch.tensor([[0.625, 0.375, 0, 0]]), atol=1e-6)
    assert torch.allclose(filter_logits(logits, top_p=0.85), torch.tensor([[0.5, 0.3, 0.15, 0]]) / 0.95, atol=1e-6)
    cold = filter_logits(logits, temperature=0.01)
    assert cold[0, 0] > 0.999


def reference_sample(g, batch, classes, temperature, top_k, top_p, cfg_scale, generator):
    """Textbook autoregressive sampling of the model's whole window: the full sequence through the model for every
    token, guidance from a second pass with the null class."""
    prefix = prefix_ids(sample_labels(g.cfg, batch, classes), g.cfg)[:, None]
    seq = torch.zeros(batch, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(g.cfg.block_size):
            logits = g(torch.cat([prefix, seq], 1))[0][:, -1]
            if g.cfg.num_classes and cfg_scale != 1.0:
                null = torch.full_like(prefix, g.cfg.null_class_token)
                uncond = g(torch.cat([null, seq], 1))[0][:, -1]
                logits = uncond + cfg_scale * (logits - uncond)
            probs = filter_logits(logits, temperature, top_k, top_p)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], 1)
    return seq.reshape(batch, *g.cfg.window)


@pytest.mark.parametrize("num_classes, cfg_scale", [(0, 1.0), (3, 1.0), (3, 2.5)])
def test_sampling_the_window_is_plain_autoregressive_sampling(num_classes, cfg_scale):
    """With grid == window the sliding window never moves: the sampler is plain autoregressive sampling, with and
    without the KV cache."""
    g = tiny_gpt(num_classes)
    classes = [2, 0] if num_classes else None
    kw = dict(temperature=1.3, top_k=7, top_p=0.95, cfg_scale=cfg_scale)
    ref = reference_sample(g, 4, classes, generator=torch.Generator().manual_seed(5), **kw)
    a = sample(g, 4, None, classes, generator=torch.Generator().manual_seed(5), **kw)
    assert a.shape == (4, 3, 4) and torch.equal(a, ref)
    b = sample(g, 4, (3, 4), classes, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert torch.equal(b, ref)
    d = sample(g, 4, None, classes, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(a, d)


@pytest.mark.parametrize("num_classes, cfg_scale", [(0, 1.0), (3, 2.5)])
def test_sliding_window_without_cache_gives_the_same_tokens(num_classes, cfg_scale):
    g = tiny_gpt(num_classes)
    classes = [1, 2] if num_classes else None
    kw = dict(temperature=1.2, top_k=8, cfg_scale=cfg_scale)
    a = sample(g, 2, (5, 7), classes, generator=torch.Generator().manual_seed(3), **kw)
    b = sample(g, 2, (5, 7), classes, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert a.shape == (2, 5, 7) and torch.equal(a, b)  # the cache changes nothing but speed


@pytest.mark.parametrize("grid", [(3, 4), (5, 7)])
def test_completion_keeps_the_given_tokens_and_continues_them(grid, monkeypatch):
    """Completion keeps the first `start` positions, samples every later one exactly once, from contexts that hold
    the given tokens: other given tokens give other predictions."""
    g = tiny_gpt()
    given = torch.randint(0, 10, (2, *grid), generator=torch.Generator().manual_seed(0))
    start = grid[1] + 2  # the first row and two tokens of the second
    seen = []
    real = _Stepper.logits

    def record(self, prefix, ctx, key):
        out = real(self, prefix, ctx, key)
        seen.append((ctx.clone(), out.clone()))
        return out
    monkeypatch.setattr(_Stepper, "logits", record)
    out = sample(g, 2, grid, tokens=given, keep=raster_prefix(grid, start), generator=torch.Generator().manual_seed(0))
    flat, gflat = out.reshape(2, -1), given.reshape(2, -1)
    assert torch.equal(flat[:, :start], gflat[:, :start])
    assert len(seen) == grid[0] * grid[1] - start  # one prediction per sampled position, none for kept ones
    assert torch.equal(seen[0][0][:, -2:], gflat[:, start - 2:start])  # the given tokens are its context
    first = seen[0][1]
    other = given.clone()
    other.reshape(2, -1)[:, :start] = (gflat[:, :start] + 1) % 10
    sample(g, 2, grid, tokens=other, keep=raster_prefix(grid, start), generator=torch.Generator().manual_seed(0))
    assert (seen[len(flat[0]) - start][1] - first).abs().max() > 1e-3


def test_window_origin_borders_and_corners():
    grid, win = (5, 7), (3, 4)
    assert window_origin(0, 0, grid, win) == (0, 0)        # top-left corner
    assert window_origin(0, 6, grid, win) == (0, 3)        # top-right corner: clamped right
    assert window_origin(4, 0, grid, win) == (2, 0)        # bottom-left corner: clamped down
    assert window_origin(4, 6, grid, win) == (2, 3)        # bottom-right corner
    assert window_origin(2, 3, grid, win) == (1, 1)        # centred in the middle
    for i in range(5):
        for j in range(7):
            t, l = window_origin(i, j, grid, win)
            assert 0 <= t <= 2 and 0 <= l <= 3 and t <= i < t + 3 and l <= j < l + 4


def test_sliding_window_conditions_on_tokens_before_it_inside_its_window(monkeypatch):
    g = tiny_gpt()
    seen = []
    real = _Stepper.logits

    def record(self, prefix, context, key):
        seen.append((context.clone(), key))
        return real(self, prefix, context, key)
    monkeypatch.setattr(_Stepper, "logits", record)
    H, W, wh, ww = 5, 7, 3, 4
    out = sample(g, 2, (H, W), generator=torch.Generator().manual_seed(1))
    assert len(seen) == H * W
    for pos, (ctx, key) in enumerate(seen):
        i, j = divmod(pos, W)
        t, l = window_origin(i, j, (H, W), (wh, ww))
        assert key == (t, l)
        expect = [out[:, a, b] for a in range(t, t + wh) for b in range(l, l + ww) if (a, b) < (i, j)]
        expect = torch.stack(expect, 1) if expect else torch.zeros(2, 0, dtype=torch.long)
        assert torch.equal(ctx, expect), (i, j)


def test_sliding_window_errors():
    with pytest.raises(ValueError, match="smaller than the window 3x4"):
        sample(tiny_gpt(), 1, (2, 8))


def test_crop_windows_and_inputs():
    grids = torch.arange(2 * 4 * 5).reshape(2, 4, 5)
    seq, = crop_windows((2, 3), torch.Generator().manual_seed(0), grids)
    assert seq.shape == (2, 6)
    for b in range(2):
        r, c = divmod(int(seq[b, 0]) - b * 20, 5)
        assert torch.equal(seq[b], grids[b, r:r + 2, c:c + 3].reshape(-1))
    assert torch.equal(crop_windows((4, 5), None, grids)[0], grids.reshape(2, -1))
    a, b = crop_windows((2, 3), torch.Generator().manual_seed(0), grids, grids + 100)
    assert torch.equal(a, seq) and torch.equal(b, seq + 100)  # an image grid and its condition grid alike
    cfg = GPTConfig(codebook_size=100, window=(2, 3), num_classes=3)
    inp = make_inputs(seq, torch.tensor([2, 0]), cfg)
    assert inp[:, 0].tolist() == [102, 100] and torch.equal(inp[:, 1:], seq[:, :-1])
    inp = make_inputs(seq.repeat(500, 1), torch.zeros(1000, dtype=torch.long), cfg,
                                        pkeep=0.5, class_dropout=0.2, generator=torch.Generator().manual_seed(0))
    assert 0.15 < (inp[:, 0] == 103).float().mean() < 0.25  # null class for ~20%
    changed = (inp[:, 1:] != seq.repeat(500, 1)[:, :-1]).float().mean()
    assert 0.4 < changed < 0.55  # ~half replaced by random codes (some by themselves)
    u = GPTConfig(codebook_size=100, window=(2, 3))
    assert (make_inputs(seq, torch.tensor([-1, -1]), u)[:, 0] == 100).all()


@pytest.mark.parametrize("shape", [(24, 8), (8, 24), (16, 16)])
def test_orthogonalize_brings_singular_values_near_one_keeping_the_directions(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * torch.logspace(0, 1, shape[1])
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    o = orthogonalize(g)
    assert o.shape == g.shape
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.55 and sv.max() < 1.25  # the quintic iteration's band, not exactly 1
    # the same singular vectors as u vh: o = u diag(sv') vh with every sv' in the band
    inner = u.T @ o @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-3)
    assert torch.diagonal(inner).min() > 0.55


def assert_polar_factor(update: torch.Tensor, g: torch.Tensor) -> None:
    """update is U diag(s) V^T of g's SVD (g = U S V^T), every s in the quintic iteration's band about 1: the
    orthogonal polar factor U V^T that Newton-Schulz approximates, computed here by an SVD."""
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    inner = u.T @ update @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-3)
    assert 0.55 < torch.diagonal(inner).min() and torch.diagonal(inner).max() < 1.25
    assert (update - u @ vh).norm() / (u @ vh).norm() < 0.35


def test_muon_steps_by_the_svd_and_its_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    w, b = torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    b_ref = b.detach().clone().requires_grad_()
    opt = Muon([{"params": [w], "muon": True, "lr": 0.05}, {"params": [b], "weight_decay": 0.1}], lr=1e-2,
               betas=(0.9, 0.95))
    ref = torch.optim.AdamW([b_ref], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    buf = torch.zeros_like(w)
    for step in range(3):
        grads = torch.randn(6, 4), torch.randn(4)
        w.grad, b.grad, b_ref.grad = grads[0].clone(), grads[1].clone(), grads[1].clone()
        buf = 0.95 * buf + grads[0]
        before = w.detach().clone()
        opt.step()
        ref.step()
        # Nesterov: the polar factor of g + mu m, scaled by sqrt(rows / cols) = sqrt(6 / 4) and the rate
        assert_polar_factor((before - w.detach()) / (0.05 * 1.5 ** 0.5), grads[0] + 0.95 * buf)
        assert torch.allclose(b, b_ref, atol=1e-6)
    with pytest.raises(ValueError, match="Muon updates 2-D weight matrices only"):
        Muon([{"params": [b], "muon": True}])


def test_muon_orthogonalises_a_fused_qkv_weight_as_three_matrices():
    torch.manual_seed(0)
    w = torch.randn(12, 4, requires_grad=True)  # three (4, 4) matrices stacked, as attn.qkv.weight
    opt = Muon([{"params": [w], "muon": True, "lr": 0.1, "momentum": 0.0}], parts={w: 3})
    w.grad = torch.randn(12, 4) * torch.tensor([1.0, 10.0, 100.0]).repeat_interleave(4)[:, None]
    before = w.detach().clone()
    opt.step()
    update = (before - w.detach()) / 0.1
    for block, grad in zip(update.chunk(3), w.grad.chunk(3)):  # each its own polar factor, scale sqrt(4 / 4) = 1
        assert_polar_factor(block, grad)
    # one (12, 4) matrix would be a different update: the largest block dominates, the scale is sqrt(3)
    u, _, vh = torch.linalg.svd(w.grad, full_matrices=False)
    assert (update - 3 ** 0.5 * u @ vh).norm() > 0.5 * update.norm()
    g = tiny_gpt()
    parts = stage2_optimizer(g, Train2Config(optimizer="muon")).parts
    assert {id(p) for p in parts} == {id(b.attn.qkv.weight) for b in g.blocks} and set(parts.values()) == {3}


def test_stage2_optimizer_groups_and_their_schedule():
    g = tiny_gpt()
    t = Train2Config(lr=1e-3, optimizer="muon", muon_lr=0.04, weight_decay=0.1, warmup_steps=0, max_steps=10,
                     lr_schedule="cosine", min_lr_ratio=0.5)
    opt = stage2_optimizer(g, t)
    muon, head, rest = opt.param_groups
    assert muon["muon"] and not head["muon"] and not rest["muon"]
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(muon) == {id(p) for n, p in g.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert ids(head) == {id(g.head.weight)} and head["weight_decay"] == 0.1 and muon["weight_decay"] == 0.0
    assert id(g.tok_emb.weight) in ids(rest) and id(g.blocks[0].ln_1.weight) in ids(rest)
    set_lr(10, t, (opt, t.lr))  # the end of the cosine: every group at min_lr_ratio of its own rate
    assert muon["lr"] == pytest.approx(0.02) and head["lr"] == rest["lr"] == pytest.approx(5e-4)
    assert isinstance(stage2_optimizer(g, Train2Config(lr=1e-3)), torch.optim.AdamW)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("s1")
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={out}", "run.name=s1", "train.max_steps=2", "loss.disc_start=100"])
    return str(out / "s1" / "checkpoints" / "last.pt")


def stage2(tmp_path, stage1, name, *extra):
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={tmp_path}", f"run.name={name}",
                                           f"stage1.checkpoint={stage1}", *extra])
    return os.path.join(tmp_path, name)


@pytest.mark.slow
def test_end_to_end_and_generate(tmp_path, stage1):
    d = stage2(tmp_path, stage1, "g", "model.class_conditional=true")
    ck = load(f"{d}/checkpoints/last.pt")
    assert ck["kind"] == "transformer" and ck["step"] == 6 and ck["window"] == [8, 8]
    assert ck["stage1"]["checkpoint"] == stage1 and len(ck["stage1"]["sha256"]) == 64
    assert "encoder.conv_in.weight" not in ck["model"]  # never the stage-1 weights
    import json
    m = json.load(open(f"{d}/metrics.json"))
    assert m["step"] == 6 and m["val_perplexity"] == pytest.approx(2.718281828 ** m["val_loss"], rel=1e-6)
    g = GPT.from_checkpoint(f"{d}/checkpoints/last.pt")
    assert g.cfg.num_classes == 5 and g.cfg.block_size == 64
    ckpt = f"{d}/checkpoints/last.pt"
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "3", "--class", "2", "--seed", "4",
                   "--out", str(tmp_path / "a.png"), "--save-individual")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout and Image.open(tmp_path / "a.png").size == (2 + 2 * 18, 2 + 2 * 18)
    assert Image.open(tmp_path / "a_002.png").size == (16, 16)
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--grid", "16x24", "--out",
                   str(tmp_path / "big.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "big.png").size == (48, 32) and "(sliding window, centred placement" in r.stdout
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--grid", "16x24", "--out",
                   str(tmp_path / "big_strided.png"), "--window-placement", "strided")
    assert r.returncode == 0 and "(sliding window, strided placement, KV cache)" in r.stdout, r.stderr
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "2", "--no-kv-cache")
    assert r.returncode == 0 and "(no KV cache)" in r.stdout
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--grid", "9x8", "--no-kv-cache", "--out",
                   str(tmp_path / "nc.png"))
    assert r.returncode == 0 and "(sliding window, centred placement, no KV cache)" in r.stdout, r.stderr
    assert os.path.isfile(f"{d}/samples/samples_seed0_8x8.png")  # default: the run folder's samples/
    for args, msg in [(["--grid", "0x3"], "both sides must be at least 1"),
                      (["--grid", "abc"], "is not of the form HxW"),
                      (["--grid", "4x4"], "smaller than the trained window 8x8"),
                      (["--class", "5"], "--class 5 is out of range: this model has classes 0..4"),
                      (["--num", "0"], "--num 0 is out of range: must be at least 1"),
                      (["--window-placement", "left"], "--window-placement left is not one of centred, strided")]:
        r = run_script("generate.py", "--checkpoint", ckpt, *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run_script("generate.py", "--checkpoint", stage1)
    assert r.returncode == 2 and "is a vqgan checkpoint, expected a transformer checkpoint" in r.stderr
    r = run_script("generate.py", "--checkpoint", str(tmp_path / "none.pt"))
    assert r.returncode == 2 and "no checkpoint at" in r.stderr


@pytest.mark.slow
def test_unconditional_class_error_and_stage1_changes(tmp_path, stage1):
    import shutil
    s1 = str(tmp_path / "s1.pt")
    shutil.copy(stage1, s1)
    d = stage2(tmp_path, s1, "u", "train.max_steps=2", "model.class_conditional=false")
    ckpt = f"{d}/checkpoints/last.pt"
    r = run_script("generate.py", "--checkpoint", ckpt, "--class", "1")
    assert r.returncode == 2 and "this model is unconditional" in r.stderr
    # the stage-1 file changes (same architecture, other weights): one rule everywhere, sampling and resuming refuse
    ck = load(s1)
    ck["model"]["decoder.conv_out.bias"] += 0.1
    torch.save(ck, s1)
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--out", str(tmp_path / "w.png"))
    assert r.returncode == 2 and "has changed since this transformer was trained" in r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "w.png")
    with pytest.raises(UserError, match="has changed since this transformer was trained"):
        train_transformer.train(["--resume", ckpt, "train.max_steps=4"])
    from utils.visualize import main as visualize
    with pytest.raises(SystemExit) as e:
        visualize([d, "--out", str(tmp_path / "fig")])
    assert e.value.code == 2
    os.remove(s1)
    r = run_script("generate.py", "--checkpoint", ckpt)
    assert r.returncode == 2 and "the stage-1 checkpoint this transformer was trained on is missing" in r.stderr


def test_token_cache_reused_and_invalidated(tmp_path, stage1, monkeypatch):
    calls = []
    real = transformer.tokens.encode_dataset

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(transformer.tokens, "encode_dataset", counting)
    stage2(tmp_path, stage1, "c1", "train.max_steps=1")
    assert len(calls) == 2  # train and val encoded once
    files = sorted(os.listdir(tmp_path / "cache"))
    assert len(files) == 2 and files[0].endswith("_train.pt") and files[1].endswith("_val.pt")
    stage2(tmp_path, stage1, "c2", "train.max_steps=1", "model.n_embd=64")
    assert len(calls) == 2  # another run on the same stage-1 model and data: reused
    stage2(tmp_path, stage1, "c3", "train.max_steps=1", "data.num_train=72")
    assert len(calls) == 4 and len(os.listdir(tmp_path / "cache")) == 4  # other images: another cache file
    # a cache file whose contents disagree with the stage-1 model is an error, never silently used
    path = str(tmp_path / "cache" / files[0])
    c = torch.load(path, weights_only=True)
    c["meta"]["codebook_size"] = 99
    torch.save(c, path)
    with pytest.raises(UserError, match="does not match the stage-1 model: codebook_size is 99 there, 16 here"):
        stage2(tmp_path, stage1, "c4", "train.max_steps=1")


def test_exact_resume_stage2(tmp_path, stage1):
    opts = ["train.pkeep=0.8", "model.class_conditional=true", "model.window=[4,6]", "model.dropout=0.1"]
    a = stage2(tmp_path, stage1, "a", *opts)
    b = stage2(tmp_path, stage1, "b", *opts, "train.max_steps=4")
    train_transformer.train(["--resume", f"{b}/checkpoints/last.pt", "train.max_steps=6"])
    ca, cb = load(f"{a}/checkpoints/last.pt"), load(f"{b}/checkpoints/last.pt")
    assert ca["step"] == cb["step"] == 6 and ca["window"] == [4, 6] and ca["grid"] == [8, 8]
    assert max_weight_diff(ca["model"], cb["model"]) <= 1e-6


def test_exact_resume_stage2_with_muon_and_an_optimizer_change_is_an_error(tmp_path, stage1):
    a = stage2(tmp_path, stage1, "a", "train.optimizer=muon", "train.muon_lr=0.05")
    b = stage2(tmp_path, stage1, "b", "train.optimizer=muon", "train.muon_lr=0.05", "train.max_steps=4")
    with pytest.raises(UserError, match="train.optimizer=adamw, but the checkpoint was trained with train.optimizer="
                                        "muon, whose state it holds"):
        train_transformer.train(["--resume", f"{b}/checkpoints/last.pt", "train.optimizer=adamw"])
    train_transformer.train(["--resume", f"{b}/checkpoints/last.pt", "train.max_steps=6"])
    ca, cb = load(f"{a}/checkpoints/last.pt"), load(f"{b}/checkpoints/last.pt")
    assert ca["config"]["train"]["optimizer"] == "muon" and ca["step"] == cb["step"] == 6
    assert max_weight_diff(ca["model"], cb["model"]) <= 1e-6
    c = stage2(tmp_path, stage1, "c", "train.optimizer=adamw")  # other weights from the same start
    assert max_weight_diff(ca["model"], load(f"{c}/checkpoints/last.pt")["model"]) > 1e-3


def test_a_changed_muon_lr_on_resume_applies_as_a_changed_lr_does(tmp_path, stage1):
    b = stage2(tmp_path, stage1, "b", "train.optimizer=muon", "train.muon_lr=0.05", "train.max_steps=4",
               "train.lr_schedule=constant", "train.warmup_steps=0")
    train_transformer.train(["--resume", f"{b}/checkpoints/last.pt", "train.max_steps=6", "train.muon_lr=0.01",
                             "train.lr=3e-4"])
    ck = load(f"{b}/checkpoints/last.pt")
    muon, head, rest = ck["optimizer"]["param_groups"]
    assert ck["step"] == 6 and ck["config"]["train"]["muon_lr"] == 0.01
    assert muon["muon"] and muon["base_lr"] == muon["lr"] == pytest.approx(0.01)
    assert head["lr"] == rest["lr"] == pytest.approx(3e-4)


def test_stage2_config_errors(tmp_path, stage1):
    with pytest.raises(UserError, match=r"model.window=\[9, 8\] is larger than the 8x8 token grid"):
        stage2(tmp_path, stage1, "w", "model.window=[9,8]")
    with pytest.raises(UserError, match="data.image_size=15 is not a multiple of the stage-1 downsampling factor 2"):
        stage2(tmp_path, stage1, "i", "data.image_size=15")
    with pytest.raises(UserError, match="data.channels=1 but the stage-1 model takes 3"):
        stage2(tmp_path, stage1, "c", "data.channels=1")
    with pytest.raises(UserError, match="model.n_embd=30 is not divisible by model.n_head=4"):
        stage2(tmp_path, stage1, "e", "model.n_embd=30", "model.n_head=4")
    with pytest.raises(UserError, match="no checkpoint at"):
        stage2(tmp_path, str(tmp_path / "missing.pt"), "m")
    r = run_script("train_transformer.py", f"run.out_dir={tmp_path}", f"stage1.checkpoint={stage1}",
                   "model.n_embed=64")
    assert r.returncode == 2 and "did you mean 'model.n_embd'?" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_ddp_two_processes_stage2(tmp_path, stage1):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_transformer.py", f"run.out_dir={tmp_path}", "run.name=ddp",
                        f"stage1.checkpoint={stage1}", *TINY_STAGE2, "data.batch_size=4"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert load(f"{tmp_path}/ddp/checkpoints/last.pt")["step"] == 6


@pytest.mark.slow
def test_larger_images_give_larger_grids_and_window_crops(tmp_path, stage1):
    """The paper's high-resolution setup: encode images larger than stage 1 saw, train on windows."""
    d = stage2(tmp_path, stage1, "hr", "data.image_size=32", "model.window=[8,8]", "train.max_steps=2")
    ck = load(f"{d}/checkpoints/last.pt")
    assert ck["grid"] == [16, 16] and ck["window"] == [8, 8] and ck["gpt_config"]["block_size"] == 64
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--num", "1", "--grid", "16x16",
                   "--out", str(tmp_path / "hr.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "hr.png").size == (32, 32)


def test_visualize_renders_both_stages(tmp_path, stage1):
    from utils import visualize
    d = stage2(tmp_path, stage1, "v", "model.class_conditional=true", "train.max_steps=2")
    visualize.main([d, "--out", str(tmp_path / "f2"), "--num", "5"])
    samples = Image.open(tmp_path / "f2" / "samples.png")
    assert samples.size == (1 + 16 + 1, 1 + 5 * 17)  # one row per class (5), one column, 16x16 images, padding 1
    assert Image.open(tmp_path / "f2" / "sliding.png").size == (2 + 4 * 34, 2 + 34)  # four 32x32 sliding-window images
    assert Image.open(tmp_path / "f2" / "completions.png").size == (1 + 5 * 17, 1 + 2 * 17)
    s1_dir = os.path.dirname(os.path.dirname(stage1))
    visualize.main([s1_dir, "--out", str(tmp_path / "f1"), "--num", "4"])
    assert Image.open(tmp_path / "f1" / "recon.png").size == (1 + 4 * 17, 1 + 2 * 17)
    assert Image.open(tmp_path / "f1" / "codebook_usage.png").size == (640, 240)
    with pytest.raises(SystemExit) as e:
        visualize.main([str(tmp_path / "nothing")])
    assert e.value.code == 2


def test_stage2_config_is_completed_from_the_stage1_model():
    from conftest import tiny_model_config
    from utils.core.config import load_config
    from utils.train.stage2_config import Stage2Config, complete_from_stage1, gpt_config
    vq = tiny_model_config()  # 16x16 RGB images, f=2, 16 codes
    cfg = load_config(Stage2Config, overrides=["model.class_conditional=true", "model.n_layer=2"])
    assert cfg.data.image_size is None and cfg.data.channels is None
    grid = complete_from_stage1(cfg, vq)
    assert grid == (8, 8) and cfg.data.image_size == 16 and cfg.data.channels == 3
    g = gpt_config(cfg, vq, grid, ["a", "b", "c"])
    assert g == GPTConfig(codebook_size=16, window=(8, 8), num_classes=3, n_layer=2, n_head=4, n_embd=256)
    assert g.vocab_size == 16 + 3 + 1 and g.block_size == 64
    cfg = load_config(Stage2Config, overrides=["data.image_size=32", "model.window=[4,6]"])
    assert complete_from_stage1(cfg, vq) == (16, 16)  # larger images, larger grids; the GPT sees windows
    g = gpt_config(cfg, vq, (16, 16), ["a"])  # class names of the data, but an unconditional model
    assert g.window == (4, 6) and g.num_classes == 0 and g.start_token == 16
    with pytest.raises(UserError, match="data.dataset=shapes has no class labels; set model.class_conditional=false"):
        gpt_config(load_config(Stage2Config, overrides=["model.class_conditional=true"]), vq, (8, 8), None)


def test_checkpoints_without_model_args_still_load(tmp_path, stage1):
    """Checkpoints written before `model_args` was stored rebuild the same models from their other entries."""
    d = stage2(tmp_path, stage1, "old", "model.class_conditional=true", "train.max_steps=2")
    new = f"{d}/checkpoints/last.pt"
    ck = load(new)
    assert GPTConfig(**ck["model_args"]) == GPT.from_checkpoint(new).cfg and ck["gpt_config"]["block_size"] == 64
    old = str(tmp_path / "old_gpt.pt")
    torch.save({k: v for k, v in ck.items() if k != "model_args"}, old)
    assert GPT.from_checkpoint(old).cfg == GPT.from_checkpoint(new).cfg
    s1 = load(stage1)
    from vqgan.model import VQGAN, VQGANConfig
    assert VQGAN(VQGANConfig(**s1["model_args"])).cfg == VQGAN.from_checkpoint(stage1).cfg  # one dict rebuilds it
    s1_old = {k: v for k, v in s1.items() if k != "model_args"}
    s1_old["config"] = {**s1["config"], "model": {k: v for k, v in s1["config"]["model"].items()
                                                  if k not in ("image_size", "channels")}}
    torch.save(s1_old, tmp_path / "old_vq.pt")
    a, b = VQGAN.from_checkpoint(stage1), VQGAN.from_checkpoint(str(tmp_path / "old_vq.pt"))
    assert a.cfg == b.cfg and all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
