"""End-to-end stage-1 training: run folder, exact resume, signals, NaN guard, GAN switch, DDP, errors."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_vqgan
import vqgan.discriminator
import vqgan.losses
from conftest import ROOT
from helpers import TINY_STAGE1, load, max_weight_diff, run_script
from utils.core.errors import UserError


def train(tmp_path, name, *extra):
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", f"run.name={name}", *extra])
    return os.path.join(tmp_path, name)


def test_run_folder_and_checkpoint(tmp_path):
    d = train(tmp_path, "a", "train.keep_last=1", "train.ema_decay=0.9")
    for f in ("config.yaml", "checkpoints/last.pt", "metrics.json"):
        assert os.path.isfile(os.path.join(d, f)), f
    assert glob.glob(os.path.join(d, "events.out.tfevents.*"))
    assert [os.path.basename(p) for p in glob.glob(os.path.join(d, "checkpoints", "step_*.pt"))] == ["step_0000006.pt"]
    m = json.load(open(os.path.join(d, "metrics.json")))
    assert m["step"] == 6 and {"psnr", "ssim", "l1", "codebook_usage", "perplexity"} <= set(m)
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= 16 and 0 < m["ssim"] <= 1
    ck = load(os.path.join(d, "checkpoints", "last.pt"))
    assert ck["kind"] == "vqgan" and ck["format"] == 1 and ck["step"] == 6
    assert ck["config"]["train"]["max_steps"] == 6 and ck["config"]["data"]["image_size"] == 16
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    assert not any(k.startswith(("disc", "lpips")) for k in ck["model"])  # losses are not part of the model
    assert {"optimizer", "disc", "disc_optimizer", "scaler", "ema", "rng", "data"} <= set(ck)
    # from_checkpoint prefers the EMA weights, and can take the raw ones
    from vqgan import VQGAN
    ema = VQGAN.from_checkpoint(os.path.join(d, "checkpoints", "last.pt"))
    raw = VQGAN.from_checkpoint(os.path.join(d, "checkpoints", "last.pt"), use_ema=False)
    assert torch.equal(raw.encoder.conv_in.weight, ck["model"]["encoder.conv_in.weight"])
    assert torch.equal(ema.encoder.conv_in.weight, ck["ema"]["encoder.conv_in.weight"])
    assert not torch.equal(ema.encoder.conv_in.weight, raw.encoder.conv_in.weight)
    # the dumped config reloads to the same config
    from utils.core.config import load_config, to_dict
    from utils.train.stage1_config import Stage1Config
    assert to_dict(load_config(Stage1Config, os.path.join(d, "config.yaml"))) == ck["config"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_after_earlier_max_steps(tmp_path, workers):
    """Stopped at step 2 (before disc_start), resumed to 6: same weights as the straight run."""
    opts = [f"data.num_workers={workers}", "train.ema_decay=0.9", "train.grad_accum=2", "data.num_train=24"]
    a = train(tmp_path, "a", *opts)
    b = train(tmp_path, "b", *opts, "train.max_steps=2")
    train_vqgan.train(["--resume", os.path.join(b, "checkpoints", "last.pt"), "train.max_steps=6"])
    ca, cb = load(f"{a}/checkpoints/last.pt"), load(f"{b}/checkpoints/last.pt")
    assert cb["step"] == ca["step"] == 6
    assert max_weight_diff(ca["model"], cb["model"]) <= 1e-6
    assert max_weight_diff(ca["disc"], cb["disc"]) <= 1e-6
    assert max_weight_diff(ca["ema"], cb["ema"]) <= 1e-6
    assert json.load(open(f"{a}/metrics.json")) == json.load(open(f"{b}/metrics.json"))


def test_resume_without_path_uses_run_folder(tmp_path):
    d = train(tmp_path, "r", "train.max_steps=3")
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=r", "--resume", "train.max_steps=4"])
    assert load(f"{d}/checkpoints/last.pt")["step"] == 4
    assert load(f"{d}/checkpoints/last.pt")["config"]["train"]["max_steps"] == 4


@pytest.mark.slow
def test_sigterm_saves_and_resume_is_exact(tmp_path):
    opts = TINY_STAGE1 + [f"run.out_dir={tmp_path}", "train.max_steps=400", "train.ckpt_every=1000",
                          "train.eval_every=1000", "loss.disc_start=1"]
    p = subprocess.Popen([sys.executable, "train_vqgan.py", "run.name=s", *opts], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    events = os.path.join(tmp_path, "s")
    for _ in range(600):  # the run has started training once TensorBoard logged its first scalars
        time.sleep(0.1)
        files = glob.glob(f"{events}/events.out.tfevents.*")
        if files and os.path.getsize(files[0]) > 200:
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-500:]
    assert "stopped by SIGTERM at step" in err
    ck = load(f"{events}/checkpoints/last.pt")
    stopped = ck["step"]
    assert 0 < stopped < 400
    # same thread count as the stopped run, so that float reductions happen in the same order
    r = run_script("train_vqgan.py", "--resume", f"{events}/checkpoints/last.pt", f"train.max_steps={stopped + 3}")
    assert r.returncode == 0, r.stderr[-500:]
    r = run_script("train_vqgan.py", "run.name=straight", *opts, f"train.max_steps={stopped + 3}")
    assert r.returncode == 0, r.stderr[-500:]
    straight = f"{tmp_path}/straight"
    assert max_weight_diff(load(f"{straight}/checkpoints/last.pt")["model"],
                           load(f"{events}/checkpoints/last.pt")["model"]) <= 1e-6


def test_nan_guard_names_step_and_terms(tmp_path, monkeypatch):
    real = vqgan.losses.generator_backward
    calls = {"n": 0}

    def poisoned(*a, **k):
        terms = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 4:
            terms["total"] = torch.tensor(float("nan"))
        return terms
    monkeypatch.setattr(train_vqgan, "generator_backward", poisoned)
    with pytest.raises(UserError) as e:
        train(tmp_path, "nan", "train.ckpt_every=1")
    assert str(e.value).startswith("non-finite loss at step 4 (l1=")
    assert "total=nan" in str(e.value) and "last good state" in str(e.value)
    ck = load(f"{tmp_path}/nan/checkpoints/last.pt")
    assert ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_gan_is_off_before_disc_start(tmp_path, monkeypatch):
    steps_with_disc = []
    real_forward = vqgan.discriminator.PatchDiscriminator.forward
    real_backward = vqgan.losses.generator_backward

    def counting_forward(self, x):
        steps_with_disc.append(current["step"])
        return real_forward(self, x)

    current = {"step": 0}

    def tracking_backward(*a, **k):
        current["step"] += 1
        return real_backward(*a, **k)
    monkeypatch.setattr(vqgan.discriminator.PatchDiscriminator, "forward", counting_forward)
    monkeypatch.setattr(train_vqgan, "generator_backward", tracking_backward)
    train(tmp_path, "g", "loss.disc_start=3", "train.max_steps=5")
    # steps 1-3 have optimizer step index 0-2 < disc_start: no discriminator forward at all;
    # steps 4 and 5: one generator pass and two discriminator passes (real, fake) each
    assert steps_with_disc == [4, 4, 4, 5, 5, 5]


def test_existing_run_folder_is_not_overwritten(tmp_path):
    train(tmp_path, "x", "train.max_steps=1")
    with pytest.raises(UserError, match="already holds a run: resume it with --resume, or choose another run.name"):
        train(tmp_path, "x", "train.max_steps=1")


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path):
    cases = [
        (["model.codebook_sise=64"], "did you mean 'model.codebook_size'?"),
        (["--config", "configs/nope.yaml"], "config file not found: 'configs/nope.yaml'"),
        (["data.dataset=mnist", f"data.root={tmp_path}/empty"], "mnist: no train-images-idx3-ubyte[.gz]"),
        ([f"run.out_dir={ROOT}/README.md/x"], "cannot write to the run folder"),
        (["--resume", f"{tmp_path}/none.pt"], "no checkpoint at"),
        (["--resume"], "nothing to resume: no checkpoint at"),
    ]
    for args, message in cases:
        r = run_script("train_vqgan.py", f"run.out_dir={tmp_path}", *args)
        assert r.returncode == 2, (args, r.stderr[-300:])
        assert "Traceback" not in r.stderr and message in r.stderr, (args, r.stderr[-300:])
        assert r.stderr.strip().count("\n") == 0 or r.stderr.strip().splitlines()[-1].startswith("error:")
    torch.save({"kind": "transformer", "format": 1}, tmp_path / "gpt.pt")
    r = run_script("train_vqgan.py", "--resume", str(tmp_path / "gpt.pt"))
    assert r.returncode == 2 and "is a transformer checkpoint, expected a vqgan checkpoint" in r.stderr


def test_lpips_offline_stops_before_step_one(tmp_path, monkeypatch):
    import urllib.error
    from torchvision.models import VGG16_Weights

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError, match="loss.perceptual_weight=0"):
        train(tmp_path, "lp", "loss.perceptual_weight=1.0")
    assert not os.path.exists(f"{tmp_path}/lp/checkpoints/last.pt")


def test_lpips_and_rfid_paths(tmp_path, monkeypatch):
    """The perceptual loss with a local backbone file trains and is reported; rFID offline is a clear error."""
    from vqgan.lpips import LPIPS
    sd = {f"features.{k}": v for k, v in LPIPS("random").features_net.state_dict().items()}
    torch.save(sd, tmp_path / "vgg.pth")
    d = train(tmp_path, "lp", "loss.perceptual_weight=1.0", f"loss.lpips_vgg_weights={tmp_path}/vgg.pth",
              "train.max_steps=4", "train.precision=bf16")
    m = json.load(open(f"{d}/metrics.json"))
    assert m["lpips"] > 0
    import urllib.error

    import pytorch_fid.inception
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    with pytest.raises(UserError, match="rFID needs the FID Inception weights, which could not be had "
                                        r"\(URLError: .*offline.*\); connect once to cache them"):
        train(tmp_path, "fid", "train.rfid=true")


def stub_fid_weights(torch_home) -> None:
    """Random weights for the FID Inception, put where torch's hub cache looks for the real ones: the real loading
    path of pytorch-fid, offline."""
    import pytorch_fid.inception as fi
    from torchvision.models.inception import Inception3
    saved = fi.load_state_dict_from_url, Inception3.load_state_dict
    fi.load_state_dict_from_url, Inception3.load_state_dict = (lambda *a, **k: None), (lambda *a, **k: None)
    try:
        torch.manual_seed(0)
        net = fi.fid_inception_v3()
    finally:
        fi.load_state_dict_from_url, Inception3.load_state_dict = saved
    folder = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(folder, os.path.basename(fi.FID_WEIGHTS_URL)))


def test_feature_stats_gather_exactly():
    """rFID's statistics of two shards, added up, are those of all the features: mean, unbiased covariance."""
    import numpy as np

    from utils.eval.metrics import FeatureStats
    f = torch.randn(50, 6, dtype=torch.float64) * torch.arange(1, 7) + 3
    a, b, whole = FeatureStats(6), FeatureStats(6), FeatureStats(6)
    a.update(f[:20])
    b.update(f[20:])
    whole.update(f)
    a.n += b.n
    a.sum += b.sum
    a.outer += b.outer  # what all_reduce does across ranks
    mu, cov = a.mean_cov()
    assert np.allclose(mu, f.mean(0).numpy()) and np.allclose(cov, np.cov(f.numpy(), rowvar=False))
    assert np.allclose(whole.mean_cov()[1], cov)


@pytest.mark.slow
def test_rfid_under_ddp_scores_the_whole_val_set(tmp_path):
    """rFID with the standard FID Inception (stubbed weights, real loading path): two processes, each with half the
    validation images, give the single process's figure (before, each rank scored its own half)."""
    stub_fid_weights(str(tmp_path / "torch_home"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "torch_home"))
    opts = TINY_STAGE1 + [f"run.out_dir={tmp_path}", "train.rfid=true", "train.max_steps=1", "data.num_val=12",
                          "train.eval_every=100", "loss.disc_start=100"]
    r = subprocess.run([sys.executable, "train_vqgan.py", "run.name=one", *opts], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-1500:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_vqgan.py", "run.name=two", *opts, "data.batch_size=2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-1500:]
    one, two = (json.load(open(f"{tmp_path}/{n}/metrics.json")) for n in ("one", "two"))
    assert one["rfid"] > 0 and abs(two["rfid"] - one["rfid"]) < 1e-3 * one["rfid"], (one, two)


@pytest.mark.slow
def test_ddp_two_processes_across_disc_start(tmp_path):
    """2 CPU processes (gloo) give the single-process weights before disc_start, and run on past it."""
    opts = TINY_STAGE1 + [f"run.out_dir={tmp_path}", "train.keep_last=4", "train.ckpt_every=1",
                          "model.codebook_restart_after=0", "loss.disc_start=2", "train.max_steps=4"]
    single = train(tmp_path, "single", *opts[len(TINY_STAGE1) + 1:])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_vqgan.py", "run.name=ddp", *opts, "data.batch_size=2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-1500:]
    d = f"{tmp_path}/ddp"
    assert load(f"{d}/checkpoints/last.pt")["step"] == 4
    assert len(glob.glob(f"{d}/events.out.tfevents.*")) == 1  # rank 0 writes alone
    for s in (1, 2):  # before the GAN starts, 2 x 2 images equal 1 x 4 images
        a, b = load(f"{single}/checkpoints/step_{s:07d}.pt"), load(f"{d}/checkpoints/step_{s:07d}.pt")
        diffs = torch.cat([(a["model"][k] - b["model"][k]).abs().flatten() for k in a["model"]
                           if a["model"][k].is_floating_point()])
        # equal up to float noise, which Adam amplifies to steps of about lr on the coordinates whose gradient
        # is zero in exact arithmetic (attention key biases, conv biases before a one-channel-per-group
        # GroupNorm: under 1% of the weights); a real mismatch (unaveraged gradients, other images) moves them all
        assert diffs.mean() < 1e-6 and (diffs > 1e-6).float().mean() < 1e-2 and diffs.max() < 3 * 2e-4
    m = json.load(open(f"{d}/metrics.json"))
    assert m["step"] == 4 and 0 < m["codebook_usage"] <= 1
    assert len(load(f"{d}/checkpoints/last.pt")["rng"]) == 2  # every rank's RNG state


@pytest.mark.slow
def test_reconstruct_tool(tmp_path):
    d = train(tmp_path, "rec", "train.max_steps=2")
    import numpy as np
    from PIL import Image
    os.makedirs(tmp_path / "imgs" / "sub")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / "sub" / f"{i}.png")
    r = subprocess.run([sys.executable, "-m", "utils.reconstruct", "--checkpoint", f"{d}/checkpoints/last.pt",
                        "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("3 images -> ") and "codes used" in r.stdout
    outs = sorted(os.listdir(tmp_path / "out"))
    assert outs == ["sub_0.png", "sub_1.png", "sub_2.png"]
    assert Image.open(tmp_path / "out" / "sub_0.png").size == (16, 16)
    r = subprocess.run([sys.executable, "-m", "utils.reconstruct", "--checkpoint", f"{d}/nope.pt",
                        "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint at" in r.stderr
    shutil.rmtree(tmp_path / "out")
