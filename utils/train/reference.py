"""The configuration reference, docs/configuration.md, generated from the config dataclasses: every key of both
stages as `section.key`, with its type, default, range or choices and the comment beside it in the source.

    python -m utils.train.reference            # rewrites docs/configuration.md
    python -m utils.train.reference --check    # exit 1 when the file is stale (the test suite does the same)
"""
import argparse
import ast
import dataclasses
import inspect
import io
import os
import sys
import tokenize
import typing

from utils.core.config import describe_range
from utils.train.stage1_config import Stage1Config
from utils.train.stage2_config import Stage2Config

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                    "configuration.md")
STAGES = (("Stage 1", "configs/*_vqgan.yaml", "train_vqgan.py", Stage1Config),
          ("Stage 2", "configs/*_gpt.yaml", "train_transformer.py", Stage2Config))


def field_comments(cls) -> dict[str, str]:
    """{field name: the comment on its line and the comment-only lines that follow it} of a dataclass's source."""
    lines, start = inspect.getsourcelines(cls)
    src = "".join(lines)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(src).body[0].body
    fields = [n for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    out = {}
    for node in fields:
        text, line = [], node.lineno
        while line in comments and (line <= node.end_lineno or not src.splitlines()[line - 1].split("#")[0].strip()):
            text.append(comments[line])
            line += 1
        out[node.target.id] = " ".join(text)
    return out


def type_name(t) -> str:
    if t is type(None):
        return "null"
    args = typing.get_args(t)
    if typing.get_origin(t) is typing.Union:
        return " or ".join(type_name(a) for a in args)
    if args:
        return f"{t.__origin__.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(t, "__name__", str(t))


def allowed(f) -> str:
    if "choices" in f.metadata:
        return " \\| ".join(f"`{c}`" for c in f.metadata["choices"])
    r = f.metadata.get("range")
    return describe_range(r) if r else ""


def section_rows(name: str, cls, instance) -> list[str]:
    hints, notes = typing.get_type_hints(cls), {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's comments over its base's
        notes.update(field_comments(klass))
    rows = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        default = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        comment = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{name}.{f.name}` | {type_name(hints[f.name])} | `{default}` | {allowed(f)} | {comment} |")
    return rows


def render() -> str:
    out = ["# Configuration reference", "",
           "Generated from the config dataclasses by `python -m utils.train.reference` (a test fails when this page",
           "is stale); do not edit by hand. Every key can be set in a config file or on the command line as",
           "`section.key=value` (the value read as YAML). Ranges are checked: a value outside one, an unknown key or",
           "a wrong type is a one-line error that names the key. Defaults are the schema's; each config in",
           "`configs/` sets its own values on top.", ""]
    for title, files, script, cls in STAGES:
        out += [f"## {title}: `{files}` (`{script}`)", ""]
        top = cls()
        for f in dataclasses.fields(cls):
            section = getattr(top, f.name)
            out += [f"### `{f.name}`", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
            out += section_rows(f.name, type(section), section) + [""]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = open(PATH).read() if os.path.isfile(PATH) else ""
        if current != text:
            print(f"{PATH} is stale: run python -m utils.train.reference", file=sys.stderr)
            sys.exit(1)
        return
    with open(PATH, "w") as f:
        f.write(text)
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
