"""``soaktop report RECORD [RECORD ...]``: the page (and ``--png``/``--svg`` images) of records.

Reading is the long part (a record is read once, into per-second series and the summary);
drawing is bounded by the run's seconds, not its tokens. Nothing here imports textual, so
the command starts as fast as ``summary`` does; matplotlib is imported only once records
have been read, with its non-interactive backend (no display needed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from soaktop.engine.errors import SoaktopError
from soaktop.tui.report.series import RecordSeries, read_series

_RECORD_SUFFIXES = (".gz", ".jsonl", ".json")


@dataclass(frozen=True)
class Written:
    page: Path
    images: tuple[Path, ...]
    page_bytes: int


def default_output(records: list[Path]) -> Path:
    """Beside the first record: ``run.jsonl.gz`` gives ``run.html``; an overlay
    ``run-vs-other.html``."""
    def stem(path: Path) -> str:
        name = path.name
        while any(name.endswith(s) for s in _RECORD_SUFFIXES):
            name = name[: name.rindex(".")]
        return name or "record"

    name = "-vs-".join(stem(p) for p in records[:3]) + ("-etc" if len(records) > 3 else "")
    return records[0].parent / f"{name}.html"


def write_report(series: list[RecordSeries], out: Path | None,
                 png_dir: Path | None = None, svg_dir: Path | None = None) -> Written:
    """Draw ``series`` (one record, or several overlaid) into the page at ``out`` and, where
    asked, one image a chart in ``png_dir``/``svg_dir``. ``out`` None: no page."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a report is drawn the same on a headless box
    from soaktop.tui.report.charts import all_charts
    from soaktop.tui.report.page import render

    charts = all_charts(series)
    images = []
    for folder, fmt in ((png_dir, "png"), (svg_dir, "svg")):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SoaktopError(f"cannot make folder {folder}: {exc.strerror}") from None
        for chart in charts:
            path = folder / f"{chart.key}.{fmt}"
            try:
                chart.save(path, fmt)
            except OSError as exc:
                raise SoaktopError(f"cannot write {path}: {exc.strerror}") from None
            images.append(path)
    size = 0
    if out is not None:
        data = render(series, charts).encode("utf-8")
        _write_atomically(out, data)
        size = len(data)
    for chart in charts:
        chart.figure.clear()
    return Written(out, tuple(images), size)


def _write_atomically(path: Path, data: bytes) -> None:
    """The page appears whole or not at all (a browser open on the old one never sees half)."""
    if not path.name or path.name in (".", ".."):  # "-o ''", "-o .": a folder, no file name
        raise SoaktopError(f"cannot write {path}: a folder, not a page's file name")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # its folder may be missing or a file
            temporary.unlink(missing_ok=True)
        raise SoaktopError(f"cannot write {path}: {exc.strerror}") from None


def report(args: argparse.Namespace) -> Written:
    """The CLI's ``report``: read each record, write the page (and images), say where."""
    paths: list[Path] = args.records
    out = args.output if args.output is not None else default_output(paths)
    if any(out.resolve() == p.resolve() for p in paths):  # before the long read, not after
        raise SoaktopError(f"{out} is a record of this report: the page would overwrite it")
    series = []
    for path in paths:
        one = read_series(path)  # a RecordError (no such file, not a record) is one line
        for warning in one.warnings:
            print(f"soaktop: warning: {path}: {warning}", file=sys.stderr)
        series.append(one)
    written = write_report(series, out, args.png, args.svg)
    print(f"soaktop: report written to {written.page} ({written.page_bytes / 1e6:.1f} MB)")
    if written.images:
        folders = sorted({str(p.parent) for p in written.images})
        print(f"soaktop: {len(written.images)} images written to {', '.join(folders)}")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", type=Path, nargs="+", metavar="RECORD",
                        help="a session record; several are overlaid, one colour each, with "
                        "the compare table")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="PATH",
                        help="the page to write (default: beside the first record, its name "
                        "with .html)")
    parser.add_argument("--png", type=Path, default=None, metavar="DIR",
                        help="also write each chart as a PNG image in DIR")
    parser.add_argument("--svg", type=Path, default=None, metavar="DIR",
                        help="also write each chart as an SVG image in DIR")
