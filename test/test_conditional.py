"""Conditional synthesis: condition maps and their datasets, the condition tokenizer, the conditional GPT's token
layout, conditional and sliding-window sampling, and generate.py's --condition, --complete and --extend."""
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train_transformer
import train_vqgan
from helpers import TINY_STAGE1, TINY_STAGE2, load, run_script
from transformer.gpt import GPT, GPTConfig
from transformer.sampling import _Stepper, filter_logits, sample, window_origin
from transformer.sequences import make_inputs
from utils.data.conditions import IGNORE, class_targets, edge_map, lowres_map, one_hot, read_condition
from utils.core.config import ConfigError, load_config
from utils.data.registry import build_datasets
from utils.core.errors import UserError
from utils.train.stage1_config import DataConfig, Stage1Config
from utils.train.stage2_config import Stage2Config


def tiny_cond_gpt(window=(3, 4), K=10, Kc=6, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(codebook_size=K, window=window, cond_codebook_size=Kc, n_layer=2, n_head=2, n_embd=16))


# ----------------------------------------------------------------------------- maps

def test_condition_maps():
    seg = torch.tensor([[0, 2], [IGNORE, 1]])
    oh = one_hot(seg, 3)
    assert oh.shape == (3, 2, 2) and oh[2, 0, 1] == 1 and oh[:, 0, 1].sum() == -1  # one class set per pixel
    assert (oh[:, 1, 0] == -1).all()  # ignore: no class
    assert torch.equal(class_targets(oh[None])[0], seg)
    x = torch.full((1, 8, 8), -1.0)
    x[:, :, 4:] = 1.0  # a vertical step edge
    e = edge_map(x)
    assert e.shape == (1, 8, 8) and (e[0, :, 3:5] == 1).all() and (e[0, :, :2] == -1).all() and (e[0, :, 6:] == -1).all()
    img = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8) / 128 - 1
    lr = lowres_map(img, 4)
    assert torch.allclose(lr[:, :4, :4], img[:, :4, :4].mean((1, 2), keepdim=True).expand(-1, 4, 4))
    assert torch.allclose(F.avg_pool2d(lr[None], 4), F.avg_pool2d(img[None], 4))  # area averaging keeps the input


def test_shapes_masks_follow_their_images():
    data = DataConfig(num_train=20, num_val=4, condition="segmentation")
    data.check()  # takes the shapes set's 6 mask classes
    assert data.condition_classes == 6
    tr, va = build_datasets(data, 0)
    cond = tr.with_view("condition")
    for i in range(8):
        x, y = tr[i]
        m, y2 = cond[i]
        assert m.shape == (6, 32, 32) and y2 == y
        idx = class_targets(m[None])[0]
        assert set(idx.unique().tolist()) == {0, int(y) + 1}  # background and the shape's class
        fg = idx > 0
        bg_colour = x[:, ~fg].mean(1, keepdim=True)
        assert (x[:, fg] - bg_colour).abs().sum(0).mean() > 0.3  # the mask covers the shape, not the background
    data = DataConfig(num_train=4, num_val=2, condition="segmentation", tokenize="condition")
    data.check()
    assert build_datasets(data, 0)[0][0][0].shape == (6, 32, 32)  # the tokenizer's view
    with pytest.raises(UserError, match="data.condition=segmentation needs maps: the shapes and scenes sets have "
                                        "masks, a folder dataset takes them from data.condition_root"):
        DataConfig(dataset="mnist", condition="segmentation").check()
    with pytest.raises(UserError, match="data.condition_classes=3, but the shapes set's masks have 6 classes"):
        DataConfig(condition="segmentation", condition_classes=3).check()


def write_folder(root, n=6, size=(24, 20), maps=True, missing=(), broken=()):
    rng = np.random.default_rng(0)
    os.makedirs(root / "img" / "a", exist_ok=True)
    os.makedirs(root / "map" / "a", exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 255, size + (3,), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / "a" / f"{i}.bmp")  # lossless; the map may have another extension
        if maps and i not in missing:
            if i in broken:
                (root / "map" / "a" / f"{i}.png").write_bytes(b"not a png")
            else:  # the map is the image itself: every crop and flip must give them equal
                Image.fromarray(arr).save(root / "map" / "a" / f"{i}.png")
    return str(root / "img"), str(root / "map")


def test_paired_folder_crops_and_flips_image_and_map_alike(tmp_path):
    img, mp = write_folder(tmp_path, n=8)
    data = DataConfig(dataset="folder", root=img, condition="paired", condition_root=mp, image_size=16,
                      val_fraction=0.25)
    tr, va = build_datasets(data, 3)
    cond = tr.with_view("condition")
    seen = set()
    for epoch in range(6):
        tr.set_epoch(epoch)
        cond.set_epoch(epoch)
        for i in range(len(tr)):
            a, b = tr[i][0], cond[i][0]
            assert torch.equal(a, b)  # the map (here: the image itself) got the same resize, crop and flip
            if i == 0:
                seen.add(a.sum().item())
    assert len(seen) > 1  # and the crops and flips do vary with the epoch


def test_paired_folder_skips_images_without_a_map(tmp_path):
    img, mp = write_folder(tmp_path, n=6, missing=(1,), broken=(4,))
    data = DataConfig(dataset="folder", root=img, condition="paired", condition_root=mp, image_size=16, val_fraction=0.25)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr, va = build_datasets(data, 0)
    msgs = [str(x.message) for x in w if "without a readable map" in str(x.message)]
    assert len(msgs) == 1 and msgs[0].startswith("skipped 2 image(s) of 6")
    assert len(tr) + len(va) == 4
    with pytest.raises(UserError, match="needs data.condition_root"):
        DataConfig(dataset="folder", root=img, condition="paired").check()


# ----------------------------------------------------------------------------- the conditional GPT

def test_token_layout_condition_first_and_loss_on_image_tokens_only():
    g = tiny_cond_gpt()
    cfg = g.cfg
    assert cfg.cond_offset == 11 and cfg.vocab_size == 17 and cfg.block_size == 24 and g.head.out_features == 10
    seq, cond = torch.randint(0, 10, (2, 12)), torch.randint(0, 6, (2, 12))
    inp = make_inputs(seq, torch.tensor([-1, -1]), cfg, cond=cond)
    assert inp.shape == (2, 24) and torch.equal(inp[:, :12], cond + 11) and (inp[:, 12] == cfg.start_token).all()
    assert torch.equal(inp[:, 13:], seq[:, :-1])
    logits, loss = g(inp, seq)
    assert torch.allclose(loss, F.cross_entropy(logits[:, 12:].reshape(-1, 10), seq.reshape(-1)))
    logits.retain_grad()
    loss.backward()
    assert logits.grad[:, :12].abs().max() == 0 and logits.grad[:, 12:].abs().max() > 0  # no loss on the condition
    other = inp.clone()
    other[:, 3] = 11 + (cond[:, 3] + 1) % 6
    with torch.no_grad():
        changed = g(other)[0]
    assert (changed[:, 12:] - logits[:, 12:].detach()).abs().max() > 1e-4  # the image tokens see the condition


def reference_conditional(g, cond, generator):
    """Textbook conditional sampling: [condition codes, start] and the codes so far through the model, per token."""
    B = cond.shape[0]
    seq = torch.cat([cond.reshape(B, -1) + g.cfg.cond_offset, torch.full((B, 1), g.cfg.start_token)], 1)
    with torch.no_grad():
        for _ in range(g.cfg.window[0] * g.cfg.window[1]):
            probs = filter_logits(g(seq)[0][:, -1], 1.2, 7)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], 1)
    return seq[:, -12:].reshape(B, *g.cfg.window)


def test_conditional_sampling_and_its_sliding_window(monkeypatch):
    g = tiny_cond_gpt().eval()
    cond = torch.randint(0, 6, (2, 3, 4))
    ref = reference_conditional(g, cond, torch.Generator().manual_seed(1))
    for use_cache in (True, False):  # grid == window: plain conditional sampling, the condition encoded once
        out = sample(g, 2, cond=cond, temperature=1.2, top_k=7, generator=torch.Generator().manual_seed(1),
                     use_cache=use_cache)
        assert torch.equal(out, ref)
    big = torch.randint(0, 6, (2, 5, 7))
    seen = []
    real = _Stepper.logits
    monkeypatch.setattr(_Stepper, "logits", lambda self, p, c, key: seen.append((p.clone(), key)) or real(self, p, c, key))
    a = sample(g, 2, (5, 7), cond=big, generator=torch.Generator().manual_seed(2))
    for pos, (prefix, (top, left)) in enumerate(seen):  # each token sees the condition of its own window
        assert (top, left) == window_origin(*divmod(pos, 7), (5, 7), (3, 4))
        assert torch.equal(prefix[:, :12], big[:, top:top + 3, left:left + 4].reshape(2, -1) + 11)
    monkeypatch.setattr(_Stepper, "logits", real)
    b = sample(g, 2, (5, 7), cond=big, generator=torch.Generator().manual_seed(2), use_cache=False)
    assert torch.equal(a, b)  # the cache changes nothing but speed
    with pytest.raises(ValueError, match="a conditional model needs cond"):
        sample(g, 1)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    base = TINY_STAGE1 + [f"run.out_dir={out}", "train.max_steps=3", "loss.disc_start=100"]
    train_vqgan.train(base + ["run.name=img"])
    train_vqgan.train(base + ["run.name=seg", "data.condition=segmentation", "data.tokenize=condition"])
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={out}", "run.name=gpt", "train.max_steps=3",
                                           f"stage1.checkpoint={out}/img/checkpoints/last.pt",
                                           f"stage1.condition_checkpoint={out}/seg/checkpoints/last.pt",
                                           "data.condition=segmentation", "model.class_conditional=false"])
    return out


def test_segmentation_tokenizer_and_conditional_run(seg_runs):
    import json
    m = json.load(open(seg_runs / "seg" / "metrics.json"))
    assert set(m) == {"step", "pixel_accuracy", "miou", "codebook_usage", "perplexity"}
    assert 0 <= m["miou"] <= m["pixel_accuracy"] <= 1 or 0 <= m["pixel_accuracy"] <= 1
    seg = load(seg_runs / "seg" / "checkpoints" / "last.pt")
    assert seg["model_args"]["channels"] == 6 and seg["config"]["data"]["tokenize"] == "condition"
    ck = load(seg_runs / "gpt" / "checkpoints" / "last.pt")
    assert ck["model_args"]["cond_codebook_size"] == 16 and ck["stage1_condition"]["data"]["condition"] == "segmentation"
    caches = os.listdir(seg_runs / "cache")
    assert all("+" in c for c in caches) and len(caches) == 2  # keyed by both tokenizers' content hashes


def test_condition_config_errors():
    with pytest.raises(ConfigError, match="a conditional transformer needs both"):
        load_config(Stage2Config, overrides=["data.condition=edges"])
    with pytest.raises(ConfigError, match="a segmentation tokenizer learns class maps with a cross-entropy loss"):
        load_config(Stage1Config, overrides=["data.condition=segmentation", "data.tokenize=condition"])
    with pytest.raises(UserError, match="data.tokenize=condition needs a data.condition"):
        load_config(Stage1Config, overrides=["data.tokenize=condition"])


@pytest.mark.slow
def test_generate_with_condition_complete_and_extend(seg_runs, tmp_path):
    ckpt = str(seg_runs / "gpt" / "checkpoints" / "last.pt")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 2  # a square
    Image.fromarray(mask).save(tmp_path / "mask.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--condition", str(tmp_path / "mask.png"), "--num", "2",
                   "--out", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    big = np.zeros((32, 32), np.uint8)
    big[2:30, 2:30] = 4
    Image.fromarray(big).save(tmp_path / "big.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--condition", str(tmp_path / "big.png"), "--num", "1",
                   "--out", str(tmp_path / "b.png"))
    assert r.returncode == 0 and "sliding window" in r.stdout, r.stderr
    assert Image.open(tmp_path / "b.png").size == (32, 32)  # the map's size is the size sampled
    from utils.data.registry import layout_palette  # the same layout painted in the default palette
    Image.fromarray(layout_palette("shapes", 6).numpy()[big]).save(tmp_path / "painted.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--condition", str(tmp_path / "painted.png"), "--num", "1",
                   "--out", str(tmp_path / "p.png"))
    assert r.returncode == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "p.png")),
                                                np.asarray(Image.open(tmp_path / "b.png"))), r.stderr
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--condition", str(tmp_path / "mask.png"), "--complete",
                   str(tmp_path / "img.png"), "--keep-rows", "3", "--num", "1", "--out", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    Image.fromarray(np.full((16, 32), 1, np.uint8)).save(tmp_path / "wide.png")
    r = run_script("generate.py", "--checkpoint", ckpt, "--condition", str(tmp_path / "wide.png"), "--extend",
                   str(tmp_path / "img.png"), "--grid", "8x16", "--num", "1", "--out", str(tmp_path / "e.png"))
    assert r.returncode == 0 and Image.open(tmp_path / "e.png").size == (32, 16), r.stderr
    Image.fromarray(np.zeros((15, 16), np.uint8)).save(tmp_path / "odd.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    bad = mask.copy()
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "nine.png")
    Image.fromarray(image[:15]).save(tmp_path / "img15.png")
    cases = [([], "this model is conditional on segmentation maps: give one with --condition"),
             (["--condition", str(tmp_path / "odd.png")], "gives a 16x15 map, not a multiple of this model's 2-pixel"),
             (["--condition", str(tmp_path / "rgb.png")], "has the colour (0, 0, 0) at pixel (x=0, y=0), which is not in "
                                                          "this model's layout palette: 0 (40, 40, 40), 1 (230, 60, 60)"),
             (["--condition", str(tmp_path / "nine.png")], "holds class index 9, beyond the condition tokenizer's 6"),
             (["--condition", str(tmp_path / "mask.png"), "--grid", "9x9"], "the map is given at the size to sample"),
             (["--condition", str(tmp_path / "mask.png"), "--complete", str(tmp_path / "img15.png")],
              "is 16x15 pixels, not a multiple of this model's 2-pixel tokens"),
             (["--condition", str(tmp_path / "mask.png"), "--extend", str(tmp_path / "img.png")],
              "--extend needs a --grid larger than the image's 8x8 tokens"),
             (["--condition", str(tmp_path / "mask.png"), "--keep-rows", "2"], "--keep-rows is for --complete")]
    for args, message in cases:
        r = run_script("generate.py", "--checkpoint", ckpt, *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    with pytest.raises(UserError, match="class index 9"):
        read_condition(str(tmp_path / "nine.png"), "segmentation", 6, classes=6)


@pytest.mark.slow
def test_complete_and_extend_unconditional(tmp_path, seg_runs):
    """--complete and --extend also work for models without a condition."""
    d = tmp_path / "u"
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={tmp_path}", "run.name=u", "train.max_steps=2",
                                           f"stage1.checkpoint={seg_runs}/img/checkpoints/last.pt",
                                           "model.class_conditional=true"])
    image = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    for extra, size in ((["--complete", str(tmp_path / "img.png"), "--class", "circle"], (16, 16)),
                        (["--extend", str(tmp_path / "img.png"), "--grid", "16x12"], (24, 32))):
        r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", *extra, "--num", "1", "--out",
                       str(tmp_path / "o.png"))
        assert r.returncode == 0 and Image.open(tmp_path / "o.png").size == size, r.stderr
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--complete", str(tmp_path / "img.png"),
                   "--num", "1", "--out", str(tmp_path / "o.png"))
    assert r.returncode == 0 and "completing as class" in r.stdout and "the likeliest for the kept tokens" in r.stdout
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--condition", str(tmp_path / "img.png"))
    assert r.returncode == 2 and "this model is not conditional" in r.stderr


def test_likeliest_class_of_the_kept_tokens():
    """Completing without --class, a class-conditional model takes the class its own likelihood of the kept tokens
    picks: the argmax over classes of the summed log-probabilities of those tokens."""
    from transformer.sampling import likeliest_classes
    torch.manual_seed(0)
    g = GPT(GPTConfig(codebook_size=10, window=(3, 4), num_classes=4, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # make class 2 prefer code 7 strongly
        g.tok_emb.weight[g.cfg.class_token(2)] += 3 * g.head.weight[7] / g.head.weight[7].norm()
    tokens = torch.randint(0, 10, (3, 3, 4))
    tokens[0].fill_(7)
    got = likeliest_classes(g, tokens, 6)
    ref = []
    with torch.no_grad():
        for b in range(3):
            seq = tokens[b].reshape(-1)[:6]
            lp = [g(torch.cat([torch.tensor([g.cfg.class_token(c)]), seq[:-1]])[None])[0][0].log_softmax(-1)
                  .gather(-1, seq[:, None]).sum().item() for c in range(4)]
            ref.append(int(np.argmax(lp)))
    assert got == ref and got[0] == 2
