"""Which real images and which seeds each figure of an evaluation uses (DESIGN.md, Evaluation protocol).

The held-out images (a dataset's validation split) are cut in two halves, the parts: `tuning` (the first half),
which a sweep of sampling settings reads, and `report` (the second), which the reported figures read; a sweep never
touches the report part. Within a part, the ceiling (the tokenizer's reconstructions) is made from the first images
and the reference the samples are compared with is the rest, so that no reference image meets its own
reconstruction (a paired set scores precision and recall 1.00 by construction; independent sets from one
distribution do not). The floor is real images of another split. Samples of the tuning part are drawn from seeds
SEEDS_FROM["tuning"] and up, those of the report part from seeds below it, so the two never share a draw.
Every score records its sets (`sets`: split, count, indices range or seeds) so that a reader can check that they do
not overlap.
"""
import torch

from utils.core.errors import UserError

PARTS = ("tuning", "report")
SEEDS_FROM = {"report": 0, "tuning": 1000}
MAX_SEED = 999  # --seed S draws from SEEDS_FROM[part] + S


def sample_seed(part: str, seed: int) -> int:
    """The generator seed of a part's samples for a user's --seed."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is out of range: must be in [0, {MAX_SEED}] (the tuning part draws from seeds "
                        f"{SEEDS_FROM['tuning']} and up)")
    return SEEDS_FROM[part] + seed


def part_range(n: int, part: str) -> range:
    """The indices of a part of n held-out images: the first half (tuning) or the second (report)."""
    if part not in PARTS:
        raise ValueError(f"part {part!r}: choose from {PARTS}")
    half = n // 2
    return range(0, half) if part == "tuning" else range(half, n)


def ceiling_and_reference(part: range, count: int) -> tuple[range, range]:
    """(the ceiling's images, the reference's) within a part: the first min(count, half the part) images for the
    ceiling, the rest for the reference, so that both have at least that many."""
    c = min(count, len(part) // 2)
    if c < 1:
        raise UserError(f"{len(part)} held-out images in this part: too few for a ceiling and a reference")
    return part[:c], part[c:]


def described(split: str, indices: range = None, seeds: list = None) -> dict:
    """A set's record in `sets`: its split and count, and its indices range [start, stop) or its seeds."""
    if seeds is not None:
        return {"split": split, "count": None, "seeds": list(seeds)}
    return {"split": split, "count": len(indices), "indices": [indices.start, indices.stop]}


def overlaps(sets: dict) -> list[str]:
    """The pairs of recorded sets (described) that share images of one split or seeds: [] when none do."""
    found, names = [], list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = sets[a], sets[b]
            if "seeds" in sa and "seeds" in sb and set(sa["seeds"]) & set(sb["seeds"]):
                found.append(f"{a} and {b} share seeds")
            elif "indices" in sa and "indices" in sb and sa["split"] == sb["split"]:
                (a0, a1), (b0, b1) = sa["indices"], sb["indices"]
                if max(a0, b0) < min(a1, b1):
                    found.append(f"{a} and {b} share {sa['split']} images")
    return found


def bootstrap_se(stat, x: torch.Tensor, reps: int = 100, seed: int = 0) -> float:
    """The standard error of stat(x) over x's rows, by the bootstrap: the standard deviation of stat on `reps`
    resamples of x's rows with replacement."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([stat(x[torch.randint(0, len(x), (len(x),), generator=g)]) for _ in range(reps)])
    return values.std().item()
