"""bench/bench.py, the entry point: --render-only writes the report of a raw file and needs nothing else."""

from __future__ import annotations

import json

import pytest
import report

import bench


def test_render_only_writes_the_report_of_the_raw_file(results, tmp_path):
    raw = tmp_path / "results.json"
    raw.write_text(json.dumps(results))
    out = tmp_path / "RESULTS.md"
    assert bench.main(["--render-only", str(raw), "--output", str(out)]) == 0
    assert out.read_text() == report.render(results)


def test_a_prefix_that_is_not_the_benchs_own_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--prefix", "ff", "--steps", "1"])
    assert exc.value.code == 2
    assert "--prefix must start with bn" in capsys.readouterr().err
