"""The command line, run as a user runs it: ``python -m allstudy ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image


def allstudy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "allstudy", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_scan_of_broken_files_names_each_problem_and_exits_0(tmp_path):
    folder = tmp_path / "broken" / "Benign"
    folder.mkdir(parents=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is text, not a picture")
    Image.new("RGB", (64, 64), (180, 90, 200)).save(folder / "good.jpg")
    Image.new("RGB", (2, 2)).save(folder / "tiny.png")
    data = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    result = allstudy("data", "scan", str(tmp_path / "broken"), "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    assert set(reasons) == {"Benign/empty.jpg", "Benign/notes.jpg", "Benign/tiny.png", "Benign/cut.jpg"}
    assert "empty" in reasons["Benign/empty.jpg"]
    assert "not an image" in reasons["Benign/notes.jpg"]
    assert "too small" in reasons["Benign/tiny.png"]
    assert "truncated" in reasons["Benign/cut.jpg"]
    assert report["images"] == 5 and report["classes"] == {"Benign": 1}


def test_scan_text_output_is_readable(tmp_path):
    folder = tmp_path / "d" / "Pro"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "a.jpg")
    result = allstudy("data", "scan", str(tmp_path / "d"), "--quiet")
    assert result.returncode == 0
    assert "Scanned 1 files" in result.stdout and "problems: 0" in result.stdout


def test_missing_folder_is_one_clear_line_and_exit_2(tmp_path):
    result = allstudy("data", "scan", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_synth_and_split(tmp_path):
    assert allstudy("synth", str(tmp_path / "fields"), "--n-per-class", "12", "--quiet").returncode == 0
    too_fine = allstudy("data", "split", str(tmp_path / "fields"), "--out", str(tmp_path / "data"), "--quiet")
    assert too_fine.returncode == 2 and "--fractions" in too_fine.stderr and "Traceback" not in too_fine.stderr
    result = allstudy(
        "data",
        "split",
        str(tmp_path / "fields"),
        "--out",
        str(tmp_path / "data"),
        "--quiet",
        "--fractions",
        "0.6",
        "0.2",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "splits.csv").exists()
    assert "train" in result.stdout and "total" in result.stdout


def test_synth_writes_the_demo_fields_and_refuses_a_bad_range(tmp_path):
    result = allstudy("synth", str(tmp_path / "crowded"), "--n-per-class", "1", "--leukocytes", "4", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "crowded" / "SYNTHETIC.json").read_text())["leukocytes"] == [4, 8]
    bad = allstudy("synth", str(tmp_path / "bad"), "--n-per-class", "1", "--leukocytes", "5", "2", "--quiet")
    assert bad.returncode == 2 and "leukocytes" in bad.stderr and "Traceback" not in bad.stderr


def test_synth_writes_the_c_nmc_like_release(tmp_path):
    result = allstudy("synth", str(tmp_path / "cells"), "--dataset", "cnmc", "--n-per-class", "12", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "cells" / "SYNTHETIC.json").read_text())["generator"] == "allstudy.synthetic_cnmc"
    assert (
        tmp_path / "cells" / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    ).is_file()
    bad = allstudy("synth", str(tmp_path / "bad"), "--dataset", "cnmc", "--leukocytes", "4", "8", "--quiet")
    assert bad.returncode == 2 and "one cell" in bad.stderr and "Traceback" not in bad.stderr


def test_version_and_help():
    assert allstudy("--version").stdout.startswith("allstudy ")
    assert "run" in allstudy("--help").stdout
