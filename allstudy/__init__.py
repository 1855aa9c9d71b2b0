"""allstudy: a reproducible deep-learning study of Acute Lymphoblastic Leukemia detection."""
import os as _os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for the study's users.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
