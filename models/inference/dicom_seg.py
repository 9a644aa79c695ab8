"""A DICOM Segmentation object (highdicom) that references the CT series it was computed from.

Why: a DICOM-SEG is how masks go back to PACS and open in OHIF or Slicer next to the source series.
Each frame references the source slice it lies on (by SOPInstanceUID), so the SEG must be built from the
label map in the input's own slice order: ``result.labels[:, :, k]`` is slice ``k`` of
``ct.meta['files']`` (the reader's order along the slice normal), transposed to (row, column).

For an enhanced (multi-frame) CT image the SEG references that one image, frame by frame: ``ct.meta['frames']``
(1-based) says which frame of it each slice of the label map is.

Anonymised series sometimes have blank UIDs (the TotalSegmentator sample does): a SEG cannot reference
a blank UID, so stable substitutes are derived from the file names and the fact is returned as a
warning (the SEG then lines up geometrically but will not link to the study in a PACS).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

import models
from models.inference.segmenter import SegmentationResult
from models.io.reader import CTImage

# organ name -> SNOMED CT concept known to pydicom (laterality is carried by the segment label)
_PROPERTY_TYPES = {
    "spleen": "Spleen", "right kidney": "Kidney", "left kidney": "Kidney", "kidney": "Kidney",
    "gallbladder": "Gallbladder", "esophagus": "Esophagus", "liver": "Liver", "stomach": "Stomach",
    "aorta": "Aorta", "inferior vena cava": "InferiorVenaCava", "portal and splenic veins": "PortalVein",
    "portal vein": "PortalVein", "splenic vein": "SplenicVein", "pancreas": "Pancreas",
    "right adrenal gland": "AdrenalGland", "left adrenal gland": "AdrenalGland", "adrenal gland": "AdrenalGland",
}  # fmt: skip


def property_type(name: str) -> pydicom.sr.coding.Code:
    attr = _PROPERTY_TYPES.get(name.lower().replace("_", " "))
    return getattr(codes.SCT, attr) if attr else codes.SCT.Organ


def read_source_headers(files: list[str]) -> list[Dataset]:
    """Headers of the source slices (no pixels), from files or ``archive.zip!member`` names."""
    out = []
    for name in files:
        if "!" in name and zipfile.is_zipfile(name.split("!", 1)[0]):
            archive, member = name.split("!", 1)
            with zipfile.ZipFile(archive) as zf:
                out.append(pydicom.dcmread(io.BytesIO(zf.read(member)), stop_before_pixels=True))
        else:
            out.append(pydicom.dcmread(name, stop_before_pixels=True))
    return out


def _fill_blank_uids(headers: list[Dataset], sop_uids: list[str], files: list[str]) -> list[str]:
    """Give blank Study/Series/SOP Instance UIDs stable substitutes; return what was substituted."""
    fixed = []
    for h in headers:  # the class is not an identifier of the patient: take the file meta's copy
        if not str(h.get("SOPClassUID", "") or ""):
            meta = getattr(h, "file_meta", Dataset())
            h.SOPClassUID = str(meta.get("MediaStorageSOPClassUID", "") or "") or pydicom.uid.CTImageStorage
    for attr in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not all(str(h.get(attr, "") or "") for h in headers):
            uid = generate_uid(entropy_srcs=[attr, *files])
            for h in headers:
                if not str(h.get(attr, "") or ""):
                    setattr(h, attr, uid)
            fixed.append(attr)
    for k, (h, uid) in enumerate(zip(headers, sop_uids, strict=True)):
        if not str(h.get("SOPInstanceUID", "") or ""):
            # the reader's UID comes from the file meta when the dataset's is blank: the real one
            h.SOPInstanceUID = uid or generate_uid(entropy_srcs=["SOPInstanceUID", files[k]])
            if not uid and "SOPInstanceUID" not in fixed:
                fixed.append("SOPInstanceUID")
    return fixed


# type 2 attributes (present, may be empty) that highdicom copies from the source; some exports omit them
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def _complete_type2(headers: list[Dataset]) -> None:
    """Add the missing type-2 attributes as empty values (what the standard allows when they are unknown)."""
    for h in headers:
        for attr in _TYPE2:
            if attr not in h:
                setattr(h, attr, "")


def source_headers(ct: CTImage, what: str) -> tuple[list[Dataset], list[str]]:
    """The source files' headers, ready to be referenced by a derived object (``what``: "DICOM-SEG", ...).

    One header per file (a multi-frame image: one for all its slices), in slice order; missing type-2
    attributes added empty, blank UIDs substituted (the returned warning says so).
    """
    if ct.meta.get("format") != "dicom":
        raise ValueError(f"a {what} needs a DICOM input series")
    files = list(dict.fromkeys(ct.meta["files"]))  # a multi-frame image: one file for every slice
    sop_uids = list(dict(zip(ct.meta["files"], ct.meta.get("sop_instance_uids", []), strict=False)).values())
    headers = read_source_headers(files)
    _complete_type2(headers)
    fixed = _fill_blank_uids(headers, sop_uids, files)
    warnings = []
    if fixed:
        warnings.append(f"the source series has blank {', '.join(fixed)} (anonymised?): the {what} references "
                        "substitute UIDs, so it lines up with the images but will not link to them in a PACS")
    return headers, warnings


def write_dicom_seg(result: SegmentationResult, path: Path, compress: bool = False) -> list[str]:
    """Write ``result`` as a binary DICOM-SEG at ``path``; returns warnings (empty when all went cleanly).

    One segment per organ that was found (segment numbers 1..N in label-id order; the segment label is the
    organ's name, the colour its display colour). Organs with no voxel get no segment. ``compress`` stores the
    frames as JPEG 2000 (lossless): a 300-slice SEG of 8 organs shrinks from 64 MB to under 2 MB, for viewers
    and archives that decode JPEG 2000 SEGs.
    """
    ct = result.ct
    headers, warnings = source_headers(ct, "DICOM-SEG")
    present = [o for o in result.stats["organs"] if o["voxels"] > 0]
    if not present:
        return [*warnings, "no organ was found: no DICOM-SEG written"]
    lut = np.zeros(256, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ASA-CT Swin UNETR", version=models.__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, organ in enumerate(present, start=1):
        lut[organ["id"]] = number
        info = result.label_info[organ["id"]]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=organ["name"][:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=property_type(organ["name"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*info.color),
        ))
    frames = _source_frames(lut[result.labels].transpose(2, 1, 0), ct.meta.get("frames"), headers)
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ASA-CT",
        manufacturer_model_name="ASA-CT Swin UNETR",
        software_versions=models.__version__,
        device_serial_number="0",
        series_description="ASA-CT segmentation",
        transfer_syntax_uid=JPEG2000Lossless if compress else ExplicitVRLittleEndian,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return warnings


def _source_frames(slices: np.ndarray, frames: list[int | None] | None, headers: list[Dataset]) -> np.ndarray:
    """The (slice, row, column) masks in the order highdicom pairs them with the source: one per source
    slice file, or for a multi-frame source, one per frame of it (frame ``frames[k]`` gets slice ``k``)."""
    if frames is None:
        return np.ascontiguousarray(slices)
    if len(headers) != 1 or None in frames:
        raise ValueError(f"a DICOM-SEG can reference one multi-frame image, and this series has {len(headers)} files")
    out = np.zeros((int(headers[0].NumberOfFrames), *slices.shape[1:]), dtype=slices.dtype)
    out[np.asarray(frames) - 1] = slices
    return out
