"""The Gradio app (allstudy.serving.app), served on a loopback port with a tiny model folder built as in
test_predict (a LeNet at 32 px, model.json from allstudy.serving.modelcard, ood.json fitted on synthetic
fields), driven by gradio_client and by a real browser. One app server runs at a time."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_model import BROKEN, encode_image, field_paths, load_fields, model_meta  # noqa: E402

from allstudy.data.classes import TALEQANI_CLASSES  # noqa: E402
from allstudy.testing.servers import free_port, local_server  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # serves a Keras model: the full tier
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),  # from gradio's queue, not ours
]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "outputs" / "screenshots" / "app.png"
VERDICTS = {"benign", "malignant", "uncertain", "out-of-distribution"}


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-view LeNet model folder with an ood.json (its policy answers by p_malignant > 0.5: never
    'uncertain')."""
    import keras

    from allstudy.core.atomic import write_json
    from allstudy.data.synthetic import generate_dataset
    from allstudy.models.registry import build_model
    from allstudy.serving.ood import fit_guard

    base = tmp_path_factory.mktemp("app")
    fields = {
        name: field_paths(generate_dataset(base / name, n_per_class=10, seed=seed, size=64, recapture_fraction=0.0))
        for name, seed in (("train", 0), ("val", 1))
    }
    keras.utils.set_random_seed(0)
    model = build_model("lenet", len(TALEQANI_CLASSES), 32).model
    folder = base / "model"
    folder.mkdir()
    model.save(folder / "model.keras")
    write_json(folder / "model.json", model_meta(list(TALEQANI_CLASSES), False, tta_views=1))
    fit_guard(model, load_fields(fields["train"]), load_fields(fields["val"])).save(folder / "ood.json")
    return folder


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from allstudy.data.synthetic import render_field

    path = tmp_path_factory.mktemp("field") / "field.png"
    render_field("Pro", np.random.default_rng(7), 224).save(path)
    return path


# --------------------------------------------------------------------------------------- no model (runs first)


def test_without_a_model_the_app_starts_and_says_how_to_make_one(tmp_path, field):
    """``python app.py`` (the CLI's ``serve``) with a missing folder: the page and both endpoints answer."""
    import httpx
    from gradio_client import handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(ROOT / "app.py"), "--model", str(tmp_path / "missing"), "--port", str(port)]
    with (
        open(tmp_path / "app.log", "w") as log,
        local_server(
            command,
            url,
            120,
            f"the app (log: {tmp_path / 'app.log'})",
            log=log,
            cwd=tmp_path,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        ),
    ):
        config = httpx.get(url + "config", timeout=10).text
        assert "No trained model yet" in config and "make study" in config
        assert "python -m allstudy run --data DIR --profile cpu" in config
        client = _client(url)
        answer = client.predict(handle_file(str(field)), api_name="/predict")
        assert answer["verdict"] == "" and "does not exist" in answer["error"]
        assert "make study" in answer["error"] and "python -m allstudy run --data DIR --profile cpu" in answer["error"]
        rows = client.predict([handle_file(str(field))], api_name="/predict_batch")
        assert [r["file"] for r in rows] == ["field.png"] and "make study" in rows[0]["error"]


# --------------------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def app(model_dir):
    from allstudy.serving.app import launch

    served = launch(model_dir, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield served
    served.close()


@pytest.fixture(scope="module")
def client(app):
    return _client(app.local_url)


@pytest.fixture(scope="module")
def predictor(model_dir):
    from allstudy.serving.predictor import Predictor

    return Predictor(model_dir)


def _predict(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict")


def test_binds_loopback_with_the_limits(app):
    assert app.local_url.startswith("http://127.0.0.1:") and app.share is False
    assert app.max_file_size == 20 * 1024 * 1024
    assert app._queue.default_concurrency_limit == 2


def test_predict_endpoint_is_the_predictors_answer(client, predictor, field):
    answer = _predict(client, field)
    assert set(answer) == {
        "label",
        "display",
        "verdict",
        "malignant",
        "confidence",
        "probabilities",
        "message",
        "prediction_set",
        "reason",
        "error",
    }
    own = predictor.predict(field)
    assert answer["error"] == "" and answer["verdict"] in VERDICTS
    assert (answer["label"], answer["verdict"], answer["message"]) == (own.label, own.verdict, own.message)
    assert (answer["prediction_set"], answer["reason"]) == (own.prediction_set, own.reason) and own.reason
    assert list(answer["probabilities"]) == list(TALEQANI_CLASSES)
    np.testing.assert_allclose(list(answer["probabilities"].values()), list(own.probabilities.values()), atol=1e-6)
    assert answer["confidence"] == pytest.approx(answer["probabilities"][answer["label"]])  # the answered class


def test_predict_batch_endpoint_gives_rows_in_order(client, app, tmp_path):
    from gradio_client import handle_file

    examples = sorted((app.allstudy_dir / "examples").glob("*.jpg"))
    assert [p.name for p in examples] == [f"synthetic-{c}.jpg" for c in sorted(TALEQANI_CLASSES)]
    (tmp_path / "notes.jpg").write_text("not a picture")
    files = [examples[0], tmp_path / "notes.jpg", examples[3]]
    rows = client.predict([handle_file(str(p)) for p in files], api_name="/predict_batch")
    assert [r["file"] for r in rows] == [p.name for p in files]
    assert list(rows[0]) == ["file", "label", "verdict", "confidence", *(f"p_{c}" for c in TALEQANI_CLASSES), "error"]
    assert rows[0]["verdict"] in VERDICTS and rows[2]["verdict"] in VERDICTS and rows[0]["error"] == ""
    assert sum(rows[0][f"p_{c}"] for c in TALEQANI_CLASSES) == pytest.approx(1.0, abs=1e-5)
    assert "not an image" in rows[1]["error"] and rows[1]["confidence"] is None and rows[1]["verdict"] == ""


def test_each_bad_input_gets_its_reason_and_the_server_goes_on(client, field, tmp_path):
    for name, (make, word) in BROKEN.items():  # empty, text named .jpg, truncated JPEG, 1x1, huge-dimension header
        path = tmp_path / name
        path.write_bytes(make())
        answer = _predict(client, path)
        assert word in answer["error"], (name, answer)
        assert answer["verdict"] == "" and answer["confidence"] is None and answer["probabilities"] == {}
        assert answer["message"].startswith("cannot read the image")
        assert _predict(client, field)["verdict"] in VERDICTS, f"a good image failed after {name}"


def test_readable_oddities_are_answered(client, field, tmp_path):
    image = Image.open(field).convert("RGB")
    gif = io.BytesIO()
    image.save(gif, format="GIF", save_all=True, append_images=[image.rotate(90), image.rotate(180)], duration=100)
    oddities = {
        "grey.png": encode_image(image.convert("L"), "PNG"),
        "rgba.png": encode_image(image.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode_image(image.convert("CMYK"), "JPEG"),
        "16-bit.png": encode_image(Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257), "PNG"),
        "palette.png": encode_image(image.convert("P"), "PNG"),
        "field.bmp": encode_image(image, "BMP"),
        "animated.gif": gif.getvalue(),
        "field.png.txt": encode_image(image, "PNG"),  # decided by content
    }
    for name, data in oddities.items():
        (tmp_path / name).write_bytes(data)
        answer = _predict(client, tmp_path / name)
        assert answer["error"] == "" and answer["verdict"] in VERDICTS, (name, answer)


def test_uploads_over_the_size_limit_are_refused_and_the_server_goes_on(client, field, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(encode_image(Image.new("RGB", (64, 64)), "PNG") + os.urandom(21 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|large|413"):
        _predict(client, big)
    assert _predict(client, field)["verdict"] in VERDICTS


def test_batch_requests_over_the_file_limit_are_refused(client, field, monkeypatch):
    from gradio_client import handle_file

    import allstudy.serving.app

    monkeypatch.setattr(allstudy.serving.app, "MAX_BATCH_FILES", 2)  # the app runs in this process
    with pytest.raises(Exception, match="at most 2"):
        client.predict([handle_file(str(field))] * 3, api_name="/predict_batch")
    assert len(client.predict([handle_file(str(field))] * 2, api_name="/predict_batch")) == 2


def _call(app, api_name: str, data: list) -> str:
    """A raw HTTP call of an endpoint (what any client could send): the event stream's text."""
    import httpx

    base = app.local_url.rstrip("/") + "/gradio_api/call/" + api_name
    event = httpx.post(base, json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{base}/{event}", timeout=60).text


def test_a_path_outside_the_uploads_is_never_read_or_served(app, field, tmp_path):
    """A client naming a server file instead of uploading one gets an error, not an answer; and no file outside
    the uploads and the app's examples is served (Gradio checks both; allowed_paths is only the examples folder)."""
    import httpx

    secret = tmp_path / "secret.png"
    secret.write_bytes(field.read_bytes())  # a readable field: an answer would prove it was read
    for api_name, data in (
        ("predict", [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}]),
        ("predict_batch", [[{"path": str(secret), "meta": {"_type": "gradio.FileData"}}]]),
    ):
        stream = _call(app, api_name, data)
        assert "event: error" in stream and "not uploaded by a user" in stream and "verdict" not in stream, stream
    assert "not uploaded by a user" in _call(
        app, "predict", [{"path": "../../../etc/passwd", "meta": {"_type": "gradio.FileData"}}]
    )
    for path in (secret, Path(__file__), ROOT / "pyproject.toml"):
        response = httpx.get(app.local_url.rstrip("/") + f"/gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404), (path, response.status_code)
    assert app.allowed_paths == [str(app.allstudy_dir)]


def test_serve_command_line():
    from allstudy.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--port", "7861"])
    assert (args.func.__name__, args.model, args.port, args.share) == ("_serve", "m", 7861, False)
    assert build_parser().parse_args(["serve", "--share"]).model == "outputs/models/chosen"


def test_verdict_lines():
    from allstudy.serving.app import verdict_line
    from allstudy.serving.predictor import Prediction

    def answer(verdict, message, display="Pro-B ALL", prediction_set=("Pro",), reason=""):
        return Prediction({"Pro": 0.6}, "Pro", display, True, 0.6, verdict, message, list(prediction_set), reason)

    malignant = verdict_line(answer("malignant", "Malignant: Pro-B ALL", reason="Malignant: Pro-B ALL"))
    assert malignant.startswith("### Malignant: Pro-B ALL\n") and "prediction set: Pro-B ALL." in malignant
    benign = verdict_line(
        answer(
            "benign",
            "Benign (hematogones)",
            "Benign",
            ("Benign",),
            "Benign (hematogones): leukemia ruled out at the 99.5 % level",
        )
    )
    assert "calibrated probability 60.0%" in benign and "leukemia ruled out at the 99.5 % level" in benign
    uncertain = verdict_line(
        answer(
            "uncertain",
            "uncertain: refer for expert review",
            "Benign",
            ("Benign", "Early"),
            "Benign is likely, but leukemia is not ruled out at the 99.5 % level",
        )
    )
    assert uncertain.startswith(
        "### uncertain: refer for expert review\nBenign is likely, but leukemia is not ruled out"
    )
    assert "Prediction set: Benign (hematogones) · Early Pre-B ALL" in uncertain
    ood = verdict_line(answer("out-of-distribution", "outside what this model was trained on: near-black"))
    assert ood.startswith("### outside what this model was trained on\nnear-black")
    assert "empty file" in verdict_line(Prediction(error="empty file (0 bytes)"))


# --------------------------------------------------------------------------------------- a real browser


def _browser_skip() -> str | None:
    from allstudy.testing.browser import unavailable

    return unavailable()


@pytest.mark.browser
@pytest.mark.skipif(_browser_skip() is not None, reason=str(_browser_skip()))
def test_in_a_real_browser(app, tmp_path):
    """Chromium uploads a broken file (the verdict line says why), then a synthetic field: the label,
    Grad-CAM and segmentation appear; the batch tab gives a table and a CSV; a screenshot is saved."""
    from allstudy.data.classes import display_name
    from allstudy.testing.browser import open_page, show_prediction

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    example = app.allstudy_dir / "examples" / "synthetic-Pro.jpg"
    shown = "(s) => { const i = document.querySelector(s); return !!i && i.complete && i.naturalWidth > 0; }"
    with open_page(app.local_url) as page:
        page.locator("#upload input[type=file]").set_input_files(str(empty))
        page.wait_for_function(
            "() => document.querySelector('#verdict').innerText.includes('empty file')", timeout=60_000
        )
        assert "Cannot read this file" in page.inner_text("#verdict")
        page.locator("#upload button[aria-label*=Clear]").first.click()
        answer = show_prediction(page, example, SCREENSHOT)  # label, verdict and Grad-CAM shown; screenshot
        page.wait_for_function(shown, arg="#segmentation img", timeout=60_000)
        assert answer["gradcam"] and answer["screenshot"] == str(SCREENSHOT)
        probabilities = page.inner_text("#probabilities")
        assert all(name in probabilities for name in ("Benign (hematogones)", "Pro-B ALL", "Pre-B ALL"))
        assert set(answer["probabilities"]) == {display_name(c) for c in TALEQANI_CLASSES}
        assert list(answer["probabilities"])[0] == answer["label"]
        assert any(word in answer["verdict"] for word in ("Malignant", "Benign", "outside", "uncertain"))

        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch input[type=file]").set_input_files([str(example), str(empty)])
        page.get_by_role("button", name="Classify all").click()
        page.get_by_role("button", name="Download CSV").wait_for(timeout=60_000)
        table = page.inner_text("#table")
        assert "synthetic-Pro.jpg" in table and "empty file" in table
        page.get_by_role("tab", name="Model").click()
        panel = page.inner_text("#model-panel")
        assert "not a diagnostic device" in panel and "95 % CI" in panel and "lenet" in panel
    assert SCREENSHOT.stat().st_size > 10_000
