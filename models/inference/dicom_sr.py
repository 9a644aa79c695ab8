"""Organ volumes and densities as a DICOM Structured Report (TID 1500 measurement report) beside the DICOM-SEG.

Why: ``stats.json`` and ``stats.csv`` do not go back to a PACS, and clinicians want the per-organ figures where
the images and masks are. A TID 1500 report is the standard carrier (what OHIF and the quantitative imaging
tools read): one volumetric measurement group per organ, tracked by the organ's name, pointing at its segment
in the DICOM-SEG, with the volume (mL) and the mean and standard deviation of its HU, the same figures as
``stats.json``. It references the SEG, so it is written only with one (highdicom builds and checks it).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import models
from models.inference.dicom_seg import property_type
from models.inference.segmenter import SegmentationResult

__all__ = ["write_measurement_report"]

MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")


def _algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="ASA-CT Swin UNETR", version=models.__version__)


def _measurements(organ: dict) -> list[hd.sr.Measurement]:
    """Volume always; mean and spread of the HU where the organ has voxels (they are None otherwise)."""
    out = [hd.sr.Measurement(name=codes.SCT.Volume, value=float(organ["volume_ml"]), unit=MILLILITER)]
    for value, derivation in ((organ["hu_mean"], codes.SCT.Mean), (organ["hu_std"], codes.SCT.StandardDeviation)):
        if value is not None:
            out.append(hd.sr.Measurement(name=codes.DCM.AttenuationCoefficient, value=float(value),
                                         unit=codes.UCUM.HounsfieldUnit, derivation=derivation))  # fmt: skip
    return out


def write_measurement_report(result: SegmentationResult, seg_path: Path, path: Path) -> list[str]:
    """Write the organs' figures as a Comprehensive 3D SR at ``path``, referencing the DICOM-SEG at ``seg_path``.

    Organs are paired with the SEG's segments by name (the SEG writer labels each segment with its organ).
    Returns warnings (none when all went cleanly).
    """
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    # the series the SEG references (the source's own UID, or the substitute the SEG had to give a blank one)
    source_series = hd.sr.SourceSeriesForSegmentation(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    groups = []
    for organ in result.stats["organs"]:
        number = numbers.get(organ["name"][:64])
        if number is None or not organ["voxels"]:
            continue
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=organ["name"]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=source_series,
            ),
            finding_type=property_type(organ["name"]),
            algorithm_id=_algorithm(),
            measurements=_measurements(organ),
        ))  # fmt: skip
    if not groups:
        return ["no organ of the DICOM-SEG to report: no measurement report written"]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="ASA-CT", manufacturer_name="ASA-CT", model_name="ASA-CT Swin UNETR"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=generate_uid(), series_number=9903,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="ASA-CT", is_complete=True,
        series_description="ASA-CT organ measurements",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return []
