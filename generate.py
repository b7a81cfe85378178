"""Sample images from a trained transformer and its stage-1 VQGAN.

    python generate.py [--checkpoint runs/shapes_gpt/checkpoints/last.pt] [--num 8] [--grid HxW] [--class C|NAME]
                       [--temperature T] [--top-k K] [--top-p P] [--cfg-scale S] [--seed S] [--out PNG]
                       [--condition MAP.png] [--complete IMAGE.png [--keep-rows R]] [--extend IMAGE.png]
                       [--inpaint IMAGE.png --mask MASK.png] [--steps S] [--window-placement centred|strided]

--grid larger than the trained window samples a larger image with the sliding window (a GPT) or windowed
parallel decoding (a masked model). --condition gives a conditional model its map (at the size to sample; a
segmentation layout as a PNG of class indices or an RGB picture in the dataset's layout palette);
--complete keeps the top R token rows of an image and samples the rest; --extend keeps an image in the top-left
corner of a larger --grid and samples around it; --inpaint re-samples the region a mask marks (masked models).
The sampler is the checkpoint's: token by token for a GPT, --steps rounds of parallel decoding for a masked model.
"""
import argparse
import difflib
import math
import os
import time

import torch
from torchvision.utils import save_image

from transformer.draw import SampleConfig, completion_classes, draw
from transformer.loading import load_transformer
from transformer.sampling import decode_images, kept_rows, raster_prefix
from utils.core.config import check_option, load_config
from utils.core.distributed import DistInfo, select_device
from utils.core.errors import UserError, command
from utils.data.conditions import read_condition
from utils.data.images import read_image
from utils.data.registry import class_names_of as dataset_class_names, layout_palette


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
    return list(dataset_class_names(ckpt["config"]["data"]["dataset"]))


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


def image_tokens(path: str, option: str, vq, device) -> torch.Tensor:
    """A user's image -> (1, h, w) its codes. Its size must be a multiple of the tokenizer's patches: it is not
    resized, since that would change what is kept."""
    x = read_image(path, vq.channels, option)
    f = vq.cfg.downsample_factor
    H, W = x.shape[2:]
    if H % f or W % f:
        raise UserError(f"{option}: '{path}' is {W}x{H} pixels, not a multiple of this model's {f}-pixel tokens; crop "
                        f"or resize it to {W - W % f or f}x{H - H % f or f} (resizing is left to you: it would change "
                        "what is kept)")
    return vq.encode_to_indices(x.to(device))


def image_grid(path: str, option: str, vq, device, grid):
    """A user's image whose grid is the one sampled (--complete, --inpaint) -> ((1, h, w) its codes, (h, w)); a
    --grid or condition map of another size is an error."""
    given = image_tokens(path, option, vq, device)
    if grid is not None and grid != tuple(given.shape[1:]):
        raise UserError(f"{option}: the image gives a {given.shape[1]}x{given.shape[2]} token grid, not "
                        f"{grid[0]}x{grid[1]}")
    return given, tuple(given.shape[1:])


def condition_tokens(path, cond_vq, ckpt: dict, device):
    """--condition MAP.png -> (1, h, w) its codes from the condition tokenizer; None without a map. A conditional
    model needs one and only a conditional model takes one."""
    if cond_vq is None:
        if path:
            raise UserError("--condition given, but this model is not conditional (trained without condition maps)")
        return None
    rec = ckpt["stage1_condition"]["data"]
    if not path:
        raise UserError(f"this model is conditional on {rec['condition']} maps: give one with --condition MAP.png")
    colours = layout_palette(ckpt["config"]["data"]["dataset"], rec["condition_classes"]) \
        if rec["condition"] == "segmentation" else None
    m = read_condition(path, rec["condition"], cond_vq.channels, rec["condition_classes"], rec["condition_factor"],
                       colours)
    f = cond_vq.cfg.downsample_factor
    if m.shape[2] % f or m.shape[3] % f:
        raise UserError(f"--condition: '{path}' gives a {m.shape[3]}x{m.shape[2]} map, not a multiple of this model's "
                        f"{f}-pixel tokens")
    return cond_vq.encode_to_indices(m.to(device))


def inpaint_keep(path: str, image_grid: tuple[int, int], f: int) -> torch.Tensor:
    """--mask MASK.png (white = re-sample) -> (h, w) bool, True on the tokens kept. Rounded conservatively: a token
    is re-sampled when any pixel of its f x f patch is marked, so the whole marked region is re-drawn."""
    m = read_image(path, 1, "--mask") > 0  # (1, 1, H, W): pixels brighter than mid-grey
    H, W = m.shape[2:]
    if (H, W) != (image_grid[0] * f, image_grid[1] * f):
        raise UserError(f"--mask: '{path}' is {W}x{H} pixels, the --inpaint image {image_grid[1] * f}x"
                        f"{image_grid[0] * f}: give a mask of the image's size")
    marked = torch.nn.functional.max_pool2d(m.float(), f)[0, 0] > 0  # (h, w): any marked pixel in the patch
    if not marked.any():
        raise UserError(f"--mask: '{path}' marks no pixel (white, or brighter than mid-grey, marks the region to "
                        "re-sample)")
    return ~marked


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
    p.add_argument("--condition", default=None, metavar="MAP.png",
                   help="conditional models: a class-index PNG, an edge map, a small image or a paired map")
    p.add_argument("--complete", default=None, metavar="IMAGE.png", help="keep the top rows of this image")
    p.add_argument("--keep-rows", type=int, default=None, help="token rows --complete keeps (default: half)")
    p.add_argument("--extend", default=None, metavar="IMAGE.png", help="keep this image top-left in a larger --grid")
    p.add_argument("--inpaint", default=None, metavar="IMAGE.png",
                   help="masked models: re-sample the region --mask marks in this image")
    p.add_argument("--mask", default=None, metavar="MASK.png", help="white where --inpaint re-samples")
    p.add_argument("--steps", type=int, default=None,
                   help="masked models: parallel decoding rounds (default: the run's sample.steps)")
    p.add_argument("--window-placement", default=None, metavar="centred|strided",
                   help="a GPT on a --grid larger than its window: where the window sits for each token (default: "
                        "the run's sample.window_placement)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if sum(bool(a) for a in (args.complete, args.extend, args.inpaint)) > 1:
        raise UserError("--complete, --extend and --inpaint are three uses of a given image: choose one")
    if bool(args.inpaint) != bool(args.mask):
        raise UserError("--inpaint IMAGE.png and --mask MASK.png go together: the mask marks what to re-sample")
    if args.keep_rows is not None and not args.complete:
        raise UserError("--keep-rows is for --complete")
    check_option("--num", args.num, min=1)
    device = select_device(args.device, DistInfo(), "--device ")
    gpt, vq, cond_vq, ckpt = load_transformer(args.checkpoint, device)
    window, masked = gpt.cfg.window, gpt.cfg.masked
    settings = load_config(SampleConfig, base=ckpt["config"]["sample"], base_name=f"checkpoint '{args.checkpoint}'")
    settings = settings.with_options(gpt, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     cfg_scale=args.cfg_scale, steps=args.steps,
                                     window_placement=args.window_placement)
    if args.inpaint and not masked:
        raise UserError("--inpaint re-samples a free-form region, which needs a masked model (model.kind=maskgit); "
                        "a GPT samples in raster order: use --complete, or train a masked model")
    grid = parse_grid(args.grid) if args.grid else None
    cond = condition_tokens(args.condition, cond_vq, ckpt, device)  # (1, h, w) or None
    if cond is not None:
        if grid is not None and grid != tuple(cond.shape[1:]):
            raise UserError(f"--grid {grid[0]}x{grid[1]}, but the condition map gives a {cond.shape[1]}x"
                            f"{cond.shape[2]} token grid: the map is given at the size to sample")
        grid = tuple(cond.shape[1:])
        cond = cond.expand(args.num, -1, -1)
    tokens, keep = None, None
    if args.complete:
        given, grid = image_grid(args.complete, "--complete", vq, device, grid)
        rows = args.keep_rows if args.keep_rows is not None else kept_rows(grid)
        check_option("--keep-rows", rows, min=0, max=grid[0])
        tokens, keep = given.expand(args.num, -1, -1), raster_prefix(grid, rows * grid[1])
    elif args.extend:
        given = image_tokens(args.extend, "--extend", vq, device)
        h, w = given.shape[1:]
        if grid is None or grid[0] < h or grid[1] < w or grid == (h, w):
            raise UserError(f"--extend needs a --grid larger than the image's {h}x{w} tokens (e.g. --grid "
                            f"{h}x{2 * w})")
        tokens = torch.zeros(args.num, *grid, dtype=torch.long, device=device)
        tokens[:, :h, :w] = given
        keep = torch.zeros(grid, dtype=torch.bool)
        keep[:h, :w] = True
    elif args.inpaint:
        given, grid = image_grid(args.inpaint, "--inpaint", vq, device, grid)
        tokens, keep = given.expand(args.num, -1, -1), inpaint_keep(args.mask, grid, vq.cfg.downsample_factor)
    grid = grid or window
    if grid[0] < window[0] or grid[1] < window[1]:
        raise UserError(f"--grid {grid[0]}x{grid[1]} is smaller than the trained window {window[0]}x{window[1]}")
    cls = class_index(args.cls, gpt.cfg.num_classes, class_names_of(ckpt)) if args.cls is not None else None
    classes = [cls] if cls is not None else None
    if classes is None and (args.complete or args.inpaint):
        classes, policy = completion_classes(gpt, tokens, keep)
        if policy == "null_class":
            print("re-sampling without a class (the null class: the kept tokens decide; --class chooses one)")
        elif policy == "likeliest_class":
            names = class_names_of(ckpt)
            print(f"completing as class {classes[0]}" + (f" ({names[classes[0]]})" if names else "")
                  + ": the likeliest for the kept tokens (--class chooses another)")

    t0 = time.time()
    tokens = draw(gpt, args.num, settings, grid, classes, cond=cond, tokens=tokens, keep=keep,
                  use_cache=not args.no_kv_cache, generator=torch.Generator(device=device).manual_seed(args.seed))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.time() - t0
    images = decode_images(vq, tokens)  # (N, C, H, W) in [0, 1]

    out = args.out
    if out is None:
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(args.checkpoint)))
        use = "_completed" if args.complete else "_extended" if args.extend else "_inpainted" if args.inpaint else ""
        tag = f"seed{args.seed}_{grid[0]}x{grid[1]}" + (f"_class{cls}" if cls is not None else "") + use + \
            ("_cond" if cond is not None else "")
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
    n_tok = args.num * (grid[0] * grid[1] - (int(keep.sum()) if keep is not None else 0))
    if masked:
        mode = ("windowed " if grid != window else "") + f"parallel decoding, {settings.steps} rounds"
    else:
        mode = (f"sliding window, {settings.window_placement} placement, " if grid != window else "") + \
            ("no KV cache" if args.no_kv_cache else "KV cache")
    print(f"{args.num} image(s), grid {grid[0]}x{grid[1]} ({mode}): {n_tok} tokens in {elapsed:.2f}s = "
          f"{n_tok / max(elapsed, 1e-9):.0f} tokens/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    command(generate)()
