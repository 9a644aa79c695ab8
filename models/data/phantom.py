"""Synthetic abdominal CT phantoms: the embedded default data of ASA-CT.

Why: the pipeline must run end to end (pretraining, fine-tuning, evaluation) on a fresh machine with no
download, and its tests need labelled CT with realistic intensities and anatomy. A phantom is an
abdominal CT volume in Hounsfield units with the 13 BTCV organ labels (see :mod:`models.data.labels`).

Geometry
    Voxel axes are (x, y, z) = (patient Right, Anterior, Superior): the affine is diagonal with positive
    spacings, so world coordinates are RAS+ millimetres (NIfTI convention: +x towards the patient's
    right, +y anterior, +z superior) and ``nibabel.as_closest_canonical`` is a no-op. World z = 0 is
    (roughly) the L1 vertebra; the default scan covers about z = -115 .. +125 mm (diaphragm domes and lung
    bases at the top, liver and spleen upper, kidneys mid, iliac crests at the bottom) shifted by up to
    +-15 mm per patient. Pass ``voxel_order="LPS"`` for the axis order most DICOM-converted CTs have.

Defaults
    192 x 192 x 96 voxels of 1.8 x 1.8 x 2.5 mm (346 x 346 x 240 mm): small enough to generate and write
    20 volumes in well under a minute on two cores, fine enough for 7 mm adrenal glands.

Content
    Air outside the body (-1000), a CT table, skin/subcutaneous fat (-100), abdominal wall and back
    muscles (50-60), intra-abdominal fat, lung bases (-860), spine (cortical 550-750, marrow 180-280, discs
    ~90, canal), ribs, iliac crests, psoas, bowel loops, colon and stomach with gas (-1000) and fluid,
    the 13 organs, unlabelled vessels (iliac and renal vessels, SMA/SMV, hepatic veins inside the liver)
    and the heart apex at the top. Organs are ellipsoids or tubes deformed by smooth random harmonics and
    clipped to the abdominal cavity. Per patient (from the seed): body size and fat, organ size, position
    and shape, contrast phase (native, arterial or portal venous), noise (10-25 HU, slightly correlated),
    blur and z coverage. Labels are painted together with the intensities, so every labelled voxel has its
    organ's HU (before blur and noise).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from models.data.labels import (
    AORTA,
    BTCV_LABELS,
    ESOPHAGUS,
    GALLBLADDER,
    IVC,
    LEFT_ADRENAL,
    LEFT_KIDNEY,
    LIVER,
    PANCREAS,
    PORTAL_SPLENIC_VEINS,
    RIGHT_ADRENAL,
    RIGHT_KIDNEY,
    SPLEEN,
    STOMACH,
    msd_labels,
)

DEFAULT_SHAPE: tuple[int, int, int] = (192, 192, 96)
DEFAULT_SPACING: tuple[float, float, float] = (1.8, 1.8, 2.5)
PHASES: tuple[str, ...] = ("native", "arterial", "portal_venous")
HU_MIN, HU_MAX = -1024, 3071

# Tissue -> mean HU in the (native, arterial, portal venous) phase, for an average adult.
_HU: dict[str, tuple[float, float, float]] = {
    "fat": (-100, -100, -100),
    "visceral_fat": (-92, -92, -92),
    "muscle": (50, 55, 60),
    "liver": (60, 75, 105),
    "spleen": (48, 115, 115),
    "kidney_cortex": (32, 190, 165),
    "kidney_medulla": (30, 85, 150),
    "renal_sinus": (-50, -50, -50),
    "gallbladder": (10, 10, 12),
    "esophagus": (40, 55, 65),
    "stomach_wall": (40, 75, 85),
    "stomach_fluid": (15, 15, 15),
    "artery": (42, 280, 165),
    "ivc": (40, 75, 130),
    "portal": (40, 110, 170),
    "hepatic_vein": (40, 50, 150),
    "pancreas": (42, 115, 95),
    "adrenal": (30, 60, 65),
    "bowel_wall": (35, 70, 85),
    "bowel_fluid": (18, 18, 18),
    "stool": (25, 25, 25),
    "gas": (-1000, -1000, -1000),
    "lung": (-860, -860, -860),
    "heart": (42, 230, 150),
    "disc": (90, 90, 90),
    "csf": (10, 10, 10),
    "cortical": (650, 650, 650),
    "marrow": (230, 230, 230),
    "table": (150, 150, 150),
}

Region = tuple[tuple[slice, slice, slice], np.ndarray]
"""A bounding box (slices into the volume) and a boolean mask of that box's shape."""


@dataclass
class Phantom:
    """One synthetic CT: intensities, BTCV labels and the voxel-to-RAS affine."""

    ct: np.ndarray  # int16 HU, shape (X, Y, Z)
    labels: np.ndarray  # uint8 BTCV ids, same shape
    affine: np.ndarray  # 4x4 float64 voxel -> RAS+ mm
    meta: dict[str, Any] = field(default_factory=dict)  # seed, phase, noise, body size, tissue HU

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# small geometric helpers


def _rng(seed: int, part: str) -> np.random.Generator:
    """A generator per anatomical part, so that changing one part never reshuffles the others."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(part.encode())])


@dataclass(frozen=True)
class _Grid:
    """World coordinates (mm, RAS, increasing) of the voxel centres along each axis."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Slices of the voxels whose centres lie in [lo, hi] (world mm); None when empty."""
        out = []
        for c, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            i0, i1 = int(np.searchsorted(c, a, "left")), int(np.searchsorted(c, b, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (X, 1, 1), (1, Y, 1), (1, 1, Z) of a box."""
        return self.x[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.z[sl[2]][None, None, :]


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix (degrees) about z, then y, then x; its columns are the local axes in world."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class _Blob:
    """A deformed ellipsoid sampled in its bounding box: local coordinates q (unit ellipsoid) and rho."""

    sl: tuple[slice, slice, slice]
    q: tuple[np.ndarray, np.ndarray, np.ndarray]
    rho: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.rho < 1.0


def _blob(
    grid: _Grid,
    rng: np.random.Generator,
    center: np.ndarray,
    semi: np.ndarray,
    rot: np.ndarray | None = None,
    amp: float = 0.08,
    n_harmonics: int = 5,
) -> _Blob | None:
    """An ellipsoid whose radius is modulated by a few random low-frequency harmonics.

    Why harmonics rather than a displacement field: they are evaluated only inside the organ's box,
    cost a handful of vectorised cosines and give smooth, organ-scale bumps and lobes.
    """
    center, semi = np.asarray(center, float), np.asarray(semi, float)
    rot = np.eye(3) if rot is None else rot
    reach = semi.max() * (1.0 + 2 * amp) + 2.0
    sl = grid.box(center - reach, center + reach)
    if sl is None:
        return None
    xs, ys, zs = grid.coords(sl)
    d = (xs - center[0], ys - center[1], zs - center[2])
    q = tuple(((rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2]) / semi[i]).astype(np.float32) for i in range(3))
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    if amp > 0:
        dirs = rng.normal(size=(n_harmonics, 3))
        dirs *= (rng.uniform(1.2, 3.0, n_harmonics) / np.linalg.norm(dirs, axis=1))[:, None]
        phases = rng.uniform(0, 2 * np.pi, n_harmonics)
        bump = sum(np.cos(w[0] * q[0] + w[1] * q[1] + w[2] * q[2] + p) for w, p in zip(dirs, phases, strict=True))
        rho = rho + (amp / np.sqrt(n_harmonics)) * bump
    return _Blob(sl, q, rho.astype(np.float32))  # type: ignore[arg-type]


def _curve(ctrl: np.ndarray, radii: np.ndarray, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a smooth spline through control points, with interpolated radii."""
    ctrl, radii = np.asarray(ctrl, float), np.asarray(radii, float)
    # drop repeated control points (a clipped random walk can produce them): the spline needs distinct ones
    keep = np.r_[True, np.linalg.norm(np.diff(ctrl, axis=0), axis=1) > 1e-3]
    ctrl, radii = ctrl[keep], radii[keep]
    if len(ctrl) == 1:
        return ctrl, radii
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    step = max(0.35 * float(radii.min()), 0.8) if step is None else step
    t = np.linspace(0.0, s[-1], max(int(np.ceil(s[-1] / step)) + 1, 2))
    pts = CubicSpline(s, ctrl, axis=0)(t) if len(ctrl) >= 3 else ctrl[0] + np.outer(t / s[-1], ctrl[-1] - ctrl[0])
    return pts, np.interp(t, s, radii)


@dataclass
class _Tube:
    """A tube sampled in its bounding box: signed distance to its surface and the nearest centre point."""

    sl: tuple[slice, slice, slice]
    dist: np.ndarray
    idx: np.ndarray
    points: np.ndarray
    radii: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.dist < 0


def _tube(grid: _Grid, points: np.ndarray, radii: np.ndarray) -> _Tube | None:
    """Union of spheres along a densely sampled centre line (a tube of varying radius).

    Each sphere only touches its own small box, so a tube costs about its own volume, not the scan's.
    """
    rmax = float(radii.max()) + 1.0
    sl = grid.box(points.min(0) - rmax, points.max(0) + rmax)
    if sl is None:
        return None
    shape = tuple(s.stop - s.start for s in sl)
    dist = np.full(shape, np.inf, np.float32)
    idx = np.full(shape, -1, np.int32)
    for i, (p, r) in enumerate(zip(points, radii, strict=True)):
        sub = grid.box(p - r - 1.0, p + r + 1.0)
        if sub is None:
            continue
        xs, ys, zs = grid.coords(sub)
        d = np.sqrt((xs - p[0]) ** 2 + (ys - p[1]) ** 2 + (zs - p[2]) ** 2) - r
        loc = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(sub, sl, strict=True))
        cur, cid = dist[loc], idx[loc]
        upd = d < cur
        cur[upd] = d[upd]
        cid[upd] = i
    return _Tube(sl, dist, idx, points, radii)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed with ``sigma`` voxels (a texture)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _kernel_norm(sigma: float) -> float:
    """L2 norm of scipy's truncated 1D Gaussian kernel: the factor by which it scales white noise."""
    if sigma <= 0:
        return 1.0
    r = int(4.0 * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return float(np.sqrt(((w / w.sum()) ** 2).sum()))


# ----------------------------------------------------------------------------------------------------------
# the canvas


class _Canvas:
    """The CT and label volumes being painted; the last paint of a voxel wins, intensity and label alike."""

    def __init__(self, grid: _Grid, hu: dict[str, float]) -> None:
        self.grid = grid
        self.hu = hu
        self.ct = np.full(grid.shape, -1000.0, np.float32)
        self.labels = np.zeros(grid.shape, np.uint8)
        self.cavity = np.zeros(grid.shape, bool)  # inside the abdominal wall
        self.inner = np.zeros(grid.shape, bool)  # inside the subcutaneous fat (muscle and deeper)
        self.body = np.zeros(grid.shape, bool)

    def paint(
        self,
        sl: tuple[slice, slice, slice],
        mask: np.ndarray,
        value: float | str | np.ndarray,
        label: int = 0,
        clip: np.ndarray | None = None,
        only_label: int | None = None,
        keep_labels: tuple[int, ...] = (),
    ) -> None:
        """Set intensity and label on ``mask`` (within box ``sl``).

        ``clip``: a full-volume mask the paint is restricted to (cavity, body...); ``only_label``: paint
        only over voxels already of that label; ``keep_labels``: never paint over these labels.
        """
        m = mask
        if clip is not None:
            m = m & clip[sl]
        if only_label is not None:
            m = m & (self.labels[sl] == only_label)
        for k in keep_labels:
            m = m & (self.labels[sl] != k)
        ct, lab = self.ct[sl], self.labels[sl]
        if isinstance(value, str):
            value = self.hu[value]
        ct[m] = value[m] if isinstance(value, np.ndarray) else value
        lab[m] = label


# ----------------------------------------------------------------------------------------------------------
# the patient


@dataclass(frozen=True)
class _Patient:
    """Per-patient anatomy parameters drawn from the seed (mm, RAS; z = 0 near L1)."""

    a: float  # body half-width
    b: float  # body half-depth (A/P)
    fat_lat: float
    fat_ap: float
    muscle: float
    off_x: float
    off_y: float
    sx: float  # organ position scale, lateral
    sy: float  # organ position scale, A/P
    spine_y0: float
    dome: float  # right diaphragm dome height
    phase: str

    def spine_y(self, z: np.ndarray | float) -> np.ndarray | float:
        """A/P position of the vertebral bodies' centre: a mild lumbar lordosis (L3 most anterior)."""
        return self.off_y + self.sy * (self.spine_y0 + 9.0 * np.exp(-(((np.asarray(z) + 60.0) / 80.0) ** 2)))

    def at(self, x: float, y: float, z: float) -> np.ndarray:
        """A reference-patient position (body 145 x 105 mm half-axes) moved into this patient."""
        return np.array([self.off_x + self.sx * x, self.off_y + self.sy * y, z])

    def body_scale(self, z: np.ndarray) -> np.ndarray:
        """Relative body cross-section size along z (wider at the rib cage and the pelvis)."""
        return 1.0 + 0.035 * np.sin(z / 45.0) + 0.04 * np.clip((-z - 60.0) / 60.0, 0.0, None)


def _draw_patient(seed: int) -> _Patient:
    rng = _rng(seed, "patient")
    a = rng.uniform(128.0, 162.0)
    b = a * rng.uniform(0.66, 0.8)
    fat = rng.uniform(0.0, 1.0)  # adiposity, drives both fat layers
    fat_lat, fat_ap = 8.0 + 28.0 * fat + rng.uniform(-3, 3), 7.0 + 22.0 * fat + rng.uniform(-3, 3)
    muscle = rng.uniform(8.0, 14.0)
    cav_a, cav_b = a - fat_lat - muscle, b - fat_ap - muscle
    phase = PHASES[int(rng.choice(3, p=[0.25, 0.25, 0.5]))]
    return _Patient(
        a=a,
        b=b,
        fat_lat=fat_lat,
        fat_ap=fat_ap,
        muscle=muscle,
        off_x=rng.uniform(-8, 8),
        off_y=rng.uniform(-8, 8),
        sx=cav_a / 113.0,
        sy=cav_b / 78.0,
        spine_y0=-48.0 + rng.uniform(-4, 4),
        dome=rng.uniform(100.0, 118.0),
        phase=phase,
    )


def _tissue_hu(seed: int, phase: str) -> dict[str, float]:
    """Tissue HU for this patient: phase means with individual jitter of the baseline and enhancement."""
    rng = _rng(seed, "hu")
    k = PHASES.index(phase)
    gain = rng.uniform(0.8, 1.2)  # contrast dose / timing, shared by all enhancing tissues
    out = {}
    for name, values in _HU.items():
        base, v = values[0], values[k]
        if abs(base) >= 500 or name in ("gas", "renal_sinus", "fat", "visceral_fat"):
            out[name] = float(v + rng.normal(0, 10 if name == "lung" else 3))
        else:
            out[name] = float(base + rng.normal(0, 3) + (v - base) * gain * rng.uniform(0.9, 1.1))
    out["cortical"] = rng.uniform(550, 750)
    out["marrow"] = rng.uniform(180, 280)
    return out


# ----------------------------------------------------------------------------------------------------------
# anatomy, painted back to front: body, cavity contents, organs, vessels, bones


def _paint_body(cv: _Canvas, pt: _Patient) -> None:
    """Skin/fat ellipse with a flatter back, the muscular abdominal wall, the cavity, and the CT table."""
    g = cv.grid
    xr = (g.x - pt.off_x)[:, None]
    yr = (g.y - pt.off_y)[None, :]
    k = pt.body_scale(g.z)[None, None, :]

    def rho(a: float, b: float) -> np.ndarray:
        # superellipse: exponent 2 in front, 2.8 at the back (the back lies flat on the table)
        p = np.where(yr < 0, 2.8, 2.0)
        return ((np.abs(xr) / a) ** p + (np.abs(yr) / b) ** p) ** (1.0 / p)

    r_body = rho(pt.a, pt.b)[:, :, None]
    r_inner = rho(pt.a - pt.fat_lat, pt.b - pt.fat_ap)[:, :, None]
    r_cav = rho(pt.a - pt.fat_lat - pt.muscle, pt.b - pt.fat_ap - pt.muscle)[:, :, None]
    cv.body = r_body < k
    cv.inner = r_inner < k
    cv.cavity = r_cav < k
    cv.ct[cv.body] = cv.hu["fat"]
    cv.ct[cv.inner] = cv.hu["muscle"]
    cv.ct[cv.cavity] = cv.hu["visceral_fat"]

    # table: a curved 6 mm plate a few mm behind the back
    y_table = pt.off_y - pt.b * float(k.max()) - 6.0 + 0.0015 * xr**2
    table = (np.abs(g.y[None, :] - y_table) < 3.0) & (np.abs(xr) < 0.95 * (g.x.max() - g.x.min()) / 2)
    cv.ct[table[:, :, None] & ~cv.body] = cv.hu["table"]


def _paint_wall_muscles(cv: _Canvas, pt: _Patient) -> None:
    """Paraspinal muscles (in the back wall) and psoas muscles (beside the lumbar spine)."""
    g = cv.grid
    zs = np.linspace(g.z.min() - 10, g.z.max() + 10, 12)
    for side in (-1, 1):
        ctrl = np.stack([np.full_like(zs, pt.off_x + side * 38 * pt.sx), pt.spine_y(zs) - 36.0 * pt.sy, zs], 1)
        t = _tube(g, *_curve(ctrl, np.full(zs.size, 25.0), step=8.0))
        if t is not None:
            cv.paint(t.sl, t.mask, "muscle", clip=cv.inner)
        zp = np.linspace(25.0, g.z.min() - 15, 8)
        ctrl = np.stack([pt.off_x + side * (26.0 + 0.2 * (25.0 - zp)) * pt.sx, pt.spine_y(zp) + 4.0, zp], 1)
        t = _tube(g, *_curve(ctrl, np.linspace(5.0, 24.0, zp.size)))
        if t is not None:
            cv.paint(t.sl, t.mask, "muscle", clip=cv.cavity)


def _gut(
    cv: _Canvas,
    tube: _Tube | None,
    rng: np.random.Generator,
    gas: np.ndarray,
    wall: float,
    label: int = 0,
    stool: bool = False,
    keep: tuple[int, ...] = (),
) -> None:
    """A hollow viscus: enhancing wall, fluid (or mottled stool) content, gas on the anterior side.

    Why anterior: patients lie supine, so gas floats to the non-dependent (anterior, +y) side.
    """
    if tube is None:
        return
    g = cv.grid
    _, ys, _ = g.coords(tube.sl)
    m = tube.mask
    lumen = tube.dist < -wall
    i = np.clip(tube.idx, 0, None)
    rel = (ys - tube.points[i, 1]) / tube.radii[i]
    gas_m = lumen & (rel > 1.0 - 2.0 * gas[i])
    cv.paint(tube.sl, m, "bowel_wall", label, clip=cv.cavity, keep_labels=keep)
    if stool:
        tex = _smooth_noise(rng, m.shape, 1.0)
        content = np.where(tex > 0.6, -650.0, cv.hu["stool"] + 25.0 * tex).astype(np.float32)
        cv.paint(tube.sl, lumen, content, label, clip=cv.cavity, keep_labels=keep)
    else:
        cv.paint(tube.sl, lumen, "bowel_fluid", label, clip=cv.cavity, keep_labels=keep)
    cv.paint(tube.sl, gas_m, "gas", label, clip=cv.cavity, keep_labels=keep)


def _paint_bowel(cv: _Canvas, pt: _Patient, seed: int) -> None:
    """Colon frame, duodenal C-loop and small-bowel loops filling the lower abdomen."""
    g = cv.grid
    rng = _rng(seed, "bowel")
    j = lambda s=6.0: rng.normal(0, s, 3)  # noqa: E731 - a tiny jitter helper
    colon = [
        (70, 20, -125),
        (88, 10, -90),
        (92, 0, -40),
        (88, 15, 5),
        (55, 55, 5),
        (15, 62, -5),
        (-30, 60, 5),
        (-72, 35, 30),
        (-90, 5, 45),
        (-95, -10, -10),
        (-88, 0, -70),
        (-60, 25, -120),
    ]
    ctrl = np.array([pt.at(*p) + j() for p in colon])
    pts, rad = _curve(ctrl, rng.uniform(16, 22, len(colon)))
    gas = np.clip(np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, 6), rng.uniform(-0.3, 1.2, 6)), 0, 1)
    _gut(cv, _tube(g, pts, rad), rng, gas, wall=2.5, stool=True)

    duod = [(12, 42, 22), (42, 30, 14), (52, 14, -2), (50, 8, -28), (24, 10, -45), (-6, 14, -46), (-22, 18, -36)]
    pts, rad = _curve(np.array([pt.at(*p) + j(3) for p in duod]), np.full(len(duod), 10.0))
    _gut(cv, _tube(g, pts, rad), rng, np.full(len(pts), rng.uniform(0, 0.5)), wall=2.5)

    lo, hi = pt.at(-70, -15, -115), pt.at(70, 60, -20)
    for _ in range(int(rng.integers(4, 7))):
        p = rng.uniform(lo, hi)
        ctrl = [p]
        for _ in range(7):
            p = np.clip(p + rng.normal(0, 1, 3) * np.array([28.0, 18.0, 22.0]), lo, hi)
            ctrl.append(p)
        pts, rad = _curve(np.array(ctrl), rng.uniform(9, 13, len(ctrl)))
        gas = np.full(len(pts), max(rng.uniform(-0.6, 0.5), 0.0))
        _gut(cv, _tube(g, pts, rad), rng, gas, wall=2.0)


def _paint_lungs_and_heart(cv: _Canvas, pt: _Patient) -> np.ndarray:
    """Lung bases above the diaphragm domes and the heart apex; returns the full-volume diaphragm height."""
    g = cv.grid
    xr = (g.x - pt.off_x)[:, None]
    yr = (g.y - pt.off_y)[None, :]
    # right dome higher than the left; posterior recesses lower (y < 0)
    dome = np.where(xr > 0, pt.dome, pt.dome - 10.0) - 28.0 * (1 - np.exp(-(((np.abs(xr) - 55 * pt.sx) / 60.0) ** 2)))
    dome = dome + 0.35 * np.minimum(yr, 0.0)
    y_sp = float(pt.spine_y(g.z.max())) - pt.off_y
    mediastinum = ((xr + 10) / (32 * pt.sx)) ** 2 + ((yr - y_sp - 40) / (58 * pt.sy)) ** 2 < 1
    above = g.z[None, None, :] > dome[:, :, None]
    lung = above & cv.cavity & ~mediastinum[:, :, None]
    cv.ct[lung] = cv.hu["lung"]
    cv.ct[above & cv.cavity & mediastinum[:, :, None]] = cv.hu["visceral_fat"]
    band = (g.z[None, None, :] > dome[:, :, None] - 4) & ~above & cv.cavity
    cv.ct[band] = cv.hu["muscle"]
    heart = _blob(g, _rng(0, "heart"), pt.at(-25, 30, pt.dome + 45), np.array([60.0, 45.0, 50.0]), amp=0.0)
    if heart is not None:
        cv.paint(heart.sl, heart.mask & above[heart.sl], "heart", clip=cv.cavity)
    return dome


def _below(dome: np.ndarray, grid: _Grid, sl: tuple[slice, slice, slice], margin: float = 4.0) -> np.ndarray:
    """Voxels of a box below the diaphragm (abdominal organs never reach into the chest)."""
    return grid.z[sl[2]][None, None, :] < (dome[sl[0], sl[1]][:, :, None] - margin)


def _paint_organs(cv: _Canvas, pt: _Patient, seed: int, dome: np.ndarray) -> None:
    """The solid organs, stomach and pancreas; ordered so that the organ that should win is painted last."""
    g = cv.grid
    hu = cv.hu

    def size(rng: np.random.Generator, semi: tuple[float, float, float], s: float = 0.12) -> np.ndarray:
        return np.array(semi) * rng.uniform(1 - s, 1 + s) * np.sqrt(pt.sx * pt.sy) ** 0.5

    def jit(rng: np.random.Generator, s: float = 6.0) -> np.ndarray:
        return rng.normal(0, s, 3)

    # stomach: fundus under the left dome, body, antrum crossing to the right; lumen with an air cap
    rng = _rng(seed, "stomach")
    parts = [((-50, -2, 92), (36, 36, 30), 0), ((-55, 22, 58), (34, 30, 38), 15), ((-12, 48, 28), (40, 20, 20), 25)]
    m_sl, masks = None, []
    blobs = [_blob(g, rng, pt.at(*c) + jit(rng), size(rng, s), _rotation(yaw), amp=0.06) for c, s, yaw in parts]
    blobs = [b for b in blobs if b is not None]
    if blobs:
        lo = np.min([[s.start for s in b.sl] for b in blobs], 0)
        hi = np.max([[s.stop for s in b.sl] for b in blobs], 0)
        m_sl = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi, strict=True))
        mask = np.zeros(tuple(hi - lo), bool)
        for b in blobs:
            loc = tuple(slice(s.start - a, s.stop - a) for s, a in zip(b.sl, lo, strict=True))
            mask[loc] |= b.mask
        mask &= cv.cavity[m_sl] & _below(dome, g, m_sl)
        masks.append(mask)
        lumen = ndimage.binary_erosion(mask, iterations=2)
        _, ys, _ = g.coords(m_sl)
        yl = np.broadcast_to(ys, mask.shape)[lumen]
        air = lumen & (ys > np.quantile(yl, 1 - rng.uniform(0.1, 0.45))) if yl.size else lumen
        cv.paint(m_sl, mask, "stomach_wall", STOMACH)
        cv.paint(m_sl, lumen, "stomach_fluid", STOMACH)
        cv.paint(m_sl, air, "gas", STOMACH)

    # spleen: posterolateral left upper quadrant, long axis running antero-laterally
    rng = _rng(seed, "spleen")
    b = _blob(g, rng, pt.at(-88, -38, 60) + jit(rng), size(rng, (20, 48, 40), 0.2), _rotation(-35 + rng.normal(0, 8)))
    if b is not None:
        val: float | np.ndarray = hu["spleen"]
        if pt.phase == "arterial":  # the arterial "zebra" enhancement pattern
            val = hu["spleen"] + 25.0 * np.sin(5.0 * b.q[1] + 3.0 * b.q[2] + rng.uniform(0, 6)).astype(np.float32)
        cv.paint(b.sl, b.mask & _below(dome, g, b.sl), val, SPLEEN, clip=cv.cavity)

    # liver: right lobe, inferior right tip, left lobe across the midline
    rng = _rng(seed, "liver")
    lobes = [((62, 0, 62), (64, 76, 66), 0), ((82, -5, 18), (36, 48, 44), 10), ((-12, 40, 74), (56, 28, 32), -15)]
    for c, s, yaw in lobes:
        b = _blob(g, rng, pt.at(*c) + jit(rng), size(rng, s), _rotation(yaw), amp=0.07)
        if b is not None:
            cv.paint(b.sl, b.mask & _below(dome, g, b.sl), "liver", LIVER, clip=cv.cavity)

    # kidneys: retroperitoneal, upper pole medial and posterior, hilum facing antero-medially; the right
    # kidney sits lower (pushed down by the liver)
    for side, lab, z0 in ((1, RIGHT_KIDNEY, -14), (-1, LEFT_KIDNEY, 0)):
        rng = _rng(seed, f"kidney{side}")
        c = pt.at(side * 70, -36, z0) + jit(rng, 5)
        rot = _rotation(side * 20 + rng.normal(0, 5), -side * (12 + rng.normal(0, 4)), -12 + rng.normal(0, 4))
        b = _blob(g, rng, c, size(rng, (24, 21, 52)), rot, amp=0.04)
        if b is None:
            continue
        q0, q1, q2 = b.q
        medial = -side
        sinus = (((q0 - medial * 0.62) / 0.42) ** 2 + ((q1 - 0.15) / 0.32) ** 2 + (q2 / 0.42) ** 2) < 1
        pyramids = (b.rho < 0.78) & (np.cos(7.0 * q2) * np.cos(5.0 * np.arctan2(q1, q0)) > -0.2)
        cv.paint(b.sl, b.mask, "kidney_cortex", lab, clip=cv.cavity)
        cv.paint(b.sl, b.mask & pyramids, "kidney_medulla", lab, clip=cv.cavity)
        cv.paint(b.sl, b.mask & sinus, "renal_sinus", 0, clip=cv.cavity)
        # adrenal: a thin plate above the kidney, medial (right: behind the IVC; left: antero-medial)
        rng = _rng(seed, f"adrenal{side}")
        top = c[2] + 52 * 0.9
        ac = pt.at(side * (34 if side > 0 else 36), -28 if side > 0 else -24, 0) + jit(rng, 3)
        ac[2] = top + (6 if side > 0 else -6) + rng.normal(0, 3)
        a = _blob(g, rng, ac, np.array([3.8, 15.0, 15.0]) * rng.uniform(0.85, 1.15), _rotation(side * 35), amp=0.05)
        if a is not None:
            cv.paint(a.sl, a.mask, "adrenal", RIGHT_ADRENAL if side > 0 else LEFT_ADRENAL, clip=cv.cavity)

    # pancreas: head in the duodenal C-loop, neck and body in front of the aorta/SMA, tail to the splenic hilum
    rng = _rng(seed, "pancreas")
    panc = [(30, 18, -8), (6, 30, 6), (-24, 30, 18), (-52, 10, 32), (-70, -14, 46)]
    ctrl = np.array([pt.at(*p) + jit(rng, 3) for p in panc])
    pts, rad = _curve(ctrl, np.array([15, 11, 10, 9, 7]) * rng.uniform(0.85, 1.15))
    t = _tube(g, pts, rad)
    if t is not None:
        cv.paint(t.sl, t.mask, "pancreas", PANCREAS, clip=cv.cavity)

    # gallbladder: a pear under the inferior surface of the liver, fundus anterior-inferior
    rng = _rng(seed, "gallbladder")
    b = _blob(
        g,
        rng,
        pt.at(46, 44, 22) + jit(rng, 4),
        size(rng, (14, 14, 32), 0.2),
        _rotation(0, 0, -35 + rng.normal(0, 8)),
        amp=0.05,
    )
    if b is not None:
        cv.paint(b.sl, b.mask, "gallbladder", GALLBLADDER, clip=cv.cavity)


def _paint_vessels(cv: _Canvas, pt: _Patient, seed: int, dome: np.ndarray) -> None:
    """Aorta, IVC, portal/splenic veins, esophagus and the unlabelled branches."""
    g = cv.grid
    rng = _rng(seed, "vessels")
    ztop, zbot = g.z.max() + 8, g.z.min() - 8
    z_bif = -80.0 + rng.normal(0, 6)

    def paint_tube(ctrl: list | np.ndarray, radii: list | np.ndarray, tissue: str, label: int = 0, **kw: Any) -> None:
        t = _tube(g, *_curve(np.asarray(ctrl, float), np.asarray(radii, float)))
        if t is not None:
            cv.paint(t.sl, t.mask, tissue, label, **kw)

    # aorta: left-anterior of the vertebral bodies, tapering, bifurcating at ~L4 into the iliac arteries
    za = np.linspace(ztop, z_bif, 10)
    ax = pt.off_x + pt.sx * (-14 - 0.03 * (ztop - za))
    aorta = np.stack([ax, pt.spine_y(za) + 33.0, za], 1)
    r_ao = rng.uniform(10.5, 13.0)
    bif = aorta[-1]
    for side in (-1, 1):
        iliac = bif + np.array([[0, 0, 6], [side * 15, 3, -20], [side * 42, 12, -70]])
        paint_tube(iliac, [7, 6.5, 6], "artery", clip=cv.cavity)
    paint_tube(aorta, np.linspace(r_ao, 0.8 * r_ao, 10), "artery", AORTA, clip=cv.cavity)

    # IVC: right of the aorta, moving anterior into the liver's bare area at the top
    zi = np.linspace(zbot, ztop, 12)
    iy = pt.spine_y(zi) + 30.0 + 0.3 * np.clip(zi - 45.0, 0, None)
    ivc = np.stack([pt.off_x + pt.sx * (20 + 0.08 * np.clip(zi - 45.0, 0, None)), iy, zi], 1)
    r_ivc = rng.uniform(9.5, 12.5)
    paint_tube(ivc, np.full(12, r_ivc), "ivc", IVC, clip=cv.cavity)

    # renal veins/arteries (the left vein passes in front of the aorta) and SMA / SMV
    for side in (-1, 1):
        zk = -14 if side > 0 else 0
        paint_tube(
            [
                pt.at(side * 52, -28, zk + 2),
                pt.at(side * 30, -4 if side < 0 else -14, zk + 4),
                pt.at(0, 10, 4) if side < 0 else pt.at(16, -10, zk + 6),
                pt.at(20, -6, 4),
            ],
            [4.5, 4.5, 4.5, 4.5],
            "ivc",
            clip=cv.cavity,
            keep_labels=(AORTA, IVC, PANCREAS),
        )
        paint_tube(
            [pt.at(-14, -12, zk + 8), pt.at(side * 30, -24, zk + 6), pt.at(side * 52, -32, zk + 4)],
            [3.0, 3.0, 3.0],
            "artery",
            clip=cv.cavity,
            keep_labels=(AORTA, IVC),
        )
    paint_tube(
        [pt.at(-14, 8, 12), pt.at(-10, 28, 0), pt.at(-6, 30, -40), pt.at(-2, 28, -90)],
        [4, 4, 3.5, 3],
        "artery",
        clip=cv.cavity,
        keep_labels=(AORTA,),
    )
    paint_tube([pt.at(8, 30, -90), pt.at(8, 32, -40), pt.at(6, 26, 2)], [4.5, 5, 5.5], "portal", clip=cv.cavity)

    # portal and splenic veins: splenic hilum -> behind the pancreas -> confluence -> porta hepatis
    pv = [(-70, -22, 52), (-50, 2, 34), (-22, 18, 18), (4, 20, 8), (26, 12, 26), (44, 10, 44), (56, 6, 54)]
    ctrl = np.array([pt.at(*p) + rng.normal(0, 2, 3) for p in pv])
    paint_tube(ctrl, [5, 5, 5.5, 7, 7.5, 7, 6], "portal", PORTAL_SPLENIC_VEINS, clip=cv.cavity)
    # intrahepatic branches: liver label, portal/hepatic-vein intensity (hypodense without contrast)
    end = ctrl[-1]
    for tip in ((92, -8, 62), (18, 42, 66), (80, 30, 40)):
        paint_tube([end, (end + pt.at(*tip)) / 2, pt.at(*tip)], [5, 3.5, 2.0], "portal", LIVER, only_label=LIVER)
    hv_root = np.array([ivc[-1, 0], float(pt.spine_y(pt.dome)) + 30 + 0.3 * (pt.dome - 45), pt.dome - 8])
    for tip in ((100, 5, 80), (38, 55, 86), (-30, 45, 90)):
        paint_tube(
            [hv_root, (hv_root + pt.at(*tip)) / 2, pt.at(*tip)], [5.5, 4, 2.5], "hepatic_vein", LIVER, only_label=LIVER
        )

    # esophagus: in front of / left of the aorta at the hiatus, joining the stomach's cardia
    ao_top = aorta[0]
    eso = [
        ao_top + np.array([-4, 16, 10]),
        ao_top + np.array([-8, 18, pt.dome - ztop - 5]),
        pt.at(-38, 8, pt.dome - 35),
    ]
    paint_tube(eso, [7.5, 7.5, 8.5], "esophagus", ESOPHAGUS, clip=cv.cavity, keep_labels=(STOMACH, AORTA))


def _paint_bones(cv: _Canvas, pt: _Patient, seed: int) -> None:
    """Spine, ribs and iliac crests, painted last and unlabelled (bone is never an organ)."""
    g = cv.grid
    rng = _rng(seed, "bones")
    cort, marrow = cv.hu["cortical"], cv.hu["marrow"]

    # spine: vertebral bodies (cortex + marrow) separated by discs, canal, arch, spinous/transverse processes
    sl = g.box(np.array([pt.off_x - 60, g.y.min(), g.z.min()]), np.array([pt.off_x + 60, g.y.max(), g.z.max()]))
    if sl is not None:
        xs, ys, zs = g.coords(sl)
        xr = xs - pt.off_x
        yc = pt.spine_y(zs)
        period, disc_h = rng.uniform(31, 36), rng.uniform(7, 10)
        t = np.mod(zs - rng.uniform(0, period), period)
        disc, core = t < disc_h, (t > disc_h + 4) & (t < period - 3)
        grow = 1.0 + 0.0025 * np.clip(-zs, 0, None)
        ax, ay = 22.0 * grow, 16.0 * grow
        rv = np.sqrt((xr / ax) ** 2 + ((ys - yc) / ay) ** 2)
        cy = yc - ay - 9.0
        rc = np.sqrt(xr**2 + (ys - cy) ** 2)
        vb = rv < 1
        cv.paint(sl, vb & ~disc, cort, clip=cv.body)
        cv.paint(sl, (rv < 1 - 2.5 / ay) & ~disc, marrow, clip=cv.body)
        cv.paint(sl, vb & disc, "disc", clip=cv.body)
        arch = (rc < 15.0) & (rc >= 8.5) & ~disc
        spinous = (np.abs(xr) < 4.0) & (ys < cy - 12) & (ys > cy - 34) & core
        transverse = (np.abs(ys - cy - 4) < 4.5) & (np.abs(xr) > 12) & (np.abs(xr) < 44 * np.sqrt(pt.sx)) & core
        cv.paint(sl, arch | spinous | transverse, cort, clip=cv.body)
        cv.paint(sl, rc < 8.5, "csf", clip=cv.body)

    # ribs: flat bars in the wall muscle, high at the spine and sloping down anteriorly; lower ribs are
    # shorter (floating ribs), none crosses the anterior midline (cartilage)
    xr = (g.x - pt.off_x)[:, None]
    yr = (g.y - pt.off_y)[None, :]
    r0 = np.sqrt((xr / pt.a) ** 2 + (yr / pt.b) ** 2)
    theta = np.degrees(np.arctan2(yr / pt.b, xr / pt.a))
    depth = (pt.fat_lat + pt.muscle / 2) / np.sqrt(pt.a * pt.b)
    ring = np.abs(r0 - (1 - depth)) < 0.12
    ix, iy = np.nonzero(ring)
    zsel = g.z > -40
    if ix.size and zsel.any():
        kz = pt.body_scale(g.z[zsel])[None, :]
        dr = (r0[ix, iy][:, None] - (1 - depth) * kz) * np.sqrt(pt.a * pt.b)
        th = theta[ix, iy][:, None]
        front = (1 + np.sin(np.radians(th))) / 2  # 0 at the back, 1 in front
        zz = g.z[zsel][None, :]
        bone = np.zeros(dr.shape, bool)
        inner = np.zeros(dr.shape, bool)
        z_low = rng.uniform(-22, -8)
        for i in range(8):
            zc = z_low + (7 - i) * rng.uniform(26, 30) - rng.uniform(55, 75) * front
            gap = 28 + 14 * (7 - i)  # half-angle of the anterior gap, growing for lower ribs
            ang = np.abs(((th - 90 + 180) % 360) - 180)
            ok = (ang > gap) & (np.abs(th + 90) > 14)
            dz, d = (zz - zc) / 5.5, dr / 4.0
            e = dz**2 + d**2
            bone |= (e < 1) & ok
            inner |= (e < 0.35) & ok
        vol = np.zeros((ix.size, zsel.sum()), np.float32)
        vol[:] = np.where(inner, marrow, cort)
        sub = cv.ct[:, :, zsel]
        lab = cv.labels[:, :, zsel]
        body = cv.body[:, :, zsel]
        sel = bone & body[ix, iy]
        cols = np.nonzero(sel)
        sub[ix[cols[0]], iy[cols[0]], cols[1]] = vol[sel]
        lab[ix[cols[0]], iy[cols[0]], cols[1]] = 0
        cv.ct[:, :, zsel] = sub
        cv.labels[:, :, zsel] = lab

    # iliac crests: curved plates lateral to the psoas at the bottom of the scan
    z_crest = -86.0 + rng.normal(0, 6)
    for side in (-1, 1):
        c = pt.at(side * 62, -30, 0)
        sl = g.box(np.array([c[0] - 70, c[1] - 60, g.z.min()]), np.array([c[0] + 70, c[1] + 70, z_crest]))
        if sl is None:
            continue
        xs, ys, zs = g.coords(sl)
        u, v = side * (xs - c[0]) / (52 * pt.sx), (ys - c[1]) / (42 * pt.sy)
        r = np.sqrt(u**2 + v**2)
        ang = np.degrees(np.arctan2(v, u))
        arc = (ang > -110) & (ang < 70) & (zs < z_crest - 12 * (1 - np.cos(np.radians(ang - 10))))
        plate = (np.abs(r - 1) * 47 < 5.0) & arc
        cv.paint(sl, plate, cort, clip=cv.body)
        cv.paint(sl, (np.abs(r - 1) * 47 < 2.5) & arc, marrow, clip=cv.body)


# ----------------------------------------------------------------------------------------------------------
# public API


def phantom_affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], z_center: float = 5.0
) -> np.ndarray:
    """Voxel -> RAS+ mm affine: positive diagonal, body centred in x/y, scan centred at ``z_center``."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    aff[2, 3] += z_center
    return aff


def generate_phantom(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    voxel_order: Literal["RAS", "LPS"] = "RAS",
) -> Phantom:
    """One abdominal CT phantom, fully determined by ``seed`` (same seed, same arrays)."""
    pt = _draw_patient(seed)
    rng = _rng(seed, "scan")
    z_center = 5.0 + rng.uniform(-15, 15)
    affine = phantom_affine(shape, spacing, z_center)
    grid = _Grid(*((affine[i, 3] + affine[i, i] * np.arange(shape[i])).astype(np.float32) for i in range(3)))
    hu = _tissue_hu(seed, pt.phase)
    cv = _Canvas(grid, hu)

    _paint_body(cv, pt)
    _paint_wall_muscles(cv, pt)
    dome = _paint_lungs_and_heart(cv, pt)
    _paint_bowel(cv, pt, seed)
    _paint_organs(cv, pt, seed, dome)
    _paint_vessels(cv, pt, seed, dome)
    _paint_bones(cv, pt, seed)
    ct = cv.ct

    # soft-tissue texture (a few HU, organ-scale), then blur (partial volume) and correlated noise in one
    # filter: white noise pre-scaled by the kernel's L2 norm comes out with the requested std.
    tex_rng = _rng(seed, "texture")
    small = tuple(max(2, -(-n // 4)) for n in shape)
    tex = ndimage.zoom(_smooth_noise(tex_rng, small, 1.0), [n / s for n, s in zip(shape, small, strict=True)], order=1)
    soft = (ct > -200) & (ct < 300)
    ct += np.where(soft, 4.0 * tex[: shape[0], : shape[1], : shape[2]], 0.0).astype(np.float32)
    lung = (ct < -700) & (ct > -950) & cv.body
    ct += np.where(lung, 25.0 * tex[: shape[0], : shape[1], : shape[2]], 0.0).astype(np.float32)

    noise_sd = float(tex_rng.uniform(10.0, 25.0))
    blur_mm = float(tex_rng.uniform(0.7, 1.3))
    sigma = [blur_mm / s for s in spacing]
    gain = float(np.prod([_kernel_norm(s) for s in sigma]))
    ct += tex_rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sd / gain)
    ct = ndimage.gaussian_filter(ct, sigma, mode="nearest")
    ct_i16 = np.clip(np.rint(ct), HU_MIN, HU_MAX).astype(np.int16)
    labels = cv.labels

    if voxel_order == "LPS":
        ct_i16, labels = ct_i16[::-1, ::-1].copy(), labels[::-1, ::-1].copy()
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
        affine = affine @ flip
    meta = {
        "seed": seed,
        "phase": pt.phase,
        "noise_sd": round(noise_sd, 2),
        "blur_mm": round(blur_mm, 2),
        "body_mm": [round(2 * pt.a, 1), round(2 * pt.b, 1)],
        "hu": {k: round(v, 1) for k, v in hu.items()},
    }
    return Phantom(ct=ct_i16, labels=labels, affine=affine, meta=meta)


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` of a dataset: distinct datasets share no cases."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, index]).generate_state(1)[0])


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def write_phantom_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` phantoms as an MSD-style dataset (imagesTr, labelsTr, dataset.json); returns ``out``.

    ``progress(done, n)`` is called after each case (the CLI drives a progress bar with it).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training, cases = [], []
    t0 = time.perf_counter()
    for i in range(n):
        cid = f"phantom_{i:03d}"
        ph = generate_phantom(case_seed(seed, i), shape, spacing)
        _save_nifti(ph.ct, ph.affine, out / "imagesTr" / f"{cid}.nii.gz")
        _save_nifti(ph.labels, ph.affine, out / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        cases.append({"id": cid, "seed": ph.meta["seed"], "phase": ph.meta["phase"], "noise_sd": ph.meta["noise_sd"]})
        if progress is not None:
            progress(i + 1, n)
    spec = {
        "name": "ASA-CT phantoms",
        "description": "Synthetic abdominal CT phantoms with the 13 BTCV organ labels (HU, RAS+ affine)",
        "reference": "ASA-CT models.data.phantom",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": msd_labels(BTCV_LABELS),
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
        "phantom": {
            "seed": seed,
            "shape": list(shape),
            "spacing": list(spacing),
            "seconds": round(time.perf_counter() - t0, 1),
            "cases": cases,
        },
    }
    (out / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
    return out
