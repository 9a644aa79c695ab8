"""A DICOM RT Structure Set (RTSTRUCT): the organ masks as contours, for radiotherapy planning systems.

Why: treatment planning systems (Eclipse, RayStation, Monaco) and SlicerRT import organs at risk as RTSTRUCT,
not as DICOM-SEG. Each organ becomes one ROI; on every source slice it touches, each boundary of the mask
becomes one closed planar contour in patient coordinates (mm, LPS), referencing that slice.

How the contours are drawn (:func:`slice_contours`): the 0.5 iso-line of the organ's 0/1 mask on the pixel
centres (contourpy's marching squares), with points on straight runs dropped. It passes between every
inside and outside pixel centre, so filling the contours (even-odd: a contour inside another is a hole, as
planning systems read them) gives back exactly the mask's pixels; tests/test_rtstruct.py checks that with a
rasteriser of its own that knows only the slices' DICOM geometry. The contours are marked unapproved
(``ApprovalStatus``), as a model's output should be until a person has reviewed it.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from contourpy import LineType, contour_generator
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from scipy import ndimage

import models
from models.inference.dicom_seg import source_headers
from models.inference.segmenter import SegmentationResult
from models.io.reader import LPS_TO_RAS

__all__ = ["slice_contours", "write_rtstruct"]

_CONTOUR_DATA = Tag("ContourData")
_STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # the class RT objects conventionally reference a study by
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID")  # fmt: skip


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D 0/1 ``mask``: (n, 2) arrays of (axis-0, axis-1) pixel coordinates, unclosed.

    The mask is padded by one pixel so that an organ touching the image edge still gets a closed contour.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    lines = contour_generator(z=padded, line_type=LineType.Separate).lines(0.5)
    contours = []
    for line in lines:  # contourpy gives (x, y) = (axis 1, axis 0); a closed line repeats its first point
        points = np.asarray(line)[:-1, ::-1] - 1.0
        if len(points) >= 3:
            contours.append(_corners(points))
    return contours


def _corners(points: np.ndarray) -> np.ndarray:
    """Drop points in the middle of straight runs (most of a staircase boundary): the same polygon, fewer points."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return points[turns] if turns.sum() >= 3 else points


def _contour(values: np.ndarray, image: Dataset) -> Dataset:
    """One closed planar contour item; ``values`` are its points' x, y, z in mm (LPS), ``image`` the slice's reference.

    ContourData is stored as the bytes it is written as: decimal strings of at most 16 characters (the DS
    limit), to a micrometre, valid by construction. As a parsed value, pydicom would make and check a decimal
    object of every coordinate: 5 of 6 s under the profiler for 300 slices. A raw element is written as it is
    when the item's own encoding (explicit VR little endian, default character set) is the file's.
    """
    text = "\\".join(f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e9 else f"{v:.6g}" for v in values)
    data = text.encode("ascii") + b" " * (len(text) % 2)  # values have an even length
    contour = Dataset()
    contour.set_original_encoding(False, True, default_encoding)
    contour.ContourImageSequence = [image]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = len(values) // 3
    contour[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(data), data, 0, False, True, True, False)
    return contour


def write_rtstruct(result: SegmentationResult, path: Path) -> list[str]:
    """Write ``result``'s organs as an RTSTRUCT at ``path``; returns warnings (empty when all went cleanly).

    One ROI per organ found (ROI numbers are the label ids, names and colours the model's). Slice ``k`` of
    ``result.labels`` is source slice ``k`` of ``ct.meta['files']``; for an enhanced image, frame
    ``ct.meta['frames'][k]`` of its one file.
    """
    ct = result.ct
    headers, warnings = source_headers(ct, "RTSTRUCT")
    present = [o for o in result.stats["organs"] if o["voxels"] > 0]
    if not present:
        return [*warnings, "no organ was found: no RTSTRUCT written"]
    first = headers[0]
    if not str(first.get("FrameOfReferenceUID", "") or ""):  # the contours' coordinates are in that frame
        first.FrameOfReferenceUID = generate_uid(entropy_srcs=["FrameOfReferenceUID", *map(str, ct.meta["files"])])
        warnings.append("the source series has no FrameOfReferenceUID: the RTSTRUCT names a substitute, and a "
                        "planning system may not pair it with the images")
    frames = ct.meta.get("frames")
    images = [_image_ref(headers[0 if frames else k], frames[k] if frames else None) for k in range(ct.source.shape[2])]
    voxel_to_lps = LPS_TO_RAS @ np.asarray(result.affine, dtype=np.float64)

    ds = _header(first)
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(first, images)]
    rois, contours, observations = [], [], []
    boxes = ndimage.find_objects(result.labels)
    for organ in present:
        number, info = organ["id"], result.label_info[organ["id"]]
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = info.name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        item = Dataset()
        item.ROIDisplayColor = list(info.color)
        item.ReferencedROINumber = number
        item.ContourSequence = _organ_contours(result.labels, number, boxes[number - 1], voxel_to_lps, images)
        contours.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return warnings


def _organ_contours(
    labels: np.ndarray, number: int, box: tuple[slice, ...], voxel_to_lps: np.ndarray, images: list[Dataset]
) -> Sequence:
    """The ContourSequence of one organ: every boundary on every slice of its bounding box."""
    items = []
    corner = np.array([box[0].start, box[1].start], dtype=np.float64)
    for k in range(box[2].start, box[2].stop):
        mask = labels[box[0], box[1], k] == number
        for points in slice_contours(mask):
            n = len(points)
            ijk = np.column_stack([points + corner, np.full(n, float(k)), np.ones(n)])
            lps = (ijk @ voxel_to_lps.T)[:, :3]
            items.append(_contour(lps.ravel(), images[k]))
    return Sequence(items)


def _image_ref(header: Dataset, frame: int | None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    return ref


def _frame_of_reference(first: Dataset, images: list[Dataset]) -> Dataset:
    """Frame of reference -> study -> series -> every image the contours may lie on."""
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = list({(i.ReferencedSOPInstanceUID, i.get("ReferencedFrameNumber")): i
                                        for i in images}.values())  # fmt: skip
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _header(first: Dataset) -> Dataset:
    """Patient, study, RT series, equipment, structure set, approval and SOP common modules."""
    now = datetime.datetime.now()
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.SeriesDescription = "ASA-CT contours"
    ds.OperatorsName = ""
    ds.Manufacturer = "ASA-CT"
    ds.ManufacturerModelName = "ASA-CT Swin UNETR"
    ds.SoftwareVersions = models.__version__
    ds.InstanceNumber = 1
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.StructureSetLabel = "ASA-CT"
    ds.ApprovalStatus = "UNAPPROVED"
    return ds
