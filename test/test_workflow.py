"""The real-data workflow: labelled datasets (IDX class names, folder subfolders), configuration errors before any
encoding, the token cache of a changing folder, fine-tuning with train.init_from, and what protects a run (the NaN
guard on every micro-batch and the gradient norm, restored signal handlers, range checks, the device of the
reconstruction tool, precision=auto)."""
import gzip
import os
import re
import signal
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train_transformer
import train_vqgan
import transformer.tokens
import vqgan.losses
from helpers import TINY_STAGE1, TINY_STAGE2, load, run_script
from utils.core.errors import UserError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path + ".gz", "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_idx(root, n_train=48, n_val=16):
    """Fashion-MNIST's four IDX files, gzipped, with random images and every label present."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_val)):
        write_idx(os.path.join(root, f"{split}-images-idx3-ubyte"), rng.integers(0, 255, (n, 28, 28)))
        write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte"), np.arange(n) % 10)
    return str(root)


def make_folder(root, classes=("cat", "dog"), per_class=12, loose=0):
    rng = np.random.default_rng(1)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(os.path.join(root, c, f"{i}.png"))
    for i in range(loose):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(os.path.join(root, f"loose{i}.png"))
    return str(root)


@pytest.fixture
def vqgan_log(caplog):
    """The records of the project's console logger (which does not propagate to the root logger)."""
    import logging
    log = logging.getLogger("vqgan")
    log.addHandler(caplog.handler)
    caplog.handler.setLevel("INFO")
    yield lambda: [r.getMessage() for r in caplog.records]
    log.removeHandler(caplog.handler)


def stage1(tmp_path, name, *extra):
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", f"run.name={name}", "train.max_steps=2",
                                     "loss.disc_start=100", *extra])
    return os.path.join(tmp_path, name, "checkpoints", "last.pt")


def stage2(tmp_path, s1, name, *extra):
    train_transformer.train(TINY_STAGE2 + [f"run.out_dir={tmp_path}", f"run.name={name}", f"stage1.checkpoint={s1}",
                                           *extra])
    return os.path.join(tmp_path, name)


# ----------------------------------------------------------------------------- labelled datasets

@pytest.mark.slow
def test_fashion_mnist_class_conditional_and_class_by_name(tmp_path):
    """IDX datasets carry their class names: a class-conditional GPT trains on them, stores them, and generate.py
    takes a class by name."""
    root = fake_idx(tmp_path / "fm")
    data = ["data.dataset=fashion_mnist", f"data.root={root}", "data.channels=1"]
    s1 = stage1(tmp_path, "s1", *data)
    d = stage2(tmp_path, s1, "g", "model.class_conditional=true", "train.max_steps=2", *data[:2])
    ck = load(f"{d}/checkpoints/last.pt")
    assert ck["class_names"] == FASHION and ck["model_args"]["num_classes"] == 10
    out = tmp_path / "sneaker.png"
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--class", "Sneaker", "--num", "2",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (2 + 2 * 18, 2 + 18)  # two 16x16 samples in a grid
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--class", "ankle boot", "--num", "1",
                   "--out", str(tmp_path / "boot.png"))
    assert r.returncode == 0, r.stderr  # names match ignoring case
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--class", "Sneakers")
    assert r.returncode == 2 and "--class 'Sneakers' is not a class of this model; its classes: 0 T-shirt/top, " \
        "1 Trouser" in r.stderr and "did you mean 'Sneaker'?" in r.stderr and "Traceback" not in r.stderr


def test_folder_labels_from_subfolders(tmp_path):
    from utils.data.registry import build_datasets
    from utils.train.stage1_config import DataConfig
    root = make_folder(tmp_path / "imgs", ("dog", "cat", "bird"), per_class=6, loose=2)
    data = DataConfig(dataset="folder", root=root, image_size=16, labels="subfolders", val_fraction=0.2)
    with pytest.warns(UserWarning, match="skipped 2 image file.s. directly in"):
        tr, va = build_datasets(data, 0)
    assert tr.class_names == va.class_names == ["bird", "cat", "dog"]  # sorted folder names, ImageFolder's order
    for ds in (tr, va):
        for i in range(len(ds)):
            assert ds.class_names[int(ds[i][1])] == os.path.basename(os.path.dirname(ds.files[i]))
    assert len(tr) + len(va) == 18 and len(va) == 4
    plain, _ = build_datasets(DataConfig(dataset="folder", root=root, image_size=16), 0)
    assert plain.class_names is None and int(plain[0][1]) == -1  # labels are asked for, never guessed
    make_folder(tmp_path / "val", ("cat", "fish"), per_class=2)
    with pytest.raises(UserError, match=r"class folders the training images do not have: \['fish'\]"):
        build_datasets(DataConfig(dataset="folder", root=root, image_size=16, labels="subfolders",
                                  val_root=str(tmp_path / "val")), 0)
    with pytest.raises(UserError, match="no subfolder with images"):
        build_datasets(DataConfig(dataset="folder", root=str(tmp_path / "val" / "cat"), labels="subfolders"), 0)
    with pytest.raises(UserError, match="data.labels=subfolders is for data.dataset=folder"):
        DataConfig(labels="subfolders").check()  # the data section's own rule, checked when a config loads


@pytest.mark.slow
def test_folder_labels_end_to_end(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", ("dog", "cat"), per_class=12)
    data = ["data.dataset=folder", f"data.root={root}", "data.labels=subfolders", "data.val_fraction=0.25"]
    s1 = stage1(tmp_path, "s1", *data)
    d = stage2(tmp_path, s1, "g", "model.class_conditional=true", "train.max_steps=2", "data.batch_size=4", *data)
    assert load(f"{d}/checkpoints/last.pt")["class_names"] == ["cat", "dog"]
    r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", "--class", "dog", "--num", "1",
                   "--out", str(tmp_path / "dog.png"))
    assert r.returncode == 0 and (tmp_path / "dog.png").is_file(), r.stderr


def test_stage2_config_errors_come_before_any_encoding(tmp_path, monkeypatch):
    """Every configuration error of stage 2 stops the run before the dataset is encoded (which takes minutes on real
    data) and before the run folder is made."""
    s1 = stage1(tmp_path, "s1")
    root = make_folder(tmp_path / "imgs", ("a", "b"), per_class=4)

    def no_encoding(*a, **k):
        raise AssertionError("the dataset was encoded before a configuration error was found")
    monkeypatch.setattr(transformer.tokens, "encode_dataset", no_encoding)
    cases = [
        (["data.dataset=folder", f"data.root={root}", "model.class_conditional=true"], "has no class labels"),
        (["model.window=[9,8]"], "is larger than the 8x8 token grid"),
        (["data.batch_size=100", "data.num_train=64"], "data.batch_size=100 is larger than the 64 token grids"),
        (["data.image_size=15"], "is not a multiple of the stage-1 downsampling factor"),
    ]
    for i, (extra, message) in enumerate(cases):
        with pytest.raises(UserError, match=message):
            stage2(tmp_path, s1, f"e{i}", *extra)
        assert not os.path.exists(tmp_path / f"e{i}")


# ----------------------------------------------------------------------------- the token cache of a changing folder

def test_token_cache_follows_the_files_of_a_folder(tmp_path, vqgan_log):
    root = make_folder(tmp_path / "imgs", ("x",), per_class=10)
    data = ["data.dataset=folder", f"data.root={root}", "data.val_fraction=0.2", "data.batch_size=4"]
    s1 = stage1(tmp_path, "s1", *data)
    data.append("model.class_conditional=false")
    calls = []
    real = transformer.tokens.encode_dataset

    def counting(*a, **k):
        calls.append(k.get("num_workers"))
        return real(*a, **k)
    transformer.tokens.encode_dataset, saved = counting, transformer.tokens.encode_dataset
    try:
        stage2(tmp_path, s1, "a", "train.max_steps=1", *data)
        assert len(calls) == 2
        stage2(tmp_path, s1, "b", "train.max_steps=1", *data)
        assert len(calls) == 2  # the same files: the cache is reused
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(os.path.join(root, "x", "new.png"))
        stage2(tmp_path, s1, "c", "train.max_steps=1", *data)
        assert len(calls) == 4  # an image added: encoded again, and the run says why
        assert any("the files of data.root changed since" in m and "(10 files then, 11 now" in m for m in vqgan_log())
        path = os.path.join(root, "x", "3.png")  # an image replaced in place: same name, other bytes and time
        Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(path)
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
        stage2(tmp_path, s1, "d", "train.max_steps=1", *data)
        assert len(calls) == 6
        stage2(tmp_path, s1, "e", "train.max_steps=1", "data.num_workers=2", *data,
               "data.image_size=32")
        assert calls[-1] == 2  # stage 2's data.num_workers is what encodes the dataset
    finally:
        transformer.tokens.encode_dataset = saved


# ----------------------------------------------------------------------------- fine-tuning: train.init_from

def test_stage1_init_from_starts_a_new_run_with_its_weights(tmp_path):
    src = stage1(tmp_path, "src", "loss.disc_start=0", "train.max_steps=3")
    d = os.path.join(tmp_path, "ft")
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=ft", f"train.init_from={src}",
                                     "train.max_steps=0", "model.codebook_size=16"])  # agrees: allowed
    a, b = load(src), load(f"{d}/checkpoints/last.pt")
    assert b["step"] == 0 and all(torch.equal(a["disc"][k], b["disc"][k]) for k in a["disc"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if "codebook." not in k or "weight" in k)
    assert int(b["model"]["codebook.unused_steps"].sum()) == 0  # usage counted afresh
    with pytest.raises(UserError, match=r"model.codebook_size=32 on the command line contradicts train.init_from "
                                         r"'.*src.*', whose model has model.codebook_size=16"):
        train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=ft2", f"train.init_from={src}",
                                         "model.codebook_size=32"])


@pytest.mark.slow
def test_resume_of_weights_only_checkpoint_points_to_init_from(tmp_path):
    src = stage1(tmp_path, "src")
    ck = load(src)
    torch.save({k: ck[k] for k in ("kind", "format", "config", "model_args", "model", "step")}, tmp_path / "w.pt")
    r = run_script("train_vqgan.py", "--resume", str(tmp_path / "w.pt"))
    assert r.returncode == 2 and "is not a resumable training checkpoint" in r.stderr
    assert f"train.init_from={tmp_path / 'w.pt'}" in r.stderr and "Traceback" not in r.stderr


def test_stage2_init_from(tmp_path):
    s1 = stage1(tmp_path, "s1")
    src = stage2(tmp_path, s1, "src", "model.class_conditional=true", "train.max_steps=3")
    d = stage2(tmp_path, s1, "ft", f"train.init_from={src}/checkpoints/last.pt", "train.max_steps=0")
    a, b = load(f"{src}/checkpoints/last.pt"), load(f"{d}/checkpoints/last.pt")
    assert b["step"] == 0 and b["model_args"] == a["model_args"]  # its model section, class conditioning included
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    stage2(tmp_path, s1, "ft2", f"train.init_from={src}/checkpoints/last.pt", "train.max_steps=2")
    with pytest.raises(UserError, match=r"reads windows of 8x8 tokens, this run's are 16x16: a changed sequence "
                                         r"length \(64 tokens there, 256 here\)"):
        stage2(tmp_path, s1, "ft3", f"train.init_from={src}/checkpoints/last.pt", "data.image_size=32")
    other = stage1(tmp_path, "s1b", "model.codebook_size=8")
    with pytest.raises(UserError, match="predicts 16 codes, this stage-1 model has 8: a changed vocabulary"):
        stage2(tmp_path, other, "ft4", f"train.init_from={src}/checkpoints/last.pt")
    with pytest.raises(UserError, match="model.n_layer=3 on the command line contradicts train.init_from"):
        stage2(tmp_path, s1, "ft5", f"train.init_from={src}/checkpoints/last.pt", "model.n_layer=3")


# ----------------------------------------------------------------------------- what protects a run

def test_nan_in_an_earlier_micro_batch_stops_the_step(tmp_path, monkeypatch):
    """Under gradient accumulation a non-finite loss in any micro-batch, not only the last, stops the run before
    the optimizer step: the checkpoint keeps the last good weights."""
    real = vqgan.losses.generator_backward
    calls = {"n": 0}

    def poisoned(*a, **k):
        terms = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 7:  # step 4, micro-batch 1 of 2
            terms["l1"] = torch.tensor(float("nan"))
        return terms
    monkeypatch.setattr(train_vqgan, "generator_backward", poisoned)
    with pytest.raises(UserError) as e:
        stage1(tmp_path, "nan", "train.grad_accum=2", "train.max_steps=6", "train.ckpt_every=1")
    assert str(e.value).startswith("non-finite loss at step 4 (micro-batch 1 of 2: l1=nan")
    ck = load(f"{tmp_path}/nan/checkpoints/last.pt")
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_stage2_nan_guard_on_micro_batches_and_gradient_norm(tmp_path, monkeypatch):
    s1 = stage1(tmp_path, "s1")
    from transformer.gpt import GPT
    real = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = real(self, idx, targets)
        calls["n"] += 1
        if targets is not None and calls["n"] == 5:  # step 3, micro-batch 1 of 2
            loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(UserError, match=r"non-finite loss at step 3 \(micro-batch 1 of 2: cross_entropy=nan\)"):
        stage2(tmp_path, s1, "nan", "train.grad_accum=2", "train.ckpt_every=1")
    assert load(f"{tmp_path}/nan/checkpoints/last.pt")["step"] == 2
    monkeypatch.setattr(GPT, "forward", real)
    hooks = []

    def nan_grad(self, idx, targets=None):  # a finite loss whose gradient is not
        if targets is not None and not hooks:
            hooks.append(self.head.weight.register_hook(lambda g: g * float("nan")))
        return real(self, idx, targets)
    monkeypatch.setattr(GPT, "forward", nan_grad)
    with pytest.raises(UserError, match=r"non-finite gradient norm at step 1 \(grad_norm=nan\) although the loss "
                                         r"was finite"):
        stage2(tmp_path, s1, "nan_grad", "train.grad_clip=0")


def test_signal_handlers_come_back_after_training(tmp_path, monkeypatch):
    """train() in-process (tests, notebooks) leaves SIGINT and SIGTERM as it found them, also when it raises."""
    def mine(signum, frame):
        pass
    old = [signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        stage1(tmp_path, "a")
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        monkeypatch.setattr(train_vqgan, "generator_backward", lambda *a, **k: {"l1": torch.tensor(float("nan"))})
        with pytest.raises(UserError):
            stage1(tmp_path, "b")
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, h in zip((signal.SIGINT, signal.SIGTERM), old):
            signal.signal(s, h)


@pytest.mark.slow
def test_numbers_out_of_range_are_config_errors(tmp_path):
    """Every numeric key of both stages declares its range; a value outside is one line naming key, value and
    range, exit 2, never a traceback from PyTorch."""
    import dataclasses

    from utils.core.config import ConfigError, load_config
    from utils.train.stage1_config import Stage1Config
    from utils.train.stage2_config import Stage2Config
    for cls in (Stage1Config, Stage2Config):
        for section in dataclasses.fields(cls):
            for f in dataclasses.fields(section.default_factory()):
                numeric = any(t in str(f.type) for t in ("int", "float")) and "str" not in str(f.type)
                assert not numeric or "range" in f.metadata or "choices" in f.metadata, f"{section.name}.{f.name}"
    for override, message in [("data.batch_size=-4", "data.batch_size=-4 in override 'data.batch_size=-4' is out of "
                                                     "range: must be at least 1"),
                              ("train.lr=0", "must be above 0"), ("model.dropout=1.5", "must be in [0, 1)"),
                              ("train.betas=[0.5,1.0]", "every element must be in [0, 1)")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_config(Stage1Config, overrides=[override])
    for override, message in [("sample.top_p=1.5", "must be in (0, 1]"), ("train.pkeep=0", "must be in (0, 1]"),
                              ("model.window=[0,4]", "every element must be at least 1"),
                              ("sample.cfg_scale=-1", "must be at least 0")]:
        with pytest.raises(ConfigError) as e:
            load_config(Stage2Config, overrides=[override])
        assert message in str(e.value)
    r = run_script("train_vqgan.py", f"run.out_dir={tmp_path}", "data.batch_size=-4")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: data.batch_size=-4")
    assert "Traceback" not in r.stderr
    s1 = stage1(tmp_path, "s1")
    d = stage2(tmp_path, s1, "g", "train.max_steps=1")
    for args, message in [(["--top-p", "0"], "--top-p 0.0 is out of range: must be in (0, 1]"),
                          (["--top-k", "0"], "--top-k 0 is out of range: must be at least 1"),
                          (["--temperature", "-1"], "--temperature -1.0 is out of range: must be above 0"),
                          (["--cfg-scale", "-2"], "--cfg-scale -2.0 is out of range: must be at least 0"),
                          (["--num", "0"], "--num 0 is out of range: must be at least 1")]:
        r = run_script("generate.py", "--checkpoint", f"{d}/checkpoints/last.pt", *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_reconstruct_puts_the_model_on_the_requested_device(tmp_path, monkeypatch):
    from utils import reconstruct
    from vqgan.model import VQGAN
    s1 = stage1(tmp_path, "s1")
    make_folder(tmp_path / "imgs", ("a",), per_class=2)
    moved = []
    real_to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        if isinstance(self, VQGAN):
            moved.append(torch.device(args[0] if args else kwargs["device"]))
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    reconstruct.reconstruct(s1, str(tmp_path / "imgs"), str(tmp_path / "out"), device="cpu")
    assert moved == [torch.device("cpu")]  # the model goes where the images go
    if not torch.cuda.is_available():
        import subprocess
        from conftest import ROOT
        r = subprocess.run([sys.executable, "-m", "utils.reconstruct", "--checkpoint", s1, "--images",
                            str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--device", "cuda"], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 2 and "--device cuda but CUDA is not available here" in r.stderr


def test_precision_auto(monkeypatch, tmp_path, vqgan_log):
    from utils.core import precision
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # a laptop
    p, why = precision.resolve_precision("auto", cpu)
    assert p == "fp32" and "neither avx512_bf16 nor amx_bf16" in why
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})  # an AMD EPYC
    assert precision.resolve_precision("auto", cpu) == ("bf16", "train.precision=auto: this CPU computes bf16 "
                                                                 "natively (avx512_bf16)")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})  # a Xeon with AMX
    assert precision.resolve_precision("auto", cpu)[0] == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # kernels held below bf16, as when emulating a laptop
    assert precision.resolve_precision("auto", cpu)[0] == "fp32"
    assert precision.resolve_precision("bf16", cpu) == ("bf16", "train.precision=bf16")  # explicit: as asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_precision("auto", cuda)[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_precision("auto", cuda)[0] == "fp16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    train_vqgan.train(TINY_STAGE1 + [f"run.out_dir={tmp_path}", "run.name=p", "train.max_steps=1",
                                     "train.precision=auto"])
    first = vqgan_log()[0]
    assert first.startswith("precision fp32 (train.precision=auto: this CPU has neither"), first
    assert "cpu fp32 x1" in next(m for m in vqgan_log() if m.startswith("run folder"))


@pytest.mark.slow
def test_sample_eval_scores_a_class_conditional_run(tmp_path, monkeypatch):
    """The scoring tool end to end on a tiny run, with a classifier trained on a few hundred images (the real recipe
    renders 30,000): every class scored, the decoy counted, the ceiling and the Fréchet figures, the JSON."""
    import json

    from utils import sample_eval
    from utils.eval import judges
    from utils.eval.protocol import overlaps
    monkeypatch.setattr(judges, "SHAPES_TRAIN", 600)
    monkeypatch.setattr(judges, "SHAPES_HELD_OUT", 120)
    monkeypatch.setattr(judges, "EPOCHS", 2)
    s1 = stage1(tmp_path, "s1")
    d = stage2(tmp_path, s1, "g", "model.class_conditional=true", "train.max_steps=2")
    sample_eval.main([d, "--per-class", "4", "--cfg-scale", "1.5"])
    r = json.load(open(f"{d}/sample_eval.json"))
    assert list(r["per_class"]) == ["circle", "square", "triangle", "ring", "cross"]
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["taken_for_v"] <= 1 for row in r["per_class"].values())
    assert r["sampling"]["cfg_scale"] == 1.5 and r["samples_per_class"] == 4 and r["frechet_images"]["samples"] == 20
    assert r["classifier_held_out"] == 120 and 0 <= r["classifier_held_out_accuracy"] <= 1
    assert r["frechet_samples_to_val"] >= 0 and r["frechet_train_to_val"] >= 0
    assert set(r["recon_accuracy"]) == set(r["per_class"]) and r["frechet_recon_to_val"] >= 0
    assert all(0 <= r[k] <= 1 for k in ("precision", "recall", "recon_precision", "recon_recall", "floor_precision",
                                        "floor_recall"))
    assert all(r[k] > 0 for k in ("accuracy_se", "frechet_samples_se", "frechet_recon_se")) or r["accuracy"] in (0, 1)
    # as many real images as samples in every set: the generated set renders 4 x 20 held-out images, two parts of
    # 40; the report part's first 20 are the ceiling's originals, the other 20 the reference
    assert r["part"] == "report" and r["frechet_images"]["precision_recall"] == r["frechet_images"]["val"] == 20
    assert r["sets"] == {"reference": {"split": "val", "count": 20, "indices": [60, 80]},
                         "ceiling": {"split": "val", "count": 20, "indices": [40, 60]},
                         "floor": {"split": "train", "count": 20, "indices": [0, 20]},
                         "samples": {"split": "generated", "count": 20, "seeds": [0]}}
    assert overlaps(r["sets"]) == []
    assert any(f.startswith("classifier_shapes-") for f in os.listdir(tmp_path / "cache"))  # trained once, cached
    sample_eval.main([d, "--per-class", "2", "--sweep", "cfg_scale=1,2", "--sweep", "top_p=0.5,1.0"])
    w = json.load(open(f"{d}/sweep.json"))
    assert [p["settings"] for p in w["points"]] == [{"cfg_scale": 1.0, "top_p": 0.5}, {"cfg_scale": 1.0, "top_p": 1.0},
                                                    {"cfg_scale": 2.0, "top_p": 0.5}, {"cfg_scale": 2.0, "top_p": 1.0}]
    assert w["per_class"] == 2 and w["ceiling_frechet"] >= 0 and w["floor_frechet"] >= 0
    assert w["part"] == "tuning" and w["sets"]["samples"]["seeds"] == [1000]  # the tuning part: its images, its seeds
    assert w["sets"]["ceiling"]["indices"] == [0, 10] and w["sets"]["reference"]["indices"] == [10, 20]
    assert overlaps({**{f"tuning {k}": v for k, v in w["sets"].items()},
                     **{f"report {k}": v for k, v in r["sets"].items() if k != "floor"}}) == []
    assert all(set(p) >= {"accuracy", "per_class", "frechet_samples_to_val", "precision", "recall"}
               for p in w["points"])
    assert Image.open(f"{d}/sweep.png").size == (600, 480)
    u = stage2(tmp_path, s1, "u", "model.class_conditional=false", "train.max_steps=1")
    with pytest.raises(SystemExit) as e:
        sample_eval.main([u])
    assert e.value.code == 2


def test_sweep_grid_and_its_errors():
    from utils.eval.sweep import parse_sweep
    assert parse_sweep(["cfg_scale=1,1.5", "top_k=10,20"]) == [
        {"cfg_scale": 1.0, "top_k": 10}, {"cfg_scale": 1.0, "top_k": 20},
        {"cfg_scale": 1.5, "top_k": 10}, {"cfg_scale": 1.5, "top_k": 20}]
    for specs, msg in [(["cfg=1,2"], "--sweep: unknown sample setting 'cfg'; choose from temperature, top_k, top_p"),
                       (["top_p=0.5,1.5"], "--sweep top_p 1.5 is out of range: must be in (0, 1]"),
                       (["cfg_scale=-1"], "--sweep cfg_scale -1 is out of range: must be at least 0"),
                       (["top_p=high"], "--sweep top_p=high is not a number"),
                       (["cfg_scale"], "--sweep 'cfg_scale' is not of the form KEY=V1,V2,..."),
                       (["top_p=0.9", "top_p=1.0"], "--sweep top_p is given twice")]:
        with pytest.raises(UserError, match=re.escape(msg)):
            parse_sweep(specs)
