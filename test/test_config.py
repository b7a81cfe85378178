import pytest
import yaml

from utils.core.config import ConfigError, dump_yaml, load_config, to_dict
from utils.train.stage1_config import Stage1Config


def test_override_types():
    cfg = load_config(Stage1Config, overrides=["train.lr=1e-3", "train.max_steps=200", "model.ch_mult=[1,2,2]",
                                               "train.betas=[0, 0.99]", "train.compile=true", "loss.disc_lr=null",
                                               "run.name=007", "data.val_root=/x"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 200
    assert cfg.model.ch_mult == [1, 2, 2]
    assert cfg.train.betas == [0.0, 0.99] and all(isinstance(b, float) for b in cfg.train.betas)
    assert cfg.train.compile is True
    assert cfg.loss.disc_lr is None
    assert cfg.run.name == "007"  # strings keep their text, not YAML's int
    assert cfg.data.val_root == "/x"


def test_yaml_float_without_dot_and_int_widening(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  grad_clip: 1\n")
    cfg = load_config(Stage1Config, str(p))
    assert cfg.train.lr == 0.001 and cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)


def test_round_trip(tmp_path):
    cfg = load_config(Stage1Config, overrides=["train.lr=3e-5", "model.codebook_size=77", "data.val_root=abc"])
    p = tmp_path / "dump.yaml"
    dump_yaml(cfg, str(p))
    again = load_config(Stage1Config, str(p))
    assert again == cfg
    assert load_config(Stage1Config, base=yaml.safe_load(p.read_text())) == cfg
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("override, message", [
    ("model.codebook_sise=64", "unknown key 'model.codebook_sise' in override 'model.codebook_sise=64'; "
                               "did you mean 'model.codebook_size'?"),
    ("train.lr=abc", "train.lr in override 'train.lr=abc': expected a number, got 'abc'"),
    ("train.compile=1", "train.compile in override 'train.compile=1': expected true or false, got 1"),
    ("train.max_steps=1.5", "train.max_steps in override 'train.max_steps=1.5': expected an integer, got 1.5"),
    ("model.ch_mult=3", "model.ch_mult in override 'model.ch_mult=3': expected a list of ints like [1, 2], got 3"),
    ("data.dataset=shape", "data.dataset='shape' in override 'data.dataset=shape' is not one of: shapes, scenes, "
                           "mnist, fashion_mnist, cifar10, folder; did you mean 'shapes'?"),
    ("lr=1", "unknown key 'lr' in override 'lr=1'; did you mean 'train.lr'?"),
    ("model=3", "'model' in override 'model=3' is a section, not a value"),
    ("train.max_steps", "override 'train.max_steps' is not of the form section.key=value"),
])
def test_override_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(Stage1Config, overrides=[override])
    assert str(e.value).startswith(message)


def test_file_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  n_embed: 512\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.n_embed' in .*bad.yaml"):
        load_config(Stage1Config, str(p))
    with pytest.raises(ConfigError, match="config file not found: 'nope.yaml'"):
        load_config(Stage1Config, "nope.yaml")
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Stage1Config, str(p))
    p.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(Stage1Config, str(p))


def test_impossible_combinations(tmp_path):
    with pytest.raises(ConfigError, match=r"data.image_size=30 is not divisible by the downsampling factor 4"):
        load_config(Stage1Config, overrides=["data.image_size=30"])
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  ch: 48\n")
    with pytest.raises(ConfigError, match=r"multiples of 32 .*got 48 \(.*c.yaml\)"):
        load_config(Stage1Config, str(p))
    with pytest.raises(ConfigError, match="data.image_size=16 is too small for loss.disc_layers=3"):
        load_config(Stage1Config, overrides=["data.image_size=16", "loss.disc_start=0"])
    # the same image size is fine when the discriminator never starts
    load_config(Stage1Config, overrides=["data.image_size=16", "loss.disc_start=1000000", "train.max_steps=10"])
    with pytest.raises(ConfigError, match=r"train.eval_every=0 in override 'train.eval_every=0' is out of range: "
                                          r"must be at least 1"):
        load_config(Stage1Config, overrides=["train.eval_every=0"])
    with pytest.raises(ConfigError, match="train.betas must be a list of two floats"):
        load_config(Stage1Config, overrides=["train.betas=[0.5]"])


def test_every_shipped_config_loads():
    """Every file in configs/ parses under its stage's schema: no unknown key, wrong type or value out of range."""
    import glob
    import os

    from utils.train.stage2_config import Stage2Config
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    paths = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert len(paths) >= 10
    for path in paths:
        with open(path) as f:
            stage2 = "stage1" in (yaml.safe_load(f) or {})
        cfg = load_config(Stage2Config if stage2 else Stage1Config, path)
        assert cfg.run.name == os.path.basename(path)[:-len(".yaml")], path
    fashion = load_config(Stage1Config, os.path.join(root, "fashion_mnist_vqgan.yaml"))
    fsq = load_config(Stage1Config, os.path.join(root, "fashion_mnist_fsq_vqgan.yaml"))
    assert fashion.train == fsq.train  # FSQ is measured against VQ with the same optimizer and schedule
