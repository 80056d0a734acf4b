"""perf/README.md's figures come from the results files: rendered by perf/report.py, checked for drift."""

from __future__ import annotations

import json
import shutil

import pytest

from perf import report

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
