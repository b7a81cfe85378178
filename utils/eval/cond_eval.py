"""Scores of conditional synthesis and completion (used by `python -m utils.sample_eval`):
- semantic synthesis on shapes: does the drawn shape cover the given mask (IoU with the region a segmenter
  trained on real images finds), and is it the mask's shape (the shapes classifier)?
- super-resolution: is the result faithful to its low-resolution input (PSNR of its area average against the
  input), sharper than bicubic upsampling (mean gradient magnitude), and as recognisable (a classifier's accuracy)?
- completion: does the completed bottom half continue the kept top half (the classifier's class)?
"""
import torch
import torch.nn.functional as F

from transformer.draw import completion_classes, draw
from transformer.sampling import centre_hole, decode_images, top_half
from utils.data.conditions import downsample, upsample
from utils.data.registry import build_datasets
from utils.eval.classifier import classify, load_or_train
from utils.eval.metrics import psnr
from utils.eval.segmenter import iou, load_or_train_segmenter


def _batches(n: int, batch: int):
    for s in range(0, n, batch):
        yield slice(s, min(n, s + batch))


def _held_out(cfg, n: int):
    """The first n validation items: images (n, C, H, W) in [-1, 1], labels, and their condition maps."""
    val = build_datasets(cfg.data, cfg.run.seed, augment=False)[1]
    n = min(n, len(val))
    x = torch.stack([val[i][0] for i in range(n)])
    maps = torch.stack([val.with_view("condition")[i][0] for i in range(n)]) if val.condition else None
    return x, val.labels[:n], maps


def gradient_magnitude(x: torch.Tensor) -> float:
    """Mean absolute finite difference (both directions) of images in [0, 1]: how sharp they are."""
    return 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item()


@torch.no_grad()
def evaluate_segmentation(model, cfg, cache_dir: str, n: int, generator, settings, log, batch=100) -> dict:
    gpt, vq, cond_vq, _ = model
    x, labels, maps = _held_out(cfg, n)
    segmenter, seg_info = load_or_train_segmenter(cfg.data, cache_dir, log)
    clf, clf_info = load_or_train("shapes", cfg.data, cache_dir, log)
    device = next(gpt.parameters()).device
    shape = maps.argmax(1) > 0  # the mask's shape pixels (class 0 is the background)
    images = []
    for b in _batches(len(x), batch):
        cond = cond_vq.encode_to_indices(maps[b].to(device))
        images.append(decode_images(vq, draw(gpt, len(cond), settings, cond=cond, generator=generator)) * 2 - 1)
    y = torch.cat(images)
    drawn = torch.cat([segmenter(t) > 0 for t in y.split(500)])
    real = torch.cat([segmenter(t) > 0 for t in x.split(500)])
    pred, _ = classify(clf, y)
    return {"images": len(y), "mask_iou": iou(drawn, shape).mean().item(),
            "mask_class_accuracy": (pred == labels).float().mean().item(),
            "segmenter_held_out_iou": seg_info["held_out_iou"], "segmenter_iou_on_real_val": iou(real, shape).mean().item(),
            "classifier_held_out_accuracy": clf_info["held_out_accuracy"]}


@torch.no_grad()
def evaluate_superres(model, cfg, cache_dir: str, n: int, generator, settings, log, batch=100) -> dict:
    gpt, vq, cond_vq, _ = model
    f = cfg.data.condition_factor
    x, labels, _ = _held_out(cfg, n)
    small = downsample(x, f)  # the low-resolution inputs, (n, C, h, w)
    device = next(gpt.parameters()).device
    images = []
    for b in _batches(len(x), batch):
        cond = cond_vq.encode_to_indices(upsample(small[b], f).to(device))
        images.append(decode_images(vq, draw(gpt, len(cond), settings, cond=cond, generator=generator)) * 2 - 1)
    y = torch.cat(images)
    bicubic = F.interpolate(small, scale_factor=f, mode="bicubic", align_corners=False).clamp(-1, 1)

    def unit(t):
        return (t + 1) / 2
    clf, clf_info = load_or_train(cfg.data.dataset, cfg.data, cache_dir, log)
    return {"images": len(y), "factor": f,
            "psnr_to_input": psnr(unit(downsample(y, f)), unit(small)).mean().item(),
            "bicubic_psnr_to_input": psnr(unit(downsample(bicubic, f)), unit(small)).mean().item(),
            "gradient_magnitude": {"results": gradient_magnitude(unit(y)), "bicubic": gradient_magnitude(unit(bicubic)),
                                   "real": gradient_magnitude(unit(x))},
            "class_accuracy": {"results": (classify(clf, y)[0] == labels).float().mean().item(),
                               "bicubic": (classify(clf, bicubic)[0] == labels).float().mean().item(),
                               "real": (classify(clf, x)[0] == labels).float().mean().item()},
            "classifier_held_out_accuracy": clf_info["held_out_accuracy"]}


def _resampled_accuracy(model, cfg, cache_dir: str, n: int, generator, settings, log, batch: int, keep_of,
                        names: list[str]) -> tuple[int, dict, int]:
    """Re-samples the tokens of n held-out images that keep_of(grid) -> (H, W) bool does not keep, once per name, the
    name saying which class is given: "likeliest_class" (the class under which the kept tokens, a raster prefix,
    are likeliest), "null_class", "true_class", or any other name for none; the classifier judges whether each
    result is still of the image's class. -> (the number of images, {"class_accuracy_<name>": share}, the tokens
    re-sampled in each image)."""
    gpt, vq, cond_vq, _ = model
    x, labels, maps = _held_out(cfg, n)
    clf, _ = load_or_train(cfg.data.dataset, cfg.data, cache_dir, log)
    device = next(gpt.parameters()).device
    nc = gpt.cfg.num_classes
    batches = [(b, vq.encode_to_indices(x[b].to(device)),
                cond_vq.encode_to_indices(maps[b].to(device)) if cond_vq is not None else None)
               for b in _batches(len(x), batch)]  # encoded once, re-sampled once per name
    out = {}
    for name in names:
        images = []
        for b, tokens, cond in batches:
            grid = tuple(tokens.shape[1:])
            keep = keep_of(grid)
            classes = [nc] if name == "null_class" else labels[b].tolist() if name == "true_class" else \
                completion_classes(gpt, tokens, keep)[0] if name == "likeliest_class" else None
            done = draw(gpt, len(tokens), settings, grid, classes, cond=cond, tokens=tokens, keep=keep,
                        generator=generator)
            images.append(decode_images(vq, done) * 2 - 1)
        out[f"class_accuracy_{name}"] = (classify(clf, torch.cat(images))[0] == labels).float().mean().item()
    return len(x), out, int((~keep).sum())


@torch.no_grad()
def evaluate_completion(model, cfg, cache_dir: str, n: int, generator, settings, log, batch=100) -> dict:
    """Keeps the top half of n held-out images' tokens and samples the rest; the classifier judges the results.
    A class-conditional model completes three times: with the class its own likelihood of the kept half picks
    (what generate.py --complete does without --class), with the null class (no class at all), and with the true
    class. A masked model has no likelihood of the kept half to pick a class with: null and true class only."""
    gpt = model[0]
    names = ["null_class", "true_class"] if gpt.cfg.masked else ["likeliest_class", "null_class", "true_class"]
    images, scores, _ = _resampled_accuracy(model, cfg, cache_dir, n, generator, settings, log, batch, top_half,
                                            names if gpt.cfg.num_classes else ["completed"])
    return {"images": images, **scores}


@torch.no_grad()
def evaluate_inpainting(model, cfg, cache_dir: str, n: int, generator, settings, log, batch=100) -> dict:
    """Masks the centre tokens of n held-out images (transformer.sampling.centre_hole: a square of half the grid's
    height) and re-samples them (a masked model's free-form
    inpainting, as generate.py --inpaint does it: without --class, the null class); the classifier judges whether
    the result is still of the original class. A class-conditional model is also given the true class."""
    gpt = model[0]
    if not gpt.cfg.masked:
        raise ValueError("inpainting is scored for masked (maskgit) models")
    images, scores, masked = _resampled_accuracy(model, cfg, cache_dir, n, generator, settings, log, batch,
                                                 centre_hole,
                                                 ["null_class", "true_class"] if gpt.cfg.num_classes else ["inpainted"])
    return {"images": images, "masked_tokens": masked, **scores}
