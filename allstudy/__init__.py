"""allstudy: a reproducible deep-learning study of Acute Lymphoblastic Leukemia detection."""
__version__ = "0.1.0"
