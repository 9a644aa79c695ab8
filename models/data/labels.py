"""BTCV multi-organ label ids, names and display colours.

The 13 abdominal organs of the Beyond-the-Cranial-Vault (BTCV, MICCAI 2015) challenge are the label
set of Swin UNETR's segmentation benchmark, so the phantoms use the same ids: a model fine-tuned on the
phantoms can be evaluated on BTCV without any remapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

BACKGROUND = 0
SPLEEN = 1
RIGHT_KIDNEY = 2
LEFT_KIDNEY = 3
GALLBLADDER = 4
ESOPHAGUS = 5
LIVER = 6
STOMACH = 7
AORTA = 8
IVC = 9
PORTAL_SPLENIC_VEINS = 10
PANCREAS = 11
RIGHT_ADRENAL = 12
LEFT_ADRENAL = 13

BTCV_LABELS: dict[int, str] = {
    SPLEEN: "spleen",
    RIGHT_KIDNEY: "right kidney",
    LEFT_KIDNEY: "left kidney",
    GALLBLADDER: "gallbladder",
    ESOPHAGUS: "esophagus",
    LIVER: "liver",
    STOMACH: "stomach",
    AORTA: "aorta",
    IVC: "inferior vena cava",
    PORTAL_SPLENIC_VEINS: "portal and splenic veins",
    PANCREAS: "pancreas",
    RIGHT_ADRENAL: "right adrenal gland",
    LEFT_ADRENAL: "left adrenal gland",
}
"""Organ id -> name (background, id 0, is not listed: it is not an organ)."""

# Colours follow the usual radiology / 3D Slicer look (liver brown, spleen purple, kidneys yellow,
# arteries red, veins blue) so overlays read at a glance; every colour is distinct.
BTCV_COLORS: dict[int, tuple[int, int, int]] = {
    BACKGROUND: (0, 0, 0),
    SPLEEN: (157, 108, 162),
    RIGHT_KIDNEY: (212, 188, 70),
    LEFT_KIDNEY: (245, 222, 140),
    GALLBLADDER: (139, 170, 80),
    ESOPHAGUS: (211, 171, 143),
    LIVER: (166, 96, 62),
    STOMACH: (255, 160, 160),
    AORTA: (224, 40, 40),
    IVC: (40, 70, 200),
    PORTAL_SPLENIC_VEINS: (90, 180, 235),
    PANCREAS: (249, 170, 70),
    RIGHT_ADRENAL: (120, 200, 150),
    LEFT_ADRENAL: (60, 140, 110),
}
"""Label id -> RGB (0-255), background included."""


def msd_labels(labels: dict[int, str] | None = None) -> dict[str, str]:
    """The ``labels`` entry of an MSD ``dataset.json``: string ids, background included."""
    names = BTCV_LABELS if labels is None else labels
    return {"0": "background", **{str(k): v for k, v in sorted(names.items()) if k != BACKGROUND}}


PORTAL_VENOUS_HU: dict[str, float] = {
    "spleen": 70.0,
    "right kidney": 120.0,
    "left kidney": 120.0,
    "gallbladder": 0.0,
    "esophagus": 30.0,
    "liver": 60.0,
    "stomach": 30.0,
    "aorta": 150.0,
    "inferior vena cava": 110.0,
    "portal and splenic veins": 140.0,
    "pancreas": 60.0,
    "right adrenal gland": 40.0,
    "left adrenal gland": 40.0,
}
"""Typical rise in HU of each BTCV organ from a native scan to the portal-venous phase (the phase most
abdominal CT is read in): parenchyma enhances by tens of HU, vessels by over a hundred, bile not at all.
Round figures from the radiology literature; they set the *range* :class:`models.data.transforms.RandContrastPhased`
draws from."""


def normalise_organ_name(name: str) -> str:
    """Case, spaces, underscores and hyphens do not matter: 'Right_Kidney' == 'right kidney'."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


TG263_NAMES: dict[str, str] = {
    "A_Aorta": "aorta",
    "V_Venacava_I": "inferior vena cava",
    "Glnd_Adrenal_R": "right adrenal gland",
    "Glnd_Adrenal_L": "left adrenal gland",
    "Kidney_R": "right kidney",
    "Kidney_L": "left kidney",
}
"""The BTCV organs' names in AAPM TG-263 (radiotherapy structure naming) where they differ by more than case,
spacing and side: what structure sets from treatment planning systems call them."""

TOTALSEGMENTATOR_NAMES: dict[str, str] = {"portal_vein_and_splenic_vein": "portal and splenic veins"}
"""The BTCV organs' names in TotalSegmentator's class list where word order and sides are not the only
difference (its DICOM-SEGs label segments so)."""

_SIDES = {"r": "right", "rt": "right", "l": "left", "lt": "left"}
_SYNONYMS = {normalise_organ_name(k): v for k, v in {**TG263_NAMES, **TOTALSEGMENTATOR_NAMES}.items()}


def organ_key(name: str) -> tuple[str, ...]:
    """The words of an organ's name, free of case, word order, side abbreviations and TG-263 spelling.

    'Kidney_R', 'kidney right' and 'Right Kidney' share one key, as do 'A_Aorta' and 'aorta' (TG-263) or
    'adrenal_gland_left' and 'left adrenal gland' (TotalSegmentator): what names from other tools (DICOM-SEG
    segments, RTSTRUCT ROIs) are matched to a label set by.
    """
    plain = normalise_organ_name(name)
    words = normalise_organ_name(_SYNONYMS.get(plain, plain)).split()
    return tuple(sorted(_SIDES.get(w, w) for w in words))


def match_labels(candidates: Mapping[int, Sequence[str]], names: Mapping[int, str]) -> dict[int, int | None]:
    """Item (a segment, a ROI) -> the label id the first of its candidate names matches by :func:`organ_key`, or None.

    ``names`` is label id -> name; id 0 (background) is never matched.
    """
    by_key = {organ_key(name): i for i, name in names.items() if i != 0}
    return {
        item: next((by_key[organ_key(n)] for n in options if organ_key(n) in by_key), None)
        for item, options in candidates.items()
    }
