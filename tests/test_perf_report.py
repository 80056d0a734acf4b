"""perf/README.md's figures come from the results files: rendered by perf/report.py, checked for drift."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from perf import report, tables
from perf.common import ENVELOPE_KEYS, MACHINE_KEYS, MACHINE_OPTIONAL_KEYS, BenchRun, envelope, write_results

pytestmark = pytest.mark.build


def test_the_committed_figures_are_what_the_results_files_say():
    assert report.main(["--check"]) == 0, "perf/README.md is stale: run python -m perf.report"


def test_a_changed_results_file_changes_the_figures(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report.RESULTS, results)
    text = report.README.read_text()
    assert report.render(text, results) == text
    path = results / "librechat-search-cpu.json"
    data = json.loads(path.read_text())
    data["summary"]["fallbacks"] = 7
    path.write_text(json.dumps(data))
    changed = report.render(text, results)
    assert changed != text
    assert "50 calls: 7 fell back" in changed


def test_every_block_names_a_known_renderer():
    names = [match["name"] for match in report.BLOCK.finditer(report.README.read_text())]
    assert sorted(set(names)) == sorted(report.RENDERERS)
    with pytest.raises(KeyError, match="no renderer"):
        report.render("<!-- figures: nonsense -->\n<!-- end figures -->")


def test_every_results_file_has_the_envelope_and_a_block():
    """Each committed results file starts as perf.common.envelope writes it, and perf/README.md renders it."""
    files = sorted(path.name for path in report.RESULTS.glob("*.json"))
    assert files == sorted(filename for filename, _ in report.RENDERERS.values())
    for name in files:
        results = json.loads((report.RESULTS / name).read_text())
        assert set(ENVELOPE_KEYS) <= set(results), name
        assert set(MACHINE_KEYS) <= set(results["machine"]), name
        assert set(results["revision"]) >= {"commit", "dirty"}, name


def test_the_envelope_is_what_the_block_says_under_its_figures(tmp_path):
    started = time.time()
    head = envelope("python -m perf.example --mode full", started, (0.5, 0.4, 0.3), more_machine={"gpu": {}})
    assert list(head) == list(ENVELOPE_KEYS)
    assert set(MACHINE_KEYS) | set(MACHINE_OPTIONAL_KEYS) | {"gpu"} <= set(head["machine"])
    assert head["machine"]["load_average_before"] == [0.5, 0.4, 0.3]
    assert len(head["machine"]["load_average_after"]) == 3
    assert head["revision"]["commit"] is None or len(head["revision"]["commit"]) == 40
    given = envelope("x", started, os.getloadavg(), measured_revision={"commit": "a" * 40, "dirty": False})
    assert given["revision"] == {"commit": "a" * 40, "dirty": False}
    out = write_results(tmp_path / "example.json", head | {"figures": [1.5]})
    assert json.loads(out.read_text()) == json.loads(json.dumps(head | {"figures": [1.5]}))
    assert not out.with_suffix(".tmp").exists()
    line = tables.envelope_line(given | {"duration_s": 12.0})
    assert line.startswith(f"Measured by `x` on {head['started'][:10]}, 12 s, commit aaaaaaa; ")
    assert "load average (1 min) 0.50 -> " in tables.envelope_line(head)
    zen3 = given | {"machine": given["machine"] | {"cpu_model": "AMD EPYC", "cpu_generation": "family 25, model 1"}}
    assert "; AMD EPYC (family 25, model 1), " in tables.envelope_line(zen3)


def test_a_bench_run_writes_its_command_and_figures_under_the_envelope(tmp_path):
    run = BenchRun("perf.builds.example", ["--mode", "full"])
    written = json.loads(run.write(tmp_path / "x.json", {"model": "m", "figures": {"1024": 1.5}}).read_text())
    assert list(written)[:len(ENVELOPE_KEYS)] == list(ENVELOPE_KEYS)
    assert written["command"] == "python -m perf.builds.example --mode full"
    assert written["figures"] == {"1024": 1.5}
    assert len(written["machine"]["load_average_before"]) == 3
