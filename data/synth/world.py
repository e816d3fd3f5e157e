"""The synthetic shape world: categories, colours, random objects and their captions.

An object is a union of coloured primitive parts (data/synth/sdf.py). Primitive categories are
one part; composite categories (table, chair, lamp, mug, bottle) have named parts that can take
two colours ("a chair with a green seat and red legs"). Objects are centred and scaled so that
their largest side is ``size`` (0.6 to 0.95) of the unit cube. Thin parts (legs, poles) are
kept at least about one pixel thick in 64 px renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from iss3d.data.synth import sdf

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 210, 35),
    "green": (45, 160, 55),
    "cyan": (35, 190, 205),
    "blue": (35, 65, 205),
    "purple": (125, 45, 175),
    "pink": (240, 125, 175),
    "brown": (125, 75, 35),
    "gray": (130, 130, 130),
    "black": (25, 25, 25),
}
PRIMITIVE_CATEGORIES = ("sphere", "box", "cylinder", "cone", "torus", "capsule")
COMPOSITE_CATEGORIES = ("table", "chair", "lamp", "mug", "bottle")
CATEGORIES = PRIMITIVE_CATEGORIES + COMPOSITE_CATEGORIES

# (category, main colour) pairs that never appear in the train split: measure generalisation.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("torus", "green"),
    ("cone", "blue"),
    ("box", "pink"),
    ("capsule", "orange"),
    ("chair", "red"),
    ("table", "yellow"),
    ("mug", "purple"),
    ("lamp", "cyan"),
)

SIZE_RANGE = (0.6, 0.95)
TWO_COLOR_PROB = 0.5


@dataclass
class Part:
    """One primitive: ``kind`` and ``params`` from sdf.PRIMITIVES, placed at ``center`` (3,),
    rotated by ``rotation`` (3, 3) local -> object frame, coloured ``color`` (a COLORS name),
    and named ``name`` (e.g. "seat", "legs")."""

    kind: str
    params: tuple[float, ...]
    center: np.ndarray
    color: str
    name: str
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))


@dataclass
class ObjectSpec:
    """A synthetic object: its parts plus the facts that captions and metrics use."""

    category: str
    parts: list[Part]
    main_color: str
    size: float
    shape_adjective: str | None = None

    def colors(self) -> dict[str, str]:
        """Colour of each named part, e.g. {"seat": "red", "legs": "blue"}."""
        return {p.name: p.color for p in self.parts}

    def meta(self) -> dict:
        return {
            "main_color": self.main_color,
            "part_colors": self.colors(),
            "size": round(self.size, 4),
            "shape_adjective": self.shape_adjective,
            "held_out": (self.category, self.main_color) in HELD_OUT,
        }


class CompositeSDF:
    """Evaluate an ObjectSpec's signed distance and per-point part index (torch)."""

    def __init__(self, spec: ObjectSpec, device: torch.device | str = "cpu"):
        self.parts = spec.parts
        self.centers = [
            torch.tensor(p.center, dtype=torch.float32, device=device) for p in spec.parts
        ]
        self.rotations = [
            torch.tensor(p.rotation, dtype=torch.float32, device=device) for p in spec.parts
        ]
        self.albedo = (
            torch.tensor([COLORS[p.color] for p in spec.parts], dtype=torch.float32, device=device)
            / 255.0
        )

    def distances(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) object-frame points -> (N, n_parts) signed distance to each part."""
        cols = []
        for part, c, rot in zip(self.parts, self.centers, self.rotations, strict=True):
            local = (points - c) @ rot  # rot maps local -> object, so object -> local is rot^T
            cols.append(sdf.PRIMITIVES[part.kind](local, *part.params))
        return torch.stack(cols, dim=-1)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,) signed distance to the object (union of the parts)."""
        return self.distances(points).min(dim=-1).values

    def color(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) points near the surface -> (N, 3) float albedo in [0, 1] of the nearest part."""
        return self.albedo[self.distances(points).argmin(dim=-1)]


# -- random objects -------------------------------------------------------------------------


def sample_object(
    rng: np.random.Generator, category: str | None = None, color: str | None = None
) -> ObjectSpec:
    """A random object (of ``category`` and main ``color`` if given)."""
    category = category or str(rng.choice(CATEGORIES))
    names = list(COLORS)
    main = color or str(rng.choice(names))
    second = (
        str(rng.choice([c for c in names if c != main])) if rng.random() < TWO_COLOR_PROB else main
    )
    parts, adjective = _BUILDERS[category](rng, main, second)
    size = float(rng.uniform(*SIZE_RANGE))
    return ObjectSpec(
        category=category,
        parts=_normalise(parts, size),
        main_color=main,
        size=size,
        shape_adjective=adjective,
    )


def _normalise(parts: list[Part], size: float) -> list[Part]:
    """Centre the parts' bounding box at the origin and scale its largest side to ``size``."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for p in parts:
        half = np.array(sdf.local_half_extent(p.kind, p.params))
        corners = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        )
        world = corners @ p.rotation.T + p.center
        lo, hi = np.minimum(lo, world.min(0)), np.maximum(hi, world.max(0))
    centre, scale = (lo + hi) / 2.0, size / float((hi - lo).max())
    return [
        Part(
            kind=p.kind,
            params=tuple(float(v) * scale for v in p.params),
            center=(p.center - centre) * scale,
            color=p.color,
            name=p.name,
            rotation=p.rotation,
        )
        for p in parts
    ]


def _aspect_adjective(height: float, width: float) -> str | None:
    if height > 1.6 * width:
        return "tall"
    if height < 0.6 * width:
        return "flat"
    return None


def _part(kind, params, center=(0.0, 0.0, 0.0), color="red", name="body", rotation=None) -> Part:
    return Part(
        kind=kind,
        params=tuple(float(v) for v in params),
        center=np.asarray(center, dtype=np.float64),
        color=color,
        name=name,
        rotation=np.eye(3) if rotation is None else rotation,
    )


def _four_legs(
    radius: float, half_height: float, x: float, y: float, z: float, color: str
) -> list[Part]:
    """Cylinder legs at (+-x, y, +-z)."""
    return [
        _part("cylinder", (radius, half_height), (sx * x, y, sz * z), color, "legs")
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]


def _sphere(rng, main, second):
    return [_part("sphere", (0.5,), color=main)], None


def _box(rng, main, second):
    hx, hy, hz = rng.uniform(0.15, 0.5, size=3)
    return [_part("box", (hx, hy, hz), color=main)], _aspect_adjective(hy, max(hx, hz))


def _cylinder(rng, main, second):
    r, h = rng.uniform(0.12, 0.5), rng.uniform(0.1, 0.5)
    return [_part("cylinder", (r, h), color=main)], _aspect_adjective(h, r)


def _cone(rng, main, second):
    r, h = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5)
    return [_part("capped_cone", (r, 0.0, h), color=main)], _aspect_adjective(h, r)


def _torus(rng, main, second):
    minor = rng.uniform(0.05, 0.16)
    adjective = "thick" if minor > 0.13 else ("thin" if minor < 0.07 else None)
    return [_part("torus", (0.5 - minor, minor), color=main)], adjective


def _capsule(rng, main, second):
    r = rng.uniform(0.1, 0.3)
    return [_part("capsule", (r, 0.5 - r), color=main)], _aspect_adjective(0.5, r)


def _table(rng, main, second):
    hx, hz = rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.5)
    height, thick = rng.uniform(0.25, 0.45), rng.uniform(0.02, 0.045)
    parts = [_part("box", (hx, thick, hz), (0, height, 0), main, "top")]
    if rng.random() < 0.3:  # round pedestal table
        r = min(hx, hz)
        parts = [
            _part("cylinder", (r, thick), (0, height, 0), main, "top"),
            _part(
                "cylinder",
                (rng.uniform(0.03, 0.06), height / 2),
                (0, height / 2, 0),
                second,
                "legs",
            ),
            _part("cylinder", (r * 0.5, 0.02), (0, 0.02, 0), second, "legs"),
        ]
        return parts, "round"
    leg_r, inset = rng.uniform(0.03, 0.05), rng.uniform(0.05, 0.09)
    leg_h = height / 2
    parts += _four_legs(leg_r, leg_h, hx - inset, leg_h - thick, hz - inset, second)
    return parts, ("long" if max(hx, hz) > 1.6 * min(hx, hz) else None)


def _chair(rng, main, second):
    hx, hz = rng.uniform(0.2, 0.3), rng.uniform(0.2, 0.3)
    seat_t, leg_h = 0.03, rng.uniform(0.15, 0.25)
    back_h = rng.uniform(0.15, 0.3)
    parts = [
        _part("box", (hx, seat_t, hz), (0, 0, 0), main, "seat"),
        _part("box", (hx, back_h, 0.025), (0, back_h + seat_t, -hz + 0.025), main, "back"),
    ]
    leg_r = rng.uniform(0.025, 0.04)
    parts += _four_legs(leg_r, leg_h, hx - leg_r, -leg_h - seat_t, hz - leg_r, second)
    return parts, ("tall" if back_h > 0.26 else None)


def _lamp(rng, main, second):
    base_r, base_h = rng.uniform(0.12, 0.22), rng.uniform(0.015, 0.035)
    pole_h, pole_r = rng.uniform(0.25, 0.45), rng.uniform(0.025, 0.04)
    shade_h = rng.uniform(0.08, 0.16)
    r_bottom, r_top = rng.uniform(0.18, 0.32), rng.uniform(0.06, 0.15)
    parts = [
        _part("cylinder", (base_r, base_h), (0, base_h, 0), second, "base"),
        _part("cylinder", (pole_r, pole_h), (0, 2 * base_h + pole_h, 0), second, "base"),
        _part(
            "capped_cone",
            (r_bottom, r_top, shade_h),
            (0, 2 * base_h + 2 * pole_h + shade_h * 0.5, 0),
            main,
            "shade",
        ),
    ]
    return parts, ("tall" if pole_h > 0.38 else None)


def _mug(rng, main, second):
    r, h, t = rng.uniform(0.22, 0.35), rng.uniform(0.22, 0.42), rng.uniform(0.025, 0.045)
    major = min(rng.uniform(0.1, 0.16), 0.8 * h)
    minor = rng.uniform(0.02, 0.035)
    parts = [
        _part("cup", (r, h, t), (0, 0, 0), main, "body"),
        _part("half_torus", (major, minor), (r - minor, 0, 0), second, "handle"),
    ]
    return parts, _aspect_adjective(h, r)


def _bottle(rng, main, second):
    r, h = rng.uniform(0.14, 0.25), rng.uniform(0.18, 0.3)
    neck_r, neck_h = rng.uniform(0.04, 0.07), rng.uniform(0.06, 0.12)
    shoulder_h = rng.uniform(0.04, 0.08)
    top = h + 2 * shoulder_h
    parts = [
        _part("cylinder", (r, h), (0, 0, 0), main, "body"),
        _part("capped_cone", (r, neck_r, shoulder_h), (0, h + shoulder_h, 0), main, "body"),
        _part("cylinder", (neck_r, neck_h), (0, top + neck_h, 0), main, "body"),
        _part("cylinder", (neck_r * 1.2, 0.03), (0, top + 2 * neck_h + 0.03, 0), second, "cap"),
    ]
    return parts, _aspect_adjective(h + shoulder_h + neck_h, r * 1.5)


_BUILDERS = {
    "sphere": _sphere,
    "box": _box,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "table": _table,
    "chair": _chair,
    "lamp": _lamp,
    "mug": _mug,
    "bottle": _bottle,
}

# Which two parts a composite's colour caption names: (main part, second part).
CAPTION_PARTS = {
    "table": ("top", "legs"),
    "chair": ("seat", "legs"),
    "lamp": ("shade", "base"),
    "mug": ("body", "handle"),
    "bottle": ("body", "cap"),
}


# -- captions -------------------------------------------------------------------------------


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def size_adjective(size: float) -> str | None:
    lo, hi = SIZE_RANGE
    if size < lo + 0.25 * (hi - lo):
        return "small"
    if size > lo + 0.75 * (hi - lo):
        return "large"
    return None


def captions(spec: ObjectSpec) -> list[str]:
    """Several descriptions of the object, from simple ("a red torus") to part-wise."""
    cat, color = spec.category, spec.main_color
    out = [f"{_a(color)} {cat}", f"{_a(cat)} that is {color}"]
    for adjective in (size_adjective(spec.size), spec.shape_adjective):
        if adjective:
            out.append(f"{_a(adjective)} {color} {cat}")
    if cat in CAPTION_PARTS:
        first, second = CAPTION_PARTS[cat]
        colors = spec.colors()
        c1, c2 = colors[first], colors[second]
        second_words = f"{c2} {second}" if second.endswith("s") else f"{_a(c2)} {second}"
        out.append(f"{_a(cat)} with {_a(c1)} {first} and {second_words}")
        if c1 != c2:
            out.append(f"{_a(c1)} {cat} with {second_words}")
    return list(dict.fromkeys(out))
