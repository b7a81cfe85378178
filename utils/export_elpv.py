"""The ELPV solar-cell collection as an image folder: 2,624 real 300x300 electroluminescence scans of solar cells
(Deitsch et al., 2019), labelled by cell type (mono- or polycrystalline), shipped by PyPI's `elpv-dataset`.

    pip install elpv-dataset
    python -m utils.export_elpv data/elpv

writes data/elpv/train/{mono,poly}/cellNNNN.png and a held-out data/elpv/test/{mono,poly}/ (10% of each type,
chosen by a fixed seed), the layout that `data.labels: subfolders` and `data.val_root` read."""
import argparse
import os
import shutil

import numpy as np

from utils.core.errors import UserError, command


def packaged_labels() -> str:
    """The labels.csv of the installed elpv-dataset package."""
    try:
        import elpv_dataset
    except ImportError:
        raise UserError("the ELPV collection comes with PyPI's elpv-dataset: pip install elpv-dataset "
                        "(or pass --source, the folder holding its labels.csv and images/)") from None
    return os.path.join(os.path.dirname(elpv_dataset.__file__), "data", "labels.csv")


def read_labels(path: str) -> list[tuple[str, str]]:
    """(image path relative to labels.csv, cell type) per line of `path`: `images/cell0001.png  1.0  mono`."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise UserError(f"{path}:{n}: expected 'image probability type', got '{line.strip()}'")
            rows.append((parts[0], parts[2]))
    if not rows:
        raise UserError(f"{path} lists no images")
    return rows


def export(labels_csv: str, out: str, test_fraction: float = 0.1, seed: int = 0) -> dict:
    """Copies the scans into out/train/<type>/ and out/test/<type>/; returns the counts per split and type."""
    rows = read_labels(labels_csv)
    src = os.path.dirname(labels_csv)
    rng = np.random.default_rng(seed)
    counts = {}
    for kind in sorted({k for _, k in rows}):
        names = [p for p, k in rows if k == kind]
        held = set(rng.permutation(len(names))[:max(1, round(len(names) * test_fraction))].tolist())
        for i, p in enumerate(names):
            split = "test" if i in held else "train"
            dst = os.path.join(out, split, kind)
            os.makedirs(dst, exist_ok=True)
            if not os.path.isfile(os.path.join(src, p)):
                raise UserError(f"{labels_csv} lists '{p}', which is not in {src}")
            shutil.copyfile(os.path.join(src, p), os.path.join(dst, os.path.basename(p)))
            counts[f"{split}/{kind}"] = counts.get(f"{split}/{kind}", 0) + 1
    return counts


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the ELPV solar-cell scans as train/ and test/ image folders "
                                            "with a subfolder per cell type.")
    p.add_argument("out", help="the folder to write (e.g. data/elpv)")
    p.add_argument("--source", default=None, help="a folder with labels.csv and images/ (default: the installed "
                                                  "elpv-dataset package's)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    args = p.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction {args.test_fraction}: must be between 0 and 1")
    labels = os.path.join(args.source, "labels.csv") if args.source else packaged_labels()
    if not os.path.isfile(labels):
        raise UserError(f"no labels.csv at {labels}")
    counts = export(labels, args.out, args.test_fraction)
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" -> {args.out}")


if __name__ == "__main__":
    main()
