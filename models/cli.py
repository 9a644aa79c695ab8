"""The ``asa`` command line: one thin entry per command; the work lives in the modules it calls."""

from __future__ import annotations

import atexit
import os
import sys
import threading

import typer

from models.allocator import keep_freed_memory
from models.asa import commands as asa_commands
from models.data import commands as data_commands
from models.evaluation import commands as evaluation_commands
from models.export import commands as export_commands
from models.finetune import commands as finetune_commands
from models.inference import commands as inference_commands
from models.io import commands as io_commands

app = typer.Typer(
    name="asa",
    help="ASA-CT: self-supervised pretraining and segmentation for 3D CT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("info")(io_commands.info)
app.command("convert-label")(io_commands.convert_label)
app.command("phantom")(data_commands.phantom)
app.command("sample-data")(io_commands.sample_data)
app.command("pretrain")(asa_commands.pretrain)
app.command("order-map")(asa_commands.order_map)
app.command("pretrain-eval")(asa_commands.pretrain_eval)
app.command("finetune")(finetune_commands.finetune)
app.command("segment")(inference_commands.segment)
app.command("evaluate")(evaluation_commands.evaluate)
app.command("export-bundle")(export_commands.export_bundle)

study_app = typer.Typer(help="Studies built from many runs (label efficiency).", no_args_is_help=True)
study_app.command("label-efficiency")(finetune_commands.study_label_efficiency)
app.add_typer(study_app, name="study")


def exit_code(exc: SystemExit) -> int:
    """The status Python itself would exit with for ``exc`` (a message is printed to stderr, status 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    """The ``asa`` console script: run the command, then end the process without tearing the interpreter down.

    Why: once torch and MONAI are imported, Python's own teardown of their modules takes ~0.75 s
    (``python -c "import monai"``: 0.70 s after the last line; ``bench/inference.py`` times whole processes),
    longer than reading, preprocessing and writing a scan together. When the command has returned, every
    file it wrote is closed; so stdio is flushed, the atexit handlers run (temporary folders, logging), and
    ``os._exit`` ends the process with the command's status. Exceptions other than ``SystemExit``, and
    runs that leave other threads alive, take Python's normal exit. Freed memory stays in the process
    for the next window's tensors (:mod:`models.allocator`).
    """
    keep_freed_memory()
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    if threading.active_count() > 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    main()
