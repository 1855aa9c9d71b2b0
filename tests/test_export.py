"""``allstudy export`` (allstudy.serving.export) on a tiny study laid out as ``allstudy run`` leaves it: a LeNet at
32 px with 8-view test-time augmentation in OUT/models/chosen (the model folder of test_predict), a splits.csv and
data.json in OUT/data, synthetic fields as the dataset. No study is run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tiny_model import SIZE, field_paths, load_fields, model_meta  # noqa: E402  (the same tiny model folder)

from allstudy.core.atomic import read_json, write_json  # noqa: E402
from allstudy.data.classes import TALEQANI_CLASSES  # noqa: E402

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast

MAX_ABS_DIFF = 1e-3


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """OUT/models/chosen (model.keras, model.json), OUT/data/splits.csv and data.json, the dataset root."""
    import keras

    from allstudy.data.synthetic import generate_dataset
    from allstudy.models.layers import with_tta
    from allstudy.models.registry import build_model

    base = tmp_path_factory.mktemp("export")
    root = generate_dataset(base / "fields", n_per_class=6, seed=3, size=64, recapture_fraction=0.0)
    paths = [p.relative_to(root).as_posix() for p in field_paths(root)]
    splits = pd.DataFrame(
        {
            "path": paths,
            "class": [p.split("/")[0] for p in paths],
            "subject": "",
            "group": paths,
            "split": ["test" if i % 2 else "train" for i in range(len(paths))],
        }
    )
    out = base / "study"
    (out / "data").mkdir(parents=True)
    splits.to_csv(out / "data" / "splits.csv", index=False)
    write_json(out / "data" / "data.json", {"root": str(root), "data_hash": "0" * 64})
    keras.utils.set_random_seed(0)
    chosen = out / "models" / "chosen"
    chosen.mkdir(parents=True)
    with_tta(build_model("lenet", len(TALEQANI_CLASSES), SIZE).model, 8).save(chosen / "model.keras")
    write_json(chosen / "model.json", model_meta(list(TALEQANI_CLASSES), False))
    test = splits[splits["split"] == "test"]
    return {"out": out, "chosen": chosen, "root": root, "test": [root / p for p in test["path"]], "base": base}


@pytest.fixture(scope="module")
def tflite(study) -> tuple[dict, Path]:
    from allstudy.serving.export import export_model

    out = study["base"] / "export-tflite"
    return export_model(study["chosen"], "tflite", out, batch_size=4, quiet=True), out


@pytest.fixture(scope="module")
def onnx(study) -> tuple[dict, Path]:
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    from allstudy.serving.export import export_model

    out = study["base"] / "export-onnx"
    return export_model(study["chosen"], "onnx", out, batch_size=4, quiet=True), out


def _keras_probabilities(study, paths) -> np.ndarray:
    import keras

    model = keras.saving.load_model(study["chosen"] / "model.keras", compile=False, safe_mode=True)
    return model.predict(load_fields(paths).astype(np.float32), verbose=0)


# --------------------------------------------------------------------------------------- parity


def test_float_tflite_computes_the_models_probabilities(tflite, study):
    from allstudy.serving.export import TFLiteRunner

    report, out = tflite
    assert report["format"] == "tflite" and report["variant"] == "float32" and report["file"] == "model.tflite"
    assert report["n_images"] == len(study["test"]) > 0
    assert report["argmax_agreement"] == 1.0 and report["max_abs_diff"] <= MAX_ABS_DIFF
    assert report["file_bytes"] == (out / "model.tflite").stat().st_size
    # parity.json on disk says the same, with the keys DESIGN.md names; model.json travels with the export.
    on_disk = read_json(out / "parity.json")
    assert {k: on_disk[k] for k in ("argmax_agreement", "max_abs_diff", "n_images")} == {
        k: report[k] for k in ("argmax_agreement", "max_abs_diff", "n_images")
    }
    assert read_json(out / "model.json")["classes"] == list(TALEQANI_CLASSES)
    assert on_disk["source"]["model_sha256"] and on_disk["source"]["arch"] == "lenet"
    # Checked independently: the file on any batch size against the Keras model on the training loader's input.
    paths = study["test"][:3]
    np.testing.assert_allclose(
        TFLiteRunner(out / "model.tflite")(load_fields(paths)), _keras_probabilities(study, paths), atol=MAX_ABS_DIFF
    )


def test_quantised_tflite_reports_its_accuracy_change(tflite):
    report, out = tflite
    float_, dynamic = report["variants"]
    assert dynamic["variant"] == "dynamic_range_int8" and (out / dynamic["file"]).is_file()
    assert dynamic["file_bytes"] < float_["file_bytes"]
    assert dynamic["n_images"] == float_["n_images"]
    assert dynamic["keras_test_accuracy"] == float_["keras_test_accuracy"]
    assert dynamic["accuracy_change_pp"] == pytest.approx(
        100 * (dynamic["test_accuracy"] - dynamic["keras_test_accuracy"]), abs=1e-3
    )
    assert 0.0 <= dynamic["argmax_agreement"] <= 1.0 and np.isfinite(dynamic["max_abs_diff"])


def test_onnx_computes_the_models_probabilities(onnx, study):
    from allstudy.serving.export import ONNXRunner

    report, out = onnx
    assert report["format"] == "onnx" and report["file"] == "model.onnx" and report["onnx_opset"] >= 13
    assert report["n_images"] == len(study["test"])
    assert report["argmax_agreement"] == 1.0 and report["max_abs_diff"] <= MAX_ABS_DIFF
    assert read_json(out / "parity.json")["variants"] == report["variants"]
    paths = study["test"][:5]
    np.testing.assert_allclose(
        ONNXRunner(out / "model.onnx")(load_fields(paths)), _keras_probabilities(study, paths), atol=MAX_ABS_DIFF
    )


def test_forward_function_is_the_saved_models_forward_pass(study):
    import keras

    from allstudy.models.convert import forward_function
    from allstudy.models.layers import single_view

    model = keras.saving.load_model(study["chosen"] / "model.keras", compile=False, safe_mode=True)
    x = load_fields(study["test"][:4]).astype(np.float32)
    for m in (model, single_view(model)):  # 8 views, and a model without test-time augmentation
        np.testing.assert_allclose(forward_function(m, SIZE)(x).numpy(), m.predict(x, verbose=0), atol=1e-5)


# --------------------------------------------------------------------------------------- finding the split


def test_the_split_is_found_beside_the_model_or_where_told(study, tmp_path):
    import shutil

    from allstudy.serving.export import find_test_split

    meta = read_json(study["chosen"] / "model.json")
    split = find_test_split(study["chosen"], meta)
    assert split.splits_csv.resolve() == (study["out"] / "data" / "splits.csv").resolve()
    assert [split.root / p for p in split.paths] == study["test"]
    assert [TALEQANI_CLASSES[i] for i in split.labels] == [p.parent.name for p in study["test"]]
    # A model folder copied elsewhere: the split is not found, and the error names the option.
    moved = tmp_path / "elsewhere"
    shutil.copytree(study["chosen"], moved)
    with pytest.raises(FileNotFoundError, match="--split-csv"):
        find_test_split(moved, meta)
    assert find_test_split(moved, meta, split_csv=study["out"] / "data" / "splits.csv").paths == split.paths
    # Images moved: --data says where they are now.
    with pytest.raises(FileNotFoundError, match="--data"):
        find_test_split(study["chosen"], meta, data=tmp_path / "nowhere")
    # A split of other data than the model's is refused.
    with pytest.raises(ValueError, match="other data"):
        find_test_split(study["chosen"], {**meta, "provenance": {**meta["provenance"], "data_hash": "1" * 64}})


# --------------------------------------------------------------------------------------- bad input


def test_bad_input_gives_a_clear_error(study, tmp_path, capsys):
    from allstudy.cli import main
    from allstudy.serving.export import export_model

    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "missing"),
                "--format",
                "tflite",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("allstudy: error: model folder") and "missing does not exist" in err
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", str(study["chosen"]), "--format", "coreml", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "invalid choice: 'coreml'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown export format 'coreml'.*tflite, onnx"):
        export_model(study["chosen"], "coreml", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_an_adapted_normalization_is_frozen_into_both_formats(tmp_path):
    """The transfer heads standardise their features with an adapted Keras Normalization, whose statistics
    are eager tensors: the exported graphs must carry them, not ask for them as inputs."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    import keras

    from allstudy.models.convert import forward_function, to_tflite
    from allstudy.models.layers import with_tta
    from allstudy.serving.export import ONNXRunner, TFLiteRunner, to_onnx

    keras.utils.set_random_seed(0)
    standardise = keras.layers.Normalization(name="standardise")
    standardise.adapt(np.random.default_rng(0).normal(80.0, 20.0, (64, 3)).astype("float32"))
    head = keras.Sequential([keras.Input((3,)), standardise, keras.layers.Dense(4, activation="softmax")], name="head")
    image = keras.Input((SIZE, SIZE, 3))
    model = with_tta(keras.Model(image, head(keras.layers.GlobalAveragePooling2D()(image)), name="tiny"), 8)
    images = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    function = forward_function(model, SIZE)
    to_onnx(function, tmp_path / "model.onnx")
    (tmp_path / "model.tflite").write_bytes(to_tflite(model, function, quantize=(False,))[0])
    for runner in (ONNXRunner(tmp_path / "model.onnx"), TFLiteRunner(tmp_path / "model.tflite")):
        np.testing.assert_allclose(runner(images), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)  # eager use unharmed
