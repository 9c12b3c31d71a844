"""`python -m mcprt bench --quick` runs to the end and prints every row with a number and a ratio."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from mcprt.bench import ROWS
from support import ROOT

NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")


def cells(stdout: str, name: str, title: str) -> list[str]:
    """The cells after the title on the table line of row `name`: value, unit, p50, p99, bare, ratio, ..."""
    for line in stdout.splitlines():
        if line.startswith(name + " ") and title in line:
            return line.split(title, 1)[1].split()
    raise AssertionError(f"no row {name} in:\n{stdout}")


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_quick_bench_prints_every_row(tmp_path):
    svg = tmp_path / "bench.svg"
    result = subprocess.run([sys.executable, "-m", "mcprt", "bench", "--quick", "--json", "--chart", str(svg)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mcprt bench (quick run): ") and "Tornado" in lines[0] and "cores" in lines[0]
    report = json.loads(lines[-1])
    assert [r["name"] for r in report["rows"]] == [row.name for rows in ROWS.values() for row in rows]
    for row in report["rows"]:
        assert math.isfinite(row["value"]) and math.isfinite(row["ratio"]), row
        assert row["errors"] == 0 and row["met"] in (True, False, None), row
        value, unit, p50, p99, bare, ratio, *rest = cells(result.stdout, row["name"], row["title"])
        assert NUMBER.match(value) and unit == row["unit"] and NUMBER.match(bare), (row["name"], value, bare)
        assert re.match(r"^(\d+\.\d\d|\de-\d\d)x$", ratio), (row["name"], ratio)
        assert rest[-1] in ("PASS", "MISS", "-"), (row["name"], rest)
    import xml.etree.ElementTree as ET
    drawn = ET.parse(svg).getroot()
    bars = [e for e in drawn.iter() if e.tag.endswith("rect")]
    assert len(bars) == len(report["rows"]) and "\x1b" not in result.stdout  # no colour into a pipe


def test_bench_refuses_unknown_names(capsys):
    from mcprt.bench import run_bench
    assert run_bench(quick=True, only=["nonsense"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("columns", [None, 200, 153, 140, 127, 120, 110, 108])
def test_the_table_fits_the_terminal_and_marks_what_it_cut(columns):
    from mcprt.bench import Layout
    row = {"name": "edits_1", "title": "edits acked, 1 conn, 200 B, 1 in flight", "value": 1454.0, "unit": "edit/s",
           "p50_ms": 0.6, "p99_ms": 2.2, "bare": 5264.0, "ratio": 0.28, "server_cpu": 97, "bare_cpu": 97,
           "target": ">=50% bare", "met": False, "errors": 0}
    layout = Layout.fitting(columns)
    header, line = layout.header(), layout.row(row)
    if columns is None:
        long = {**row, "title": "a title longer than the column, printed whole into a pipe"}
        assert layout == Layout() and long["title"] in layout.row(long)
    if columns is None or columns >= len(Layout().header()):
        assert row["title"] in line and "2.20" in line and "97/97" in line
    else:
        assert len(header) <= columns and len(line) <= columns
        assert ("…" in line) == (layout.measures < len(row["title"]))
    assert line.startswith("edits_1 ") and line.endswith("MISS") and "0.28x" in line
