"""`cxrfm report` on crafted results.json files: only PNG files inside the results folder are embedded.

Issue 9 item 9: figure paths in results.json were not checked, so a crafted file embedded /etc/passwd
into report.html. Each hostile path below must be refused with a note on the page and a line on
stderr, and its bytes must not appear in the page; legitimate figures must survive re-rendering
from another working directory and from a moved results folder.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrfm import cli
from cxrfm.errors import RunDirError
from cxrfm.reporting.html import render_html, render_results_file
from cxrfm.tasks.registry import list_tasks
from tests.helpers import png_bytes

SECRET = Path("/etc/passwd")


def _png(path: Path) -> Path:
    path.write_bytes(png_bytes(np.random.default_rng(0).random((16, 16))))
    return path


def _results(overlay_paths: dict[str, str]) -> dict:
    """A segmentation result whose overlays point at the given paths."""
    return {"tasks": {"segmentation": {
        "dice": {"mean": 0.9, "ci": [0.8, 0.95]}, "hd95": {"mean": 5.0}, "n_eval": 10,
        "baseline": {"dice": {"mean": 0.5}, "hd95": {"mean": 9.0}},
        "overlays": {k: {"image": "x.png", "dice": 0.9, "path": v} for k, v in overlay_paths.items()}}}}


def _render(folder: Path, results: dict) -> tuple[str, list[str]]:
    heard: list[str] = []
    page = render_html(results, folder, tasks=list_tasks(), warn=heard.append)
    return page, heard


def _embedded(page: str) -> list[bytes]:
    import re

    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def _assert_refused(page: str, heard: list[str], path: str, why: str):
    assert f"figure refused: {path}" in page.replace("&#x27;", "'")
    assert any(path in h and why in h for h in heard), heard
    secret = SECRET.read_bytes() if SECRET.exists() else b"root:"
    assert all(secret[:64] not in b for b in _embedded(page))
    assert base64.b64encode(secret[:30]).decode()[:20] not in page


@pytest.mark.parametrize("path, why", [
    (str(SECRET), "outside the results folder"),                      # absolute path elsewhere
    ("../../../../../../../../etc/passwd", "outside the results folder"),  # `..` escape
    ("sub/../../../../../../../../etc/passwd", "outside the results folder"),
    ("/etc/does-not-exist.png", "outside the results folder"),        # absolute, missing, outside
])
def test_paths_outside_the_folder_are_refused(tmp_path, path, why):
    page, heard = _render(tmp_path, _results({"worst": path}))
    _assert_refused(page, heard, path, why)
    assert "Figures refused" in page


def test_symlinks_out_of_the_folder_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "to_passwd.png").symlink_to(SECRET)
    (folder / "to_png.png").symlink_to(_png(outside / "real.png"))  # a real PNG, but outside
    (folder / "dir_link").symlink_to(outside, target_is_directory=True)
    page, heard = _render(folder, _results({"a": "to_passwd.png", "b": "to_png.png", "c": "dir_link/real.png",
                                            "d": str(folder / "to_passwd.png")}))
    for p in ("to_passwd.png", "to_png.png", "dir_link/real.png", str(folder / "to_passwd.png")):
        _assert_refused(page, heard, p, "outside the results folder")
    assert len(_embedded(page)) == 1  # only the Dice bars, re-drawn from the numbers


def test_non_png_content_and_special_files_are_refused(tmp_path):
    (tmp_path / "fake.png").write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    (tmp_path / "adir.png").mkdir()
    page, heard = _render(tmp_path, _results({"a": "fake.png", "b": "pipe.png", "c": "adir.png"}))
    _assert_refused(page, heard, "fake.png", "not a PNG")
    _assert_refused(page, heard, "pipe.png", "not a regular file")
    _assert_refused(page, heard, "adir.png", "not a regular file")


def test_a_png_inside_the_folder_is_embedded_and_a_missing_one_is_a_note(tmp_path):
    png = _png(tmp_path / "segmentation_best.png")
    page, heard = _render(tmp_path, _results({"best": "segmentation_best.png", "worst": "gone.png"}))
    assert png.read_bytes() in _embedded(page)
    assert "figure not found: gone.png" in page and not heard


def test_rerender_from_another_folder_keeps_the_figures(tmp_path, monkeypatch):
    """eval ran in cwd A with --out out/run (paths relative to A); report runs in cwd B, on a moved copy."""
    a = tmp_path / "A"
    (a / "out" / "run").mkdir(parents=True)
    png = _png(a / "out" / "run" / "segmentation_best.png")
    results = _results({"best": "out/run/segmentation_best.png", "median": str(png)})
    (a / "out" / "run" / "results.json").write_text(json.dumps(results))
    want = png.read_bytes()
    moved = tmp_path / "B" / "archive"
    shutil.copytree(a / "out" / "run", moved)
    shutil.rmtree(a)
    monkeypatch.chdir(tmp_path / "B")
    heard: list[str] = []
    out = render_results_file(moved / "results.json", tmp_path / "elsewhere" / "r.html", tasks=list_tasks(),
                              warn=heard.append)
    page = out.read_text(encoding="utf-8")
    assert _embedded(page).count(want) == 2 and not heard
    assert "figure not found" not in page


def test_cli_report_says_refusals_on_stderr(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(_results({"worst": str(SECRET)})))
    assert cli.main(["report", str(tmp_path / "results.json")]) == 0
    err = capsys.readouterr().err
    assert "figure refused" in err and str(SECRET) in err
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "figure refused" in page


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "JSON list"), ("not json", "not valid JSON"), ('"text"', "JSON str"), ("[" * 100000, "not valid JSON"),
])
def test_malformed_results_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(RunDirError, match=message):
        render_results_file(tmp_path / "results.json")


def test_values_cannot_inject_markup(tmp_path):
    evil = "<script>alert(1)</script><img src=x onerror=alert(1)>"
    results = {"tasks": {evil: {"note": evil, "plot": evil + ".png"}, "zeroshot": {"skipped": evil}},
               "model": {"run_dir": evil}, "data": {"path": evil}, "tasks_requested": [evil]}
    page, _ = _render(tmp_path, results)
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;" in page


def test_odd_shapes_do_not_lose_the_page(tmp_path):
    """A results.json edited by hand (wrong types where dicts are expected) still renders every section."""
    results = {"tasks": {"zeroshot": {"findings": "oops", "mean_auroc": "x"}, "probe": {"findings": {"A": 3},
               "fractions": ["a"]}, "retrieval": [1, 2], "segmentation": {"overlays": {"best": {"path": 7}}}},
               "model": "not a dict", "data": None, "timing_s": "no"}
    page, _ = _render(tmp_path, results)
    for name in ("zeroshot", "probe", "retrieval", "segmentation"):
        assert f'id="task-{name}"' in page
