"""CLI: ``asa info``, ``asa convert-label`` and ``asa sample-data`` (thin wrappers; the work is in
reader/info/sample and the label readers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from models.cli_errors import fail
from models.io.info import describe
from models.io.reader import CTReadError, load_ct, load_label


def info(
    input: Annotated[Path, typer.Argument(help="NIfTI/NRRD/MHA file, DICOM folder, .zip or DICOM file")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    series: Annotated[str | None, typer.Option("--series", help="DICOM SeriesInstanceUID to load")] = None,
) -> None:
    """Show what the reader sees in a scan: grid, orientation, HU range, series, warnings."""
    try:
        ct = load_ct(input, series_uid=series)
    except CTReadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    report = describe(ct)
    if json_out:
        typer.echo(json.dumps(report))
        return
    typer.echo(_format_text(report))


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def _dims(shape: list[int]) -> str:
    return " x ".join(str(s) for s in shape)


def _format_text(r: dict[str, Any]) -> str:
    hu = r["hu"]
    lines = [
        f"path:         {r['path']}",
        f"format:       {r['format']}",
        f"shape:        {_dims(r['shape'])}  (source {_dims(r['source_shape'])})",
        f"spacing (mm): {' x '.join(f'{s:.4g}' for s in r['spacing'])}",
        f"orientation:  {r['orientation']} (source {r['source_orientation']})",
        f"HU:           min {_fmt(hu['min'])}  p1 {_fmt(hu['p1'])}  p99 {_fmt(hu['p99'])}  max {_fmt(hu['max'])}",
    ]
    if "series" in r:
        s = r["series"]
        lines.append(f"series:       {s['uid'] or '<no SeriesInstanceUID>'} '{s['description']}' {s['modality']} "
                     f"n={s['n']}")
        for o in r.get("other_series", []):
            lines.append(f"  other:      {o['uid'] or '<none>'} '{o['description']}' {o['modality']} n={o['n']}")
    for w in r["warnings"]:
        lines.append(f"warning:      {w}")
    return "\n".join(lines)


def convert_label(
    scan: Annotated[Path, typer.Argument(help="the scan the label belongs to: NIfTI/NRRD/MHA, DICOM folder or .zip")],
    label: Annotated[Path, typer.Argument(help="DICOM-SEG, RTSTRUCT, or a NIfTI/NRRD/MHA label map")],
    out: Annotated[Path, typer.Option("--out", help="label NIfTI to write (.nii.gz)")],
    names: Annotated[str | None, typer.Option("--names", help="label ids: dataset.json (MSD, nnU-Net), a JSON/YAML "
                                              "{id: name}, or names in order 'liver,spleen' (default: BTCV)")] = None,
    series: Annotated[str | None, typer.Option("--series", help="DICOM SeriesInstanceUID of the scan")] = None,
) -> None:
    """Write a DICOM-SEG's or RTSTRUCT's organs as a label NIfTI on the scan's own grid (nnU-Net, MONAI, viewers).

    Segments and ROIs become the ids of ``--names`` whose names they carry; the NIfTI has the scan's shape and
    affine (for DICOM, its slice order), so it overlays the scan in any viewer.
    """
    import numpy as np

    from models.inference.writers import save_label_nifti
    from models.io.label_names import parse_label_names
    from models.modeldir import labels_from_names

    try:
        label_names = parse_label_names(names)
        if max(label_names, default=0) > 255:
            raise ValueError(f"label ids above 255 ({max(label_names)}) do not fit the uint8 label NIfTI")
        ct = load_ct(scan, series_uid=series)
        labels = load_label(label, like=ct, names=label_names)
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"{label}: label ids {labels.min()}..{labels.max()} do not fit the uint8 label NIfTI")
    except (CTReadError, ValueError) as exc:
        fail(str(exc))
    infos = labels_from_names({0: "background", **label_names})
    legend = {"format": "asa-ct-labels/1",
              "labels": {str(i): {"name": v.name, "color": list(v.color)} for i, v in infos.items()}}  # fmt: skip
    save_label_nifti(ct.to_source(labels), ct.source.affine, out, legend, forms=ct.meta.get("nifti_forms"))
    ids, counts = np.unique(labels, return_counts=True)
    found = {label_names.get(int(i), f"label {int(i)}"): int(n) for i, n in zip(ids, counts, strict=True) if i != 0}
    typer.echo(json.dumps({"out": str(out), "shape": list(ct.source.shape), "voxels": found}))


def sample_data(
    out: Annotated[Path | None, typer.Option("--out", help="folder (default: $ASA_CACHE_DIR/sample or "
                                                         "~/.cache/asa-ct/sample)")] = None,
) -> None:
    """Fetch the real CT sample (TotalSegmentator reference files) once and print its folder."""
    from models.data.sample import fetch_sample_data

    typer.echo(str(fetch_sample_data(out)))
