"""Class recognition: the scores of a class-conditional model's samples (used by `python -m utils.sample_eval`),
judged by the dataset's classifier (utils/eval/classifier.py):
- the share of samples recognised as their class (per class; for shapes also the share taken for the decoy "v");
- the Fréchet distance between the samples and real held-out images (the reference) in the classifier's features,
  and improved precision and recall (k = 3), each with a bootstrap standard error over the samples;
- beside them the same figures of the tokenizer's reconstructions of other held-out images (the ceiling) and of real
  training images (the floor), every set as large as the samples, none sharing an image with the reference
  (utils/eval/protocol.py: which part of the held-out images and which seeds).
"""
import copy

import torch

from transformer.draw import draw
from transformer.sampling import decode_images
from utils.data.registry import build_datasets, dataset_spec
from utils.eval.classifier import classify
from utils.eval.metrics import frechet_of, precision_recall
from utils.eval.protocol import bootstrap_se, ceiling_and_reference, described, part_range


def real_reference(cfg, clf, n: int, part: str) -> dict:
    """The real images of a part that n samples are scored against, classified once: the reference (held-out images
    of the part that the ceiling does not use) and the ceiling's originals (the part's first n images, with their
    labels); the features of the reference and of the floor (the first n real training images); and the sets'
    records. A generated dataset renders enough held-out images for both parts."""
    data = copy.copy(cfg.data)
    if dataset_spec(data.dataset).judge == "rendered":  # generated: n training images, 2n held-out in each part
        data.num_train, data.num_val = n, 4 * n
    train_set, val_set = build_datasets(data, cfg.run.seed, augment=False)
    ceiling, reference = ceiling_and_reference(part_range(len(val_set), part), n)
    floor = range(min(len(train_set), len(ceiling)))
    stack = lambda ds, r: torch.stack([ds[i][0] for i in r])  # noqa: E731
    ref_feats = classify(clf, stack(val_set, reference))[1]
    return {"feats": ref_feats, "ceiling_images": stack(val_set, ceiling), "ceiling_labels": val_set.labels[
        ceiling.start:ceiling.stop], "floor_feats": classify(clf, stack(train_set, floor))[1],
        "sets": {"reference": described("val", reference), "ceiling": described("val", ceiling),
                 "floor": described("train", floor)}}


def class_scores(model, clf, names, per_class: int, seed: int, settings, reference: dict, recon: bool = True,
                 batch: int = 100) -> dict:
    """Recognition, Fréchet distance and precision and recall of per_class samples of every class drawn from
    generator `seed`, against `reference` (real_reference); with recon, also the ceiling's."""
    gpt, vq = model.gpt, model.vq
    dev = next(gpt.parameters()).device
    g = torch.Generator(dev).manual_seed(seed)
    nc = gpt.cfg.num_classes
    images, wanted = [], []
    for c in range(nc):
        for s in range(0, per_class, batch):
            k = min(batch, per_class - s)
            images.append(decode_images(vq, draw(gpt, k, settings, classes=[c], generator=g)))
            wanted += [c] * k
    x = torch.cat(images) * 2 - 1  # (N, C, H, W) in [-1, 1]
    wanted = torch.tensor(wanted)
    pred, feats = classify(clf, x)
    right = (pred == wanted).float()
    out = {"samples_per_class": per_class, "sampling": settings.described(gpt),
           "accuracy": right.mean().item(), "accuracy_se": (right.std() / len(right) ** 0.5).item(), "per_class": {}}
    for c in range(nc):
        sel = pred[wanted == c]
        row = {"accuracy": (sel == c).float().mean().item()}
        if "v" in names:
            row["taken_for_v"] = (sel == names.index("v")).float().mean().item()
        out["per_class"][names[c]] = row
    ref, floor = reference["feats"], reference["floor_feats"]
    count = len(reference["ceiling_images"])  # every set compared at one count: samples, ceiling and floor
    samples = feats[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:count]]
    out["frechet_samples_to_val"] = frechet_of(samples, ref)
    out["frechet_samples_se"] = bootstrap_se(lambda f: frechet_of(f, ref), samples)
    out["frechet_train_to_val"] = frechet_of(floor, ref)
    m = min(count, len(ref))  # precision and recall: as many real images as samples
    real = ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(2))[:m]]
    out["precision"], out["recall"] = precision_recall(real, samples[:m])
    out["floor_precision"], out["floor_recall"] = precision_recall(real, floor[:m])
    out["frechet_images"] = {"samples": count, "val": len(ref), "train": len(floor), "precision_recall": m}
    out["sets"] = {**reference["sets"], "samples": {"split": "generated", "count": len(x), "seeds": [seed]}}
    if recon:  # the ceiling: what the stage-1 model keeps of other real images of each class
        rec = torch.cat([decode_images(vq, vq.encode_to_indices(b.to(dev))) for b in
                         reference["ceiling_images"].split(batch)]) * 2 - 1
        rec_pred, rec_feats = classify(clf, rec)
        labels = reference["ceiling_labels"]
        out["recon_accuracy"] = {names[c]: (rec_pred[labels == c] == c).float().mean().item() for c in range(nc)}
        out["frechet_recon_to_val"] = frechet_of(rec_feats, ref)
        out["frechet_recon_se"] = bootstrap_se(lambda f: frechet_of(f, ref), rec_feats)
        out["recon_precision"], out["recon_recall"] = precision_recall(real, rec_feats[:m])
    return out
