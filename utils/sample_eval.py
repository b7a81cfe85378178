"""Score a transformer's samples with judges trained on real images (utils/eval/classifier.py; trained once, cached).

    python -m utils.sample_eval RUN_DIR [--per-class 300] [--seed 0] [--cfg-scale S] [--top-p P] [--top-k K]
                                        [--temperature T] [--steps S] [--choice-temperature C] [--device D]
                                        [--no-recon] [--complete] [--inpaint] [--held-out 500]
                                        [--canvas-size PIXELS] [--against RUN_DIR]
                                        [--sweep KEY=V1,V2,... [--sweep ...]]

A class-conditional model: draws --per-class samples of every class with the run's sampling settings (or those
given) and classifies them. Prints, per class, the share of samples recognised as their class; for shapes also the
share taken for the decoy "v" (a triangle turned by 45 degrees). Also: the classifier's accuracy on held-out real
images; on the stage-1 reconstructions of real validation images (the ceiling a perfect transformer could reach);
and the Fréchet distance between samples and real validation images in the classifier's feature space, beside the
same distance for the reconstructions (the ceiling, from as many images as samples) and for real training images
(the floor); precision and recall (k = 3, as many real images as samples) of the samples and of the
reconstructions.
A conditional model (shapes masks, Fashion-MNIST or MNIST low resolution): --held-out validation maps, one sample
each, scored as utils/eval/cond_eval.py says. A model of large canvases with layouts (scenes): --held-out (default
100) held-out layouts at --canvas-size (default: the run's image size), one canvas each by the sliding window with
every window placement, scored by the layout segmenter against the tokenizer's ceiling, --against another run on
the same layouts and seeds; unconditional, the Fréchet distance of the canvases' crops (utils/eval/layouts.py);
both write a picture beside sample_eval.json. --complete: also completions of --held-out validation images' bottom
halves; --inpaint (masked models): also the re-sampling of their centre 4x4 tokens. Writes
RUN_DIR/sample_eval.json.
"""
import argparse
import copy
import json
import os

import torch
from torchvision.utils import save_image

from transformer.draw import draw
from transformer.loading import load_transformer
from transformer.sampling import decode_images
from utils.core.config import check_option, load_config
from utils.core.distributed import DistInfo, select_device
from utils.core.errors import UserError, command
from utils.core.runlog import setup_logging
from utils.data.registry import DATASETS, build_datasets, dataset_spec
from utils.eval.classifier import classify, load_or_train
from utils.eval.cond_eval import evaluate_completion, evaluate_inpainting, evaluate_segmentation, evaluate_superres
from utils.eval.layouts import evaluate_canvases, evaluate_layouts
from utils.eval.metrics import FeatureStats, frechet_distance, precision_recall
from utils.eval.sweep import parse_sweep, picture, settings_of, table, to_json
from utils.train.stage2_config import Stage2Config


def fd(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = FeatureStats(a.shape[1]), FeatureStats(b.shape[1])
    sa.update(a)
    sb.update(b)
    return frechet_distance(sa, sb)


def load_run(run_dir: str, device: str):
    """(checkpoint path, device, the transformer with its stage-1 models, its stage-2 config) of a run folder."""
    ckpt_path = os.path.join(run_dir, "checkpoints", "last.pt")
    dev = select_device(device, DistInfo(), "--device ")
    model = load_transformer(ckpt_path, dev)
    return ckpt_path, dev, model, load_config(Stage2Config, base=model.ckpt["config"],
                                              base_name=f"checkpoint '{ckpt_path}'")


@torch.no_grad()
def evaluate(run_dir: str, per_class: int = 300, seed: int = 0, options: dict = None, device: str = "auto",
             recon: bool = True, batch: int = 100, complete: bool = False, held_out: int = None,
             inpaint: bool = False, canvas_size: int = None, against: str = None) -> dict:
    """The scores that fit the run: per-class recognition for a class-conditional model, mask coverage for a
    segmentation-conditional one, faithfulness and sharpness for a super-resolution one, layout IoU for a model of
    canvases with layouts (and the crops' Fréchet distance for an unconditional one); with complete, also the
    completion of held_out validation images; with inpaint (masked models), the re-sampling of their centre 4x4
    tokens."""
    log = setup_logging(True)
    ckpt_path, dev, model, cfg = load_run(run_dir, device)
    settings = cfg.sample.with_options(model.gpt, **(options or {}))
    g = torch.Generator(dev).manual_seed(seed)
    cache = os.path.join(cfg.run.out_dir, "cache")
    kind, spec = cfg.data.condition, dataset_spec(cfg.data.dataset)
    if spec.segmenter == "layouts":
        return canvas_scores(run_dir, model, cfg, cache, held_out or 100, seed, settings, log, canvas_size, against,
                             dev)
    if canvas_size or against:
        raise UserError("--canvas-size and --against score models of large canvases with layouts (data.dataset="
                        f"{', '.join(n for n, d in DATASETS.items() if d.segmenter == 'layouts')}); this run is "
                        f"data.dataset={cfg.data.dataset}")
    held_out = held_out or 500
    score = evaluate_segmentation if kind == "segmentation" and spec.segmenter == "objects" else \
        evaluate_superres if kind == "lowres" and spec.judge else None
    sampling = settings.described(model.gpt)
    if score is not None:
        out = {"run": run_dir, "sampling": sampling, "seed": seed,
               kind: score(model, cfg, cache, held_out, g, settings, log)}
    elif model.gpt.cfg.num_classes:
        out = class_scores(model, cfg, per_class, g, settings, log, recon, batch, dev)
        out.update(run=run_dir, seed=seed)
    elif not (complete or inpaint):
        raise UserError(f"'{ckpt_path}': nothing to score here (an unconditional model, or a condition without a "
                        "score); --complete scores completions of any model")
    else:
        out = {"run": run_dir, "sampling": sampling, "seed": seed}
    if complete:
        out["completion"] = evaluate_completion(model, cfg, cache, held_out, g, settings, log)
    if inpaint:
        if not model.gpt.cfg.masked:
            raise UserError(f"'{ckpt_path}' is a GPT: --inpaint scores the free-form inpainting of masked "
                            "(model.kind=maskgit) models")
        out["inpainting"] = evaluate_inpainting(model, cfg, cache, held_out, g, settings, log)
    return out


def canvas_scores(run_dir, model, cfg, cache, n, seed, settings, log, size, against, dev) -> dict:
    """A scenes-like run's scores (utils/eval/layouts.py), its picture written beside sample_eval.json."""
    out = {"run": run_dir, "sampling": settings.described(model.gpt), "seed": seed}
    if model.cond_vq is None:
        if size or against:
            raise UserError("--canvas-size and --against are for layout-conditional models; this one is unconditional")
        out["canvases"], picture = evaluate_canvases(model, cfg, cache, n, seed, settings, log)
        name, rows = "canvases.png", 8
    else:
        other = None
        if against:
            path = os.path.join(against, "checkpoints", "last.pt")
            m = load_transformer(path, dev)
            if m.cond_vq is None:
                raise UserError(f"--against '{against}' is not a layout-conditional model")
            other = argparse.Namespace(run=against, model=m, settings=load_config(
                Stage2Config, base=m.ckpt["config"], base_name=f"checkpoint '{path}'").sample)
        out["layouts"], picture = evaluate_layouts(model, cfg, cache, n, seed, settings, log, size, other)
        name, rows = f"layouts_{out['layouts']['size']}.png", min(8, n)
    save_image(picture, os.path.join(run_dir, name), nrow=rows, padding=2, pad_value=1.0)
    out["picture"] = name
    return out


def real_reference(cfg, clf, n: int) -> dict:
    """The real images samples are scored against, classified once: the validation images (a generated set renders
    at least n), their labels and features, and the floor: the Fréchet distance of n real training images to them."""
    data = copy.copy(cfg.data)
    if data.dataset == "shapes":  # generated: as many training and validation images as samples, no fewer
        data.num_train = n
        data.num_val = max(data.num_val, n)
    train_set, val_set = build_datasets(data, cfg.run.seed, augment=False)
    real_val = torch.stack([val_set[i][0] for i in range(len(val_set))])
    k = min(len(train_set), n)  # the floor from as many real images as there are samples
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:k].tolist()
    real_train = torch.stack([train_set[i][0] for i in pick])
    val_feats = classify(clf, real_val)[1]
    return {"images": real_val, "labels": val_set.labels, "feats": val_feats, "train": k,
            "floor": fd(classify(clf, real_train)[1], val_feats)}


def class_scores(model, cfg, per_class, g, settings, log, recon, batch, dev, reference: dict = None) -> dict:
    """Recognition, Fréchet distance and precision and recall of per_class samples of every class; reference: the
    real images from real_reference (made here when None)."""
    gpt, vq = model.gpt, model.vq
    nc = gpt.cfg.num_classes
    clf, info = load_or_train(cfg.data.dataset, cfg.data, os.path.join(cfg.run.out_dir, "cache"), log)
    names = info["classes"]
    images, wanted = [], []
    for c in range(nc):
        for s in range(0, per_class, batch):
            n = min(batch, per_class - s)
            images.append(decode_images(vq, draw(gpt, n, settings, classes=[c], generator=g)))
            wanted += [c] * n
    x = torch.cat(images) * 2 - 1  # (N, C, H, W) in [-1, 1]
    wanted = torch.tensor(wanted)
    pred, feats = classify(clf, x)
    out = {"samples_per_class": per_class, "sampling": settings.described(gpt),
           "classifier_held_out_accuracy": info["held_out_accuracy"], "classifier_held_out": info["held_out"],
           "accuracy": (pred == wanted).float().mean().item(), "per_class": {}}
    for c in range(nc):
        sel = pred[wanted == c]
        row = {"accuracy": (sel == c).float().mean().item()}
        if "v" in names:
            row["taken_for_v"] = (sel == names.index("v")).float().mean().item()
        out["per_class"][names[c]] = row
    ref = reference or real_reference(cfg, clf, len(x))
    real_val, val_feats, k = ref["images"], ref["feats"], ref["train"]
    out["frechet_samples_to_val"] = fd(feats, val_feats)
    out["frechet_train_to_val"] = ref["floor"]
    m = min(len(x), len(real_val))  # precision and recall from as many real images as samples
    fake = feats[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:m]]
    real = val_feats[torch.randperm(len(real_val), generator=torch.Generator().manual_seed(2))[:m]]
    out["precision"], out["recall"] = precision_recall(real, fake)
    out["frechet_images"] = {"samples": len(x), "val": len(real_val), "train": k, "precision_recall": m}
    if recon:  # the ceiling: what the stage-1 model keeps of real images of each class
        rec = torch.cat([decode_images(vq, vq.encode_to_indices(b.to(dev))) for b in real_val.split(batch)]) * 2 - 1
        rec_pred, rec_feats = classify(clf, rec)
        labels = ref["labels"]
        out["recon_accuracy"] = {names[c]: (rec_pred[labels == c] == c).float().mean().item() for c in range(nc)}
        pick = torch.randperm(len(rec), generator=torch.Generator().manual_seed(3))[:len(x)]  # as many as samples
        out["frechet_recon_to_val"] = fd(rec_feats[pick], val_feats)
        out["recon_precision"], out["recon_recall"] = precision_recall(real, rec_feats[pick][:m])
    return out


def sweep(run_dir: str, specs: list[str], per_class: int, seed: int, device: str = "auto", batch: int = 100) -> dict:
    """The class-conditional scores at every point of a grid of sampling settings (the same seed at every point),
    from per_class samples of each class; the ceiling (reconstructions) and floor (real) measured once."""
    grid = parse_sweep(specs)
    log = setup_logging(True)
    ckpt_path, dev, model, cfg = load_run(run_dir, device)
    if not model.gpt.cfg.num_classes:
        raise UserError(f"'{ckpt_path}': --sweep scores the samples of a class-conditional model; this one has no "
                        "classes")
    clf = load_or_train(cfg.data.dataset, cfg.data, os.path.join(cfg.run.out_dir, "cache"), log)[0]
    reference = real_reference(cfg, clf, per_class * model.gpt.cfg.num_classes)  # classified once for every point
    points, ceiling = [], None
    for point in grid:
        settings = settings_of(cfg.sample, model.gpt, point)
        g = torch.Generator(dev).manual_seed(seed)
        r = class_scores(model, cfg, per_class, g, settings, log, ceiling is None, batch, dev, reference)
        ceiling = r.get("frechet_recon_to_val", ceiling)
        floor = r["frechet_train_to_val"]
        points.append({"settings": point, "accuracy": r["accuracy"],
                       "per_class": {k: v["accuracy"] for k, v in r["per_class"].items()},
                       **{k: r[k] for k in ("frechet_samples_to_val", "precision", "recall")}})
        log.info(f"{point}: recognised {100 * r['accuracy']:.1f}%, Fréchet {r['frechet_samples_to_val']:.2f}")
    out = to_json(points, ceiling, floor, per_class)
    out.update(run=run_dir, seed=seed, classifier_held_out_accuracy=r["classifier_held_out_accuracy"])
    picture(points, ceiling, floor).save(os.path.join(run_dir, "sweep.png"))
    return out


def report(r: dict) -> str:
    lines = [f"{r['run']}: sampling {r['sampling']}, seed {r['seed']}"]
    for key in ("segmentation", "lowres", "completion", "inpainting", "layouts", "canvases"):
        if key in r:
            lines.append(f"{key}: " + json.dumps(r[key]))
    if "per_class" in r:
        lines += class_report(r)
    return "\n".join(lines)


def class_report(r: dict) -> list[str]:
    lines = [f"{r['samples_per_class']} samples per class",
             f"classifier: {100 * r['classifier_held_out_accuracy']:.1f}% on {r['classifier_held_out']} held-out "
             "real images"]
    has_v = any("taken_for_v" in row for row in r["per_class"].values())
    head = f"{'class':<14}{'recognised':>11}" + (f"{'as v':>8}" if has_v else "") + \
        (f"{'ceiling':>9}" if "recon_accuracy" in r else "")
    lines.append(head)
    for name, row in r["per_class"].items():
        line = f"{name:<14}{100 * row['accuracy']:>10.1f}%"
        if has_v:
            line += f"{100 * row['taken_for_v']:>7.1f}%"
        if "recon_accuracy" in r:
            line += f"{100 * r['recon_accuracy'][name]:>8.1f}%"
        lines.append(line)
    lines.append(f"{'all':<14}{100 * r['accuracy']:>10.1f}%")
    lines.append(f"Fréchet distance in the classifier's features: samples to real val {r['frechet_samples_to_val']:.2f}"
                 + (f", reconstructions {r['frechet_recon_to_val']:.2f} (the tokenizer's ceiling)"
                    if "frechet_recon_to_val" in r else "")
                 + f", real train to real val {r['frechet_train_to_val']:.2f} (the floor)")
    lines.append(f"precision {r['precision']:.3f}, recall {r['recall']:.3f} (k = 3)" +
                 (f"; reconstructions: precision {r['recon_precision']:.3f}, recall {r['recon_recall']:.3f}"
                  if "recon_precision" in r else ""))
    return lines


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a stage-2 run folder (runs/<name>)")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    for opt, kind in (("--cfg-scale", float), ("--top-p", float), ("--top-k", int), ("--temperature", float),
                      ("--steps", int), ("--choice-temperature", float)):
        p.add_argument(opt, type=kind, default=None, help="instead of the run's sample setting" +
                       (" (masked models)" if opt in ("--steps", "--choice-temperature") else ""))
    p.add_argument("--device", default="auto")
    p.add_argument("--no-recon", action="store_true", help="skip the stage-1 reconstruction ceiling")
    p.add_argument("--complete", action="store_true", help="also score completions of held-out images' bottom halves")
    p.add_argument("--inpaint", action="store_true",
                   help="masked models: also score the re-sampling of held-out images' centre 4x4 tokens")
    p.add_argument("--sweep", action="append", default=None, metavar="KEY=V1,V2,...",
                   help="score a grid of sampling settings instead (repeatable: every combination); writes "
                        "sweep.json and sweep.png")
    p.add_argument("--held-out", type=int, default=None,
                   help="images for the conditional and completion scores (default 500; canvases: 100)")
    p.add_argument("--canvas-size", type=int, default=None,
                   help="layout-conditional canvases: the held-out layouts' size in pixels (default: the run's)")
    p.add_argument("--against", default=None, metavar="RUN_DIR",
                   help="layout-conditional canvases: also score this run on the same layouts and seeds")
    args = p.parse_args(argv)
    check_option("--per-class", args.per_class, min=1)
    options = dict(cfg_scale=args.cfg_scale, top_p=args.top_p, top_k=args.top_k, temperature=args.temperature,
                   steps=args.steps, choice_temperature=args.choice_temperature)
    check_option("--held-out", args.held_out, min=1)
    check_option("--canvas-size", args.canvas_size, min=1)
    if args.sweep:
        r = sweep(args.run_dir, args.sweep, args.per_class, args.seed, args.device)
        print(table(r["points"], r["ceiling_frechet"], r["floor_frechet"]))
        path = os.path.join(args.run_dir, "sweep.json")
        with open(path, "w") as f:
            json.dump(r, f, indent=2)
        print(f"wrote {path} and {os.path.join(args.run_dir, 'sweep.png')}")
        return
    r = evaluate(args.run_dir, args.per_class, args.seed, options, args.device, not args.no_recon,
                 complete=args.complete, held_out=args.held_out, inpaint=args.inpaint, canvas_size=args.canvas_size,
                 against=args.against)
    print(report(r))
    path = os.path.join(args.run_dir, "sample_eval.json")
    with open(path, "w") as f:
        json.dump(r, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
