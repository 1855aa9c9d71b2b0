"""Profiles: every setting of a study run (allstudy.models.profiles)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from allstudy.models.profiles import ARCHITECTURES, PROFILES, TrainConfig, get_profile, train_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_has_the_same_keys_and_a_config_for_each_architecture(name):
    settings = get_profile(name)
    assert set(settings) == set(PROFILES["quick"])
    assert settings["architectures"] and set(settings["architectures"]) <= set(ARCHITECTURES)
    assert abs(sum(settings["fractions"]) - 1.0) < 1e-9
    for arch in settings["architectures"]:
        config = train_config(name, arch)
        assert isinstance(config, TrainConfig) and config.arch == arch and config.seed == settings["seed"]


def test_the_demo_profile_crowds_its_fields_and_uses_the_offline_backbones():
    """make study's default: transfer heads on cached features of the backbones that load offline."""
    demo = get_profile("demo")
    assert demo["synthetic_leukocytes"] == (4, 8)
    transfer = {a for a in demo["architectures"] if train_config("demo", a).weights == "imagenet"}
    assert transfer == {"mobilenet", "mobilenetv2", "efficientnet"}
    assert all(train_config("demo", a).epochs == 0 for a in transfer)  # heads only: cached features
    for name in ("quick", "cpu", "paper"):
        assert get_profile(name)["synthetic_leukocytes"] is None  # their synthetic default as before


def test_unknown_profile_or_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")
    with pytest.raises(ValueError, match="has no settings for 'vgg16'"):
        train_config("demo", "vgg16")


def test_overrides_replace_the_profile_value_and_none_keeps_it():
    assert train_config("demo", "lenet", epochs=3).epochs == 3
    assert train_config("demo", "lenet", epochs=None).epochs == get_profile("demo")["train"]["lenet"]["epochs"]


def test_the_cnmc_profile_has_the_papers_settings_and_the_cpu_ones_for_the_offline_backbones():
    cnmc = get_profile("cnmc")
    assert cnmc["architectures"][:3] == ["mobilenet", "vgg16", "resnet50"]
    for arch in ("mobilenet", "vgg16", "resnet50"):
        config = train_config("cnmc", arch)
        assert (config.weights, config.input_size, config.batch_size) == ("imagenet", 224, 32)
        assert (config.optimizer, config.learning_rate, config.momentum, config.head_epochs) == ("sgd", 1e-4, 0.9, 100)
    assert train_config("cnmc", "mobilenet").alpha == 1.0
    for arch in ("mobilenetv2", "efficientnet"):
        assert train_config("cnmc", arch) == train_config("cpu", arch)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize(
    ("variables", "expected", "absent"),
    [
        ([], "--dataset taleqani --profile demo", "--data "),
        (["DATASET=cnmc"], "--dataset cnmc --profile demo", "--data "),
        (["DATA=/d/C-NMC_Leukemia", "PROFILE=cnmc"], '--data "/d/C-NMC_Leukemia" --profile cnmc', "--dataset"),
        (["DATA=/d/images"], '--data "/d/images" --profile cpu', "--dataset"),
    ],
)
def test_make_study_passes_the_dataset_and_profile(variables, expected, absent):
    """`make study` without DATA runs a synthetic default (DATASET), with DATA the folder (the cpu profile)."""
    result = subprocess.run(
        ["make", "-n", "study", *variables], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    command = " ".join(line for line in result.stdout.splitlines() if "allstudy run" in line)
    assert expected in command and absent not in command
