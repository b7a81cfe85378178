from vqgan.model import VQGAN, VQGANConfig

__all__ = ["VQGAN", "VQGANConfig"]
