"""Parity with outside references: the official taming modules and the lpips package."""
import subprocess
import sys
import urllib.error

import pytest
import torch
import torch.nn as nn
import yaml

from conftest import ROOT, needs_taming
from utils.convert_taming import convert
from utils.core.errors import UserError
from vqgan.discriminator import PatchDiscriminator
from vqgan.lpips import LPIPS
from vqgan.model import VQGAN

DD = dict(double_z=False, z_channels=64, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
          num_res_blocks=1, attn_resolutions=[8], dropout=0.0)


def write_official(tmp_path, dd=DD, embed_dim=32, n_embed=128, extra=None, disc=False):
    """Official modules with jittered weights, saved as a Lightning-style .ckpt and YAML; with disc, also the
    official discriminator's weights (else a training-only key that the converter must ignore)."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2
    torch.manual_seed(0)
    enc, dec = Encoder(**dd), Decoder(**dd)
    vq = VectorQuantizer2(n_embed, embed_dim, beta=0.25, legacy=False)
    qc, pqc = nn.Conv2d(dd["z_channels"], embed_dim, 1), nn.Conv2d(embed_dim, dd["z_channels"], 1)
    with torch.no_grad():  # move norms off their identity init so that parity is not trivially true
        for m in (enc, dec, qc, pqc):
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
        vq.embedding.weight.normal_()
    sd = {}
    for prefix, m in (("encoder", enc), ("decoder", dec), ("quantize", vq), ("quant_conv", qc), ("post_quant_conv", pqc)):
        sd.update({f"{prefix}.{k}": v for k, v in m.state_dict().items()})
    if disc:
        from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
        d = NLayerDiscriminator(input_nc=3, ndf=16, n_layers=2).apply(weights_init)
        sd.update({f"loss.discriminator.{k}": v for k, v in d.state_dict().items()})
    else:
        sd["loss.discriminator.main.0.weight"] = torch.zeros(1)  # not a discriminator of this design: left out
    ckpt = {"state_dict": sd, "global_step": 1234}
    if extra is not None:
        ckpt["callbacks"] = extra
    torch.save(ckpt, tmp_path / "model.ckpt")
    cfg = {"model": {"target": "taming.models.vqgan.VQModel",
                     "params": {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dd,
                                "lossconfig": {"params": {"disc_num_layers": 2, "disc_ndf": 16}}}}}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    return enc, dec, vq, qc, pqc


@pytest.mark.slow
@needs_taming
def test_official_encoder_decoder_quantizer_parity(tmp_path):
    enc, dec, vq, qc, pqc = write_official(tmp_path)
    r = subprocess.run([sys.executable, "-m", "utils.convert_taming", "--ckpt", str(tmp_path / "model.ckpt"),
                        "--config", str(tmp_path / "model.yaml"), "--out", str(tmp_path / "ours.pt")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "step 1234" in r.stdout
    ours = VQGAN.from_checkpoint(str(tmp_path / "ours.pt"))
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = enc(x)
        assert (ours.encoder(x) - z).abs().max() < 1e-5
        zq, _, (_, _, ind) = vq(qc(z))
        ref = dec(pqc(zq))
        idx = ours.encode_to_indices(x)
        assert torch.equal(idx, ind.reshape(idx.shape))
        assert (ours.decode_indices(idx) - ref).abs().max() < 1e-4
        rec, _, _ = ours(x)
        assert (rec - ref).abs().max() < 1e-4


@needs_taming
def test_converter_falls_back_to_full_load_with_warning(tmp_path):
    write_official(tmp_path, extra=_Pickled())
    with pytest.warns(UserWarning, match="trusted source"):
        ck = convert(str(tmp_path / "model.ckpt"), str(tmp_path / "model.yaml"))
    assert ck["kind"] == "vqgan" and ck["config"]["model"]["codebook_dim"] == 32
    assert ck["config"]["model"]["codebook_l2_norm"] is False and ck["config"]["model"]["codebook_restart_after"] == 0


class _Pickled:  # an arbitrary object, as Lightning pickles into checkpoints
    pass


@pytest.mark.slow
def test_converter_errors(tmp_path):
    with pytest.raises(UserError, match="no config at"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "none.yaml"))
    (tmp_path / "c.yaml").write_text("model: {}\n")
    with pytest.raises(UserError, match="has no model.params section"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "c.yaml"))
    dd = dict(DD, double_z=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"params": {"embed_dim": 4, "n_embed": 8, "ddconfig": dd}}}))
    with pytest.raises(UserError, match="KL autoencoder"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"params": {"embed_dim": 4, "n_embed": 8, "ddconfig": DD}}}))
    with pytest.raises(UserError, match="no checkpoint at"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "c.yaml"))
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match="does not fit this architecture"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "c.yaml"))
    torch.save({"state_dict": {}}, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match="lacks .* weights"):
        convert(str(tmp_path / "a.ckpt"), str(tmp_path / "c.yaml"))
    r = subprocess.run([sys.executable, "-m", "utils.convert_taming", "--ckpt", str(tmp_path / "a.ckpt"),
                        "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o.pt")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: the official checkpoint lacks") and "Traceback" not in r.stderr


@needs_taming
def test_discriminator_matches_official():
    from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
    torch.manual_seed(0)
    ref = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3).apply(weights_init)
    ours = PatchDiscriminator(3, 64, 3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


def _lpips_pair():
    import lpips
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    ours = LPIPS(vgg_weights="random").eval()
    rc = [m for m in ref.net.modules() if isinstance(m, nn.Conv2d)]
    oc = [m for m in ours.features_net if isinstance(m, nn.Conv2d)]
    assert len(rc) == len(oc) == 13
    with torch.no_grad():
        for a, b in zip(rc, oc):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    return ref, ours


def test_lpips_matches_lpips_package():
    ref, ours = _lpips_pair()
    # the real linear heads are loaded (not random): identical to the package's
    for i, lin in enumerate(ours.lins):
        assert torch.equal(lin.weight, getattr(ref, f"lin{i}").model[1].weight)
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        d = ours(x, y)
        assert d.shape == (4,)
        assert (d - ref(x, y).flatten()).abs().max() < 1e-5
        assert ours(x, x).abs().max() < 1e-6
        g = torch.rand(2, 1, 32, 32) * 2 - 1  # grayscale: the channel is repeated
        assert torch.allclose(ours(g, g.flip(-1)), ref(g.repeat(1, 3, 1, 1), g.flip(-1).repeat(1, 3, 1, 1)).flatten(),
                              atol=1e-5)


def test_lpips_gradient_and_fp16_safe_normalisation():
    torch.manual_seed(0)
    ours = LPIPS(vgg_weights="random")
    with torch.no_grad():  # a ReLU net is homogeneous: every activation grows 300x, within fp16's range,
        ours.features_net[0].weight.mul_(300.0)  # but their sums of squares overflow it (max 65504)
        ours.features_net[0].bias.mul_(300.0)
    big = ours.features_net[:4](torch.rand(1, 3, 32, 32))
    assert big.abs().max() < 6e4 and big.pow(2).sum(1).max() > 65504
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d32 = ours(x, y)
    d32.sum().backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in ours.parameters())
    with torch.autocast("cpu", dtype=torch.float16):
        d16 = ours(x, y)
    assert torch.isfinite(d16).all() and d16.dtype == torch.float32
    assert torch.allclose(d16, d32, rtol=0.1)
    ours.train()
    assert not ours.training  # always frozen


def test_lpips_offline_message(monkeypatch):
    from torchvision.models import VGG16_Weights

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError) as e:
        LPIPS(vgg_weights="imagenet")
    msg = str(e.value)
    assert msg.startswith("could not get the VGG16 ImageNet weights for LPIPS (URLError")
    assert "loss.lpips_vgg_weights=/path/to/vgg16.pth" in msg and "loss.perceptual_weight=0" in msg


def test_lpips_local_vgg_file(tmp_path):
    src = LPIPS(vgg_weights="random")
    sd = {f"features.{k}": v for k, v in src.features_net.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision VGG16 state dict also has the classifier
    torch.save(sd, tmp_path / "vgg16.pth")
    loaded = LPIPS(vgg_weights=str(tmp_path / "vgg16.pth"))
    for a, b in zip(src.features_net.state_dict().values(), loaded.features_net.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="no file at"):
        LPIPS(vgg_weights=str(tmp_path / "missing.pth"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="holds no 'features"):
        LPIPS(vgg_weights=str(tmp_path / "bad.pth"))


@pytest.mark.slow
@needs_taming
def test_fine_tuning_a_converted_official_checkpoint(tmp_path):
    """train.init_from a converted official model (and its discriminator): a new run at step 0 with exactly the
    official weights, which trains on; --resume of that file says to use train.init_from instead."""
    import train_vqgan
    from helpers import load, run_script
    write_official(tmp_path, disc=True)
    r = subprocess.run([sys.executable, "-m", "utils.convert_taming", "--ckpt", str(tmp_path / "model.ckpt"),
                        "--config", str(tmp_path / "model.yaml"), "--out", str(tmp_path / "official.pt")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "with its discriminator" in r.stdout, r.stderr
    official = load(tmp_path / "official.pt")
    opts = [f"run.out_dir={tmp_path}", f"train.init_from={tmp_path / 'official.pt'}", "data.num_train=16",
            "data.num_val=8", "data.batch_size=4", "train.precision=fp32", "loss.disc_start=1", "train.log_every=1"]
    train_vqgan.train(opts + ["run.name=at0", "train.max_steps=0"])
    at0 = load(tmp_path / "at0" / "checkpoints" / "last.pt")
    assert at0["step"] == 0 and at0["model_args"] == official["model_args"]
    assert at0["config"]["model"]["codebook_l2_norm"] is False  # the official plain codes, whatever the yaml says
    for part in ("model", "disc"):
        assert all(torch.equal(v, at0[part][k]) for k, v in official[part].items() if "codebook.u" not in k), part
    train_vqgan.train(opts + ["run.name=ft", "train.max_steps=2"])
    ft = load(tmp_path / "ft" / "checkpoints" / "last.pt")
    assert ft["step"] == 2 and not torch.equal(ft["model"]["decoder.conv_out.weight"],
                                               official["model"]["decoder.conv_out.weight"])
    r = run_script("train_vqgan.py", "--resume", str(tmp_path / "official.pt"))
    assert r.returncode == 2 and "is not a resumable training checkpoint" in r.stderr and "train.init_from=" in r.stderr
    r = run_script("train_vqgan.py", f"run.out_dir={tmp_path}", "run.name=bad", f"train.init_from={tmp_path}/official.pt",
                   "model.codebook_dim=8")
    assert r.returncode == 2 and "model.codebook_dim=8 on the command line contradicts train.init_from" in r.stderr \
        and "whose model has model.codebook_dim=32" in r.stderr and "Traceback" not in r.stderr
