"""Content hashes: of a file's bytes, and short keys of text (cache names, stamps)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in blocks: model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(text: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``text``: a key for a cache file or folder."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
