"""Reusable nodes for small-helps-large collaboration (one file each)."""

from tandemlm.modules.solve import Solve

__all__ = ["Solve"]
