"""A synthetic captioned world for the ``canary`` model: coloured shapes on a plain background.

Captions say a colour, a shape and a layout: one shape on the left, right, top, bottom or in the center
("a red circle on the left"), or two shapes side by side ("two green triangles"); 6 × 3 × 6 = 108 scenes. Each
caption draws one deterministic
64×64 image, so the float model's posterior mean at t=999 is a sharp picture and 1-step sampling can
follow the prompt. Some combinations are held out of training; the procedural ``check`` says whether an
image shows the caption's colour, shape and layout.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

SIZE = 64
BACKGROUND = (235, 235, 235)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 50, 200),
    "cyan": (30, 190, 210),
}
SHAPES = ("circle", "square", "triangle")
LAYOUTS = ("left", "right", "top", "bottom", "center", "two")
# (colour, shape, layout) combinations never shown in training: the held-out test of generalisation
HELD_OUT = {
    ("red", "triangle", "top"),
    ("green", "circle", "right"),
    ("blue", "square", "two"),
    ("yellow", "circle", "left"),
    ("red", "square", "bottom"),
    ("blue", "triangle", "left"),
    ("green", "square", "top"),
    ("yellow", "triangle", "two"),
    ("purple", "circle", "center"),
    ("cyan", "square", "right"),
}
CENTRES = {
    "left": [(32, 16)],
    "right": [(32, 48)],
    "top": [(16, 32)],
    "bottom": [(48, 32)],
    "center": [(32, 32)],
    "two": [(32, 16), (32, 48)],
}
RADIUS = 11  # half the side of a shape's box


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    layout: str

    @property
    def caption(self) -> str:
        if self.layout == "two":
            return f"two {self.colour} {self.shape}s"
        where = "in the center" if self.layout == "center" else f"on the {self.layout}"
        return f"a {self.colour} {self.shape} {where}"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape, self.layout) in HELD_OUT


def all_scenes() -> list[Scene]:
    return [Scene(c, s, lay) for c, s, lay in itertools.product(COLOURS, SHAPES, LAYOUTS)]


def parse(caption: str) -> Scene:
    words = caption.lower().replace(" on the ", " ").replace(" in the ", " ").split()
    if words[0] == "two":
        return Scene(words[1], words[2].removesuffix("s"), "two")
    return Scene(words[1], words[2], words[3])


def shape_mask(shape: str, centre: tuple[int, int], radius: float = RADIUS) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx = centre
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    if shape == "square":
        r = int(radius * 0.85)
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if shape == "triangle":  # apex up, base at the bottom of the box
        top, bottom = cy - radius, cy + radius
        half = (yy - top) / (2 * radius) * radius
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def render(scene: Scene) -> np.ndarray:
    """The scene as uint8 64×64×3."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for centre in CENTRES[scene.layout]:
        image[shape_mask(scene.shape, centre)] = COLOURS[scene.colour]
    return image


def prompt_rows(seed: int = 0) -> list[dict]:
    """The canary prompt set, like the COCO one: 50 train (calibration) + 50 test prompts, all distinct.

    Test prompts include every held-out combination; the rest of both splits are training combinations.
    """
    rng = np.random.default_rng(seed)
    seen = [s for s in all_scenes() if not s.held_out]
    held = [s for s in all_scenes() if s.held_out]
    order = [seen[i] for i in rng.permutation(len(seen))]
    train, test = order[:50], held + order[50 : 50 + 50 - len(held)]
    return [
        {"idx": i, "split": "train" if i < 50 else "test", "prompt": s.caption, "held_out": s.held_out}
        for i, s in enumerate(train + test)
    ]


def synthetic_prompt_rows(count: int, seed: int = 0) -> list[dict]:
    """A canary prompt set of ``count`` rows (at least 100) for exercising scale offline: the canary's own 100 prompts
    first (same text and split, so the same calibration, build and images), then ``count`` − 100 test prompts drawn
    uniformly from all 108 scenes with ``seed``. Captions repeat (108 scenes), so every added row carries its own
    ``seed`` (its row number): a caption drawn twice gives two images."""
    if count < 100:
        raise ValueError(f"a synthetic canary set holds the 100 canary prompts and more; got count {count}")
    own = prompt_rows()
    rows = [{"id": f"c{r['idx']:05d}", "prompt": r["prompt"], "split": r["split"]} for r in own]
    scenes = all_scenes()
    picks = np.random.default_rng(seed).integers(0, len(scenes), size=count - len(own))
    rows += [
        {"id": f"c{i:05d}", "prompt": scenes[k].caption, "split": "test", "seed": i}
        for i, k in enumerate(picks, start=len(own))
    ]
    return rows


# ------------------------------------------------------------------------------------------- checker
def _foreground(image: np.ndarray, tol: float = 60.0) -> np.ndarray:
    diff = image.astype(np.float32) - np.asarray(BACKGROUND, dtype=np.float32)
    return np.sqrt((diff**2).sum(-1)) > tol


def _components(mask: np.ndarray, min_size: int = 20) -> list[np.ndarray]:
    """4-connected components of ``mask`` with at least ``min_size`` pixels, as (y, x) index arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        queue, pixels = deque([(y, x)]), []
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            pixels.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < SIZE and 0 <= nx < SIZE and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) >= min_size:
            comps.append(np.asarray(pixels))
    return comps


def classify_colour(image: np.ndarray, pixels: np.ndarray) -> str:
    """The palette colour nearest to the blob's mean colour."""
    mean = image[pixels[:, 0], pixels[:, 1]].astype(np.float32).mean(axis=0)
    return min(COLOURS, key=lambda c: float(((mean - np.asarray(COLOURS[c])) ** 2).sum()))


def classify_shape(pixels: np.ndarray) -> str:
    """The shape whose ideal mask, fitted to the blob's bounding box, overlaps the blob best (IoU)."""
    blob = np.zeros((SIZE, SIZE), dtype=bool)
    blob[pixels[:, 0], pixels[:, 1]] = True
    y0, y1, x0, x1 = pixels[:, 0].min(), pixels[:, 0].max(), pixels[:, 1].min(), pixels[:, 1].max()
    centre = (round((y0 + y1) / 2), round((x0 + x1) / 2))
    half = (max(y1 - y0, x1 - x0)) / 2  # half the extent of the blob's bounding box

    def iou(shape: str) -> float:
        ideal = shape_mask(shape, centre, radius=half / 0.85 if shape == "square" else half)
        return float((ideal & blob).sum()) / float((ideal | blob).sum())

    return max(SHAPES, key=iou)


def check(image: np.ndarray, caption: str) -> dict[str, bool]:
    """Whether ``image`` shows the caption's colour, shape and layout (and, overall, all three)."""
    scene = parse(caption)
    comps = _components(_foreground(image))
    colour_ok = bool(comps) and all(classify_colour(image, c) == scene.colour for c in comps)
    shape_ok = bool(comps) and all(classify_shape(c) == scene.shape for c in comps)
    if scene.layout == "two":
        layout_ok = len(comps) == 2 and {_side(c) for c in comps} == {"left", "right"}
    else:
        layout_ok = len(comps) == 1 and _side(comps[0]) == scene.layout
    return {
        "colour": colour_ok,
        "shape": shape_ok,
        "layout": layout_ok,
        "correct": colour_ok and shape_ok and layout_ok,
    }


def _side(pixels: np.ndarray) -> str:
    cy, cx = pixels.mean(axis=0)
    dy, dx = cy - SIZE / 2, cx - SIZE / 2
    if max(abs(dx), abs(dy)) < 8:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"
