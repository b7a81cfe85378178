"""Sample images from a trained transformer and its stage-1 VQGAN.

    python generate.py [--checkpoint runs/shapes_gpt/checkpoints/last.pt] [--num 8] [--grid HxW] [--class C]
                       [--temperature T] [--top-k K] [--top-p P] [--cfg-scale S] [--seed S] [--out PNG]

--grid larger than the trained window samples a larger image with the sliding window.
"""
import argparse
import difflib
import math
import os
import time

import torch
from torchvision.utils import save_image

from transformer.loading import load_transformer
from transformer.sampling import decode_images, sample
from utils.config import check_option
from utils.data import CLASS_NAMES
from utils.distributed import DistInfo, select_device
from utils.errors import UserError, command


def parse_grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--grid '{text}' is not of the form HxW, e.g. 16x32") from None
    if h < 1 or w < 1:
        raise UserError(f"--grid '{text}': both sides must be at least 1 token")
    return h, w


def class_names_of(ckpt: dict) -> list[str]:
    """The class names a transformer checkpoint stores; checkpoints written before it stored them give those of
    their dataset, where it has fixed ones."""
    if ckpt.get("class_names"):
        return list(ckpt["class_names"])
    return list(CLASS_NAMES.get(ckpt["config"]["data"]["dataset"], ()))


def class_index(text: str, num_classes: int, names: list[str]) -> int:
    """--class as an index or a class name (exact, else ignoring case)."""
    if num_classes == 0:
        raise UserError("--class given, but this model is unconditional (trained without classes)")
    if text.lstrip("-").isdigit():
        if not 0 <= int(text) < num_classes:
            raise UserError(f"--class {text} is out of range: this model has classes 0..{num_classes - 1}")
        return int(text)
    lower = [n.lower() for n in names]
    if text in names or text.lower() in lower:
        return names.index(text) if text in names else lower.index(text.lower())
    listed = ", ".join(f"{i} {n}" for i, n in enumerate(names)) or f"0..{num_classes - 1} (no names stored)"
    near = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    raise UserError(f"--class '{text}' is not a class of this model; its classes: {listed}"
                    + (f"; did you mean '{near[0]}'?" if near else ""))


def generate(argv=None) -> None:
    p = argparse.ArgumentParser(description="Sample images from a trained transformer (stage 2).")
    p.add_argument("--checkpoint", default="runs/shapes_gpt/checkpoints/last.pt")
    p.add_argument("--num", type=int, default=8, help="number of images")
    p.add_argument("--grid", default=None, help="latent grid HxW in tokens (default: the trained window)")
    p.add_argument("--class", dest="cls", default=None, metavar="C|NAME",
                   help="class index or name (class-conditional models)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path (default: the run folder's samples/)")
    p.add_argument("--save-individual", action="store_true", help="also write each image as its own PNG")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole context for every token (slow: the speed without the cache)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for name, value, bounds in (("--num", args.num, dict(min=1)), ("--temperature", args.temperature, dict(above=0)),
                                ("--top-k", args.top_k, dict(min=1)), ("--top-p", args.top_p, dict(above=0, max=1)),
                                ("--cfg-scale", args.cfg_scale, dict(min=0))):
        check_option(name, value, **bounds)
    device = select_device(args.device, DistInfo(), "--device ")
    gpt, vq, ckpt = load_transformer(args.checkpoint, device)
    window = gpt.cfg.window
    grid = parse_grid(args.grid) if args.grid else window
    if grid[0] < window[0] or grid[1] < window[1]:
        raise UserError(f"--grid {grid[0]}x{grid[1]} is smaller than the trained window {window[0]}x{window[1]}")
    cls = class_index(args.cls, gpt.cfg.num_classes, class_names_of(ckpt)) if args.cls is not None else None
    classes = [cls] if cls is not None else None
    sc = ckpt["config"]["sample"]
    kw = dict(temperature=args.temperature if args.temperature is not None else sc["temperature"],
              top_k=args.top_k if args.top_k is not None else sc["top_k"],
              top_p=args.top_p if args.top_p is not None else sc["top_p"],
              cfg_scale=args.cfg_scale if args.cfg_scale is not None else sc["cfg_scale"],
              generator=torch.Generator(device=device).manual_seed(args.seed))

    t0 = time.time()
    tokens = sample(gpt, args.num, grid, classes, use_cache=not args.no_kv_cache, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.time() - t0
    images = decode_images(vq, tokens)  # (N, C, H, W) in [0, 1]

    out = args.out
    if out is None:
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(args.checkpoint)))
        tag = f"seed{args.seed}_{grid[0]}x{grid[1]}" + (f"_class{cls}" if cls is not None else "")
        out = os.path.join(run_dir, "samples", f"samples_{tag}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if args.num == 1:
        save_image(images[0], out)  # exactly the decoded image, no grid padding
    else:
        save_image(images, out, nrow=math.ceil(math.sqrt(args.num)), padding=2)
    if args.save_individual:
        stem = os.path.splitext(out)[0]
        for i, img in enumerate(images):
            save_image(img, f"{stem}_{i:03d}.png")
    n_tok = args.num * grid[0] * grid[1]
    mode = ("sliding window, " if grid != window else "") + ("no KV cache" if args.no_kv_cache else "KV cache")
    print(f"{args.num} image(s), grid {grid[0]}x{grid[1]} ({mode}): {n_tok} tokens in {elapsed:.2f}s = "
          f"{n_tok / max(elapsed, 1e-9):.0f} tokens/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    command(generate)()
