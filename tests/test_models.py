"""The model registry: building every architecture, preprocessing as layers, weights resolution, ImageNet
downloads (stubbed, never the network), the offline weight files in ../shared/weights, fine-tuning and saving."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from allstudy.models.layers import single_view, with_tta
from allstudy.models.registry import (  # noqa: E402
    REGISTRY,
    WeightsUnavailable,
    adapt_standardise,
    build_model,
    copy_weights,
    get_architecture,
    resolve_weights,
    unfreeze_top,
)
from allstudy.models.views import dihedral

pytestmark = pytest.mark.slow  # trains or builds Keras models: the full tier (make test), not make test-fast

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
needs_shared_weights = pytest.mark.skipif(
    not SHARED_WEIGHTS.is_dir(), reason="../shared/weights (offline ImageNet files) is absent"
)

MOBILENET_025 = "mobilenet_2_5_224_tf_no_top.h5"
MOBILENET_V2 = "mobilenet_v2_1.0_224_imagenet_no_top.h5"
EFFICIENTNET_LITE0 = "efficientnet_lite0_imagenet.keras"

# Keras' official storage URLs of the no-top ImageNet weights (keras/src/applications/*.py).
VGG16_NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_NOTOP
RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP
EFFICIENTNETB0_NOTOP = "efficientnetb0_notop.h5"
EFFICIENTNETB0_URL = "https://storage.googleapis.com/keras-applications/" + EFFICIENTNETB0_NOTOP

OFFLINE_ERROR = (
    "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/: "
    "None -- [Errno -3] Temporary failure in name resolution"
)

SMALL = 32


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _app_module(name: str):
    """keras.src.applications.<name>; its ``file_utils.get_file`` is what downloads the ImageNet weights."""
    return importlib.import_module(f"keras.src.applications.{name}")


def _stub_download(monkeypatch, module_name: str, files: dict[str, Path]) -> list[tuple[str, str]]:
    """Replace get_file (as the application module sees it) by a stub that records and serves local files."""
    calls: list[tuple[str, str]] = []

    def fake_get_file(fname=None, origin=None, *args, **kwargs):
        calls.append((fname, origin))
        return str(files[fname])

    monkeypatch.setattr(_app_module(module_name).file_utils, "get_file", fake_get_file)
    return calls


def _save_legacy_h5(model, path: Path) -> Path:
    """Write ``model``'s weights in the legacy HDF5 layout of Keras' released application files."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def _assert_same_weights(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


@pytest.fixture(autouse=True)
def _no_weights_dir_env(monkeypatch):
    """A weights folder from the caller's environment must not change what these tests resolve."""
    monkeypatch.delenv("ALLSTUDY_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def small_models():
    """Models built from scratch at 32 px, by (architecture, number of classes), shared by read-only tests."""
    cache: dict[tuple[str, int], object] = {}

    def get(name: str, n_classes: int = 2):
        if (name, n_classes) not in cache:
            cache[name, n_classes] = build_model(name, n_classes, SMALL, weights=None)
        return cache[name, n_classes]

    return get


# 1. Every architecture builds and gives probabilities -------------------------------------------------


def test_registry_lists_the_seven_architectures():
    assert list(REGISTRY) == ["sequential", "lenet", "vgg16", "resnet50", "mobilenet", "mobilenetv2", "efficientnet"]
    assert {name for name, a in REGISTRY.items() if not a.transfer} == {"sequential", "lenet"}
    assert get_architecture("vgg16").preprocessing == "caffe"


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("n_classes", [2, 4])
def test_every_architecture_builds_and_outputs_probabilities(small_models, name, n_classes):
    built = small_models(name, n_classes)
    assert built.arch.name == name and built.input_size == SMALL and built.weights is None
    assert built.model.input_shape == (None, SMALL, SMALL, 3)
    assert built.model.output_shape == (None, n_classes)
    probabilities = built.model(_images(3, SMALL), training=False).numpy()
    assert probabilities.shape == (3, n_classes)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    if REGISTRY[name].transfer:
        assert built.backbone.name == "backbone" and built.head.name == "head"
        assert built.features.output_shape[-1] == built.head.input_shape[-1]
        assert built.backbone.trainable  # from scratch: everything learns
    else:
        assert built.backbone is None and built.features is None and built.head is None


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown architecture 'alexnet'.*sequential.*efficientnet"):
        build_model("alexnet", 2, SMALL)


@pytest.mark.parametrize("n_classes", [1, 0])
def test_fewer_than_two_classes_is_a_clear_error(n_classes):
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("lenet", n_classes, SMALL)


# 2. Preprocessing layers match keras.applications' own functions -----------------------------------------


def _preprocess_output(model, x):
    sub = keras.Model(model.input, model.get_layer("preprocess").output)
    return sub(x, training=False).numpy()


@pytest.mark.parametrize(
    "name, reference",
    [
        ("vgg16", keras.applications.vgg16.preprocess_input),
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("mobilenet", keras.applications.mobilenet.preprocess_input),
        ("mobilenetv2", keras.applications.mobilenet.preprocess_input),
        ("mobilenetv2", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_preprocess_layer_matches_keras_applications(small_models, name, reference):
    x = _images(4, SMALL, seed=1)
    expected = reference(x.copy())  # preprocess_input may work in place on NumPy input
    np.testing.assert_allclose(_preprocess_output(small_models(name).model, x), expected, atol=1e-3)


def test_caffe_preprocess_layer_is_frozen(small_models):
    layer = small_models("vgg16").model.get_layer("preprocess")
    assert isinstance(layer, keras.layers.Conv2D) and not layer.trainable and not layer.trainable_weights


@pytest.mark.parametrize("name", ["sequential", "lenet"])
def test_small_models_rescale_to_unit_range(small_models, name):
    x = _images(4, SMALL, seed=2)
    np.testing.assert_allclose(_preprocess_output(small_models(name).model, x), x / 255.0, atol=1e-6)


def test_efficientnet_preprocessing_is_inside_the_backbone(small_models):
    model = small_models("efficientnet").model
    with pytest.raises(ValueError):
        model.get_layer("preprocess")
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in model.get_layer("backbone").layers)


# 3. Weights resolution -----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, "none", "None", "", "scratch"])
def test_no_weights_resolve_to_none(weights):
    assert resolve_weights(get_architecture("vgg16"), weights) is None
    assert resolve_weights(get_architecture("sequential"), weights) is None


def test_a_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    with pytest.raises(FileNotFoundError, match="weights.h5"):
        resolve_weights(get_architecture("vgg16"), str(missing))
    with pytest.raises(FileNotFoundError) as err:
        build_model("vgg16", 2, SMALL, weights=str(missing))
    assert str(missing) in str(err.value)


def test_an_existing_weights_file_resolves_to_its_path(tmp_path):
    path = tmp_path / "mine.weights.h5"
    path.touch()
    assert resolve_weights(get_architecture("resnet50"), str(path)) == str(path)
    assert resolve_weights(get_architecture("resnet50"), path) == str(path)


@pytest.mark.parametrize("name", ["sequential", "lenet"])
def test_imagenet_for_a_model_without_backbone_is_an_error(name):
    with pytest.raises(ValueError, match="no ImageNet weights"):
        resolve_weights(get_architecture(name), "imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model(name, 2, SMALL, weights="imagenet")


@pytest.mark.parametrize(
    "name, alpha, file_name",
    [
        ("mobilenet", 0.25, MOBILENET_025),
        ("mobilenet", 1.0, "mobilenet_1_0_224_tf_no_top.h5"),
        ("mobilenetv2", 1.0, MOBILENET_V2),
        ("efficientnet", 1.0, EFFICIENTNET_LITE0),
    ],
)
def test_imagenet_resolves_to_the_offline_file_in_the_weights_dir(tmp_path, name, alpha, file_name):
    arch = get_architecture(name)
    assert resolve_weights(arch, "imagenet", alpha, tmp_path) == "imagenet"  # folder without the file
    (tmp_path / file_name).touch()  # an empty file is enough to resolve (nothing is loaded here)
    assert resolve_weights(arch, "imagenet", alpha, tmp_path) == str(tmp_path / file_name)
    assert resolve_weights(arch, "imagenet", alpha, str(tmp_path)) == str(tmp_path / file_name)


def test_the_offline_mobilenet_file_is_per_alpha(tmp_path):
    (tmp_path / MOBILENET_025).touch()
    assert resolve_weights(get_architecture("mobilenet"), "imagenet", 0.5, tmp_path) == "imagenet"


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenet", "mobilenetv2", "efficientnet"])
def test_imagenet_without_a_weights_dir_means_download(name):
    assert resolve_weights(get_architecture(name), "imagenet") == "imagenet"


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_architectures_without_an_offline_file_always_download(tmp_path, name):
    (tmp_path / VGG16_NOTOP).touch()
    (tmp_path / RESNET50_NOTOP).touch()
    assert resolve_weights(get_architecture(name), "imagenet", weights_dir=tmp_path) == "imagenet"


def test_the_weights_dir_environment_variable_is_honoured(tmp_path, monkeypatch):
    (tmp_path / MOBILENET_V2).touch()
    arch = get_architecture("mobilenetv2")
    monkeypatch.setenv("ALLSTUDY_WEIGHTS_DIR", str(tmp_path))
    assert resolve_weights(arch, "imagenet") == str(tmp_path / MOBILENET_V2)
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_weights(arch, "imagenet", weights_dir=other) == "imagenet"  # an explicit folder wins
    monkeypatch.setenv("ALLSTUDY_WEIGHTS_DIR", "")
    assert resolve_weights(arch, "imagenet") == "imagenet"


# 4. No network: a clear WeightsUnavailable ------------------------------------------------------------------


def _offline(monkeypatch, module_name: str) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def offline_get_file(fname=None, origin=None, *args, **kwargs):
        calls.append((fname, origin))
        raise Exception(OFFLINE_ERROR)  # what keras' get_file raises when the URL cannot be fetched

    monkeypatch.setattr(_app_module(module_name).file_utils, "get_file", offline_get_file)
    return calls


def test_offline_imagenet_download_raises_weights_unavailable(monkeypatch):
    calls = _offline(monkeypatch, "vgg16")
    with pytest.raises(WeightsUnavailable) as err:
        build_model("vgg16", 4, 64, weights="imagenet")
    message = str(err.value)
    assert "vgg16" in message and "--weights" in message and "--weights-dir" in message and "none" in message
    assert "Temporary failure in name resolution" in message
    assert isinstance(err.value, RuntimeError) and "URL fetch failure" in str(err.value.__cause__)
    assert calls == [(VGG16_NOTOP, VGG16_URL)]


def test_other_errors_are_not_disguised_as_download_failures(monkeypatch):
    def broken_get_file(*args, **kwargs):
        raise ValueError("file hash does not match")

    monkeypatch.setattr(_app_module("vgg16").file_utils, "get_file", broken_get_file)
    with pytest.raises(ValueError, match="hash") as err:
        build_model("vgg16", 2, SMALL, weights="imagenet")
    assert not isinstance(err.value, WeightsUnavailable)


def test_offline_mobilenet_message_names_the_real_file(monkeypatch):
    _offline(monkeypatch, "mobilenet")
    with pytest.raises(WeightsUnavailable) as err:
        build_model("mobilenet", 2, 128, weights="imagenet", alpha=0.25)
    assert MOBILENET_025 in str(err.value)


# 5. The download path, with a stubbed download location ----------------------------------------------------


@pytest.mark.parametrize(
    "name, application, module_name, file_name, url",
    [
        ("vgg16", keras.applications.VGG16, "vgg16", VGG16_NOTOP, VGG16_URL),
        ("resnet50", keras.applications.ResNet50, "resnet", RESNET50_NOTOP, RESNET50_URL),
    ],
)
def test_imagenet_download_path_loads_keras_weights(
    tmp_path, monkeypatch, name, application, module_name, file_name, url
):
    size = 64
    reference = application(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    saved = reference.get_weights()
    calls = _stub_download(monkeypatch, module_name, {file_name: _save_legacy_h5(reference, tmp_path / file_name)})

    built = build_model(name, 3, size, weights="imagenet")

    assert calls == [(file_name, url)]
    assert built.weights == "imagenet"
    assert not built.backbone.trainable and not built.backbone.trainable_weights
    assert built.head.trainable_weights  # only the head learns in phase 1
    _assert_same_weights(built.backbone.get_weights(), saved)
    probabilities = built.model(_images(2, size), training=False).numpy()
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def downloaded_efficientnet(tmp_path_factory):
    """efficientnet with weights='imagenet' and no local file: keras' EfficientNetB0, download stubbed."""
    size = 64
    reference = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    saved = reference.get_weights()
    path = _save_legacy_h5(reference, tmp_path_factory.mktemp("efficientnet") / EFFICIENTNETB0_NOTOP)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ALLSTUDY_WEIGHTS_DIR", raising=False)
        calls = _stub_download(mp, "efficientnet", {EFFICIENTNETB0_NOTOP: path})
        built = build_model("efficientnet", 2, size, weights="imagenet")
    return built, calls, saved


def test_efficientnet_without_local_file_downloads_efficientnetb0(downloaded_efficientnet):
    built, calls, saved = downloaded_efficientnet
    assert calls == [(EFFICIENTNETB0_NOTOP, EFFICIENTNETB0_URL)]
    assert built.weights == "imagenet" and not built.backbone.trainable
    assert built.backbone.get_layer("block1a_se_squeeze")  # B0 has squeeze-and-excitation, Lite0 has not
    assert built.features.output_shape == (None, 1280)
    _assert_same_weights(built.backbone.get_weights(), saved)


def test_pretrained_efficientnetb0_backbone_runs_in_inference_mode(downloaded_efficientnet):
    built = downloaded_efficientnet[0]
    x = _images(8, 64, seed=3)
    inference = built.features(x, training=False).numpy()
    training = built.features(x, training=True).numpy()
    assert np.abs(training - inference).max() <= 1e-3 * np.abs(inference).max()


# 6. The real offline files in ../shared/weights ------------------------------------------------------------


@needs_shared_weights
@pytest.mark.parametrize(
    "name, alpha, file_name, n_features, application",
    [
        ("mobilenet", 0.25, MOBILENET_025, 256, keras.applications.MobileNet),
        ("mobilenetv2", 1.0, MOBILENET_V2, 1280, keras.applications.MobileNetV2),
    ],
)
def test_offline_mobilenet_files_load(name, alpha, file_name, n_features, application):
    built = build_model(name, 2, 224, weights="imagenet", alpha=alpha, weights_dir=SHARED_WEIGHTS)
    assert built.weights == str(SHARED_WEIGHTS / file_name)
    assert not built.backbone.trainable and not built.backbone.trainable_weights
    assert built.features.output_shape == (None, n_features)
    if name == "mobilenet":
        assert built.info["alpha"] == 0.25
    reference = application(
        include_top=False,
        weights=str(SHARED_WEIGHTS / file_name),
        alpha=alpha,
        input_shape=(224, 224, 3),
        pooling="avg",
    )
    _assert_same_weights(built.backbone.get_weights(), reference.get_weights())
    probabilities = built.model(_images(1, 224), training=False).numpy()
    assert probabilities.shape == (1, 2)
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)


@needs_shared_weights
def test_offline_efficientnet_is_lite0():
    built = build_model("efficientnet", 2, 224, weights="imagenet", weights_dir=SHARED_WEIGHTS)
    assert built.weights == str(SHARED_WEIGHTS / EFFICIENTNET_LITE0)
    assert not built.backbone.trainable and not built.backbone.trainable_weights
    assert built.features.output_shape == (None, 1280)
    layer_names = {layer.name for layer in built.backbone.layers}
    assert {"stem_conv", "top_conv", "avg_pool"} <= layer_names
    assert not any("_se_" in n for n in layer_names)  # Lite0: no squeeze-and-excitation
    assert "predictions" not in layer_names  # cut at the pooled features
    full = keras.saving.load_model(SHARED_WEIGHTS / EFFICIENTNET_LITE0, compile=False, safe_mode=True)
    _assert_same_weights(built.backbone.get_layer("stem_conv").get_weights(), full.get_layer("stem_conv").get_weights())
    x = _images(1, 224, seed=4)
    expected = keras.Model(full.input, full.get_layer("avg_pool").output)(x, training=False).numpy()
    np.testing.assert_allclose(built.features(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)


@needs_shared_weights
def test_pretrained_mobilenetv2_backbone_ignores_training_mode():
    built = build_model("mobilenetv2", 2, 224, weights="imagenet", dropout=0.0, weights_dir=SHARED_WEIGHTS)
    x = _images(2, 224, seed=5)
    np.testing.assert_allclose(
        built.features(x, training=True).numpy(), built.features(x, training=False).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        built.model(x, training=True).numpy(), built.model(x, training=False).numpy(), rtol=1e-5, atol=1e-6
    )
    # Still so after unfreezing the top for phase 2: BatchNorm stays frozen.
    unfreeze_top(built.backbone, REGISTRY["mobilenetv2"].fine_tune_layers)
    np.testing.assert_allclose(
        built.features(x, training=True).numpy(), built.features(x, training=False).numpy(), rtol=1e-5, atol=1e-5
    )


# 7. From scratch the backbone's BatchNorm learns ------------------------------------------------------------


def test_from_scratch_backbone_trains_batchnorm():
    built = build_model("resnet50", 2, 64, weights=None)
    assert built.weights is None and built.backbone.trainable
    x = _images(4, 64, seed=6)
    inference = built.features(x, training=False).numpy()
    training = built.features(x, training=True).numpy()
    assert not np.allclose(training, inference, rtol=1e-3, atol=1e-4)


def test_from_scratch_batchnorm_follows_the_weights_quickly():
    import keras

    batch_norms = [
        layer
        for layer in build_model("resnet50", 2, 64, weights=None).backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and all(layer.momentum == 0.9 for layer in batch_norms)


def test_from_scratch_convolutions_start_from_he_initialisation():
    import keras

    keras.utils.set_random_seed(0)
    convolutions = [
        layer
        for layer in build_model("vgg16", 2, 32, weights=None).backbone.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    assert len(convolutions) == 13
    for (
        layer
    ) in convolutions:  # He: std sqrt(2 / fan_in); Glorot's uniform kernels have std sqrt(2 / (fan_in + fan_out))
        kernel = layer.kernel.numpy()
        fan_in = int(np.prod(kernel.shape[:-1]))
        assert kernel.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.15), layer.name
    keras.utils.set_random_seed(0)
    again = build_model("vgg16", 2, 32, weights=None).backbone.get_layer(convolutions[5].name).kernel.numpy()
    np.testing.assert_array_equal(again, convolutions[5].kernel.numpy())  # seeded: a run repeats


# 7b. Test-time augmentation: the dihedral views, inside the saved model ------------------------------------


def test_the_eight_dihedral_views_are_distinct_symmetries():
    x = _images(1, 8, seed=7)
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    np.testing.assert_array_equal(dihedral(x, 2), x[:, ::-1, ::-1])  # two quarter turns = both flips


def test_tta_model_averages_the_views_and_survives_safe_mode_loading(tmp_path):
    import keras

    built = build_model("lenet", 4, 32)
    x = _images(3, 32, seed=8)
    expected = np.mean([built.model.predict(dihedral(x, k), verbose=0) for k in range(8)], axis=0)
    wrapped = with_tta(built.model, 8)
    assert wrapped.name == "lenet_tta8" and single_view(wrapped) is built.model
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), expected, atol=1e-6)
    wrapped.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert single_view(loaded).name == "single_view"
    assert with_tta(built.model, 1) is built.model
    with pytest.raises(ValueError, match="1, 4 or 8"):
        with_tta(built.model, 3)


# 8. unfreeze_top ----------------------------------------------------------------------------------------------


def test_unfreeze_top_unfreezes_the_top_layers_with_weights_but_not_batchnorm():
    built = build_model("mobilenetv2", 2, SMALL, weights=None)
    backbone = built.backbone
    backbone.trainable = False
    n = 8
    candidates = [
        layer for layer in backbone.layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    unfrozen = candidates[-n:]

    count = unfreeze_top(backbone, n)

    assert backbone.trainable and count == n
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable and not layer.trainable_weights, layer.name
        elif any(layer is u for u in unfrozen):
            assert layer.trainable and layer.trainable_weights, layer.name
        else:
            assert not layer.trainable_weights, layer.name
    assert {id(v) for v in backbone.trainable_weights} == {id(v) for layer in unfrozen for v in layer.trainable_weights}
    # The whole model now trains the head and exactly those backbone layers.
    expected = len(backbone.trainable_weights) + len(built.head.trainable_weights)
    assert len(built.model.trainable_weights) == expected


def test_unfreeze_top_zero_layers_keeps_everything_frozen():
    built = build_model("mobilenet", 2, SMALL, weights=None)
    assert unfreeze_top(built.backbone, 0) == 0
    assert not built.backbone.trainable_weights


# 9. Save and load .keras with safe_mode ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sequential", "vgg16", "mobilenetv2"])
def test_model_saves_and_loads_with_safe_mode(small_models, tmp_path, name):
    model = small_models(name).model
    x = _images(3, SMALL, seed=7)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    if name == "vgg16":
        layer = loaded.get_layer("preprocess")
        assert isinstance(layer, keras.layers.Conv2D)
        _assert_same_weights(layer.get_weights(), model.get_layer("preprocess").get_weights())
        expected_preprocess = keras.applications.vgg16.preprocess_input(x.copy())
        np.testing.assert_allclose(_preprocess_output(loaded, x), expected_preprocess, atol=1e-3)
    if name != "sequential":
        assert loaded.get_layer("backbone") and loaded.get_layer("head")


def test_copy_weights_carries_an_adapted_normalization():
    """set_weights alone leaves a Normalization layer on its old statistics; copy_weights does not."""
    features = np.random.default_rng(0).normal(5.0, 3.0, (200, 6)).astype("float32")

    def head():
        return keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Normalization(name="standardise"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )

    source, target = head(), head()
    source.get_layer("standardise").adapt(features)
    copy_weights(source, target)
    np.testing.assert_allclose(target.predict(features, verbose=0), source.predict(features, verbose=0), atol=1e-6)
    standardised = keras.Sequential(target.layers[:1])(features)
    assert abs(float(np.mean(standardised))) < 1e-3 and abs(float(np.std(standardised)) - 1) < 1e-2


def test_a_feature_dead_in_training_cannot_explode_the_answer(tmp_path):
    """A feature no training field lights up is only centred: a field that lights it up stays a bounded answer."""
    rng = np.random.default_rng(0)
    features = rng.normal(1.0, 0.5, (400, 8)).astype("float32")
    features[:, 0] = 0.0  # a ReLU unit dead on every training field
    features[:, 1] = 2.0 + 1e-6 * rng.normal(size=400).astype("float32")  # almost constant
    labels = keras.utils.to_categorical((features[:, 2] > 1.0).astype(int), 2)

    def trained_head(standardise):
        keras.utils.set_random_seed(0)
        head = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Normalization(name="standardise"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        unscaled = standardise(head.get_layer("standardise"), features)
        head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
        head.fit(features, labels, epochs=20, batch_size=64, verbose=0)
        return head, unscaled

    head, unscaled = trained_head(adapt_standardise)
    assert unscaled == 2
    lit = features[:50].copy()
    lit[:, 0], lit[:, 1] = 6.0, 2.5  # far beyond anything seen in training
    before, after = head.predict(features[:50], verbose=0), head.predict(lit, verbose=0)
    assert float(np.abs(after - before).max()) < 0.75 and float(after.max()) < 1 - 1e-4
    z = keras.Sequential(head.layers[:1])(lit).numpy()
    assert np.abs(z[:, :2]).max() < 10 and np.isfinite(z).all()
    # the same head adapted by Keras alone divides by 1e-7: the lit feature alone decides, with certainty
    plain, _ = trained_head(lambda layer, x: layer.adapt(x))
    z_plain = keras.Sequential(plain.layers[:1])(lit).numpy()
    assert np.abs(z_plain[:, 0]).max() > 1e6
    answers = plain.predict(lit, verbose=0)
    assert len(set(answers.argmax(axis=1))) == 1 and float(answers.max(axis=1).min()) > 1 - 1e-6
    # it survives saving and loading (the variance is a weight of the layer)
    head.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(loaded.predict(lit, verbose=0), after, atol=1e-6)


def test_transfer_heads_standardise_their_features(small_models):
    head = small_models("mobilenet").head
    assert head.layers[0] is head.get_layer("standardise")
