"""The decomposition table, the per-object result of :mod:`MSKdeXTraining.inference`: its
columns, format and CSV form. Needs neither torch nor SimpleITK, so the Slicer module can
describe and write the table before the backend's heavy dependencies are installed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .fileio import write_atomic

#: ``format`` and ``version`` of ``decomposition.json`` (docs/formats.md).
TABLE_FORMAT = "mskdex-decomposition"
TABLE_VERSION = 3  # 3 (0.3.14): no TTA SD (null) with one augmentation; 2 wrote 0

#: Columns of the decomposition table (CSV header, JSON ``objects`` keys; units in the names):
#: value, calibrated interval (low, high; empty without calibration) and TTA SD.
TABLE_COLUMNS = ("object", "kind", "volume_cm3", "volume_low_cm3", "volume_high_cm3", "volume_sd_cm3",
                 "mass_g", "mass_low_g", "mass_high_g", "mass_sd_g")


def write_table_csv(rows: list[dict], path: str | Path, ood: bool) -> Path:
    """The decomposition table as CSV (:data:`TABLE_COLUMNS` and the radiograph's OOD flag, 0/1,
    per row; None or NaN is written empty), atomically."""
    return write_tables_csv([({}, rows, ood)], path)


def write_tables_csv(tables: list[tuple[dict, list[dict], bool]], path: str | Path) -> Path:
    """Several radiographs' tables in one CSV, atomically: per table (leading columns, e.g. the
    radiograph's name, the same keys for each; its rows; its OOD flag), one line per row with
    the leading columns, :data:`TABLE_COLUMNS` and the OOD flag (0/1; None or NaN written empty)."""
    leading = list(tables[0][0]) if tables else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*leading, *TABLE_COLUMNS, "ood"], lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    for first, rows, ood in tables:
        for row in rows:
            w.writerow({**first, **{k: ("" if row[k] is None or row[k] != row[k] else row[k]) for k in TABLE_COLUMNS},
                        "ood": int(ood)})
    return write_atomic(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))
