"""Encode and decode your own images with a trained VQGAN; report PSNR, SSIM, the codes used and their perplexity.

    python -m utils.reconstruct --checkpoint runs/shapes_vqgan/checkpoints/last.pt --images DIR --out DIR
"""
import argparse
import os

import numpy as np
import torch
from PIL import Image

from utils.core.config import check_option
from utils.core.distributed import DistInfo, select_device
from utils.core.errors import command
from utils.data.folder import FolderDataset, list_images
from utils.eval.reconstruction import ReconstructionScores
from vqgan.model import VQGAN


@torch.no_grad()
def reconstruct(checkpoint: str, images: str, out: str, batch_size: int = 16, device: str = "auto") -> dict:
    """Writes the reconstruction of every image under `images` to `out`; returns the figures. `device`: auto (CUDA,
    then MPS, then CPU), cpu, cuda, cuda:N or mps; the model and the images both go there."""
    device = select_device(device, DistInfo(), "--device ")
    model = VQGAN.from_checkpoint(checkpoint, map_location="cpu").to(device)
    data = FolderDataset(list_images(images), model.image_size, model.channels, train=False)
    os.makedirs(out, exist_ok=True)
    scores = ReconstructionScores(model.codebook.codebook_size, device)
    for start in range(0, len(data), batch_size):
        idx = range(start, min(len(data), start + batch_size))
        x = torch.stack([data[i][0] for i in idx]).to(device)
        codes = model.encode_to_indices(x)
        x_rec = model.decode_indices(codes).clamp(-1, 1)
        scores.update(x, x_rec, codes)
        for i, img in zip(idx, (x_rec + 1) / 2):
            arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)  # (H, W, C)
            name = os.path.splitext(os.path.relpath(data.files[i], images))[0].replace(os.sep, "_") + ".png"
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(os.path.join(out, name))
    r = scores.result()
    return {"images": len(data), "psnr": r["psnr"], "ssim": r["ssim"], "codes_used": int((scores.counts > 0).sum()),
            "codebook_size": model.codebook.codebook_size, "perplexity": r["perplexity"]}


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="folder for the reconstructions (PNG)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    args = p.parse_args(argv)
    check_option("--batch-size", args.batch_size, min=1)
    r = reconstruct(args.checkpoint, args.images, args.out, args.batch_size, args.device)
    print(f"{r['images']} images -> {args.out}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
          f"{r['codes_used']}/{r['codebook_size']} codes used, perplexity {r['perplexity']:.1f}")


if __name__ == "__main__":
    main()
