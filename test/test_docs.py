"""The README and docs/ stay true to the code: the configuration reference is the one the config dataclasses
generate, it names every key of every shipped config, every command of a command block parses with its tool's own
parser (its config file and overrides load), and every flag and `section.key` the pages name exists."""
import argparse
import dataclasses
import glob
import importlib
import os
import re
import shlex

import pytest
import yaml

from conftest import ROOT
from utils.core.config import load_config
from utils.train import reference
from utils.train.stage1_config import Stage1Config
from utils.train.stage2_config import Stage2Config

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
ENTRY = {"train_vqgan.py": ("train_vqgan", "train"), "train_transformer.py": ("train_transformer", "train"),
         "generate.py": ("generate", "generate"), "utils.benchmark": ("utils.benchmark.cli", "main")}
SCHEMA = {"train_vqgan.py": Stage1Config, "train_transformer.py": Stage2Config}
SECTIONS = {f.name for cls in (Stage1Config, Stage2Config) for f in dataclasses.fields(cls)}


class Captured(Exception):
    pass


def parser_of(tool: str, monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser a script or `-m` tool builds, caught as it parses (the tool itself never runs)."""
    box = {}

    def capture(self, *args, **kwargs):
        box["parser"] = self
        raise Captured
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module, fn = ENTRY.get(tool, (tool, "main"))
    try:
        getattr(importlib.import_module(module), fn)([])
    except Captured:
        pass
    monkeypatch.undo()
    return box["parser"]


def commands() -> list[tuple[str, str]]:
    """(page, command line) of every `python ...` line in the pages' code blocks, continuation lines joined."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", open(page).read(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line.startswith(("python ", "torchrun ")) and not re.search(r"\[-|\.\.\.|[A-Z]{3,}_?[A-Z]*\b", line):
                    # (a usage synopsis, `[--seed S]` or `RUN_DIR`, is not a command)
                    out.append((os.path.relpath(page, ROOT), line))
    return out


def keys_of(cls) -> set[str]:
    top = cls()
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(cls) for f in dataclasses.fields(getattr(top, s.name))}


KEYS = keys_of(Stage1Config) | keys_of(Stage2Config)


def test_the_configuration_reference_is_generated_from_the_dataclasses():
    assert open(reference.PATH).read() == reference.render(), "stale: run python -m utils.train.reference"


def test_the_configuration_reference_names_every_key_of_every_shipped_config():
    text = open(reference.PATH).read()
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))):
        for section, values in yaml.safe_load(open(path)).items():
            for key in values or {}:
                assert f"`{section}.{key}`" in text, f"{os.path.basename(path)}: {section}.{key} is not documented"
        header = "".join(line for line in open(path) if line.startswith("#"))
        assert header.startswith("# ") and "Machine and time:" in header and "Headline:" in header, \
            f"{os.path.basename(path)}: its header says what it is for, its machine and time, its headline figure"


def test_every_command_of_the_readme_and_docs_parses(monkeypatch):
    found = commands()
    assert len(found) > 40
    parsers = {}
    for page, line in found:
        words = shlex.split(line)
        if words[0] == "torchrun":
            words = ["python"] + [w for w in words[1:] if not w.startswith("--nproc") and not w.startswith("--nnodes")]
        tool = words[2] if words[1] == "-m" else words[1]
        args = words[3:] if words[1] == "-m" else words[2:]
        if tool not in parsers:
            parsers[tool] = parser_of(tool, monkeypatch)
        try:
            ns = parsers[tool].parse_args([a for a in args if a != "--help"])
        except SystemExit:
            pytest.fail(f"{page}: `{line}` does not parse with {tool}'s options")
        if tool in SCHEMA:
            overrides = [a for a in ns.overrides]
            load_config(SCHEMA[tool], os.path.join(ROOT, ns.config), overrides)


def test_every_flag_and_key_the_pages_name_exists(monkeypatch):
    tools = {"train_vqgan.py", "train_transformer.py", "generate.py"} | {
        f"utils.{os.path.basename(p)[:-3]}" for p in glob.glob(os.path.join(ROOT, "utils", "*.py"))
        if not p.endswith("__init__.py")} | {"utils.benchmark"}
    flags = {"--help"}
    for tool in tools:
        flags |= set(parser_of(tool, monkeypatch)._option_string_actions)
    for page in PAGES:
        text = open(page).read()
        name = os.path.relpath(page, ROOT)
        for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text)):
            if flag.startswith(("--no-deps", "--index-url", "--nproc", "--nnodes", "--node", "--master", "--logdir", "--upgrade",
                                "--cov", "--durations")):
                continue  # pip's, torchrun's, tensorboard's and pytest's own
            assert flag in flags, f"{name} names {flag}, which no script or tool takes"
        for key in set(re.findall(r"`([a-z0-9_]+\.[a-z0-9_]+)(?:[=` ])", text)):
            section, field = key.split(".")
            if section in SECTIONS and field not in ("yaml", "py", "pt", "png", "json", "md"):
                assert key in KEYS, f"{name} names {key}, which no config has"


def anchors(page: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", open(page).read(), re.M)}


def test_every_link_between_the_pages_and_to_files_resolves():
    for page in PAGES:
        text = re.sub(r"```.*?```", "", open(page).read(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(dest), f"{os.path.relpath(page, ROOT)} links to {target}: no such file"
            if anchor:
                assert anchor in anchors(dest), f"{os.path.relpath(page, ROOT)} links to {target}: no such heading"
