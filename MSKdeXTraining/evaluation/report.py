"""Tables (CSV, Markdown) and a self-contained HTML report with embedded PNG figures, all
written as UTF-8 (headers hold e.g. "×/÷")."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..environment import environment
from ..fileio import write_atomic


@dataclass
class Table:
    """A table: ``header`` names, ``rows`` of values (floats are formatted per column with
    ``digits``; NaN shows as "n/a")."""

    header: list[str]
    rows: list[list]
    caption: str = ""
    digits: dict[str, int] = field(default_factory=dict)

    def cell(self, col: int, value) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            return f"{value:.{self.digits.get(self.header[col], 3)}f}"
        return str(value)

    def formatted(self) -> list[list[str]]:
        return [[self.cell(c, v) for c, v in enumerate(row)] for row in self.rows]


@dataclass
class Section:
    """One report section: a heading, a paragraph, tables and (PNG path, caption) figures."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)


def markdown(table: Table) -> str:
    """The table as GitHub-flavoured Markdown (caption as a bold line above)."""
    lines = [f"**{table.caption}**", ""] if table.caption else []
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in table.formatted()]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, table: Table) -> Path:
    """Write the raw (unformatted) values of ``table`` as CSV, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.header)
    w.writerows(table.rows)
    return write_atomic(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))


def write_markdown(path: str | Path, title: str, sections: list[Section]) -> Path:
    """All tables of ``sections`` in one Markdown file, atomically."""
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n")
        if s.text:
            parts.append(s.text + "\n")
        parts += [markdown(t) for t in s.tables]
        parts += [f"![{cap}]({png.name})\n" for png, cap in s.figures]
    return write_atomic(path, lambda p: p.write_text("\n".join(parts), encoding="utf-8"))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table.formatted())
    cap = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(png: Path, caption: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}caption{font-weight:bold;text-align:left;padding:4px 0}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{font-size:13px;color:#555}"""


def write_html(path: str | Path, title: str, sections: list[Section]) -> Path:
    """A single HTML file (figures embedded as base64 PNG, no external files), atomically."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts += [f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n")]
        parts += [_html_table(t) for t in s.tables]
        parts += [_html_figure(png, cap) for png, cap in s.figures]
    parts.append("</body></html>")
    return write_atomic(path, lambda p: p.write_text("\n".join(parts), encoding="utf-8"))


def environment_section() -> Section:
    """The report's last section: the software and machine that computed it
    (:func:`~MSKdeXTraining.environment.environment`), and where its models' training is recorded."""
    env = environment()
    return Section("Software and machine", "; ".join(f"{k}: {v}" for k, v in env.items())
                   + ". The training of each model is recorded in its run folder (environment.json).")


def agreement_table(object_metrics: list[dict]) -> Table:
    """Per object: the number of cases whose prediction is not finite (left out), then n (cases
    scored), PCC / ICC(2,1) / MAE of mass (g) and of volume (cm3), and n and PCC of the density
    (mass / volume, g/cm3); each PCC followed by its 95 % confidence interval when the metrics
    hold one (``Predictions.object_metrics(intervals=True)``)."""
    intervals = bool(object_metrics) and "pcc_low" in object_metrics[0]["mass"]
    ci = [("PCC low", "pcc_low"), ("PCC high", "pcc_high")] if intervals else []
    columns = {"mass": [("n", "n"), ("PCC", "pcc"), *ci, ("ICC", "icc"), ("MAE (g)", "mae")],
               "volume": [("n", "n"), ("PCC", "pcc"), *ci, ("ICC", "icc"), ("MAE (cm3)", "mae")],
               "density": [("n", "n"), ("PCC", "pcc"), *ci]}
    header = ["object", "kind", "non-finite"] + [f"{q} {label}" for q, cols in columns.items() for label, _ in cols]
    rows = [[m["object"], m["kind"], m["non_finite"]] + [m[q][key] for q, cols in columns.items() for _, key in cols]
            for m in object_metrics]
    return Table(header, rows, "Mass and volume from the predicted DRR sums vs the 3D CT "
                 "(PCC: Pearson; ICC(2,1): two-way random, absolute agreement, single rater; "
                 "non-finite: cases whose predicted mass or volume is NaN or infinite; each quantity "
                 "is scored over its own n cases, those where its prediction and truth are finite; "
                 "density: mass / volume in g/cm3, for a muscle its lean mass per cm3"
                 + ("; PCC low / high: 95 % confidence interval, BCa bootstrap over the patients, n/a with "
                    "fewer than 3 patients or where the PCC is undefined on a resample" if intervals else "") + ")",
                 {"mass MAE (g)": 1, "volume MAE (cm3)": 1} | {f"{q} {label}": 2 for q in columns for label, _ in ci})


def image_table(image_metrics: list[dict]) -> Table:
    """Per aligned bone and DRR type: mean PSNR (dB) and SSIM against the aligned DRR over the
    same n cases."""
    return Table(["bone", "DRR", "n", "PSNR (dB)", "SSIM"],
                 [[m["bone"], m["drr_type"], m["n"], m["psnr"], m["ssim"]] for m in image_metrics],
                 "Bone decomposition vs the aligned bone DRRs (data range of the reference; means over "
                 "the n cases where PSNR and SSIM are both finite: not a failed registration's, nor "
                 "identical images)",
                 {"PSNR (dB)": 1})


def anova_table(rows: list[dict], label_a: str, label_b: str) -> Table:
    """One-way ANOVA of absolute errors of two evaluations, per object (rows of
    :func:`~MSKdeXTraining.evaluation.crossval.anova`)."""
    header = ["object", "n", f"mass MAE {label_a} (g)", f"mass MAE {label_b} (g)", "mass F", "mass p",
              f"volume MAE {label_a} (cm3)", f"volume MAE {label_b} (cm3)", "volume F", "volume p"]
    body = [[r["object"], r["n"], r["mass"]["mae_a"], r["mass"]["mae_b"], r["mass"]["f"], r["mass"]["p"],
             r["volume"]["mae_a"], r["volume"]["mae_b"], r["volume"]["f"], r["volume"]["p"]] for r in rows]
    digits = {h: 1 for h in header if "MAE" in h}
    digits.update({"mass p": 4, "volume p": 4, "mass F": 2, "volume F": 2})
    return Table(header, body, f"One-way ANOVA of absolute errors: {label_a} vs {label_b} (n: common "
                 "cases where both errors of mass and volume are finite)", digits)
