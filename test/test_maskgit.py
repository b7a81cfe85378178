"""The masked (MaskGIT) model: its vocabulary and bidirectional attention, the cosine-masked training pairs, parallel
decoding (schedule, kept positions, guidance, windows), training end to end, generate.py --steps/--inpaint and
their errors, and the inpainting score."""
import json
import math
import os
import re

import pytest
import torch
from PIL import Image

import train_transformer
import train_vqgan
from helpers import TINY_STAGE1, TINY_STAGE2, load, run_script
from transformer import maskgit
from transformer.draw import SampleConfig, completion_classes, draw
from transformer.gpt import GPT, GPTConfig
from transformer.maskgit import decode_window, sample_masked, window_origins
from transformer.sampling import centre_keep, likeliest_classes, raster_prefix
from transformer.sequences import mask_ratio, masked_inputs, training_pair
from utils.train.stage2_config import check_init_layout
from utils.core.config import ConfigError, load_config
from utils.core.errors import UserError


def tiny_maskgit(num_classes=0, window=(3, 4), K=10, cond=0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(codebook_size=K, window=window, num_classes=num_classes, cond_codebook_size=cond, n_layer=2,
                         n_head=2, n_embd=16, kind="maskgit")).eval()


def test_vocabulary_mask_token_and_sequence_length():
    c = GPTConfig(codebook_size=10, window=(2, 3), num_classes=3, kind="maskgit")
    assert [c.class_token(i) for i in range(3)] == [10, 11, 12] and c.null_class_token == 13
    assert c.mask_token == 14 and c.vocab_size == 15 and c.block_size == 7  # prefix + all 6 codes
    u = GPTConfig(codebook_size=10, window=(2, 3), kind="maskgit")
    assert u.start_token == 10 and u.mask_token == 11 and u.vocab_size == 12
    k = GPTConfig(codebook_size=10, window=(2, 3), cond_codebook_size=5, kind="maskgit")
    assert k.mask_token == 11 and k.cond_offset == 12 and k.vocab_size == 17 and k.block_size == 13
    g = GPT(c)
    assert g.head.out_features == 10  # the [MASK] token (and every special token) can never be predicted
    with pytest.raises(ValueError, match="only a masked"):
        GPTConfig(codebook_size=10, window=(2, 3)).mask_token
    with pytest.raises(ValueError, match="unknown model kind"):
        GPTConfig(codebook_size=10, window=(2, 3), kind="bert")


def test_attention_is_bidirectional_for_a_masked_model_only():
    m = tiny_maskgit()
    seq = torch.randint(0, 10, (1, 13))
    seq[0, 0] = m.cfg.start_token
    other = seq.clone()
    other[0, -1] = (seq[0, -1] + 1) % 10  # change the last token
    a, b = m(seq)[0], m(other)[0]
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-4  # an earlier position sees it
    causal = GPT(GPTConfig(codebook_size=10, window=(3, 4), n_layer=2, n_head=2, n_embd=16)).eval()
    seq, other = seq[:, :12], other[:, :12].clone()
    other[0, -1] = (seq[0, -1] + 1) % 10
    a, b = causal(seq)[0], causal(other)[0]
    assert torch.allclose(a[0, :11], b[0, :11]) and (a[0, 11] - b[0, 11]).abs().max() > 1e-4


def test_masked_training_pairs_follow_the_cosine_schedule():
    cfg = GPTConfig(codebook_size=10, window=(4, 4), num_classes=3, kind="maskgit")
    seq = torch.randint(0, 10, (4000, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (4000,))
    inp, targets = masked_inputs(seq, labels, cfg, class_dropout=0.25, generator=torch.Generator().manual_seed(1))
    masked = inp[:, 1:] == cfg.mask_token
    assert inp.shape == (4000, 17) and targets.shape == (4000, 16)
    assert torch.equal(masked, targets != -100)  # scored exactly where masked
    assert torch.equal(targets[masked], seq[masked]) and torch.equal(inp[:, 1:][~masked], seq[~masked])
    n = masked.sum(1)
    assert n.min() >= 1 and n.max() <= 16
    # E[ceil(16 cos(pi/2 r))] / 16 for r ~ U(0, 1): about 2/pi plus the rounding up
    expect = sum(math.ceil(16 * math.cos(math.pi / 2 * (i + 0.5) / 1000)) for i in range(1000)) / 16000
    assert masked.float().mean().item() == pytest.approx(expect, abs=0.01)
    null = (inp[:, 0] == cfg.null_class_token).float().mean().item()
    assert null == pytest.approx(0.25, abs=0.03)
    kept = inp[:, 0] != cfg.null_class_token
    assert torch.equal(inp[kept, 0], 10 + labels[kept])
    assert mask_ratio(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    cond = torch.randint(0, 5, (4000, 16))
    ccfg = GPTConfig(codebook_size=10, window=(4, 4), cond_codebook_size=5, kind="maskgit")
    inp, _ = training_pair(seq, labels, ccfg, cond=cond)
    assert inp.shape == (4000, 33) and torch.equal(inp[:, :16], cond + ccfg.cond_offset)


def test_loss_is_taken_on_masked_positions_only():
    m = tiny_maskgit()
    seq = torch.randint(0, 10, (3, 12))
    inp, targets = masked_inputs(seq, torch.zeros(3, dtype=torch.long), m.cfg,
                                 generator=torch.Generator().manual_seed(2))
    logits, loss = m(inp, targets)
    sel = targets != -100
    manual = torch.nn.functional.cross_entropy(logits[:, 1:][sel], targets[sel])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    other = targets.clone()
    other[~sel] = (seq[~sel] + 3) % 10  # unscored positions do not count: -100 and any other value alike
    assert m(inp, other.masked_fill(~sel, -100))[1].item() == pytest.approx(loss.item())


def test_parallel_decoding_follows_the_schedule_and_keeps_given_tokens(monkeypatch):
    m = tiny_maskgit(window=(4, 4))
    seen = []
    real = maskgit._logits

    def record(model, prefix, seq, cfg_scale):
        seen.append((seq == model.cfg.mask_token).sum(1).tolist())
        return real(model, prefix, seq, cfg_scale)
    monkeypatch.setattr(maskgit, "_logits", record)
    out = sample_masked(m, 2, steps=4, generator=torch.Generator().manual_seed(0))
    # 16 unknown: after round t, floor(16 cos(pi/2 t/4)) stay masked
    assert seen == [[16, 16], [14, 14], [11, 11], [6, 6]]
    assert out.shape == (2, 4, 4) and out.max() < 10
    seen.clear()
    given = torch.randint(0, 10, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[1:3, 1:3] = False  # re-sample the centre
    out = sample_masked(m, 2, tokens=given, keep=keep, steps=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, keep], given[:, keep])
    assert seen[0] == [4, 4] and len(seen) == 4  # 4 unknown: at least one fixed per round
    a = sample_masked(m, 3, steps=3, generator=torch.Generator().manual_seed(7))
    b = sample_masked(m, 3, steps=3, generator=torch.Generator().manual_seed(7))
    c = sample_masked(m, 3, steps=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_round_decodes_everything_and_the_mask_is_never_output():
    m = tiny_maskgit(window=(2, 2), K=3)
    seq = decode_window(m, torch.full((5, 1), m.cfg.start_token), torch.zeros(5, 4, dtype=torch.long),
                        torch.zeros(4, dtype=torch.bool), 1, 1.0, None, None, 1.0, 4.5, torch.Generator())
    assert seq.max() < 3 and seq.min() >= 0


def test_guidance_mixes_the_class_and_null_logits():
    m = tiny_maskgit(num_classes=3)
    prefix = torch.tensor([[10], [12]])
    seq = torch.full((2, 12), m.cfg.mask_token)
    cond = m(torch.cat([prefix, seq], 1))[0][:, 1:]
    uncond = m(torch.cat([torch.full_like(prefix, m.cfg.null_class_token), seq], 1))[0][:, 1:]
    assert torch.allclose(maskgit._logits(m, prefix, seq, 1.0), cond, atol=1e-6)
    assert torch.allclose(maskgit._logits(m, prefix, seq, 2.5), uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_windows_cover_larger_grids_and_condition_maps_follow_them():
    assert window_origins((3, 4), (3, 4)) == [(0, 0)]
    origins = window_origins((6, 9), (4, 4))
    covered = torch.zeros(6, 9, dtype=torch.bool)
    for t, l in origins:
        assert 0 <= t <= 2 and 0 <= l <= 5
        covered[t:t + 4, l:l + 4] = True
    assert covered.all() and origins[0] == (0, 0) and origins[-1] == (2, 5)
    m = tiny_maskgit(window=(3, 4), cond=5)
    cond = torch.randint(0, 5, (2, 5, 7))
    out = sample_masked(m, 2, (5, 7), cond=cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 5, 7) and out.max() < 10
    with pytest.raises(ValueError, match="needs cond"):
        sample_masked(m, 2)
    with pytest.raises(ValueError, match="smaller than the window"):
        sample_masked(tiny_maskgit(), 1, (2, 4))


def test_draw_picks_the_sampler_of_the_model():
    gpt = GPT(GPTConfig(codebook_size=10, window=(3, 4), n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(UserError, match="--steps is the number of parallel decoding rounds of a masked model"):
        SampleConfig().with_options(gpt, steps=4)
    with pytest.raises(UserError, match="--choice-temperature is the confidence noise of a masked model"):
        SampleConfig().with_options(gpt, choice_temperature=2.0)
    assert draw(gpt, 2, SampleConfig(), generator=torch.Generator().manual_seed(0)).shape == (2, 3, 4)
    m = tiny_maskgit()
    with pytest.raises(UserError, match="--window-placement is where a GPT's sliding window sits for each token; this "
                                        "checkpoint is a masked model"):
        SampleConfig().with_options(m, window_placement="strided")
    a = draw(m, 2, SampleConfig(), generator=torch.Generator().manual_seed(0))  # the default rounds
    b = sample_masked(m, 2, generator=torch.Generator().manual_seed(0), steps=8)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="for masked"):
        sample_masked(gpt, 1)
    # a checkpoint's sample section, as written before the masked model's keys existed, gets their defaults
    old = load_config(SampleConfig, base={"temperature": 1.0, "top_k": None, "top_p": 0.9, "cfg_scale": 2.0})
    assert old.with_options(m, steps=5).described(m) == \
        {"temperature": 1.0, "top_k": None, "top_p": 0.9, "cfg_scale": 2.0, "steps": 5, "choice_temperature": 4.5}
    assert "steps" not in old.described(gpt) and old.with_options(gpt, top_p=None).top_p == 0.9  # None: unchanged
    for key, value, msg in [("steps", 0, "--steps 0 is out of range: must be at least 1"),
                            ("top_p", 1.5, "--top-p 1.5 is out of range: must be in (0, 1]"),
                            ("cfg_scale", -1.0, "--cfg-scale -1.0 is out of range: must be at least 0")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            SampleConfig().with_options(m, **{key: value})


def test_completion_class_policy():
    """One policy for every front end: none without classes, the null class for a masked model, the likeliest class
    of a raster prefix for a GPT (any other kept region is refused)."""
    gpt = GPT(GPTConfig(codebook_size=10, window=(3, 4), num_classes=3, n_layer=1, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(0, 10, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    keep = raster_prefix((3, 4), 6)
    classes, policy = completion_classes(gpt, tokens, keep)
    assert policy == "likeliest_class" and classes == likeliest_classes(gpt, tokens, 6)
    with pytest.raises(ValueError, match="raster order only"):
        completion_classes(gpt, tokens, centre_keep((3, 4), 1))
    assert completion_classes(tiny_maskgit(num_classes=3), tokens, keep) == ([3], "null_class")
    plain = GPT(GPTConfig(codebook_size=10, window=(3, 4), n_layer=1, n_head=2, n_embd=16)).eval()
    assert completion_classes(plain, tokens, keep) == (None, "none")


def test_init_from_refuses_another_kind():
    a = GPTConfig(codebook_size=10, window=(3, 4), kind="maskgit")
    with pytest.raises(UserError, match="is a model.kind=maskgit model, this run trains model.kind=gpt"):
        check_init_layout(a, GPTConfig(codebook_size=10, window=(3, 4)), "m.pt")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("s1")
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={out}", "run.name=s1", "train.max_steps=2", "loss.disc_start=100"])
    return str(out / "s1" / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def masked_run(stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("mg")
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={out}", "run.name=m", f"stage1.checkpoint={stage1}",
                                           "model.kind=maskgit", "model.class_conditional=true", "sample.steps=3"])
    return str(out / "m")


@pytest.mark.slow
def test_a_masked_model_trains_resumes_and_reloads(masked_run):
    ck = load(f"{masked_run}/checkpoints/last.pt")
    assert ck["step"] == 6 and ck["model_args"]["kind"] == "maskgit"
    g = GPT.from_checkpoint(f"{masked_run}/checkpoints/last.pt")
    assert g.cfg.masked and g.cfg.block_size == 65 and g.cfg.num_classes == 5
    m = json.load(open(f"{masked_run}/metrics.json"))
    assert m["step"] == 6 and 0 < m["val_loss"] < 10
    r = run_script("train_transformer.py", "--resume", f"{masked_run}/checkpoints/last.pt", "train.max_steps=7")
    assert r.returncode == 0, r.stderr
    assert load(f"{masked_run}/checkpoints/last.pt")["step"] == 7


@pytest.mark.slow
def test_generate_with_a_masked_model(masked_run, tmp_path):
    ckpt = f"{masked_run}/checkpoints/last.pt"
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "2", "--steps", "4", "--class", "1", "--out",
                   str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    assert "parallel decoding, 4 rounds" in r.stdout
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--grid", "12x16", "--out",
                   str(tmp_path / "b.png"))
    assert r.returncode == 0 and "windowed parallel decoding, 3 rounds" in r.stdout, r.stderr  # the run's sample.steps
    assert Image.open(tmp_path / "b.png").size == (32, 24)
    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()).save(image)
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[5, 9] = 255  # one pixel: its token (row 2, column 4) is re-sampled, and only that one
    Image.fromarray(mask.numpy()).save(tmp_path / "mask.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "2", "--inpaint", str(image), "--mask",
                   str(tmp_path / "mask.png"), "--out", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    assert "2 image(s), grid 8x8 (parallel decoding, 3 rounds): 2 tokens" in r.stdout
    assert "re-sampling without a class" in r.stdout
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--complete", str(image), "--keep-rows", "5")
    assert r.returncode == 0 and ": 24 tokens" in r.stdout, r.stderr
    r = run_script("generate.py", "--checkpoint", ckpt, "--num", "1", "--extend", str(image), "--grid", "8x12")
    assert r.returncode == 0 and "windowed parallel decoding" in r.stdout and ": 32 tokens" in r.stdout, r.stderr
    Image.fromarray(torch.zeros(8, 8, dtype=torch.uint8).numpy()).save(tmp_path / "small.png")
    Image.fromarray(torch.zeros(16, 16, dtype=torch.uint8).numpy()).save(tmp_path / "blank.png")
    for args, msg in [(["--inpaint", str(image)], "--inpaint IMAGE.png and --mask MASK.png go together"),
                      (["--inpaint", str(image), "--mask", str(tmp_path / "small.png")],
                       "--mask: '" + str(tmp_path / "small.png") + "' is 8x8 pixels, the --inpaint image 16x16"),
                      (["--inpaint", str(image), "--mask", str(tmp_path / "blank.png")], "marks no pixel"),
                      (["--inpaint", str(image), "--mask", str(tmp_path / "mask.png"), "--complete", str(image)],
                       "three uses of a given image: choose one"),
                      (["--steps", "0"], "--steps 0 is out of range: must be at least 1")]:
        r = run_script("generate.py", "--checkpoint", ckpt, *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_gpt_refuses_steps_and_inpainting(stage1, tmp_path):
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={tmp_path}", "run.name=g", f"stage1.checkpoint={stage1}",
                                           "train.max_steps=1"])
    ckpt = f"{tmp_path}/g/checkpoints/last.pt"
    for args, msg in [(["--steps", "4"], "--steps is the number of parallel decoding rounds of a masked model"),
                      (["--inpaint", "x.png", "--mask", "m.png"], "--inpaint re-samples a free-form region, which "
                                                                  "needs a masked model")]:
        r = run_script("generate.py", "--checkpoint", ckpt, *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run_script("train_transformer.py", *TINY_STAGE2, f"run.out_dir={tmp_path}", "run.name=p",
                   f"stage1.checkpoint={stage1}", "model.kind=maskgit", "train.pkeep=0.9")
    assert r.returncode == 2 and "a masked model (model.kind=maskgit) masks them instead" in r.stderr


@pytest.mark.slow
def test_sample_eval_scores_inpainting(masked_run, monkeypatch):
    from utils import sample_eval
    from utils.eval import judges
    monkeypatch.setattr(judges, "SHAPES_TRAIN", 300)
    monkeypatch.setattr(judges, "SHAPES_HELD_OUT", 60)
    monkeypatch.setattr(judges, "EPOCHS", 1)
    r = sample_eval.evaluate(masked_run, per_class=2, recon=False, inpaint=True, complete=True, held_out=12)
    assert r["inpainting"]["images"] == 12 and r["inpainting"]["masked_tokens"] == 16
    assert 0 <= r["inpainting"]["class_accuracy_null_class"] <= 1
    assert 0 <= r["inpainting"]["class_accuracy_true_class"] <= 1
    assert set(r["completion"]) == {"images", "class_accuracy_null_class", "class_accuracy_true_class"}
    # (a class picked by the likelihood of kept tokens needs a raster prefix: test_completion_class_policy)
