"""CLI: ``asa segment INPUT... --model RUN --out DIR``. Thin: parse, load the model once, loop, report.

Exit codes: 0 all inputs segmented; 2 a usage problem (model directory, organ name, device, option) or
an unreadable input; 1 an input failed for another reason. With several inputs a failing one is
reported and the others still run; the exit code says that something failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from pydantic import ValidationError

from models.cli_errors import fail

SCAN_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # the reader's volume formats
INPUT_SUFFIXES = (*SCAN_FILE_SUFFIXES, ".zip", ".dcm")


def input_name(src: str) -> str:
    """Output sub-folder name of one input: the file or folder name without its scan suffix."""
    name = Path(src.lstrip("@")).name
    for suffix in (*INPUT_SUFFIXES, ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "scan"


def resolve_input(src: str) -> str | list[Path]:
    """``@files.txt`` is a DICOM file list (one path per line, relative to the list); anything else a path."""
    if not src.startswith("@"):
        return src
    listing = Path(src[1:])
    lines = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [p if p.is_absolute() else listing.parent / p for p in map(Path, lines)]


def _is_scan_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower().endswith(SCAN_FILE_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    """The DICOM Part 10 magic: ``DICM`` after a 128-byte preamble."""
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def expand_folders(inputs: list[str]) -> list[str]:
    """A folder that holds scan files (NIfTI, NRRD, MetaImage) stands for those scans, in name order.

    So ``asa segment scans/`` segments each scan, as ``asa segment scans/*.nii.gz`` would (nnU-Net's
    habit). Any other folder stays one input, a DICOM series searched recursively. A folder that holds
    both is refused: which of the two was meant cannot be told, and guessing would segment the wrong scan.
    """
    expanded = []
    for src in inputs:
        folder = Path(src)
        scans = sorted(p for p in folder.iterdir() if p.is_file() and _is_scan_file(p)) if folder.is_dir() else []
        if not scans:
            expanded.append(src)
            continue
        dicom = next((p for p in folder.rglob("*") if p.is_file() and not _is_scan_file(p) and _is_dicom_file(p)),
                     None)
        if dicom is not None:
            raise ValueError(f"{folder} holds scan files ({scans[0].name}...) and DICOM files ({dicom}): give the "
                             "scan files or a folder with the DICOM series alone")
        expanded.extend(str(p) for p in scans)
    return expanded


def output_dirs(inputs: list[str], out: Path) -> list[Path]:
    """One input: ``out`` itself. Several: ``out/<name>`` per input (``name-2``... when names repeat)."""
    if len(inputs) == 1:
        return [out]
    seen: dict[str, int] = {}
    dirs = []
    for src in inputs:
        name = input_name(src)
        seen[name] = seen.get(name, 0) + 1
        dirs.append(out / (name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return dirs


def segment(
    inputs: list[str] = typer.Argument(..., help="scans: NIfTI/NRRD/MHA files or folders of them, DICOM folders or "
                                       ".zip, @list.txt (a DICOM file list, one path per line)"),
    model: Path = typer.Option(..., "--model", help="model directory (model.json + model.pt, from asa finetune)"),
    out: Path = typer.Option(..., "--out", help="output folder (one sub-folder per input when several are given)"),
    organs: str | None = typer.Option(None, "--organs", help="only these labels, e.g. liver,spleen (runs near them)"),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)"),
    fast: bool = typer.Option(False, "--fast", help="2x the model's spacing: ~8x fewer voxels, coarser masks"),
    tta: bool = typer.Option(False, "--tta", help="test-time mirroring on the 3 axes, averaged (4 passes)"),
    overlap: float = typer.Option(0.5, "--overlap", help="sliding-window overlap in [0, 1)"),
    split: bool = typer.Option(False, "--split", help="also one NIfTI mask per organ (organs/NAME.nii.gz)"),
    no_dicom_seg: bool = typer.Option(False, "--no-dicom-seg", help="no DICOM-SEG for DICOM input"),
    rtstruct: bool = typer.Option(False, "--rtstruct", help="also an RT Structure Set (contours) for DICOM input"),
    compress_dicom_seg: bool = typer.Option(False, "--compress-dicom-seg", help="DICOM-SEG frames as JPEG 2000 "
                                            "(lossless, ~40x smaller; the viewer must decode JPEG 2000)"),
    fast_path: bool = typer.Option(True, "--fast-path/--fp32", help="SDPA attention (cached bias) or MONAI's default"),
    bf16: bool = typer.Option(False, "--bf16/--no-bf16", help="bf16 autocast (faster where the CPU has AMX or "
                              "AVX512-BF16, masks less exact)"),
    sw_batch_size: int | None = typer.Option(None, "--sw-batch-size", help="windows per pass (default: from memory)"),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="write preview.png"),
) -> None:
    """Segment CT scans with a finetuned model; masks, DICOM-SEG, stats and a report in each input's own space."""
    from models.io.read_ahead import ReadAhead
    from models.io.reader import CTReadError, load_ct

    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: give a folder (it is created when missing)")
    try:
        inputs = expand_folders(inputs)
    except (ValueError, OSError) as exc:
        fail(str(exc))

    # the first scan is read while torch, MONAI and the model load (models.io.read_ahead), the next
    # one while the current one is segmented
    with ReadAhead(inputs, lambda src: load_ct(resolve_input(src))) as reads:
        from models.monai_import import import_monai

        import_monai()  # without the plotting libraries MONAI would load for nothing (models.monai_import)
        from models.inference.options import SegmentOptions, parse_organ_list
        from models.inference.segmenter import ModelDirError, Segmenter
        from models.inference.writers import write_outputs

        try:
            options = SegmentOptions(overlap=overlap, fast=fast, organs=parse_organ_list(organs), tta=tta,
                                     fast_path=fast_path, bf16=bf16, sw_batch_size=sw_batch_size)
        except ValidationError as exc:
            fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            return
        try:
            segmenter = Segmenter.from_model_dir(model, device=device, options=options)
        except (ModelDirError, ValueError) as exc:
            fail(str(exc))
            return

        code = 0
        summary = []
        for read, dest in zip(reads, output_dirs(inputs, out), strict=True):
            src = read.source
            try:
                ct, read_s, waited_s = read.result()
                result = segmenter.segment(ct)
                result.timings["load"] = waited_s  # the part of the read this run waited for
                result.info["read_s"] = round(read_s, 3)  # the whole read, most of it behind other work
                write_outputs(result, dest, split=split, dicom_seg=not no_dicom_seg, rtstruct=rtstruct,
                              preview=preview, compress_dicom_seg=compress_dicom_seg)
            except (CTReadError, OSError) as exc:
                typer.echo(f"error: {src}: {exc}", err=True)
                summary.append({"input": src, "status": "error", "error": str(exc)})
                code = max(code, 2)
                continue
            except Exception as exc:  # one broken scan must not lose the others' results
                typer.echo(f"error: {src}: {type(exc).__name__}: {exc}", err=True)
                summary.append({"input": src, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
                code = max(code, 1)
                continue
            found = [o["name"] for o in result.stats["organs"] if o["voxels"]]
            total = sum(result.timings.values())
            typer.echo(f"{src} -> {dest}  ({len(found)} organ(s), {total:.1f} s)")
            for warning in result.warnings:
                typer.echo(f"warning: {src}: {warning}", err=True)
            summary.append({"input": src, "status": "ok", "out": str(dest), "organs_found": found,
                            "seconds": round(total, 3)})
        if len(inputs) > 1:
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if code:
            failed = sum(s["status"] == "error" for s in summary)
            typer.echo(f"{failed} of {len(inputs)} input(s) failed", err=True)
            raise typer.Exit(code=code)
