"""The study's own Keras layers and how a saved model is loaded with them.

:class:`Dihedral` (one symmetry of the square) makes test-time augmentation part of the saved model
(:func:`with_tta`); :func:`load_model` is the one way to read a ``model.keras`` of this study.
"""

from __future__ import annotations

import os

import keras

from allstudy.models.views import DIHEDRAL_VIEWS


def _dihedral_layer():
    @keras.saving.register_keras_serializable(package="allstudy")
    class Dihedral(keras.layers.Layer):
        """One symmetry of the square, as :func:`dihedral`: a blood-smear field has no up or left."""

        def __init__(self, k: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.k = int(k)

        def call(self, images):
            view = keras.ops.rot90(images, k=self.k % 4, axes=(1, 2))
            return keras.ops.flip(view, axis=2) if self.k >= 4 else view

        def get_config(self):
            return {**super().get_config(), "k": self.k}

    return Dihedral


#: Registered when this module is imported, so that ``keras.saving.load_model`` (safe mode) finds it.
Dihedral = _dihedral_layer()


def with_tta(model, views: int = 8):
    """``model`` wrapped to average its probabilities over ``views`` dihedral views (1 returns it unchanged).

    The single-view model stays inside as the nested model named ``single_view`` (what Grad-CAM explains).
    """
    if views not in DIHEDRAL_VIEWS:
        raise ValueError(f"test-time augmentation takes 1, 4 or 8 views, not {views}")
    if views == 1:
        return model
    name, model.name = model.name, "single_view"
    inputs = keras.Input(model.input_shape[1:], name="image")
    outputs = [model(Dihedral(k, name=f"view_{k}")(inputs)) for k in DIHEDRAL_VIEWS[views]]
    return keras.Model(inputs, keras.layers.Average(name="probabilities")(outputs), name=f"{name}_tta{views}")


def single_view(model):
    """The single-view model inside a :func:`with_tta` wrapper (or the model itself)."""
    try:
        return model.get_layer("single_view")
    except ValueError:
        return model


def load_model(path: str | os.PathLike, compile: bool = False):
    """A saved ``model.keras`` of this study, in Keras' safe mode, with the study's layers registered.

    ``compile``: restore the optimiser too (to resume training); predicting needs none.
    """
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
