"""PatchGAN discriminator (the pix2pix NLayer design): one real/fake logit per overlapping patch."""
import torch
import torch.nn as nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            # no conv bias before BatchNorm: the norm's shift makes it redundant
            layers += [nn.Conv2d(ch * prev, ch * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ch * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ch * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) images in [-1, 1] -> (B, 1, H', W') patch logits."""
        return self.main(x)

    @staticmethod
    def output_size(image_size: int, n_layers: int) -> int:
        """Side of the logit map for a square input; below 1 means the image is too small for n_layers."""
        s = image_size
        for _ in range(n_layers):
            s = s // 2  # 4x4, stride 2, pad 1 halves
        return s - 2  # two 4x4 stride-1 pad-1 convs each remove one pixel


def _init_weights(m: nn.Module) -> None:
    # the pix2pix initialisation: N(0, 0.02) convs, BatchNorm scale N(1, 0.02) and zero shift
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
