"""The evaluation protocol (utils/eval/protocol.py): a ceiling disjoint from the reference, the tuning and report
parts, their seeds, and the bootstrap."""
import re

import pytest
import torch

from utils.core.config import load_config
from utils.core.errors import UserError
from utils.eval import recognition
from utils.eval.classifier import SmallCNN
from utils.eval.metrics import precision_recall
from utils.eval.protocol import (bootstrap_se, ceiling_and_reference, overlaps, part_range, sample_seed)
from utils.eval.metrics import frechet_of as fd
from utils.train.stage2_config import Stage2Config


def test_a_disjoint_unchanged_copy_scores_as_real_to_real_while_a_paired_one_scores_perfectly():
    """An identity tokenizer's ceiling: reconstructions equal to their originals. Made from the reference itself
    (paired), precision and recall are 1.00 and the Fréchet distance 0 by construction; made from other images of
    the same distribution, the ceiling scores as independent real images do (the floor)."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(3000, 8, generator=g)
    reference, others, floor = points[:1000], points[1000:2000], points[2000:]
    assert precision_recall(reference, reference.clone()) == (1.0, 1.0)
    assert fd(reference.clone(), reference) == pytest.approx(0.0, abs=1e-6)
    ceiling_pr, floor_pr = precision_recall(reference, others.clone()), precision_recall(reference, floor)
    for c, f in zip(ceiling_pr, floor_pr):
        assert c < 0.95 and abs(c - f) < 0.05
    assert abs(fd(others.clone(), reference) - fd(floor, reference)) < 0.05


def test_parts_ceiling_and_reference_never_overlap():
    tuning, report = part_range(1000, "tuning"), part_range(1000, "report")
    assert (tuning, report) == (range(0, 500), range(500, 1000))
    ceiling, reference = ceiling_and_reference(report, 200)
    assert (ceiling, reference) == (range(500, 700), range(700, 1000))
    assert ceiling_and_reference(report, 400) == (range(500, 750), range(750, 1000))  # at most half the part
    with pytest.raises(UserError, match="1 held-out images in this part: too few for a ceiling and a reference"):
        ceiling_and_reference(part_range(3, "tuning"), 5)
    assert sample_seed("report", 7) == 7 and sample_seed("tuning", 7) == 1007
    with pytest.raises(UserError, match=re.escape("--seed 1000 is out of range: must be in [0, 999]")):
        sample_seed("report", 1000)
    sets = {"reference": {"split": "val", "count": 200, "indices": [800, 1000]},
            "ceiling": {"split": "val", "count": 300, "indices": [500, 800]},
            "floor": {"split": "train", "count": 300, "indices": [0, 300]},
            "samples": {"split": "generated", "count": 300, "seeds": [7]}}
    assert overlaps(sets) == []
    sets["ceiling"]["indices"] = [500, 801]
    sets["tuning samples"] = {"split": "generated", "count": 300, "seeds": [7]}
    assert overlaps(sets) == ["reference and ceiling share val images", "samples and tuning samples share seeds"]


def test_bootstrap_se_matches_the_standard_error_of_a_mean():
    x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0)) * 3
    se = bootstrap_se(lambda s: s.mean().item(), x, reps=300)
    assert se == pytest.approx(3 / 2000 ** 0.5, rel=0.15)


@pytest.mark.parametrize("part", ["tuning", "report"])
def test_a_part_reads_only_its_own_held_out_images(part, monkeypatch):
    """The spy records every held-out image the reference and the ceiling read: a sweep (the tuning part) never
    reads the report part, and the report never reads the tuning part."""
    read = []

    def spied(data, seed, augment=True):
        train, val = build(data, seed, augment)
        get = val.__getitem__
        val.__class__ = type("Spied", (type(val),), {"__getitem__": lambda self, i: read.append(i) or get(i)})
        return train, val
    build = recognition.build_datasets
    monkeypatch.setattr(recognition, "build_datasets", spied)
    cfg = load_config(Stage2Config, "configs/shapes_gpt.yaml", ["data.image_size=16"])
    torch.manual_seed(0)
    ref = recognition.real_reference(cfg, SmallCNN(3, 6).eval(), 10, part)
    half = range(0, 20) if part == "tuning" else range(20, 40)  # 4 x 10 rendered: two parts of 20
    assert sorted(read) == list(half) and len(ref["feats"]) == len(ref["ceiling_images"]) == 10
    assert overlaps(ref["sets"]) == []
