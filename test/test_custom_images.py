"""A user's own images on a laptop: the CPU configs train on a folder of photos of any size (crops, labels, masks),
sample wide canvases, and a run whose max_steps would take more than a day says so once."""
import os

import numpy as np
import pytest
from PIL import Image

import generate
import train_transformer
import train_vqgan
from conftest import ROOT
from helpers import load
from utils.export_elpv import export
from utils.train import loop

CONFIGS = os.path.join(ROOT, "configs")
SHRINK = ["data.image_size=32", "data.batch_size=2", "train.max_steps=2", "train.log_every=1",
          "train.eval_every=2", "train.ckpt_every=2", "train.eval_batches=1", "train.precision=fp32",
          "train.warmup_steps=0"]
GPT_SHRINK = ["data.image_size=32", "data.batch_size=2", "model.window=[4,4]", "train.max_steps=2",
              "train.eval_every=2", "train.ckpt_every=2", "train.log_every=1", "train.precision=fp32", "sample.num=1"]


def photo(rng, h, w) -> np.ndarray:
    """A smooth colour image with texture, like a downscaled photograph (not uniform noise)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)), xx * yy], -1)
    img = (base - base.min()) / (np.ptp(base) + 1e-6) * 200 + rng.normal(0, 12, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def make_photos(root, masks_root=None, classes=("beach", "forest"), per_class=6):
    """Photos of varied sizes and aspect ratios, as JPEGs in a folder per class; with masks_root, a mask per photo
    (class indices 0..2, PNG) at the same relative path."""
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (40, 40), (60, 36), (36, 52), (44, 70), (50, 50)]
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(photo(rng, h, w)).save(os.path.join(root, c, f"{i}.jpg"), quality=90)
            if masks_root:
                os.makedirs(os.path.join(masks_root, c), exist_ok=True)
                m = (np.arange(w)[None, :] * 3 // w).repeat(h, 0).astype(np.uint8)
                Image.fromarray(m).save(os.path.join(masks_root, c, f"{i}.png"))
    return str(root)


@pytest.mark.slow
def test_cpu_configs_train_on_a_folder_of_photos_and_sample_wide(tmp_path):
    root = make_photos(tmp_path / "photos")
    out = str(tmp_path / "runs")
    train_vqgan.train(["--config", os.path.join(CONFIGS, "custom_cpu_vqgan.yaml"), f"data.root={root}",
                       f"run.out_dir={out}", *SHRINK])
    s1 = load(f"{out}/custom_cpu_vqgan/checkpoints/last.pt")
    assert s1["step"] == 2 and s1["config"]["data"]["crop_size"] is None and s1["config"]["model"]["tile"] is None
    assert s1["config"]["model"]["channels"] == 3 and s1["config"]["model"]["image_size"] == 32
    train_transformer.train(["--config", os.path.join(CONFIGS, "custom_cpu_gpt.yaml"), f"data.root={root}",
                             f"run.out_dir={out}", f"stage1.checkpoint={out}/custom_cpu_vqgan/checkpoints/last.pt",
                             *GPT_SHRINK])
    s2 = load(f"{out}/custom_cpu_gpt/checkpoints/last.pt")
    assert s2["class_names"] == ["beach", "forest"] and s2["step"] == 2
    wide = tmp_path / "wide.png"
    generate.generate(["--checkpoint", f"{out}/custom_cpu_gpt/checkpoints/last.pt", "--grid", "8x16", "--num", "1",
                       "--class", "forest", "--out", str(wide), "--save-individual"])
    singles = sorted(p for p in os.listdir(tmp_path) if p.startswith("wide") and p != "wide.png")
    assert Image.open(tmp_path / singles[0]).size == (64, 32)  # 8x16 tokens at f=4: 32 high, 64 wide


@pytest.mark.slow
def test_grayscale_photos_with_one_channel_and_no_classes(tmp_path):
    root = tmp_path / "gray"
    make_photos(root, per_class=3)
    for d, _, names in os.walk(root):
        for n in names:
            Image.open(os.path.join(d, n)).convert("L").save(os.path.join(d, n))
    out = str(tmp_path / "runs")
    train_vqgan.train(["--config", os.path.join(CONFIGS, "custom_cpu_vqgan.yaml"), f"data.root={root}",
                       f"run.out_dir={out}", "data.channels=1", *SHRINK])
    assert load(f"{out}/custom_cpu_vqgan/checkpoints/last.pt")["config"]["model"]["channels"] == 1
    # a folder whose classes are not wanted: the two keys the README gives
    train_transformer.train(["--config", os.path.join(CONFIGS, "custom_cpu_gpt.yaml"), f"data.root={root}",
                             f"run.out_dir={out}", f"stage1.checkpoint={out}/custom_cpu_vqgan/checkpoints/last.pt",
                             "data.labels=none", "model.class_conditional=false", *GPT_SHRINK])
    s2 = load(f"{out}/custom_cpu_gpt/checkpoints/last.pt")
    assert s2["step"] == 2 and not s2.get("class_names")


@pytest.mark.slow
def test_cpu_segmentation_pair_trains_on_photos_and_masks(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    make_photos(images, masks, per_class=4)
    out = str(tmp_path / "runs")
    folders = [f"data.root={images}", f"data.condition_root={masks}", f"run.out_dir={out}"]
    train_vqgan.train(["--config", os.path.join(CONFIGS, "custom_cpu_vqgan.yaml"), f"data.root={images}",
                       f"run.out_dir={out}", *SHRINK])
    train_vqgan.train(["--config", os.path.join(CONFIGS, "custom_cpu_seg_vqgan.yaml"), *folders, *SHRINK])
    train_transformer.train(["--config", os.path.join(CONFIGS, "custom_cpu_seg_gpt.yaml"), *folders,
                             f"stage1.checkpoint={out}/custom_cpu_vqgan/checkpoints/last.pt",
                             f"stage1.condition_checkpoint={out}/custom_cpu_seg_vqgan/checkpoints/last.pt",
                             *GPT_SHRINK])
    assert load(f"{out}/custom_cpu_seg_gpt/checkpoints/last.pt")["step"] == 2


def fake_clock(monkeypatch, seconds_per_call: float) -> None:
    t = [0.0]

    def clock():
        t[0] += seconds_per_call
        return t[0]
    monkeypatch.setattr(loop, "clock", clock)


def test_pace_estimates_once_from_the_steps_after_the_first(monkeypatch):
    fake_clock(monkeypatch, 1.0)
    pace = loop.Pace(start_step=0, max_steps=200000, cpu_config="configs/custom_cpu_vqgan.yaml", over=10)
    lines = [pace.estimate(s) for s in range(1, 30)]
    said = [x for x in lines if x]
    # the clock moves 1 s per call: 2 calls (at step 1 and step 11) over 10 steps, 0.1 s per step
    assert len(said) == 0
    fake_clock(monkeypatch, 10.0)
    pace = loop.Pace(start_step=5, max_steps=100000, cpu_config="configs/custom_cpu_vqgan.yaml", over=10)
    said = [(s, x) for s, x in ((s, pace.estimate(s)) for s in range(6, 40)) if x]
    assert [s for s, _ in said] == [16]  # once, after the 10 timed steps that follow the first of this process
    assert said[0][1] == ("at 1.00 s per step here, the 99984 steps left of train.max_steps=100000 take about 1.2 "
                          "days; for a laptop or a CPU see configs/custom_cpu_vqgan.yaml (minutes on 2 cores), or "
                          "lower train.max_steps")


@pytest.mark.parametrize("seconds_per_reading, says", [(1e6, True), (1e-3, False)])
def test_a_day_long_run_says_so_in_its_log(tmp_path, monkeypatch, seconds_per_reading, says):
    """The clock is read after step 1 and after step 11: 1e6 s between them is 1e5 s per step, and the 3 steps left
    of 14 take 3.5 days; 1e-3 s is a fast run, which says nothing."""
    import logging
    from helpers import TINY_STAGE1
    fake_clock(monkeypatch, seconds_per_reading)
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("vqgan").addHandler(handler)
    try:
        train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=slow", "train.max_steps=14",
                                         "train.eval_every=100", "train.ckpt_every=100", "loss.disc_start=100"])
    finally:
        logging.getLogger("vqgan").removeHandler(handler)
    said = [r for r in records if "take about" in r]
    assert said == ([f"at 100000.00 s per step here, the 3 steps left of train.max_steps=14 take about 3.5 days; for "
                     "a laptop or a CPU see configs/custom_cpu_vqgan.yaml (minutes on 2 cores), or lower "
                     "train.max_steps"] if says else [])


def test_export_elpv_writes_class_folders_and_a_held_out_split(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "images")
    rows = []
    for i in range(20):
        name = f"images/cell{i:04d}.png"
        Image.fromarray(np.full((30, 30), i * 10, np.uint8)).save(src / name)
        rows.append(f"{name}  {0.0 if i % 3 else 1.0}  {'mono' if i < 8 else 'poly'}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    counts = export(str(src / "labels.csv"), str(tmp_path / "elpv"), test_fraction=0.25)
    assert counts == {"test/mono": 2, "train/mono": 6, "test/poly": 3, "train/poly": 9}
    held = sorted(os.listdir(tmp_path / "elpv" / "test" / "poly"))
    assert len(held) == 3 and not set(held) & set(os.listdir(tmp_path / "elpv" / "train" / "poly"))
    assert export(str(src / "labels.csv"), str(tmp_path / "again"), test_fraction=0.25) == counts
    assert sorted(os.listdir(tmp_path / "again" / "test" / "poly")) == held  # the same split every time
    im = Image.open(tmp_path / "elpv" / "train" / "mono" / "cell0000.png")
    assert im.mode == "L" and np.asarray(im).max() == 0
