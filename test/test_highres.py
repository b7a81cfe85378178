"""High-resolution synthesis: stage 1 on crops of large images (the crop view, whole-image and crop validation
figures, the config rules), the sliding window's context against the training windows, the `scenes` set and its
layouts, RGB layouts painted in a palette."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import train_vqgan
from helpers import TINY_STAGE1, run_script
from transformer.gpt import GPT, GPTConfig
from transformer.sampling import _Stepper, sample, window_origin
from transformer.sequences import training_pair, window_seq
from utils.core.config import ConfigError, load_config
from utils.core.errors import UserError
from utils.data.conditions import one_hot, read_condition
from utils.data.registry import build_datasets, layout_palette
from utils.data.scenes import SCENE_CLASSES, SCENE_PALETTE, render_scenes
from utils.train.stage1_config import DataConfig, Stage1Config
from utils.train.stage2_config import Stage2Config
from vqgan.model import VQGAN, VQGANConfig
from vqgan.tiles import decode_tiled, encode_tiled, tile_starts


def test_crops_of_image_and_map_alike():
    data = DataConfig(dataset="scenes", image_size=64, crop_size=32, condition="segmentation", num_train=6, num_val=2)
    data.check()
    train, val = build_datasets(data, seed=3)
    whole, _ = build_datasets(data, seed=3, augment=False)  # the same canvases, uncropped
    layouts = whole.with_view("condition")
    offsets = set()
    for i in range(len(train)):
        x, m = train[i][0], train.with_view("condition")[i][0]
        assert x.shape == (3, 32, 32) and m.shape == (7, 32, 32)
        full, full_map = whole[i][0], layouts[i][0]
        found = [(t, l) for t in range(33) for l in range(33) if torch.equal(full[:, t:t + 32, l:l + 32], x)]
        assert found, "the crop lies inside its image"
        t, l = found[0]
        assert torch.equal(full_map[:, t:t + 32, l:l + 32], m)  # the map cropped where the image was
        offsets.add((t, l))
    assert len(offsets) > 1 and val[0][0].shape == (3, 64, 64)  # crops vary; validation stays whole
    again, _ = build_datasets(data, seed=3)
    assert all(torch.equal(again[i][0], train[i][0]) for i in range(len(train)))  # seeded: the same crops
    again.set_epoch(1)
    assert not all(torch.equal(again[i][0], train[i][0]) for i in range(len(train)))  # and others next epoch


def test_crop_size_rules():
    for crop, msg in [(48, "data.crop_size=48 must be at most data.image_size=32"),
                      (10, "data.crop_size=10 must be at most data.image_size=32 and a multiple of the downsampling "
                           "factor 4")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(Stage1Config, overrides=[f"data.crop_size={crop}"])
    cfg = load_config(Stage1Config, overrides=["data.crop_size=16", "loss.disc_layers=2"])
    assert cfg.model.image_size == 32  # the model is laid out for the whole image, which stage 2 encodes
    with pytest.raises(ConfigError, match="data.crop_size=16 is too small for loss.disc_layers=3"):
        load_config(Stage1Config, overrides=["data.crop_size=16"])  # the discriminator sees the crops
    with pytest.raises(ConfigError, match="data.crop_size=32 is for stage 1 .*stage 2 encodes whole images once"):
        load_config(Stage2Config, overrides=["data.crop_size=32"])


def test_stage1_on_crops_scores_whole_images_and_crops(tmp_path):
    train_vqgan.train(TINY_STAGE1 + ["data.dataset=scenes", "data.image_size=32", "data.crop_size=16",
                                     "data.num_train=16", "data.num_val=4", "model.mid_attention=false",
                                     "train.max_steps=3", f"run.out_dir={tmp_path}", "run.name=c"])
    m = json.load(open(tmp_path / "c" / "metrics.json"))
    assert {"psnr", "ssim", "crop_psnr", "crop_ssim"} <= set(m) and m["crop_psnr"] != m["psnr"]
    ck = torch.load(tmp_path / "c" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["model_args"]["image_size"] == 32 and ck["model_args"]["mid_attention"] is False


def test_the_sliding_window_sees_what_training_windows_show():
    """Token by token, the sampler's context (its prefix of condition codes and start token, and the codes before the
    token inside its window) is the training sequence of the crop at the same window, cut at that token."""
    torch.manual_seed(0)
    cfg = GPTConfig(codebook_size=7, window=(2, 3), cond_codebook_size=5, n_layer=1, n_head=2, n_embd=16)
    gpt = GPT(cfg).eval()
    grid = (5, 6)
    cond = torch.randint(0, 5, (2, *grid))
    seen = []
    real = _Stepper.logits

    def record(self, prefix, context, key):
        seen.append((prefix.clone(), context.clone(), key))
        return real(self, prefix, context, key)
    _Stepper.logits = record
    try:
        out = sample(gpt, 2, grid, cond=cond, generator=torch.Generator().manual_seed(1))
    finally:
        _Stepper.logits = real
    assert len(seen) == grid[0] * grid[1]
    for pos, (prefix, context, key) in enumerate(seen):
        i, j = divmod(pos, grid[1])
        top, left = window_origin(i, j, grid, cfg.window)
        assert key == (top, left)
        inputs, _ = training_pair(window_seq(out, top, left, cfg.window), torch.full((2,), -1), cfg,
                                  cond=window_seq(cond, top, left, cfg.window))
        li, lj = i - top, j - left
        n = prefix.shape[1] + li * cfg.window[1] + lj
        assert torch.equal(torch.cat([prefix, context], 1), inputs[:, :n]), (i, j)


def test_scenes_are_deterministic_and_their_layouts_match():
    a, la = render_scenes(6, 128, seed=5)
    b, lb = render_scenes(6, 128, seed=5)
    c, _ = render_scenes(6, 128, seed=6)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert len(SCENE_CLASSES) >= 6 and len(SCENE_CLASSES[4:]) >= 3
    for img, lay in zip(a, la):
        assert set(np.unique(lay)) >= {0, 2}  # sky and ground everywhere
        rgb = {k: img[lay == k].astype(float).mean(0) for k in np.unique(lay)}
        assert rgb[0][2] > rgb[0][0]  # the sky is blue
        assert rgb[2][1] > max(rgb[2][0], rgb[2][2])  # the ground green
        if 3 in rgb:
            assert rgb[3][2] > max(rgb[3][0], rgb[3][1])  # the water blue
        if 4 in rgb:
            assert rgb[4][0] > 2 * rgb[4][1]  # circles red
        objects = lay >= 4
        assert objects.any(0).sum() >= 14  # objects at least 14 pixels (3 tokens) wide between them
    big, big_layouts = render_scenes(2, 256, seed=1)
    assert big.shape == (2, 256, 256, 3) and (big_layouts >= 4).mean() > 0.02


def test_rgb_layouts_map_to_their_classes(tmp_path):
    _, layouts = render_scenes(1, 64, seed=2)
    colours = layout_palette("scenes", 7)
    assert torch.equal(colours, torch.tensor(SCENE_PALETTE))
    Image.fromarray(SCENE_PALETTE[layouts[0]]).save(tmp_path / "layout.png")
    Image.fromarray(layouts[0]).save(tmp_path / "indices.png")
    painted = read_condition(str(tmp_path / "layout.png"), "segmentation", 7, classes=7, colours=colours)
    assert torch.equal(painted[0], one_hot(torch.from_numpy(layouts[0]).long(), 7))
    assert torch.equal(painted, read_condition(str(tmp_path / "indices.png"), "segmentation", 7, classes=7))
    off = SCENE_PALETTE[layouts[0]].copy()
    off[5, 9] = (1, 2, 3)
    Image.fromarray(off).save(tmp_path / "off.png")
    with pytest.raises(UserError, match=r"has the colour \(1, 2, 3\) at pixel \(x=9, y=5\), which is not in this "
                                        r"model's layout palette: 0 \(135, 190, 235\)"):
        read_condition(str(tmp_path / "off.png"), "segmentation", 7, classes=7, colours=colours)


def test_tiles_cover_the_image_and_stitch_like_one_pass():
    """With a position-wise `encode`/`decode` (no context), tiled passes give exactly the whole pass, on square and
    on non-square images (a side shorter than a tile included), so the stitching itself loses nothing."""
    assert tile_starts(8, 4, 2) == [0, 2, 4] and tile_starts(9, 4, 2) == [0, 2, 4, 5] and tile_starts(3, 4, 2) == [0]
    f = 4
    encode = lambda x: (x[:, 0, ::f, ::f] * 100).round().long()  # noqa: E731
    decode = lambda i: (i.float() / 100)[:, None].repeat_interleave(f, 2).repeat_interleave(f, 3)  # noqa: E731
    for H, W in [(32, 32), (36, 20), (12, 64)]:
        x = torch.rand(2, 3, H, W)
        codes = encode_tiled(encode, x, tile=16, f=f)
        assert torch.equal(codes, encode(x))
        assert torch.allclose(decode_tiled(decode, codes, tile=16, f=f), decode(codes), atol=1e-6)


def test_a_tokenizer_trained_on_crops_tiles_larger_images():
    torch.manual_seed(0)
    cfg = VQGANConfig(image_size=16, channels=3, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                      mid_attention=False, z_channels=32, codebook_size=16, codebook_dim=4, tile=16)
    cfg.check("test")
    vq = VQGAN(cfg).eval()
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    codes = vq.encode_to_indices(x)
    assert codes.shape == (1, 8, 12)
    # tiles of 4x4 tokens at strides of 2: tokens 0-2 of each side are nearest the first tile's centre
    assert torch.equal(codes[:, :3, :3], vq.encode_to_indices(x[:, :, :16, :16])[:, :3, :3])
    assert torch.equal(codes[:, -3:, -3:], vq.encode_to_indices(x[:, :, -16:, -16:])[:, -3:, -3:])
    small = x[:, :, :16, :16]
    rec, loss, info = vq(small)  # the tile itself: one pass, as in training
    assert torch.equal(rec, vq.decode(vq.encode(small)[0])) and loss.requires_grad
    rec, loss, info = vq(x)
    assert rec.shape == x.shape and torch.equal(info["indices"], codes) and float(loss) == 0.0
    assert torch.allclose(rec, vq.decode_indices(codes))
    with pytest.raises(ConfigError, match=r"model.tile=16 is smaller than the training images \(data.crop_size=32\)"):
        load_config(Stage1Config, overrides=["data.crop_size=32", "model.tile=16"])


def test_window_placements():
    grid, window = (4, 32), (4, 8)
    centred = [window_origin(0, j, grid, window)[1] for j in range(32)]
    strided = [window_origin(0, j, grid, window, "strided")[1] for j in range(32)]
    assert centred == [0] * 5 + list(range(1, 25)) + [24] * 3
    assert strided == [0] * 6 + [4] * 4 + [8] * 4 + [12] * 4 + [16] * 4 + [20] * 4 + [24] * 6
    assert all(left <= j < left + 8 for j, left in enumerate(strided))  # every token inside its window
    assert all(2 <= j - left < 6 for j, left in enumerate(strided) if 6 <= j < 26)  # in the middle half, inside
    assert window_origin(5, 9, (12, 12), (3, 3), "strided") == window_origin(5, 9, (12, 12), (3, 3))  # stride 1
    with pytest.raises(ValueError, match="unknown window placement 'left'; choose from centred, strided"):
        window_origin(0, 0, grid, window, "left")


def test_both_placements_are_plain_sampling_when_the_grid_is_the_window():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(codebook_size=9, window=(3, 4), cond_codebook_size=5, n_layer=1, n_head=2, n_embd=16)).eval()
    cond = torch.randint(0, 5, (2, 3, 4))
    draws = [sample(gpt, 2, (3, 4), cond=cond, placement=p, use_cache=c, generator=torch.Generator().manual_seed(4))
             for p in ("centred", "strided") for c in (True, False)]
    assert all(torch.equal(d, draws[0]) for d in draws[1:])
    big = [sample(gpt, 2, (6, 12), cond=torch.randint(0, 5, (2, 6, 12), generator=torch.Generator().manual_seed(1)),
                  placement="strided", use_cache=c, generator=torch.Generator().manual_seed(4)) for c in (True, False)]
    assert torch.equal(big[0], big[1])  # the cache changes nothing but speed with either placement
