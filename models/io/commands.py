"""CLI: ``asa info`` and ``asa sample-data`` (thin wrappers; the work is in reader/info/sample)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from models.io.info import describe
from models.io.reader import CTReadError, load_ct


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


def sample_data(
    out: Annotated[Path | None, typer.Option("--out", help="folder (default: $ASA_CACHE_DIR/sample or "
                                                         "~/.cache/asa-ct/sample)")] = None,
) -> None:
    """Fetch the real CT sample (TotalSegmentator reference files) once and print its folder."""
    from models.data.sample import fetch_sample_data

    typer.echo(str(fetch_sample_data(out)))
