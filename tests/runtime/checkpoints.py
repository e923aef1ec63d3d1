"""A local checkpoint folder for tests that need its weights file, not a model that loads."""

from __future__ import annotations


def fake_checkpoint(folder):
    """`folder` made a checkpoint: an empty config and a weights file reading "weights v1" (no
    real tensors: for tests where only the files' identity matters). Returns the weights file."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights v1")
    return weights
