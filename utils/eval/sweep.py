"""A grid of sampling settings for `python -m utils.sample_eval RUN --sweep KEY=V1,V2,... [--sweep ...]`: the grid
parsed and checked against the `sample` section's keys and ranges, the table of its points, and the picture of
fidelity against recognition (each point's Fréchet distance to real images against its recognition rate, the
tokenizer's ceiling and the real-to-real floor marked)."""
import dataclasses
import itertools

import yaml
from PIL import Image, ImageDraw

from transformer.draw import SampleConfig
from utils.core.config import check_option
from utils.core.errors import UserError

SWEPT = ("temperature", "top_k", "top_p", "cfg_scale", "steps", "choice_temperature")  # numeric sample settings


def parse_sweep(specs: list[str]) -> list[dict]:
    """["cfg_scale=1,2", "top_p=0.9,1.0"] -> every combination, as sample settings: [{"cfg_scale": 1, "top_p": 0.9},
    ...]. An unknown key, a value that is not a number or one out of the key's range is a one-line error."""
    fields = {f.name: f for f in dataclasses.fields(SampleConfig)}
    axes = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise UserError(f"--sweep {spec!r} is not of the form KEY=V1,V2,... (e.g. --sweep cfg_scale=1,1.5,2)")
        if key not in SWEPT:
            raise UserError(f"--sweep: unknown sample setting {key!r}; choose from {', '.join(SWEPT)}")
        if key in axes:
            raise UserError(f"--sweep {key} is given twice: list all its values in one --sweep")
        parsed = []
        for text in values.split(","):
            v = yaml.safe_load(text.strip())
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"--sweep {key}={text.strip()} is not a number")
            check_option(f"--sweep {key}", v, **fields[key].metadata["range"])
            parsed.append(int(v) if key in ("top_k", "steps") else float(v))
        axes[key] = parsed
    return [dict(zip(axes, point)) for point in itertools.product(*axes.values())]


def table(points: list[dict], ceiling: float, floor: float) -> str:
    """The console table of a sweep's points."""
    keys = list(points[0]["settings"])
    head = "".join(f"{k:>12}" for k in keys) + f"{'recognised':>12}{'Fréchet':>10}{'precision':>11}{'recall':>8}"
    lines = [head]
    for p in points:
        lines.append("".join(f"{p['settings'][k]:>12g}" for k in keys) + f"{100 * p['accuracy']:>11.1f}%"
                     f"{p['frechet_samples_to_val']:>10.2f}{p['precision']:>11.3f}{p['recall']:>8.3f}")
    lines.append(f"the tokenizer's reconstructions (the ceiling): Fréchet {ceiling:.2f}; real train to real val "
                 f"(the floor): {floor:.2f}")
    return "\n".join(lines)


def picture(points: list[dict], ceiling: float, floor: float, size: int = 480) -> Image.Image:
    """Fréchet distance (up) against recognition rate (across), one labelled dot per point, dashed lines at the
    ceiling and the floor."""
    img = Image.new("RGB", (size + 120, size), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 60, 20, size + 100, size - 40  # the plot area
    accs = [p["accuracy"] for p in points]
    fds = [p["frechet_samples_to_val"] for p in points] + [ceiling, floor]
    a_lo = max(0.0, min(accs) - 0.02)
    a_hi = min(1.0, max(max(accs) + 0.02, a_lo + 0.05))
    f_lo, f_hi = 0.0, max(fds) * 1.1 or 1.0
    X = lambda a: x0 + (a - a_lo) / (a_hi - a_lo) * (x1 - x0)  # noqa: E731
    Y = lambda f: y1 - (f - f_lo) / (f_hi - f_lo) * (y1 - y0)  # noqa: E731
    d.rectangle((x0, y0, x1, y1), outline="black")
    for f, name, colour in ((ceiling, "reconstructions (ceiling)", (0, 120, 0)), (floor, "real (floor)", (0, 0, 200))):
        for x in range(x0, x1, 8):
            d.line((x, Y(f), min(x + 4, x1), Y(f)), fill=colour)
        d.text((x0 + 4, Y(f) - 12), f"{name} {f:.2f}", fill=colour)
    for p in points:
        x, y = X(p["accuracy"]), Y(p["frechet_samples_to_val"])
        d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(200, 0, 0))
        d.text((x + 6, y - 6), ",".join(f"{v:g}" for v in p["settings"].values()), fill="black")
    d.text((x0, y1 + 8), f"recognised {100 * a_lo:.0f}%", fill="black")
    d.text((x1 - 90, y1 + 8), f"{100 * a_hi:.0f}%", fill="black")
    d.text((x0, y1 + 22), f"points: {', '.join(points[0]['settings'])}; up: Frechet distance to real images "
           "(lower is better); across: recognised", fill="black")
    d.text((4, y0), f"{f_hi:.2f}", fill="black")
    d.text((4, y1 - 10), "0", fill="black")
    return img


def settings_of(base: SampleConfig, model, point: dict) -> SampleConfig:
    """The run's settings with a point's values, checked as command-line values are (option names in errors)."""
    try:
        return base.with_options(model, **point)
    except UserError as e:
        raise UserError(f"--sweep: {e}") from None


def to_json(points: list[dict], ceiling: float, floor: float, per_class: int) -> dict:
    return {"per_class": per_class, "ceiling_frechet": ceiling, "floor_frechet": floor, "points": points}
