"""Score a transformer's samples with judges trained on real images (utils/eval/classifier.py; trained once, cached).

    python -m utils.sample_eval RUN_DIR [--per-class 300] [--seed 0] [--cfg-scale S] [--top-p P] [--top-k K]
                                        [--temperature T] [--steps S] [--choice-temperature C] [--device D]
                                        [--no-recon] [--complete] [--inpaint] [--held-out 500]
                                        [--canvas-size PIXELS] [--against RUN_DIR]
                                        [--sweep KEY=V1,V2,... [--sweep ...]]

A class-conditional model: draws --per-class samples of every class with the run's sampling settings (or those
given) and scores them on the report part of the held-out images (utils/eval/recognition.py, utils/eval/protocol.py):
per class, the share recognised as their class (for shapes also the share taken for the decoy "v", a triangle
turned by 45 degrees); the Fréchet distance to the reference images and precision and recall (k = 3), with
bootstrap standard errors; beside them the tokenizer's reconstructions of other held-out images (the ceiling) and
real training images (the floor), each as many as the samples and none in the reference. --sweep scores a grid on
the tuning part instead (its own reference images, seeds from 1000), never the report part.
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
import json
import os

import torch
from torchvision.utils import save_image

from transformer.loading import load_transformer
from utils.core.checkpoint import cache_dir, last_checkpoint
from utils.core.config import check_option, load_config
from utils.core.distributed import DistInfo, select_device
from utils.core.errors import UserError, command
from utils.core.runlog import setup_logging
from utils.data.registry import DATASETS, dataset_spec
from utils.eval.classifier import load_or_train
from utils.eval.cond_eval import evaluate_completion, evaluate_inpainting, evaluate_segmentation, evaluate_superres
from utils.eval.layouts import evaluate_canvases, evaluate_layouts
from utils.eval.protocol import sample_seed
from utils.eval.recognition import class_scores, real_reference
from utils.eval.sweep import parse_sweep, picture, settings_of, table, to_json
from utils.train.stage2_config import Stage2Config


def load_run(run_dir: str, device: str):
    """(checkpoint path, device, the transformer with its stage-1 models, its stage-2 config) of a run folder."""
    ckpt_path = last_checkpoint(run_dir)
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
    g = torch.Generator(dev).manual_seed(sample_seed("report", seed))
    cache = cache_dir(cfg.run.out_dir)
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
        clf, info = load_or_train(cfg.data.dataset, cfg.data, cache, log)
        reference = real_reference(cfg, clf, per_class * model.gpt.cfg.num_classes, "report")
        out = {"run": run_dir, "seed": seed, **judge_info(info),
               **class_scores(model, clf, info["classes"], per_class, sample_seed("report", seed), settings,
                              reference, recon, batch)}
    elif not (complete or inpaint):
        raise UserError(f"'{ckpt_path}': nothing to score here (an unconditional model, or a condition without a "
                        "score); --complete scores completions of any model")
    else:
        out = {"run": run_dir, "sampling": sampling, "seed": seed}
    out["part"] = "report"
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
    out = {"run": run_dir, "sampling": settings.described(model.gpt), "seed": seed, "part": "report"}
    if model.cond_vq is None:
        if size or against:
            raise UserError("--canvas-size and --against are for layout-conditional models; this one is unconditional")
        out["canvases"], picture = evaluate_canvases(model, cfg, cache, n, seed, settings, log)
        out["sets"] = out["canvases"].pop("sets")
        name, rows = "canvases.png", 8
    else:
        other = None
        if against:
            path = last_checkpoint(against)
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


def judge_info(info: dict) -> dict:
    return {"classifier_held_out_accuracy": info["held_out_accuracy"], "classifier_held_out": info["held_out"]}


def sweep(run_dir: str, specs: list[str], per_class: int, seed: int, device: str = "auto", batch: int = 100) -> dict:
    """The class-conditional scores at every point of a grid of sampling settings, from per_class samples of each
    class, all on the tuning part (utils/eval/protocol.py: its reference images and seeds, never the report's);
    the ceiling (reconstructions) and floor (real) measured once."""
    grid = parse_sweep(specs)
    log = setup_logging(True)
    ckpt_path, dev, model, cfg = load_run(run_dir, device)
    if not model.gpt.cfg.num_classes:
        raise UserError(f"'{ckpt_path}': --sweep scores the samples of a class-conditional model; this one has no "
                        "classes")
    clf, info = load_or_train(cfg.data.dataset, cfg.data, cache_dir(cfg.run.out_dir), log)
    reference = real_reference(cfg, clf, per_class * model.gpt.cfg.num_classes, "tuning")  # once for every point
    points, ceiling = [], None
    for point in grid:
        settings = settings_of(cfg.sample, model.gpt, point)
        r = class_scores(model, clf, info["classes"], per_class, sample_seed("tuning", seed), settings,
                         reference, ceiling is None, batch)
        ceiling = r.get("frechet_recon_to_val", ceiling)
        floor = r["frechet_train_to_val"]
        points.append({"settings": point, "accuracy": r["accuracy"],
                       "per_class": {k: v["accuracy"] for k, v in r["per_class"].items()},
                       **{k: r[k] for k in ("frechet_samples_to_val", "precision", "recall")}})
        log.info(f"{point}: recognised {100 * r['accuracy']:.1f}%, Fréchet {r['frechet_samples_to_val']:.2f}")
    out = to_json(points, ceiling, floor, per_class)
    out.update(run=run_dir, seed=seed, part="tuning", sets=r["sets"], **judge_info(info))
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
    lines.append(f"{'all':<14}{100 * r['accuracy']:>10.1f}% (standard error {100 * r['accuracy_se']:.1f})")
    lines.append(f"Fréchet distance in the classifier's features to {r['frechet_images']['val']} real held-out images "
                 f"({r['part']} part): samples {r['frechet_samples_to_val']:.2f} +- {r['frechet_samples_se']:.2f}"
                 + (f", reconstructions of other held-out images {r['frechet_recon_to_val']:.2f} +- "
                    f"{r['frechet_recon_se']:.2f} (the tokenizer's ceiling)" if "frechet_recon_to_val" in r else "")
                 + f", real training images {r['frechet_train_to_val']:.2f} (the floor)")
    lines.append(f"precision {r['precision']:.3f}, recall {r['recall']:.3f} (k = 3)" +
                 (f"; reconstructions: precision {r['recon_precision']:.3f}, recall {r['recon_recall']:.3f}"
                  if "recon_precision" in r else "") +
                 f"; real training images: precision {r['floor_precision']:.3f}, recall {r['floor_recall']:.3f}")
    return lines


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a stage-2 run folder (runs/<name>)")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--seed", type=int, default=0,
                   help="the samples' seed, 0-999 (a sweep draws from 1000 + it, the tuning part's seeds)")
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
