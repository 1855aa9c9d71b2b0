"""Serving: the model folder, the Predictor, the out-of-distribution guard, LiteRT, export and the app."""

#: ``allstudy export --format`` (here, not in :mod:`allstudy.serving.export`, so the command line can list them
#: without loading TensorFlow).
EXPORT_FORMATS = ("tflite", "onnx")
