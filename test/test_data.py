"""Every dataset kind on tiny fixtures in the real formats, and the real Fashion-MNIST files when installed."""
import gzip
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.images import ArrayDataset
from utils.data.registry import DATASETS, build_datasets
from utils.train.batches import ResumableSampler
from utils.data.images import fit_size, to_tensor
from utils.data.mnist import read_idx
from utils.data.shapes import SHAPE_CLASSES, SHAPE_PALETTE, render_shapes
from utils.core.errors import UserError
from utils.train.stage1_config import DataConfig

FASHION = "/usr/share/datasets/fashion-mnist"


def cfg(**kw):
    """A data section with these values, checked as a config file's is."""
    c = DataConfig()
    for k, v in kw.items():
        setattr(c, k, v)
    c.check()
    return c


def write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open(path + ".gz", "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def test_shapes_deterministic_and_labelled():
    a, la = render_shapes(50, 32, seed=3)
    b, lb = render_shapes(50, 32, seed=3)
    c, _ = render_shapes(50, 32, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert a.shape == (50, 32, 32, 3) and a.dtype == np.uint8
    assert set(la.tolist()) == set(range(len(SHAPE_CLASSES))) and len(SHAPE_CLASSES) >= 4
    # on a solid background an image has exactly two palette colours (hard edges), far apart, and the shape
    # covers at least three 4x4 patches: large enough to stay recognisable on an 8x8 token grid
    solid = 0
    for img in a:
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        if len(colours) == 2:
            solid += 1
            assert all((SHAPE_PALETTE == c).all(1).any() for c in colours)
            assert np.abs(colours[0].astype(int) - colours[1]).sum() > 120 and counts.min() >= 48
    assert 10 < solid < 40  # about half the backgrounds are gradients
    tr, va = build_datasets(cfg(num_train=20, num_val=6), seed=0)
    x, y = tr[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.long
    assert not torch.equal(tr[0][0], va[0][0])  # train and val are different streams
    g, _ = build_datasets(cfg(num_train=4, num_val=2, channels=1), seed=0)[0][0]
    assert g.shape == (1, 32, 32)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(str(raw / f"{split}-images-idx3-ubyte"), rng.integers(0, 255, (n, 28, 28)), gz)
        write_idx(str(raw / f"{split}-labels-idx1-ubyte"), rng.integers(0, 10, (n,)), gz)
    tr, va = build_datasets(cfg(dataset="fashion_mnist", root=str(tmp_path), channels=1), seed=0)
    assert len(tr) == 12 and len(va) == 5
    assert tr.class_names == va.class_names == DATASETS["fashion_mnist"].class_names and tr.class_names[7] == "Sneaker"
    assert len(tr.sources) == 2 and all(os.path.isfile(p) for p in tr.sources)  # the files the token cache keys on
    x, y = tr[0]
    assert x.shape == (1, 32, 32) and 0 <= y < 10
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # 28 -> 32 by zero padding
    img = read_idx(str(raw / ("train-images-idx3-ubyte" + (".gz" if gz else ""))))
    assert torch.allclose(x[0, 2:30, 2:30], torch.from_numpy(img[0]).float() / 127.5 - 1)
    rgb, _ = build_datasets(cfg(dataset="fashion_mnist", root=str(tmp_path), channels=3, image_size=16), seed=0)
    assert rgb[0][0].shape == (3, 16, 16)  # resized when smaller than 28


def test_idx_errors(tmp_path):
    with pytest.raises(UserError) as e:
        build_datasets(cfg(dataset="mnist", root=str(tmp_path)), seed=0)
    assert "mnist: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] in " in str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value) and "data.download=true" in str(e.value)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        build_datasets(cfg(dataset="fashion_mnist", root=str(tmp_path)), seed=0)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x02\x00\x00\x00\x02abc")
    with pytest.raises(UserError, match="is truncated"):
        read_idx(str(tmp_path / "bad"))
    (tmp_path / "bad").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="is not an IDX file"):
        read_idx(str(tmp_path / "bad"))


def test_cifar_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    tr, va = build_datasets(cfg(dataset="cifar10", root=str(tmp_path)), seed=0)
    assert len(tr) == 15 and len(va) == 4 and tr.class_names[0] == "airplane"
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f)
    ref = torch.from_numpy(d[b"data"][0].reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1
    assert torch.allclose(va[0][0], ref) and va[0][1] == d[b"labels"][0]
    # training flips are seeded by (seed, epoch, index): reproducible, about half the images flipped in an epoch,
    # other images flipped in another epoch; validation images never
    def flipped(ds, epoch):
        ds.set_epoch(epoch)
        out = []
        for i in range(len(ds)):
            x, raw = ds[i][0], to_tensor(ds.images[i], 3)
            assert torch.equal(x, ds[i][0]) and (torch.equal(x, raw) or torch.equal(x, raw.flip(-1)))
            out.append(not torch.equal(x, raw))
        return out
    e0, e1 = flipped(tr, 0), flipped(tr, 1)
    assert 2 <= sum(e0) <= 13 and e0 != e1 and e0 == flipped(tr, 0)
    assert not any(flipped(va, 0))
    plain, _ = build_datasets(cfg(dataset="cifar10", root=str(tmp_path)), seed=0, augment=False)
    assert not any(flipped(plain, 1))  # stage 2 encodes images as they are
    os.remove(folder / "data_batch_3")
    with pytest.raises(UserError, match="missing .*data_batch_3"):
        build_datasets(cfg(dataset="cifar10", root=str(tmp_path)), seed=0)
    with pytest.raises(UserError, match="cifar10: no cifar-10-batches-py/test_batch in"):
        build_datasets(cfg(dataset="cifar10", root=str(tmp_path / "none")), seed=0)


def make_folder(root, n=10, size=(20, 30)):
    os.makedirs(root / "a" / "b", exist_ok=True)
    rng = np.random.default_rng(0)
    exts = ["png", "jpg", "bmp", "webp"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(root / "a" / "b" / f"{i}.{exts[i % 4]}")


def test_image_folder_with_corrupt_files(tmp_path):
    make_folder(tmp_path, 10)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr, va = build_datasets(cfg(dataset="folder", root=str(tmp_path), image_size=16, val_fraction=0.2), seed=0)
    msgs = [str(x.message) for x in w if "unreadable" in str(x.message)]
    assert len(msgs) == 1 and msgs[0].startswith("skipped 2 unreadable image file(s) of 12")  # one warning, counted
    assert len(tr) + len(va) == 10 and len(va) == 2  # 12 files, 2 broken; 20% of the rest held out
    x, _ = va[0]
    assert x.shape == (3, 16, 16)
    assert torch.equal(va[0][0], va[0][0])  # centre crop: deterministic
    tr.set_epoch(0)
    a = tr[0][0]
    tr.set_epoch(1)
    assert torch.equal(tr[0][0], tr[0][0])
    assert any(not torch.equal(a, (tr.set_epoch(e), tr[0][0])[1]) for e in range(1, 6))  # random crops/flips vary
    g, _ = build_datasets(cfg(dataset="folder", root=str(tmp_path), image_size=8, channels=1), seed=0)[0][0]
    assert g.shape == (1, 8, 8)
    # the same split every time
    tr2, va2 = build_datasets(cfg(dataset="folder", root=str(tmp_path), image_size=16, val_fraction=0.2), seed=5)
    assert va2.files == va.files


def test_image_folder_val_root_and_errors(tmp_path):
    make_folder(tmp_path / "train", 4)
    make_folder(tmp_path / "val", 2)
    tr, va = build_datasets(cfg(dataset="folder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val")), 0)
    assert len(tr) == 4 and len(va) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files in"):
        build_datasets(cfg(dataset="folder", root=str(tmp_path / "empty")), 0)
    with pytest.raises(UserError, match="no folder at"):
        build_datasets(cfg(dataset="folder", root=str(tmp_path / "missing")), 0)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"nope")
    (tmp_path / "junk" / "b.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="no readable image in"):
            build_datasets(cfg(dataset="folder", root=str(tmp_path / "junk"), val_fraction=0.5), 0)
    make_folder(tmp_path / "one", 1)
    with pytest.raises(UserError, match="too few to hold out a validation set"):
        build_datasets(cfg(dataset="folder", root=str(tmp_path / "one")), 0)


def test_fit_size():
    a = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert fit_size(a, 32).shape == (32, 32) and fit_size(a, 32)[2, 2] == a[0, 0]
    assert fit_size(a, 64).shape == (64, 64)
    assert fit_size(a, 28) is a


def test_resumable_sampler_shards_and_resumes():
    full = ResumableSampler(10, seed=1)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    part = ResumableSampler(10, seed=1)
    part.set_epoch(2, start=4)
    assert list(part) == order[4:] and len(part) == 6
    r0, r1 = ResumableSampler(10, 1, 0, 2), ResumableSampler(10, 1, 1, 2)
    r0.set_epoch(2)
    r1.set_epoch(2)
    assert list(r0) == order[0::2] and list(r1) == order[1::2]
    full.set_epoch(3)
    assert list(full) != order
    v0, v1 = ResumableSampler(5, 0, 0, 2, shuffle=False), ResumableSampler(5, 0, 1, 2, shuffle=False)
    assert list(v0) == [0, 2, 4] and list(v1) == [1, 3]


def test_array_dataset_flip_seeded():
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    ds = ArrayDataset(img, np.zeros(2), 4, 3, flip=True, seed=0)
    plain = torch.from_numpy(img[0].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    seen = []
    for e in range(12):
        ds.set_epoch(e)
        x = ds[0][0]
        assert torch.equal(x, ds[0][0])  # the same (seed, epoch, index): the same image
        assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))
        seen.append(torch.equal(x, plain))
    assert any(seen) and not all(seen)  # both orientations occur across epochs


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_files(tmp_path):
    tr, va = build_datasets(cfg(dataset="fashion_mnist", root=FASHION, channels=1), seed=0)
    assert len(tr) == 60000 and len(va) == 10000
    x, y = va[0]
    assert x.shape == (1, 32, 32) and y.item() == 9  # the first test image is an ankle boot
    import train_vqgan
    from helpers import TINY_STAGE1
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=f", "data.dataset=fashion_mnist",
                                     f"data.root={FASHION}", "data.channels=1", "train.max_steps=3",
                                     "train.eval_batches=2"])
    assert os.path.isfile(tmp_path / "f" / "metrics.json")


def test_a_dataset_is_one_module_and_one_line(tmp_path, monkeypatch):
    """The worked example of docs/usage.md, run as written: a module that makes a DatasetSpec, registered by one line, is
    built, keyed for the token cache, named for --class and judged, with no other place to edit."""
    import dataclasses
    import re
    import types

    from conftest import ROOT
    from utils.data import registry
    from utils.eval import classifier
    readme = open(os.path.join(ROOT, "docs", "usage.md")).read()
    code = re.search(r"```python\n# utils/data/textures.py\n(.*?)```", readme, re.S).group(1)
    textures = types.ModuleType("textures")
    exec(compile(code, "textures.py", "exec"), textures.__dict__)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
                 labels=np.arange(n) % 3)
    # the one line: the registry's list (the config's choices are read from it when the schema is imported)
    assert dataclasses.fields(DataConfig)[0].metadata["choices"] == tuple(registry.DATASETS)
    monkeypatch.setitem(registry.DATASETS, "textures", textures.SPEC)
    data = cfg(dataset="textures", root=str(tmp_path), image_size=16)
    tr, va = build_datasets(data, seed=0)
    assert (len(tr), len(va)) == (6, 3) and tr[0][0].shape == (3, 16, 16) and tr.class_names == textures.CLASSES
    assert registry.class_names_of("textures") == ("wood", "stone", "cloth")
    assert registry.cache_settings(data, 0)["root"] == os.path.abspath(tmp_path)
    assert classifier.recipe_data("textures", data)[2] == textures.CLASSES  # judged on its real images
    with pytest.raises(UserError, match="data.condition=segmentation needs maps"):
        cfg(dataset="textures", root=str(tmp_path), condition="segmentation")
