import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vqgan.model import VQGAN, VQGANConfig  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# the one tiny VQGAN of the suite (16x16 images, the narrowest widths, 8x8 tokens): built directly here, and as
# config overrides in helpers.TINY_STAGE1
TINY_MODEL = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=32, codebook_size=16,
                  codebook_dim=4, codebook_restart_after=2)


def tiny_model_config(**kw) -> VQGANConfig:
    base = dict(image_size=16, channels=3, codebook_l2_norm=True, **TINY_MODEL)
    base.update(kw)
    return VQGANConfig(**base)


@pytest.fixture
def tiny_vqgan():
    torch.manual_seed(0)
    return VQGAN(tiny_model_config())


def have_taming() -> bool:
    try:
        import taming.modules.diffusionmodules.model  # noqa: F401
        return True
    except Exception:
        return False


needs_taming = pytest.mark.skipif(not have_taming(), reason="official taming-transformers not installed "
                                  "(pip install --no-deps taming-transformers-rom1504 einops && pip install requests)")
