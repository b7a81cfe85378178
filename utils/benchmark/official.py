"""The official taming-transformers modules as baselines (`pip install --no-deps taming-transformers-rom1504
einops` and `pip install requests`), patched so that they build offline, and its training step as its Lightning
loop runs it."""
import contextlib
import io
import sys
import types
import warnings

import torch
import torch.nn as nn


def official_available() -> bool:
    try:
        import taming.modules.diffusionmodules.model  # noqa: F401
        import taming.modules.losses.vqperceptual  # noqa: F401  (imports its LPIPS, which we patch)
        return True
    except Exception:
        return False


def official_autoencoder(arch: dict, device) -> nn.ModuleDict:
    """The official encoder, decoder, quantizer and 1x1 convs of VQModel, at `arch`."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2
    dd = dict(double_z=False, z_channels=arch["z"], resolution=arch["size"], in_channels=arch.get("channels", 3),
              out_ch=arch.get("channels", 3), ch=arch["ch"],
              ch_mult=arch["mult"], num_res_blocks=arch["res"], attn_resolutions=arch["attn"], dropout=0.0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its prints
        warnings.simplefilter("ignore")
        return nn.ModuleDict({"encoder": Encoder(**dd), "decoder": Decoder(**dd),
                              "quantize": VectorQuantizer2(arch["K"], arch["D"], beta=0.25),  # legacy, as VQModel
                              "quant_conv": nn.Conv2d(arch["z"], arch["D"], 1),
                              "post_quant_conv": nn.Conv2d(arch["D"], arch["z"], 1)}).to(device)


def official_stage1(arch: dict, device):
    """The official autoencoder and VQLPIPSWithDiscriminator. Its LPIPS downloads weights in __init__: the
    VGG16 is built randomly initialised instead, and the linear heads are loaded from the `lpips`
    package's vgg.pth (the same file the official code downloads)."""
    import taming.modules.losses.lpips as tl
    import torchvision
    from taming.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

    from vqgan.lpips import lpips_head_weights_path
    vgg16 = torchvision.models.vgg16
    # only the official module's view of torchvision is replaced, so nothing else is affected
    tl.models = types.SimpleNamespace(vgg16=lambda pretrained=False, **k: vgg16(weights=None))

    def load_heads(self, name="vgg_lpips"):
        self.load_state_dict(torch.load(lpips_head_weights_path(), map_location="cpu", weights_only=True),
                             strict=False)
    tl.LPIPS.load_from_pretrained = load_heads
    ae = official_autoencoder(arch, device)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its prints
        warnings.simplefilter("ignore")
        loss = VQLPIPSWithDiscriminator(disc_start=arch["disc_start"], disc_num_layers=3, disc_ndf=64).to(device)
    return ae, loss


def official_step_fn(ae, loss, x, global_step, lr=1e-4):
    """What the official Lightning loop does per batch: one training_step per optimizer, each with its
    own forward pass. Lightning's optimizer toggling leaves only the current optimizer's parameters
    trainable: no discriminator weight gradients in the generator step, no autoencoder graph in the
    discriminator step."""
    opt_ae = torch.optim.Adam(ae.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))

    def forward():
        h = ae["quant_conv"](ae["encoder"](x))
        quant, qloss, _ = ae["quantize"](h)
        return ae["decoder"](ae["post_quant_conv"](quant)), qloss

    def step():
        loss.discriminator.requires_grad_(False)
        xrec, qloss = forward()
        aeloss, _ = loss(qloss, x, xrec, 0, global_step, last_layer=ae["decoder"].conv_out.weight, split="train")
        opt_ae.zero_grad(set_to_none=True)
        aeloss.backward()
        opt_ae.step()
        loss.discriminator.requires_grad_(True)
        with torch.no_grad():
            xrec, qloss = forward()
        dloss, _ = loss(qloss, x, xrec, 1, global_step, last_layer=ae["decoder"].conv_out.weight, split="train")
        opt_d.zero_grad(set_to_none=True)
        dloss.backward()
        opt_d.step()
    return step


def official_gpt(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
    """The official minGPT. Its module imports `top_k_top_p_filtering` from `transformers` for sampling
    helpers the training step never calls (and current `transformers` no longer has); when that import
    fails, a stand-in module is visible only while the official module is imported."""
    try:
        from taming.modules.transformer.mingpt import GPT as OfficialGPT
    except ImportError:
        saved = sys.modules.get("transformers")
        sys.modules["transformers"] = types.SimpleNamespace(top_k_top_p_filtering=None)
        try:
            from taming.modules.transformer.mingpt import GPT as OfficialGPT
        finally:
            if saved is None:
                del sys.modules["transformers"]
            else:
                sys.modules["transformers"] = saved
    return OfficialGPT(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
