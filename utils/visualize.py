"""Render a run's figures to PNG: reconstructions and codebook usage (stage 1), samples (stage 2).

    python -m utils.visualize RUN_DIR [--out DIR] [--num N] [--seed S] [--scale K]

A stage-1 run folder gives recon.png (val inputs above their reconstructions) and codebook_usage.png
(codes sorted by how often the val set uses them); a stage-2 run folder gives samples.png (one row
per class for class-conditional models), sliding.png (a grid twice the trained window each way)
and completions.png (val images above their bottom-half completions); a masked (MaskGIT) model also gives
inpainting.png (val images, their centre marked in grey, the centre re-sampled). Default --out: RUN_DIR/figures.
"""
import argparse
import math
import os

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid, save_image

from transformer.draw import completion_classes, draw
from transformer.loading import load_transformer
from transformer.sampling import centre_hole, decode_images, top_half
from utils.core.checkpoint import last_checkpoint
from utils.core.config import check_option, load_config
from utils.core.errors import UserError, command
from utils.data.conditions import as_picture
from utils.data.registry import build_datasets, layout_palette
from utils.train.stage1_config import Stage1Config
from utils.train.stage2_config import Stage2Config
from vqgan.model import VQGAN


def save_grid(images: torch.Tensor, path: str, nrow: int, scale: int = 1, padding: int = 1) -> None:
    """images: (N, C, H, W) in [0, 1] -> a PNG grid on white, enlarged `scale` times (nearest neighbour)."""
    save_image(make_grid(images, nrow=nrow, padding=padding, pad_value=1.0), path)
    if scale > 1:
        im = Image.open(path)
        im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def usage_histogram(counts: torch.Tensor, path: str, title: str, width: int = 640, height: int = 240) -> None:
    """A bar per code, sorted by frequency (most used left), heights on a log scale; unused codes in red."""
    counts = counts.double().sort(descending=True).values
    K = len(counts)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, bottom, top = 40, height - 30, 30
    top_val = math.log10(max(1.0, counts[0].item()) + 1)
    for i, c in enumerate(counts.tolist()):
        x0 = left + (width - left - 10) * i / K
        x1 = left + (width - left - 10) * (i + 1) / K
        if c == 0:
            d.rectangle([x0, bottom - 3, max(x0, x1 - 0.5), bottom], fill=(220, 40, 40))
            continue
        h = (bottom - top) * math.log10(c + 1) / top_val
        d.rectangle([x0, bottom - h, max(x0, x1 - 0.5), bottom], fill=(40, 90, 200))
    d.line([left, bottom, width - 10, bottom], fill="black")
    d.line([left, top, left, bottom], fill="black")
    used = int((counts > 0).sum())
    p = counts / counts.sum()
    ppl = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    d.text((left, 8), f"{title}: {used}/{K} codes used ({100 * used / K:.1f}%), perplexity {ppl:.0f}", fill="black")
    d.text((left, bottom + 8), "codes, most used first (bar height: log count)", fill="black")
    d.text((4, top), f"{int(counts[0])}", fill="black")
    img.save(path)


@torch.no_grad()
def stage1_figures(run_dir: str, ckpt_path: str, out: str, num: int, scale: int = 1) -> list[str]:
    cfg = load_config(Stage1Config, os.path.join(run_dir, "config.yaml"))
    vq = VQGAN.from_checkpoint(ckpt_path)
    _, val = build_datasets(cfg.data, cfg.run.seed)
    xs = torch.stack([val[i][0] for i in range(min(num, len(val)))])
    rec = vq.decode_indices(vq.encode_to_indices(xs)).clamp(-1, 1)
    n = len(xs)
    paths = [os.path.join(out, "recon.png"), os.path.join(out, "codebook_usage.png")]
    save_grid(torch.cat([xs, rec]).add(1).div(2), paths[0], nrow=n, scale=scale)
    counts = torch.zeros(vq.codebook.codebook_size)
    for s in range(0, len(val), 128):
        x = torch.stack([val[i][0] for i in range(s, min(len(val), s + 128))])
        counts += torch.bincount(vq.encode_to_indices(x).flatten(), minlength=len(counts)).float()
    usage_histogram(counts, paths[1], f"{cfg.data.dataset} val")
    return paths


@torch.no_grad()
def stage2_figures(ckpt_path: str, out: str, num: int, seed: int, scale: int = 1) -> list[str]:
    gpt, vq, cond_vq, ckpt = load_transformer(ckpt_path)
    cfg = load_config(Stage2Config, base=ckpt["config"])

    def drawn(n, grid=None, classes=None, tokens=None, keep=None, cond=None, again=0):
        g = torch.Generator().manual_seed(seed + again)
        return decode_images(vq, draw(gpt, n, cfg.sample, grid, classes, tokens=tokens, keep=keep, cond=cond,
                                      generator=g))

    window, grid = gpt.cfg.window, tuple(ckpt["grid"])
    nc = gpt.cfg.num_classes
    paths = [os.path.join(out, "samples.png"), os.path.join(out, "sliding.png"), os.path.join(out, "completions.png")]
    val_cache = ckpt.get("token_cache", {}).get("val", "")  # the validation grids the run was scored on
    if cond_vq is not None:
        colours = layout_palette(cfg.data.dataset, cfg.data.condition_classes)
        return [conditional_figure(vq, cond_vq, cfg.data.condition, val_cache, drawn, num, os.path.join(out,
                                   "conditions.png"), scale, colours)]
    if nc:  # one row per class
        per = max(1, num // nc) if num >= nc else 1
        labels = torch.arange(nc).repeat_interleave(per)
        save_grid(drawn(len(labels), classes=labels.tolist()), paths[0], nrow=per, scale=scale)
    else:
        save_grid(drawn(num), paths[0], nrow=math.ceil(math.sqrt(num)), scale=scale)
    k = min(4, num)
    classes = (torch.arange(k) % nc).tolist() if nc else None
    save_grid(drawn(k, (2 * window[0], 2 * window[1]), classes), paths[1], nrow=k, scale=scale, padding=2)
    if os.path.isfile(val_cache) and grid == window:
        c = torch.load(val_cache, weights_only=True)
        k = min(num, len(c["tokens"]))
        real = c["tokens"][:k].long()
        classes = c["labels"][:k].tolist() if nc else None
        done = drawn(k, grid, classes, tokens=real, keep=top_half(grid))
        save_grid(torch.cat([decode_images(vq, real), done]), paths[2], nrow=k, scale=scale)
        if gpt.cfg.masked:  # free-form: the centre re-sampled, without a class (the kept tokens decide)
            keep = centre_hole(grid)
            shown = decode_images(vq, real)
            f = vq.cfg.downsample_factor
            holed = shown.clone()
            holed[:, :, ~keep.repeat_interleave(f, 0).repeat_interleave(f, 1)] = 0.5  # the re-sampled region in grey
            done = drawn(k, grid, completion_classes(gpt, real, keep)[0], tokens=real, keep=keep)
            paths.append(os.path.join(out, "inpainting.png"))
            save_grid(torch.cat([shown, holed, done]), paths[-1], nrow=k, scale=scale)
    else:
        paths.pop()
    return paths


def conditional_figure(vq, cond_vq, kind: str, val_cache: str, draw, num: int, path: str, scale: int,
                       colours=None) -> str:
    """conditions.png: validation condition maps (top row), two samples drawn for each (rows 2 and 3), and the
    real images the maps were made from (bottom row)."""
    if not os.path.isfile(val_cache):
        raise UserError(f"the run's validation token cache '{val_cache}' is gone; it holds the condition maps to show")
    c = torch.load(val_cache, weights_only=True)
    k = min(num, len(c["tokens"]))
    cond = c["cond_tokens"][:k].long()
    maps = as_picture(cond_vq.decode_indices(cond).float(), kind, logits=True, colours=colours)
    real = decode_images(vq, c["tokens"][:k].long())
    first = draw(k, cond=cond)
    second = draw(k, cond=cond, again=1)
    rows = [maps.expand(-1, real.shape[1], -1, -1), first, second, real]
    save_grid(torch.cat(rows), path, nrow=k, scale=scale)
    return path


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--num", type=int, default=10, help="images per figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=1, help="enlarge the image grids this many times (nearest)")
    args = p.parse_args(argv)
    check_option("--num", args.num, min=1)
    check_option("--scale", args.scale, min=1)
    ckpt_path = last_checkpoint(args.run_dir)
    if not os.path.isfile(ckpt_path):
        raise UserError(f"no checkpoint at '{ckpt_path}': give a run folder (runs/<name>)")
    kind = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("kind")
    out = args.out or os.path.join(args.run_dir, "figures")
    os.makedirs(out, exist_ok=True)
    if kind == "vqgan":
        paths = stage1_figures(args.run_dir, ckpt_path, out, args.num, args.scale)
    elif kind == "transformer":
        paths = stage2_figures(ckpt_path, out, args.num, args.seed, args.scale)
    else:
        raise UserError(f"'{ckpt_path}' is not a checkpoint of this project")
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
