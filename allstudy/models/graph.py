"""Reading a functional Keras model's graph: which layer made a tensor, and the embedding a model's
final layer reads (what the out-of-distribution guard and the serving file measure)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from allstudy.models.layers import single_view

#: Largest embedding kept as it is; a wider flattened feature map is averaged over space instead.
MAX_EMBEDDING_DIM = 4096


def node_of(tensor):
    """(the layer that produced ``tensor``, the node of that call)."""
    history = tensor._keras_history
    return history.operation, history.operation._inbound_nodes[history.node_index]


def embedding_model(model):
    """(keras.Model from the single-view input to the embedding tensor, description of the layer).

    The embedding is what the single-view model's final layer reads (see :mod:`allstudy.serving.ood`); a
    4-D output (a feature map, for the ``sequential`` model) is to be averaged over space.
    """
    view = single_view(model)
    final, node = node_of(view.outputs[0])
    tensor = node.input_tensors[0]
    where = f"input of {final.name!r}"
    if math.prod(tensor.shape[1:]) > MAX_EMBEDDING_DIM and len(tensor.shape) == 2:
        producer, inner = node_of(tensor)
        if isinstance(producer, keras.layers.Flatten):
            tensor = inner.input_tensors[0]
            where = f"spatial mean of {producer.name!r}'s input"
    return keras.Model(view.inputs[0], tensor, name="ood_embedding"), where


def pooled(features):
    """Spatial mean of a 4-D feature map; 2-D features unchanged (use inside a tf.function)."""
    features = tf.cast(features, tf.float32)
    return tf.reduce_mean(features, axis=[1, 2]) if len(features.shape) == 4 else features
