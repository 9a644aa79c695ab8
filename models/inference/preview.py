"""A one-glance check of a segmentation: axial, coronal and sagittal slices with the coloured masks.

Why these choices: slices pass through the centre of the segmented voxels (else the volume centre), so
the picture shows organs, not air; images follow the radiological convention clinicians read (patient's
right on the image's left, anterior up in axial views, superior up otherwise) and keep the physical
aspect ratio; the soft-tissue window (W 400 / L 40) is the abdominal default; the legend names every
organ that was found, with its colour.

Why Pillow and not matplotlib: the picture is three blended slices, some text and a legend, and every
scan gets one. Drawn with Pillow it takes ~0.05 s; matplotlib's figure, layout and text engine took
0.74 s on a 512 x 512 x 300 scan, a third of all the work around the network. The font is the one built
into Pillow, so nothing is looked up on the system or fetched.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.inference.stats import label_boxes, memory_order
from models.modeldir import LabelInfo

WINDOW_LEVEL = (400.0, 40.0)
ALPHA = 0.45
PANEL_HEIGHT = 420  # pixels of the tallest physical extent; the others keep their aspect ratio
MARGIN, TITLE_H, LEGEND_ROW_H, LEGEND_COLUMNS = 12, 30, 22, 7
MARKER_COLOUR = (255, 255, 0)


def _planes(
    hu: np.ndarray, labels: np.ndarray, centre: np.ndarray
) -> list[tuple[str, np.ndarray, np.ndarray, int, int, tuple[str, str]]]:
    """(title, HU image, label image, row axis, column axis, (left, right) markers) per plane, as displayed.

    Canonical arrays are RAS+: i grows towards the patient's right, j anterior, k superior. Radiological
    display puts the patient's right on the image's left, so columns run from high i to low i.
    """
    i, j, k = (int(c) for c in centre)
    axial = (hu[::-1, ::-1, k].T, labels[::-1, ::-1, k].T, 1, 0, ("R", "L"))  # rows: A -> P; cols: R -> L
    coronal = (hu[::-1, j, ::-1].T, labels[::-1, j, ::-1].T, 2, 0, ("R", "L"))  # rows: S -> I; cols: R -> L
    sagittal = (hu[i, ::-1, ::-1].T, labels[i, ::-1, ::-1].T, 2, 1, ("A", "P"))  # rows: S -> I; cols: A -> P
    return [("axial", *axial), ("coronal", *coronal), ("sagittal", *sagittal)]


def _centre(labels: np.ndarray) -> np.ndarray:
    """Per axis, the mean index of the slices that hold a segmented voxel (the volume's centre if none).

    The occupancy comes from torch's max over the other two axes, reading the map in memory order: 0.03 s
    on 512 x 512 x 300, where numpy's ``any`` on the flipped canonical view took 0.12 s, half the preview.
    """
    values, order, flipped = memory_order(labels)
    centre = np.array([(s - 1) / 2 for s in labels.shape])
    for position, axis in enumerate(order):
        occupied = np.flatnonzero(values.amax(dim=tuple(a for a in range(3) if a != position)).numpy())
        if occupied.size == 0:
            return np.array([(s - 1) / 2 for s in labels.shape])
        if axis in flipped:
            occupied = labels.shape[axis] - 1 - occupied
        centre[axis] = occupied.mean()
    return centre


def _blend(hu: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8: the windowed slice in grey, each labelled pixel mixed with its colour."""
    width, level = WINDOW_LEVEL
    grey = np.clip((hu - (level - width / 2)) * (255.0 / width), 0, 255).astype(np.float32)[..., None]
    a = alpha[labels][..., None]
    return (grey * (1 - a) + colours[labels] * a + 0.5).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def save_preview(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    label_info: dict[int, LabelInfo],
    path: Path,
    title: str = "",
    present: Collection[int] | None = None,
) -> Path:
    """Write the three-plane PNG of canonical (RAS) ``hu`` and ``labels`` to ``path``.

    ``present``: the label ids found, for the legend, when the caller knows them (the statistics do):
    finding them again is a pass over the whole map, 0.35 s on 512 x 512 x 300.
    """
    colours = np.zeros((256, 3), dtype=np.float32)
    alpha = np.zeros(256, dtype=np.float32)
    for i, info in label_info.items():
        if i:
            colours[i], alpha[i] = info.color, ALPHA
    planes = _planes(hu, labels, _centre(labels))
    tallest = max(img.shape[0] * spacing[row] for _, img, _, row, _, _ in planes)
    scale = PANEL_HEIGHT / tallest  # pixels per mm, the same in every panel
    panels = []
    for name, img, lab, row_axis, col_axis, markers in planes:
        size = (max(1, round(img.shape[1] * spacing[col_axis] * scale)),
                max(1, round(img.shape[0] * spacing[row_axis] * scale)))  # fmt: skip
        rgb = Image.fromarray(_blend(img, lab, colours, alpha), "RGB").resize(size, Image.Resampling.BILINEAR)
        panels.append((name, rgb, markers))

    if present is None:
        present = {i + 1 for i, box in enumerate(label_boxes(labels)) if box is not None}  # no int64 copy
    legend = [(i, info) for i, info in label_info.items() if i and i in present]
    legend_rows = -(-len(legend) // LEGEND_COLUMNS)
    top = MARGIN + (TITLE_H if title else 0)
    width = MARGIN + sum(p.width + MARGIN for _, p, _ in panels)
    height = top + TITLE_H + PANEL_HEIGHT + MARGIN + legend_rows * LEGEND_ROW_H + (MARGIN if legend else 0)
    canvas = Image.new("RGB", (width, height), "black")
    draw = ImageDraw.Draw(canvas)
    text, small = _font(16), _font(13)
    if title:
        draw.text((width / 2, MARGIN), title, fill="white", font=text, anchor="mt")
    x = MARGIN
    for name, panel, (left, right) in panels:
        y = top + TITLE_H
        draw.text((x + panel.width / 2, top + TITLE_H / 2), name, fill="white", font=text, anchor="mm")
        canvas.paste(panel, (x, y))
        mid = y + panel.height / 2
        draw.text((x + 4, mid), left, fill=MARKER_COLOUR, font=text, anchor="lm")
        draw.text((x + panel.width - 4, mid), right, fill=MARKER_COLOUR, font=text, anchor="rm")
        x += panel.width + MARGIN
    column_w = (width - 2 * MARGIN) / LEGEND_COLUMNS
    for n, (i, info) in enumerate(legend):
        lx = MARGIN + (n % LEGEND_COLUMNS) * column_w
        ly = top + TITLE_H + PANEL_HEIGHT + MARGIN + (n // LEGEND_COLUMNS) * LEGEND_ROW_H
        draw.rectangle((lx, ly + 3, lx + 14, ly + 17), fill=tuple(info.color))
        draw.text((lx + 20, ly + 10), f"{i} {info.name}", fill="white", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", compress_level=3)
    return path
