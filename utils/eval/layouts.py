"""Scores of synthesis on large canvases (used by `python -m utils.sample_eval` on a run of a dataset with layouts,
such as `scenes`), judged by the dataset's layout segmenter (utils/eval/segmenter.py):
- layout -> scene: held-out layouts, one canvas each, drawn by the sliding window with every window placement
  from the same seeds; the mean IoU between each layout and the segmentation of its canvas (intersections and
  unions summed over all canvases; per class beside it), against the ceiling (the same score of the image
  tokenizer's whole-canvas reconstructions of the real canvases) and the judge's own score on the real canvases.
  Paired differences (per canvas, same layouts and seeds) between the placements, and against another run.
- unconditional canvases: the Fréchet distance, in the segmenter's features, between fixed crops of sampled
  canvases and crops of real held-out canvases (the reference), against the crops of the tokenizer's
  reconstructions of other held-out canvases (the ceiling) and of real training canvases (the real-to-real floor),
  as many canvases each as samples; `sets` records which.
"""
import copy
import dataclasses
import time

import torch

from transformer.draw import draw
from transformer.sampling import PLACEMENTS, decode_images
from utils.data.conditions import colorize, one_hot
from utils.data.registry import build_datasets, dataset_spec, layout_palette
from utils.eval.metrics import frechet_of
from utils.eval.protocol import described
from utils.eval.segmenter import layout_scores, load_or_train_segmenter, segment

CROPS_PER_CANVAS = 4


def held_out_canvases(cfg, n: int, size: int, split: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n canvases of the run's validation split (split=1; 0: training) rendered at `size`: images
    (n, 3, size, size) in [-1, 1] and their layouts (n, size, size), or None without maps."""
    data = copy.copy(cfg.data)
    data.image_size, data.num_train, data.num_val = size, n if split == 0 else 1, n if split == 1 else 1
    canvases = build_datasets(data, cfg.run.seed, augment=False)[split]
    x = torch.stack([canvases[i][0] for i in range(n)])
    if not canvases.condition:
        return x, None
    maps = canvases.with_view("condition")
    return x, torch.stack([maps[i][0] for i in range(n)]).argmax(1)


def _scored(pred: torch.Tensor, layouts: torch.Tensor, classes: int, names) -> dict:
    scores = layout_scores(pred, layouts, classes)
    return {"miou": scores.result()["miou"], "per_class": dict(zip(names, scores.per_class()))}


def _per_canvas(pred: torch.Tensor, layouts: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.tensor([layout_scores(p[None], t[None], classes).result()["miou"] for p, t in zip(pred, layouts)])


def _paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """The mean of the per-canvas differences a - b and its standard error (None for one canvas)."""
    d = a - b
    return {"mean": d.mean().item(), "se": (d.std() / len(d) ** 0.5).item() if len(d) > 1 else None}


def layout_maps(layouts: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, classes, H, W) one-hot maps in {-1, 1}, as the condition tokenizer reads them."""
    return torch.stack([one_hot(t.long(), classes) for t in layouts])


@torch.no_grad()
def draw_for_layouts(model, layouts: torch.Tensor, settings, seed: int, batch: int) -> torch.Tensor:
    """One canvas per layout (N, H, W), drawn from `seed` -> images (N, 3, H, W) in [-1, 1]."""
    gpt, vq, cond_vq, _ = model
    device = next(gpt.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    out = []
    for b in layouts.split(batch):
        cond = cond_vq.encode_to_indices(layout_maps(b, cond_vq.channels).to(device))
        tokens = draw(gpt, len(cond), settings, grid=tuple(cond.shape[1:]), cond=cond, generator=g)
        out.append(decode_images(vq, tokens) * 2 - 1)
    return torch.cat(out)


@torch.no_grad()
def evaluate_layouts(model, cfg, cache_dir: str, n: int, seed: int, settings, log, size: int = None,
                     against=None, batch: int = 50) -> tuple[dict, torch.Tensor]:
    """The scores above for n held-out layouts at `size` (default: the run's image size); `against`: another
    conditional model (a loaded transformer) scored on the same layouts and seeds. -> (scores, a picture of the
    first layouts above their canvases)."""
    gpt, vq, cond_vq, _ = model
    size = size or cfg.data.image_size
    classes = cond_vq.channels
    names = dataset_spec(cfg.data.dataset).mask_names or [str(k) for k in range(classes)]
    x, layouts = held_out_canvases(cfg, n, size)
    judge, info = load_or_train_segmenter(cfg.data, cache_dir, log)
    device = next(gpt.parameters()).device
    rec = torch.cat([decode_images(vq, vq.encode_to_indices(b.to(device))) * 2 - 1 for b in x.split(batch)])
    out = {"canvases": n, "size": size, "sampling": settings.described(gpt),
           "judge": {"held_out_miou": info["held_out_iou"], **{f"on_these_real_{k}": v for k, v in
                                                              _scored(segment(judge, x), layouts, classes,
                                                                      names).items()}},
           "ceiling": _scored(segment(judge, rec), layouts, classes, names), "samples": {}}
    per_canvas, shown = {}, None
    for placement in PLACEMENTS:
        t0 = time.time()
        y = draw_for_layouts(model, layouts, dataclasses.replace(settings, window_placement=placement), seed, batch)
        seconds = time.time() - t0
        pred = segment(judge, y)
        out["samples"][placement] = {**_scored(pred, layouts, classes, names), "seconds": seconds}
        per_canvas[placement] = _per_canvas(pred, layouts, classes)
        if placement == settings.window_placement:
            shown = y
        log.info(f"{placement}: mean IoU {out['samples'][placement]['miou']:.4f} ({seconds:.0f} s)")
    main = settings.window_placement
    out["of_ceiling"] = out["samples"][main]["miou"] / out["ceiling"]["miou"]
    out["strided_minus_centred"] = _paired(per_canvas["strided"], per_canvas["centred"])
    rows = [layouts_picture(layouts[:8], model), (x[:8] + 1) / 2, (shown[:8] + 1) / 2]
    if against is not None:
        s = dataclasses.replace(against.settings, window_placement=main)
        y = draw_for_layouts(against.model, layouts, s, seed, batch)
        pred = segment(judge, y)
        out["against"] = {"run": against.run, **_scored(pred, layouts, classes, names),
                          "this_minus_that": _paired(per_canvas[main], _per_canvas(pred, layouts, classes))}
        rows.append((y[:8] + 1) / 2)
    return out, torch.cat(rows)


def layouts_picture(layouts: torch.Tensor, model) -> torch.Tensor:
    """(N, H, W) class indices -> (N, 3, H, W) in [0, 1], in the dataset's layout palette."""
    classes = model.cond_vq.channels
    return colorize(layouts.long(), classes, layout_palette(model.ckpt["config"]["data"]["dataset"], classes))


def _crops(x: torch.Tensor, side: int, seed: int) -> torch.Tensor:
    """CROPS_PER_CANVAS fixed random side x side crops of each image (N, C, H, W) -> (N * CROPS_PER_CANVAS, C, side,
    side)."""
    g = torch.Generator().manual_seed(seed)
    H, W = x.shape[-2:]
    out = []
    for img in x:
        for _ in range(CROPS_PER_CANVAS):
            top = torch.randint(0, H - side + 1, (1,), generator=g).item()
            left = torch.randint(0, W - side + 1, (1,), generator=g).item()
            out.append(img[:, top:top + side, left:left + side])
    return torch.stack(out)


def _fd(judge, a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between image sets a and b in the judge's features."""
    return frechet_of(*(torch.cat([judge.features(chunk.float()) for chunk in x.split(100)]) for x in (a, b)))


@torch.no_grad()
def evaluate_canvases(model, cfg, cache_dir: str, n: int, seed: int, settings, log, batch: int = 50,
                      crop: int = 32) -> tuple[dict, torch.Tensor]:
    """Unconditional canvases of the run's image size: n sampled, their crops against real ones (module doc)."""
    gpt, vq, _, _ = model
    device = next(gpt.parameters()).device
    size, f = cfg.data.image_size, vq.cfg.downsample_factor
    judge, info = load_or_train_segmenter(cfg.data, cache_dir, log)
    g = torch.Generator(device).manual_seed(seed)
    t0 = time.time()
    y = torch.cat([decode_images(vq, draw(gpt, len(b), settings, grid=(size // f, size // f), generator=g)) * 2 - 1
                   for b in torch.arange(n).split(batch)])
    seconds = time.time() - t0
    held, _ = held_out_canvases(cfg, 2 * n, size)
    x, other = held[:n], held[n:]  # the reference, and the canvases the ceiling reconstructs
    train, _ = held_out_canvases(cfg, n, size, split=0)
    rec = torch.cat([decode_images(vq, vq.encode_to_indices(b.to(device))) * 2 - 1 for b in other.split(batch)])
    real = _crops(x, crop, 1)
    out = {"canvases": n, "size": size, "crops": len(real), "crop_size": crop, "sampling": settings.described(gpt),
           "seconds": seconds, "judge_held_out_miou": info["held_out_iou"],
           "frechet_samples_to_val": _fd(judge, _crops(y, crop, 2), real),
           "frechet_recon_to_val": _fd(judge, _crops(rec, crop, 2), real),
           "frechet_train_to_val": _fd(judge, _crops(train, crop, 2), real),
           "sets": {"reference": described("val", range(n)), "ceiling": described("val", range(n, 2 * n)),
                    "floor": described("train", range(n)),
                    "samples": {"split": "generated", "count": n, "seeds": [seed]}}}
    return out, (torch.cat([x[:8], y[:8]]) + 1) / 2
