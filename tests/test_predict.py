"""The Predictor (allstudy.serving.predictor) and ``allstudy predict``, on a tiny model folder built here: a LeNet at
32 px with 8-view test-time augmentation, a model.json from allstudy.serving.modelcard and an ood.json fitted on
synthetic fields. No study is run."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_model import BROKEN, SIZE, TEMPERATURE, encode_image, field_paths, load_fields, model_meta  # noqa: E402

from allstudy.core.atomic import read_json, write_json  # noqa: E402
from allstudy.data.classes import TALEQANI_CLASSES  # noqa: E402

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CNMC = sorted((SHARED_DATA / "cnmc").glob("*/*.bmp"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Model folders: ``guarded`` (with ood.json), ``plain`` (none), ``abstaining`` (threshold 1.0, the
    single-view model without test-time augmentation, with its own ood.json); and synthetic fields:
    ``train``, ``val`` and unseen ``fresh`` ones."""
    import keras

    from allstudy.data.synthetic import generate_dataset
    from allstudy.models.layers import with_tta
    from allstudy.models.registry import build_model
    from allstudy.serving.ood import fit_guard

    base = tmp_path_factory.mktemp("predict")
    fields = {
        name: field_paths(generate_dataset(base / name, n_per_class=n, seed=seed, size=64, recapture_fraction=0.0))
        for name, n, seed in (("train", 20, 0), ("val", 10, 1), ("fresh", 25, 2))
    }
    keras.utils.set_random_seed(0)
    single = build_model("lenet", len(TALEQANI_CLASSES), SIZE).model
    train, val = load_fields(fields["train"]), load_fields(fields["val"])
    abstaining = base / "abstaining"
    abstaining.mkdir()
    single.save(abstaining / "model.keras")
    write_json(abstaining / "model.json", model_meta(list(TALEQANI_CLASSES), True, tta_views=1))
    fit_guard(single, train, val).save(abstaining / "ood.json")
    model = with_tta(single, 8)
    guarded = base / "guarded"
    guarded.mkdir()
    model.save(guarded / "model.keras")
    write_json(guarded / "model.json", model_meta(list(TALEQANI_CLASSES), False))
    fit_guard(model, train, val).save(guarded / "ood.json")
    plain = base / "plain"
    plain.mkdir()
    shutil.copyfile(guarded / "model.keras", plain / "model.keras")
    write_json(plain / "model.json", model_meta(list(TALEQANI_CLASSES), False))
    return {"guarded": guarded, "plain": plain, "abstaining": abstaining, "model": model, **fields}


@pytest.fixture(scope="module")
def predictor(folders):
    from allstudy.serving.predictor import Predictor

    return Predictor(folders["guarded"], batch_size=8)


# --------------------------------------------------------------------------------------- answers


def test_prediction_equals_the_models_own_output_after_temperature(predictor, folders):
    import keras

    from allstudy.data.images import read_rgb
    from allstudy.data.preprocess import to_input
    from allstudy.evaluation.metrics import apply_temperature

    path = folders["fresh"][3]
    model = keras.saving.load_model(folders["guarded"] / "model.keras", safe_mode=True)
    x = to_input(read_rgb(path), SIZE)[None].astype(np.float32)
    expected = apply_temperature(model.predict(x, verbose=0), TEMPERATURE)[0]
    answer = predictor.predict(path)
    assert answer.ok and list(answer.probabilities) == list(TALEQANI_CLASSES)
    np.testing.assert_allclose(list(answer.probabilities.values()), expected, atol=1e-5)
    assert answer.label == TALEQANI_CLASSES[int(expected.argmax())]
    assert answer.confidence == pytest.approx(expected.max(), abs=1e-5)
    assert answer.source == str(path)


def test_batch_equals_singles(predictor, folders):
    paths = folders["fresh"][:11]
    batch = predictor.predict_batch(paths, batch_size=4)
    singles = [predictor.predict(p) for p in paths]
    for b, s in zip(batch, singles, strict=True):
        np.testing.assert_allclose(list(b.probabilities.values()), list(s.probabilities.values()), atol=1e-6)
        assert (b.label, b.verdict, b.message) == (s.label, s.verdict, s.message)
        assert b.ood_scores == pytest.approx(s.ood_scores, rel=1e-5)


def test_verdicts_and_messages(predictor, folders):
    from allstudy.serving.predictor import UNCERTAIN_MESSAGE, Predictor

    benign = predictor._answer(np.array([0.9, 0.05, 0.03, 0.02]), {}, "", None, "")
    assert (benign.verdict, benign.message, benign.malignant, benign.display) == (
        "benign",
        "Benign (hematogones)",
        False,
        "Benign (hematogones)",
    )
    pro = predictor._answer(np.array([0.02, 0.03, 0.05, 0.9]), {}, "", None, "")
    assert (pro.verdict, pro.message, pro.malignant) == ("malignant", "Malignant: Pro-B ALL", True)
    # A policy that rules nothing out refers everything ...
    abstaining = Predictor(folders["abstaining"])
    answers = [abstaining.predict(path) for path in folders["fresh"][:5]]
    answer = next(a for a in answers if a.verdict != "out-of-distribution")  # the guard may flag one, rarely
    assert answer.verdict == "uncertain" and answer.message == UNCERTAIN_MESSAGE
    assert "leukemia" in answer.reason and "Benign" in answer.prediction_set and len(answer.prediction_set) >= 2
    assert answer.label in TALEQANI_CLASSES and answer.confidence < 1.0
    # ... but out-of-distribution takes precedence over everything.
    scores = {"stats": 99.0, "embedding": 0.0, "focus": 9.0, "compression": 0.0}
    answer = predictor._answer(np.array([0.97, 0.01, 0.01, 0.01]), scores, "a cat", None, "")
    assert answer.verdict == "out-of-distribution"
    assert answer.message == "outside what this model was trained on: a cat"


def test_in_distribution_fields_pass_the_guard_at_the_documented_rate(predictor, folders):
    answers = predictor.predict_batch(folders["fresh"])
    flagged = np.mean([a.verdict == "out-of-distribution" for a in answers])
    # 40 validation fields set the thresholds: about 1/41 per score is expected (see allstudy.serving.ood)
    assert len(answers) == 100 and flagged <= 0.1, flagged
    assert all(set(a.ood_scores) == {"stats", "embedding", "focus", "compression"} for a in answers)
    assert all(a.verdict in ("benign", "malignant") for a in answers if a.verdict != "out-of-distribution")


@pytest.mark.parametrize("folder", ["guarded", "abstaining"])  # TTA: two calls; single view: one combined model
def test_ood_scores_equal_the_guards_own(folder, predictor, folders):
    import keras

    from allstudy.serving.ood import OODGuard
    from allstudy.serving.predictor import Predictor

    chosen = predictor if folder == "guarded" else Predictor(folders[folder])
    model = keras.saving.load_model(folders[folder] / "model.keras", safe_mode=True)
    guard = OODGuard.load(folders[folder] / "ood.json", model)
    paths = folders["fresh"][:4]
    expected = guard.score(load_fields(paths))
    answers = chosen.predict_batch(paths)
    for name in ("stats", "embedding"):
        np.testing.assert_allclose([a.ood_scores[name] for a in answers], expected[name], rtol=1e-4)


def test_photos_are_out_of_distribution(predictor):
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    answers = predictor.predict_batch(photos)
    assert [a.verdict for a in answers] == ["out-of-distribution"] * 4
    assert all(a.message.startswith("outside what this model was trained on: ") for a in answers)


@pytest.mark.shared
@pytest.mark.skipif(not CNMC, reason=f"no C-NMC sample cells in {SHARED_DATA / 'cnmc'} (../shared/data is absent)")
def test_single_cell_crops_of_another_lab_are_out_of_distribution(predictor):
    answers = predictor.predict_batch(CNMC)
    assert len(answers) == 6 and [a.verdict for a in answers] == ["out-of-distribution"] * 6
    assert "near-black" in answers[0].message


# --------------------------------------------------------------------------------------- reading


def _field_image(folders) -> Image.Image:
    return Image.open(folders["fresh"][5]).convert("RGB")


def test_bad_inputs_give_errors_and_do_not_stop_the_batch(predictor, folders, tmp_path):
    good = folders["fresh"][:2]
    paths = [good[0]]
    for name, (make, _) in BROKEN.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(make())
    paths += [good[1], tmp_path / "missing.jpg"]
    answers = predictor.predict_batch(paths)
    assert [a.ok for a in answers] == [True] + [False] * len(BROKEN) + [True, False]
    for answer, (_, word) in zip(answers[1:], BROKEN.values(), strict=False):
        assert word in answer.error and answer.verdict == "" and answer.probabilities == {}
        assert answer.message.startswith("cannot read the image")
    assert "cannot read the file" in answers[-1].error
    np.testing.assert_allclose(
        list(answers[0].probabilities.values()), list(predictor.predict(good[0]).probabilities.values()), atol=1e-6
    )
    single = predictor.predict(tmp_path / "empty.jpg")
    assert not single.ok and "empty" in single.error
    for bad in (np.zeros((40, 40, 3), np.float32), b"not a path "[:0], 42):
        assert not predictor.predict(bad).ok


def test_every_mode_and_kind_of_input_is_read(predictor, folders):
    field = _field_image(folders)
    rgba = field.convert("RGBA")
    sixteen = Image.fromarray(np.asarray(field.convert("L"), np.uint16) * 257)
    frames = [field, field.rotate(90), field.rotate(180)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    inputs = {
        "grey": encode_image(field.convert("L"), "PNG"),
        "rgba": encode_image(rgba, "PNG"),
        "cmyk": encode_image(field.convert("CMYK"), "JPEG"),
        "16-bit": encode_image(sixteen, "PNG"),
        "palette": encode_image(field.convert("P"), "PNG"),
        "bmp": encode_image(field, "BMP"),
        "animated gif": gif.getvalue(),
        "file-like": io.BytesIO(encode_image(field, "PNG")),
        "PIL": field,
        "array": np.asarray(field),
        "grey array": np.asarray(field.convert("L")),
    }
    answers = predictor.predict_batch(list(inputs.values()))
    for name, answer in zip(inputs, answers, strict=True):
        assert answer.ok, (name, answer.error)
        assert answer.verdict in ("benign", "malignant", "uncertain", "out-of-distribution")
    lossless = [answers[i] for i, name in enumerate(inputs) if name in ("bmp", "PIL", "array", "file-like")]
    for answer in lossless[1:]:
        assert answer.probabilities == pytest.approx(lossless[0].probabilities, abs=1e-6)
    assert predictor.model_input(inputs["grey array"]).shape == (SIZE, SIZE, 3)


# --------------------------------------------------------------------------------------- the hot path


def test_the_forward_pass_is_traced_once_and_never_model_predict(predictor, folders, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the Predictor must not call model.predict")

    monkeypatch.setattr(predictor.model, "predict", forbidden)
    traces = predictor.traces
    assert traces == 1
    predictor.predict(folders["fresh"][0])
    predictor.predict_batch(folders["fresh"][:5], batch_size=3)
    predictor.predict_batch(folders["fresh"][:9])
    assert predictor.traces == traces


def test_gradcam_overlay_on_request(folders):
    from allstudy.serving.predictor import Predictor

    explained = Predictor(folders["plain"], gradcam=True)
    answer = explained.predict(folders["fresh"][1])
    assert answer.gradcam is not None and answer.gradcam.shape == (SIZE, SIZE, 3)
    assert answer.gradcam.dtype == np.uint8
    assert explained.info["gradcam"] is True
    assert explained.predict(folders["fresh"][1]).ood_scores == {}


def test_info_for_the_model_panel(predictor, folders):
    from allstudy.serving.predictor import Predictor

    info = predictor.info
    assert info["arch"] == "lenet" and info["classes"] == list(TALEQANI_CLASSES) and info["input_size"] == SIZE
    assert info["metrics"]["test"]["accuracy_ci"] == [0.4, 0.6]
    assert "data_hash" in info["provenance"] and "not a diagnostic device" in info["intended_use"]
    assert info["ood"].startswith("guard from ood.json") and info["tta_views"] == 8
    plain = Predictor(folders["plain"]).info
    assert "no ood.json" in plain["ood"] and "NOT detected" in plain["ood"]


def test_missing_or_incomplete_model_folders_are_clear_errors(folders, tmp_path):
    from allstudy.serving.predictor import Predictor

    with pytest.raises(FileNotFoundError, match="does not exist.*python -m allstudy run"):
        Predictor(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    shutil.copyfile(folders["plain"] / "model.keras", tmp_path / "half" / "model.keras")
    with pytest.raises(FileNotFoundError, match="no model.json"):
        Predictor(tmp_path / "half")
    meta = read_json(folders["plain"] / "model.json")
    del meta["temperature"]
    write_json(tmp_path / "half" / "model.json", meta)
    with pytest.raises(ValueError, match="lacks temperature"):
        Predictor(tmp_path / "half")


# --------------------------------------------------------------------------------------- the command line


def test_cli_writes_the_columns_in_order_and_goes_on_past_bad_files(folders, tmp_path):
    data = tmp_path / "in"
    (data / "deeper").mkdir(parents=True)
    for i, path in enumerate(folders["fresh"][:3]):
        shutil.copyfile(path, data / "deeper" / f"field-{i}.dat")  # decided by content, not extension
    (data / "notes.jpg").write_text("not a picture")
    (data / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "allstudy",
            "predict",
            str(data),
            str(folders["fresh"][4]),
            "--model",
            str(folders["guarded"]),
            "--out",
            str(out),
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == [
        "path",
        "label",
        "verdict",
        "confidence",
        *(f"p_{c}" for c in TALEQANI_CLASSES),
        "error",
    ]
    assert len(frame) == 6
    bad = frame[frame["error"] != ""]
    assert sorted(Path(p).name for p in bad["path"]) == ["empty.png", "notes.jpg"]
    assert (bad["label"] == "").all() and (bad["verdict"] == "").all()
    good = frame[frame["error"] == ""]
    assert set(good["verdict"]) <= {"benign", "malignant", "uncertain", "out-of-distribution"}
    np.testing.assert_allclose(good[[f"p_{c}" for c in TALEQANI_CLASSES]].astype(float).sum(axis=1), 1.0, atol=1e-5)
    assert "predicting" in result.stderr  # the progress bar


def test_cli_exits_2_when_nothing_is_readable_or_the_model_is_missing(folders, tmp_path, capsys):
    from allstudy.cli import main

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("no")
    out = tmp_path / "preds.csv"
    assert (
        main(["predict", str(tmp_path / "junk"), "--model", str(folders["plain"]), "--out", str(out), "--quiet"]) == 2
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("allstudy: error: none of the 1 files")
    assert pd.read_csv(out, keep_default_na=False)["error"].str.contains("not an image").all()
    assert main(["predict", str(tmp_path / "junk"), "--model", str(tmp_path / "no-model"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "does not exist" in error[0] and "allstudy run" in error[0]


# --------------------------------------------------------------------------------------- the serving runtime


@pytest.fixture(scope="module")
def served(folders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the ``guarded`` folder with its serving file, checked on the validation fields."""
    from allstudy.serving.runtime import write_serving

    folder = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(folders["guarded"], folder)
    facts = write_serving(folder, load_fields(folders["val"]), quiet=True)
    assert facts["accepted"] and facts["argmax_agreement"] == 1.0 and facts["max_abs_diff"] <= 1e-4
    return folder


def test_the_serving_file_answers_as_the_keras_model(served, folders):
    from allstudy.serving.predictor import Predictor

    lite, reference = Predictor(served), Predictor(served, runtime="keras")
    assert (lite.runtime, reference.runtime) == ("tflite", "keras")
    assert lite.info["runtime"] == "tflite" and "LiteRT" in lite.info["runtime_note"]
    paths = folders["fresh"][:9] + [SHARED_DATA / "nowhere.jpg"]
    for a, b in zip(lite.predict_batch(paths, batch_size=4), reference.predict_batch(paths), strict=True):
        assert (a.label, a.verdict, a.error) == (b.label, b.verdict, b.error)
        if a.ok:
            np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
            assert a.ood_scores == pytest.approx(b.ood_scores, rel=1e-3, abs=1e-3)
    single = lite.predict(paths[0])
    assert single.probabilities == pytest.approx(lite.predict_batch(paths[:3])[0].probabilities, abs=1e-6)


def test_a_stale_or_altered_serving_file_is_not_used(served, folders, tmp_path):
    from allstudy.serving.predictor import Predictor
    from allstudy.serving.runtime import SERVING_FILE, load_serving

    stale = tmp_path / "stale"
    shutil.copytree(served, stale)
    shutil.copyfile(folders["abstaining"] / "model.keras", stale / "model.keras")  # another model
    shutil.copyfile(folders["abstaining"] / "model.json", stale / "model.json")
    shutil.copyfile(folders["abstaining"] / "ood.json", stale / "ood.json")
    runner, why = load_serving(stale)
    assert runner is None and "stale" in why
    predictor = Predictor(stale)
    assert predictor.runtime == "keras" and "stale" in predictor.info["runtime_note"]
    with pytest.raises(ValueError, match="runtime 'tflite' is not available.*stale"):
        Predictor(stale, runtime="tflite")

    altered = tmp_path / "altered"
    shutil.copytree(served, altered)
    with open(altered / SERVING_FILE, "r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        handle.write(b"\0" * 64)
    runner, why = load_serving(altered)
    assert runner is None and "not the file" in why
    with pytest.raises(ValueError, match="runtime must be one of"):
        Predictor(served, runtime="onnx")


def test_a_serving_file_that_disagrees_is_not_written(folders, tmp_path, monkeypatch):
    import allstudy.serving.runtime as serving

    folder = tmp_path / "model"
    shutil.copytree(folders["plain"], folder)
    monkeypatch.setattr(serving, "MAX_PROBABILITY_DIFF", -1.0)  # no file can pass
    facts = serving.write_serving(folder, load_fields(folders["val"][:4]), quiet=True)
    assert not facts["accepted"] and facts["n_images"] == 4
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.keras"]  # nothing half-written
    with pytest.raises(ValueError, match="held-out fields"):
        serving.write_serving(folder, np.zeros((0, SIZE, SIZE, 3), np.float32))


def test_the_serving_runtime_is_safe_from_several_threads(served, folders):
    from concurrent.futures import ThreadPoolExecutor

    from allstudy.serving.predictor import Predictor

    predictor = Predictor(served)
    paths = folders["fresh"][:12]
    expected = [predictor.predict(p).probabilities for p in paths]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: predictor.predict_batch([p] * (1 + paths.index(p) % 3))[0], paths))
    for answer, probabilities in zip(answers, expected, strict=True):
        assert answer.probabilities == pytest.approx(probabilities, abs=1e-6)
