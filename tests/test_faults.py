"""Faults and reproducibility of the whole study, run as a user runs it (``python -m allstudy ...``):

* ``kill -9`` of the runner and its notebook kernels at five stages, then the same command: it finishes
  with what an uninterrupted run gives, and leaves no temporary or half-written file;
* a dataset with broken files: they are reported and left out of training;
* an output folder that cannot be written, and a full disk: one line saying what to do, exit 2;
* two seeded runs: the same split and the same figures.

One uninterrupted quick study of one architecture (``sequential``, the cheapest) serves every comparison.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from PIL import Image

from allstudy.data.synthetic import generate_dataset
from allstudy.models.profiles import get_profile

pytestmark = [
    pytest.mark.notebook,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find kernels"),
]

ARCH = "sequential"
#: Test accuracy of a run resumed in the middle of its training, against the uninterrupted run. A resumed
#: fit continues from its last checkpoint (weights and optimizer), but its tf.data iterator restarts: the
#: epochs after the kill see another shuffle order and other augmentation draws, as a run of another seed
#: would. Everything that was not resumed mid-training must be equal to the bit.
RESUME_TOLERANCE = 0.20
#: The broken files injected into a copy of the dataset, and what the scan must say of each.
BROKEN = {"Benign/empty.jpg": "empty", "Early/notes.jpg": "not an image", "Pre/cut.jpg": "truncated"}
#: The name allstudy.core.atomic gives a temporary file: .<stem>.<8 random chars>.tmp<suffix>
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.\w+)?$")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "allstudy", *args]


def study_command(out: Path, *extra: str, archs: tuple[str, ...] = (ARCH,)) -> list[str]:
    return command("run", "--profile", "quick", "--out", str(out), *extra, "--arch", *archs)


def finish(cmd: list[str], log: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command to its end, its output in ``log``; fail the test with its tail when it fails."""
    with open(log, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"
    return done


# -- processes ---------------------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every living descendant of ``pid`` (papermill's kernels run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the runner's process group and every descendant (its kernels), as a crash or an OOM kill would."""
    victims = descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)
    deadline = time.time() + 30
    while any(alive(pid) for pid in victims) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in victims), "a kernel survived SIGKILL"


def run_until(cmd: list[str], condition, log: Path, timeout: float = 600) -> float:
    """Start ``cmd`` in a session of its own, SIGKILL it the moment ``condition()`` holds; return the seconds."""
    start = time.time()
    with open(log, "w") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not condition():
                if process.poll() is not None:
                    pytest.fail(
                        f"the study ended (exit {process.returncode}) before the stage to kill it at:\n"
                        f"{log.read_text()[-3000:]}"
                    )
                if time.time() - start > timeout:
                    pytest.fail(f"the stage to kill at never came within {timeout} s")
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                kill_tree(process)
    return time.time() - start


# -- what a folder holds -----------------------------------------------------------------------------------


def leftovers(out: Path) -> list[Path]:
    """Temporary files and folders of interrupted writers, and notebooks kept from failed steps."""
    return sorted(
        p
        for p in out.rglob("*")
        if TEMPORARY.match(p.name) or ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".failed.ipynb")
    )


def unreadable_json(out: Path) -> list[str]:
    bad = []
    for path in out.rglob("*.json"):
        if TEMPORARY.match(path.name):
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            bad.append(f"{path}: {err}")
    return bad


def check_every_artefact_is_whole(out: Path) -> None:
    """Every JSON, CSV, notebook, array and model in ``out`` reads completely."""
    import keras
    import numpy as np

    import allstudy.models.registry  # noqa: F401  (registers the layers the saved models use)

    assert not leftovers(out), leftovers(out)
    assert not unreadable_json(out), unreadable_json(out)
    for path in out.rglob("*.csv"):
        pd.read_csv(path, keep_default_na=False)
    for path in out.rglob("*.ipynb"):
        nbformat.read(path, as_version=4)
    for path in out.rglob("*.npy"):
        np.load(path)
    models = list(out.rglob("*.keras"))
    assert models
    for path in models:
        keras.saving.load_model(path, safe_mode=True)
    for path in out.rglob("*.png"):
        with Image.open(path) as image:
            image.load()


# -- the shared, uninterrupted study -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The quick study of one architecture, run once without interruption, on a copy of the synthetic default
    with three broken files added: the usable images, hence the data hash, are the default's."""
    base = tmp_path_factory.mktemp("uninterrupted")
    settings = get_profile("quick")
    data = generate_dataset(base / "synthetic", n_per_class=settings["synthetic_per_class"], seed=settings["seed"])
    copy = shutil.copytree(data, base / "with-broken-files")
    good = next((copy / "Pre").glob("*.jpg")).read_bytes()
    (copy / "Benign" / "empty.jpg").write_bytes(b"")
    (copy / "Early" / "notes.jpg").write_text("a note saved with an image's name, not a picture\n")
    (copy / "Pre" / "cut.jpg").write_bytes(good[: len(good) // 2])
    out = base / "out"
    started = time.time()
    finish(study_command(out, "--data", str(copy)), base / "run.log")
    print(f"uninterrupted quick study of {ARCH}: {time.time() - started:.0f} s")
    return out


def test_broken_files_are_reported_and_left_out_of_training(uninterrupted):
    out = uninterrupted
    manifest = pd.read_csv(out / "data" / "manifest.csv", keep_default_na=False).set_index("path")
    for path, reason in BROKEN.items():
        assert reason in manifest.loc[path, "problem"], (path, manifest.loc[path, "problem"])
    assert (manifest["problem"] != "").sum() == len(BROKEN)
    split = pd.read_csv(out / "data" / "splits.csv", keep_default_na=False)
    assert not set(BROKEN) & set(split["path"]) and len(split) == len(manifest) - len(BROKEN)
    predictions = pd.read_csv(out / "runs" / ARCH / "predictions.csv", keep_default_na=False)
    assert not set(BROKEN) & set(predictions["path"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["problems"] == len(BROKEN)
    for page in (out / "notebooks" / "01_explore.html", out / "report.html"):
        html = page.read_text(encoding="utf-8")
        assert "3 file(s) with a problem are left out of every split" in html, page
        for path, reason in BROKEN.items():
            assert path in html and reason in html, (page, path)


def test_summary_and_every_run_carry_their_provenance(uninterrupted):
    out = uninterrupted
    summary = json.loads((out / "summary.json").read_text())
    data_hash = summary["data"]["data_hash"]
    assert len(data_hash) == 64
    provenance = summary["provenance"]
    assert provenance["data_hash"] == data_hash
    assert provenance["code_version"]["version"] and provenance["code_version"]["source_sha256"]
    assert provenance["packages"]["keras"] and provenance["packages"]["numpy"] and provenance["packages"]["python"]
    runs = sorted((out / "runs").glob("*/params.json"))
    assert len(runs) == 1 + 2 + 5  # the architecture, two baselines, five trained controls (4 inputs, 1 split)
    for path in runs:
        params = json.loads(path.read_text())
        assert params["data_hash"] == data_hash, path
        assert params["code_version"]["version"] and params["code_version"]["source_sha256"], path
        assert params["packages"]["keras"] and params["packages"]["numpy"], path


# -- kill -9 and resume --------------------------------------------------------------------------------------


def _epoch(state: Path) -> int:
    try:
        return json.loads(state.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _stages(out: Path) -> list[tuple[str, object]]:
    notebooks = out / "notebooks"
    return [
        (
            "the data step, writing the synthetic fields",
            lambda: any(sum(1 for _ in d.rglob("*.jpg")) >= 10 for d in out.glob("synthetic-data.tmp-*")),
        ),
        (
            f"03_train-{ARCH}, after its third epoch",
            lambda: _epoch(out / "runs" / ARCH / "training" / "train" / "state.json") >= 3,
        ),
        ("a control's 03_train, executing", lambda: any(out.glob(f"runs/control-{ARCH}-*/training/identity.json"))),
        ("05_compare, executing", lambda: any(notebooks.glob(".05_compare.*.tmp.ipynb"))),
    ]


def test_kill_9_at_every_stage_then_the_same_command_gives_the_uninterrupted_result(uninterrupted, tmp_path):
    out = tmp_path / "out"
    cmd = study_command(out)  # the synthetic default
    interrupted: dict[str, int] = {}  # run: the last epoch it had finished when a kill cut its training
    for number, (stage, reached) in enumerate(_stages(out)):
        seconds = run_until(cmd, reached, tmp_path / f"attempt-{number}.log")
        print(f"killed during {stage} after {seconds:.1f} s")
        assert not unreadable_json(out), unreadable_json(out)  # atomic writes: never half a file
        for state in out.glob("runs/*/training/train/state.json"):
            interrupted[state.parents[2].name] = _epoch(state)
    assert interrupted.get(ARCH, 0) >= 3, interrupted
    finish(cmd, tmp_path / "final.log")
    check_every_artefact_is_whole(out)

    # the same data and split as the uninterrupted run (whose copy of the data only adds broken files)
    assert (out / "data" / "splits.csv").read_bytes() == (uninterrupted / "data" / "splits.csv").read_bytes()
    resumed, again = (json.loads((o / "summary.json").read_text()) for o in (out, uninterrupted))
    assert resumed["data"]["data_hash"] == again["data"]["data_hash"]
    assert resumed["chosen"] == again["chosen"]

    for run in sorted((uninterrupted / "runs").glob("*/params.json")):
        name = run.parent.name
        history = (
            [pd.read_csv(o / "runs" / name / "history.csv") for o in (out, uninterrupted)]
            if (run.parent / "history.csv").exists()
            else []
        )
        figures = [
            json.loads((o / "runs" / name / "evaluation.json").read_text())["test"] for o in (out, uninterrupted)
        ]
        if name in interrupted:
            # the epochs before the kill are the uninterrupted run's, to the bit; the rest as another seed's
            assert list(history[0]["epoch"]) == list(history[1]["epoch"])  # every epoch exactly once
            columns, done = ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"], interrupted[name]
            pd.testing.assert_frame_equal(history[0][columns].head(done), history[1][columns].head(done))
            assert abs(figures[0]["accuracy"] - figures[1]["accuracy"]) <= RESUME_TOLERANCE, (name, figures)
        else:
            assert figures[0]["accuracy"] == figures[1]["accuracy"], name
            assert figures[0]["macro_f1"] == figures[1]["macro_f1"], name
            assert figures[0]["accuracy_ci"] == figures[1]["accuracy_ci"], name
            if history:
                pd.testing.assert_frame_equal(history[0].drop(columns="seconds"), history[1].drop(columns="seconds"))


# -- reproducibility -----------------------------------------------------------------------------------------


def test_two_seeded_runs_give_the_same_split_and_figures(uninterrupted, tmp_path):
    """`allstudy train` on the synthetic default in a fresh folder repeats the uninterrupted study's run."""
    out = tmp_path / "out"
    finish(command("train", "--arch", ARCH, "--profile", "quick", "--out", str(out)), tmp_path / "train.log")
    assert (out / "data" / "splits.csv").read_bytes() == (uninterrupted / "data" / "splits.csv").read_bytes()
    first, second = (json.loads((o / "runs" / ARCH / "params.json").read_text()) for o in (uninterrupted, out))
    assert first["data_hash"] == second["data_hash"] and first["config"] == second["config"]
    for split in ("val", "test"):
        accuracy = [
            json.loads((o / "runs" / ARCH / "metrics.json").read_text())["accuracy"][split]
            for o in (uninterrupted, out)
        ]
        assert abs(accuracy[0] - accuracy[1]) <= 0.005, (split, accuracy)
    predictions = [
        pd.read_csv(o / "runs" / ARCH / "predictions.csv", keep_default_na=False) for o in (uninterrupted, out)
    ]
    assert list(predictions[0]["label"]) == list(predictions[1]["label"])


# -- a folder that cannot be written, a full disk -------------------------------------------------------------


def _as_unprivileged_user() -> tuple[list[str], int | None]:
    """The command prefix that drops root (whom no permission stops), and that user's id; () for a normal user."""
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a chmod-500 folder would not stop the writes")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"], 65534


def _one_clear_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("allstudy: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_an_output_folder_that_cannot_be_written_is_one_clear_line():
    prefix, user = _as_unprivileged_user()
    base = Path(tempfile.mkdtemp(prefix="allstudy-readonly-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir()
        if user is not None:
            os.chown(locked, user, user)
        locked.chmod(0o500)
        env = {**os.environ, "HOME": str(base)}
        for args in (
            ["run", "--profile", "quick", "--out", str(locked)],  # the folder exists, read-only
            ["train", "--arch", ARCH, "--profile", "quick", "--out", str(locked / "new")],
        ):  # inside it
            done = subprocess.run(prefix + command(*args), capture_output=True, text=True, timeout=300, env=env)
            line = _one_clear_line(done)
            assert f"cannot write in {locked}" in line and "--out" in line and "chmod u+w" in line, line
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: Put on PYTHONPATH, this makes every atomic write whose target contains $ALLSTUDY_TEST_FULL_DISK fail as a
#: full disk does, in the runner and in the notebooks' kernels alike.
FULL_DISK = textwrap.dedent("""
    import contextlib, errno, os

    _marker = os.environ.get("ALLSTUDY_TEST_FULL_DISK")
    if _marker:
        import allstudy.core.atomic as _atomic

        _real = _atomic.atomic_path

        @contextlib.contextmanager
        def _full_disk(path):
            with _real(path) as tmp:
                yield tmp
                if _marker in str(path):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

        _atomic.atomic_path = _full_disk
""")


@pytest.fixture()
def full_disk(tmp_path):
    """The environment for a subprocess whose writes under ``/runs/`` find the disk full."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK)
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "ALLSTUDY_TEST_FULL_DISK": f"{os.sep}runs{os.sep}"}


def test_a_full_disk_is_one_clear_line_from_train(full_disk, tmp_path):
    data = generate_dataset(tmp_path / "fields", n_per_class=30, seed=3)
    out = tmp_path / "out"
    done = subprocess.run(
        command("train", "--arch", ARCH, "--epochs", "1", "--profile", "quick", "--data", str(data), "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=600,
        env=full_disk,
    )
    line = _one_clear_line(done)
    assert f"no space left on the disk of {out}" in line and "run the same command again" in line, line
    assert not [p for p in out.rglob("*") if TEMPORARY.match(p.name)]  # the failed write left nothing behind


def test_a_full_disk_in_a_notebook_is_one_clear_line_from_run(uninterrupted, full_disk):
    """A second architecture added to the uninterrupted study: its 03_train kernel finds the disk full."""
    out, extra = uninterrupted, "lenet"
    try:
        done = subprocess.run(
            study_command(out, archs=(ARCH, extra)), capture_output=True, text=True, timeout=600, env=full_disk
        )
        line = _one_clear_line(done)
        assert f"no space left on the disk of {out}" in line and "run the same command again" in line, line
        assert not [p for p in out.rglob("*") if TEMPORARY.match(p.name)]  # the failed write left nothing behind
        failed = list((out / "notebooks").glob("03_train-*.failed.ipynb"))  # the step's traceback, for the user
        assert [p.name for p in failed] == [f"03_train-{extra}.failed.ipynb"]
        assert "No space left on device" in failed[0].read_text()
        assert not (out / "notebooks" / f"03_train-{extra}.ipynb").exists()
    finally:  # leave the shared study as it was
        shutil.rmtree(out / "runs" / extra, ignore_errors=True)
        for path in (out / "notebooks").glob("03_train-*.failed.ipynb"):
            path.unlink()


def test_a_failed_step_names_itself_and_its_executed_copy():
    from allstudy.study.notebooks import StudyError, step_error

    class Failure:  # what papermill's PapermillExecutionError carries
        ename, evalue = "ValueError", "profile 'quick' has no settings for 'alexnet'"

    error = step_error("03_train-alexnet", Failure(), Path("out/notebooks/03_train-alexnet.failed.ipynb"))
    assert isinstance(error, StudyError)
    assert "03_train-alexnet failed with ValueError" in str(error) and "03_train-alexnet.failed.ipynb" in str(error)
    Failure.ename, Failure.evalue = "OSError", "[Errno 28] No space left on device: '/x/runs/a/.m.abcdefgh.tmp.keras'"
    error = step_error("03_train-a", Failure(), Path("f.ipynb"))
    assert type(error) is OSError and error.errno == 28 and error.filename == "/x/runs/a/.m.abcdefgh.tmp.keras"


def test_one_run_holds_its_output_folder(tmp_path, capsys):
    from allstudy.cli import main
    from allstudy.core.locks import output_lock

    with output_lock(tmp_path / "out", shared=True), output_lock(tmp_path / "out", shared=True):  # train beside train
        assert main(["run", "--profile", "quick", "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip()
    assert (
        line == f"allstudy: error: another allstudy command is writing to {tmp_path / 'out'}; wait until it ends, "
        "or pass another --out folder"
    )


def test_only_the_temporaries_of_killed_writers_are_removed(tmp_path):
    from allstudy.core.atomic import remove_stale_temporaries

    folder = tmp_path / "runs" / "a"
    folder.mkdir(parents=True)
    stale = []
    for stem, suffix in (("model", ".keras"), ("state", ".json"), ("03_train-a", ".ipynb"), ("features", "")):
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=folder)  # as atomic_path names it
        os.close(fd)
        stale.append(Path(name))
    kept = [folder / name for name in ("model.keras", ".allstudy.lock", ".x.tmp", "notes.tmp.txt", ".a.b.tmp.json")]
    for path in kept:
        path.write_text("kept")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)
