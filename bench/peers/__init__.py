"""The peers: what a user would run instead of flatmin, written from the papers and the public
algorithms (spec/algorithms.md), in our own code, one module per family.

Each module defines ``contenders()``: its entries for the steps suite, with their counted
traffic next to them. ``contenders()`` here collects them all.
"""
from __future__ import annotations

from . import compiled_sam, davda54_sam, foreach_sam, gam_official, gc_paper, nso_official, pytorch_optimizer_sam

FAMILIES = (davda54_sam, foreach_sam, pytorch_optimizer_sam, compiled_sam, gam_official, nso_official, gc_paper)


def contenders(backends=()) -> list:
    """Every family's peers; with ``backends``, also pytorch_optimizer's SAM adapted onto each."""
    return [c for family in FAMILIES for c in family.contenders()] + pytorch_optimizer_sam.adapted(backends)
