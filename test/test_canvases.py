"""Scoring large canvases: the layout segmenter (its data, its measure), layout -> scene scores with both window
placements, another run on the same layouts and seeds, unconditional canvases' crops, and the one-line errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import train_transformer
import train_vqgan
from helpers import TINY_STAGE1, TINY_STAGE2
from utils.core.errors import UserError
from utils.data.registry import build_datasets
from utils.data.scenes import SCENE_PALETTE, segmenter_data
from utils.eval import judges, segmenter
from utils.eval.layouts import _paired
from utils.eval.segmenter import SmallSegNet, layout_scores, segment


def test_layout_scores_sum_over_canvases_and_name_each_class():
    target = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    s = layout_scores(pred, target, 4)
    # class 0: intersection 1 + 3, union 2 + 4; class 1: 2 of 3; class 2: 0 of 1; class 3 absent
    assert s.per_class() == pytest.approx([4 / 6, 2 / 3, 0.0, None])
    assert s.result()["miou"] == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)
    d = _paired(torch.tensor([0.5, 0.7, 0.9]), torch.tensor([0.4, 0.7, 0.6]))
    assert d["mean"] == pytest.approx(0.4 / 3) and d["se"] == pytest.approx(np.std([0.1, 0, 0.3], ddof=1) / 3 ** 0.5)


def test_scene_segmenter_data_crops_canvases_and_layouts_alike():
    (x, m), (xv, mv) = segmenter_data(128, 40, 3)
    assert x.shape == (40, 3, 64, 64) and m.shape == (40, 64, 64) and xv.shape == (3, 3, 128, 128)
    assert x.min() >= -1 and x.max() <= 1 and m.dtype == torch.long and set(m.unique().tolist()) <= set(range(7))
    red = (m == 4)  # circles are red where the layout says circle
    assert red.any() and (x[:, 0][red] > x[:, 1][red] + 0.5).float().mean() > 0.99
    net = SmallSegNet(classes=7).eval()
    assert net(xv).shape == (3, 7, 128, 128) and net.features(x[:2]).shape == (2, 64)
    assert segment(net, xv).shape == (3, 128, 128) and SmallSegNet()(x[:2]).shape == (2, 64, 64)


@pytest.fixture(scope="module")
def scene_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    base = TINY_STAGE1 + [f"run.out_dir={out}", "train.max_steps=2", "loss.disc_start=100", "data.dataset=scenes",
                          "data.image_size=32", "data.crop_size=16", "data.num_train=8", "data.num_val=4",
                          "model.attn_resolutions=[]", "model.mid_attention=false"]
    train_vqgan.train(base + ["run.name=img"])
    train_vqgan.train(base + ["run.name=seg", "data.condition=segmentation", "data.tokenize=condition"])
    gpt = TINY_STAGE2 + [f"run.out_dir={out}", "train.max_steps=2", "data.dataset=scenes", "data.image_size=32",
                         "data.num_train=8", "data.num_val=4", "model.window=[4,4]", "model.class_conditional=false",
                         f"stage1.checkpoint={out}/img/checkpoints/last.pt"]
    train_transformer.train(gpt + ["run.name=gpt", "data.condition=segmentation",
                                   f"stage1.condition_checkpoint={out}/seg/checkpoints/last.pt"])
    train_transformer.train(gpt + ["run.name=free"])
    return out


@pytest.fixture
def quick_judge(monkeypatch):
    monkeypatch.setattr(segmenter, "LAYOUT_CROPS", 32)
    monkeypatch.setattr(segmenter, "LAYOUT_HELD_OUT", 2)
    monkeypatch.setattr(judges, "EPOCHS", 1)


@pytest.mark.slow
def test_layout_scores_of_a_scenes_run(scene_runs, quick_judge):
    from utils import sample_eval
    run = str(scene_runs / "gpt")
    sample_eval.main([run, "--held-out", "3", "--against", run])
    r = json.load(open(scene_runs / "gpt" / "sample_eval.json"))["layouts"]
    assert r["canvases"] == 3 and r["size"] == 32 and r["sampling"]["window_placement"] == "centred"
    assert set(r["samples"]) == {"centred", "strided"} and 0 <= r["ceiling"]["miou"] <= 1
    assert set(r["ceiling"]["per_class"]) == {"sky", "hills", "ground", "water", "circle", "square", "triangle"}
    assert r["of_ceiling"] == pytest.approx(r["samples"]["centred"]["miou"] / r["ceiling"]["miou"])
    assert {"held_out_miou", "on_these_real_miou", "on_these_real_per_class"} <= set(r["judge"])
    assert set(r["strided_minus_centred"]) == {"mean", "se"}
    # the same model on the same layouts and seeds: the same canvases, a difference of exactly 0
    assert r["against"]["miou"] == r["samples"]["centred"]["miou"]
    assert r["against"]["this_minus_that"] == {"mean": 0.0, "se": 0.0}
    # layouts, real canvases, samples, the other run's samples: one row each
    assert Image.open(scene_runs / "gpt" / "layouts_32.png").size == (2 + 3 * 34, 2 + 4 * 34)
    sample_eval.main([run, "--held-out", "1", "--canvas-size", "48"])
    r = json.load(open(scene_runs / "gpt" / "sample_eval.json"))["layouts"]
    assert r["size"] == 48 and r["canvases"] == 1 and Image.open(scene_runs / "gpt" / "layouts_48.png").size == (52, 152)


@pytest.mark.slow
def test_unconditional_canvases_and_errors(scene_runs, quick_judge, tmp_path):
    from utils import sample_eval
    free = str(scene_runs / "free")
    out = sample_eval.evaluate(free, held_out=3)
    r = out["canvases"]
    assert r["crops"] == 12 and r["crop_size"] == 32
    # the ceiling reconstructs held-out canvases that are not the reference's; the floor is of the training split
    assert out["part"] == "report" and out["sets"] == {
        "reference": {"split": "val", "count": 3, "indices": [0, 3]},
        "ceiling": {"split": "val", "count": 3, "indices": [3, 6]},
        "floor": {"split": "train", "count": 3, "indices": [0, 3]},
        "samples": {"split": "generated", "count": 3, "seeds": [0]}}
    assert all(np.isfinite(r[k]) and r[k] >= 0 for k in ("frechet_samples_to_val", "frechet_recon_to_val",
                                                          "frechet_train_to_val"))
    with pytest.raises(UserError, match="--canvas-size and --against are for layout-conditional models"):
        sample_eval.evaluate(free, held_out=1, against=str(scene_runs / "gpt"))
    with pytest.raises(UserError, match="--against '.*free' is not a layout-conditional model"):
        sample_eval.evaluate(str(scene_runs / "gpt"), held_out=1, against=free)


@pytest.mark.slow
def test_layouts_reach_the_condition_tokenizer_as_the_dataset_gives_them(scene_runs):
    from utils.core.config import load_config
    from utils.eval.layouts import held_out_canvases, layout_maps
    from utils.train.stage2_config import Stage2Config
    ck = torch.load(scene_runs / "gpt" / "checkpoints" / "last.pt", weights_only=True)
    cfg = load_config(Stage2Config, base=ck["config"])
    _, layouts = held_out_canvases(cfg, 2, 32)
    data = cfg.data
    data.num_train, data.num_val = 1, 2
    val = build_datasets(data, cfg.run.seed, augment=False)[1].with_view("condition")
    assert torch.equal(layout_maps(layouts, 7), torch.stack([val[i][0] for i in range(2)]))


@pytest.mark.slow
def test_the_layout_picture_uses_the_palette(scene_runs):
    from transformer.loading import load_transformer
    from utils.eval.layouts import layouts_picture
    model = load_transformer(str(scene_runs / "gpt" / "checkpoints" / "last.pt"))
    pic = layouts_picture(torch.tensor([[[0, 4], [6, 3]]]), model)
    assert torch.allclose(pic[0].permute(1, 2, 0).reshape(4, 3) * 255,
                          torch.tensor(SCENE_PALETTE[[0, 4, 6, 3]], dtype=torch.float32), atol=0.5)
