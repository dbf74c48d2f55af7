"""The start of a stage process (an engine, a trainer): less CPU for importing and building its model.

A stage starts by importing vLLM or torch and transformers (about 6,000 modules) and building a model: a few
million objects, hardly any of them garbage. Python's collector counts allocations and walks what it tracks again and
again while they pile up; vLLM adds full collections of its own while its engine starts. Measured on the test model
with one thread (`bench/stage_start.py`, `bench/results/stage_start.json`): an engine's start 10.0 CPU-s with the
default collector, 7.2 with both of the below; a trainer's 3.8 and 3.4.
"""
from __future__ import annotations

import contextlib
import gc

START_THRESHOLDS = (50_000, 20, 100)  # a young collection every 50,000 allocations (Python's: 700), full ones rare


@contextlib.contextmanager
def few_collections():
    """Collect garbage rarely for the block (a stage's imports and model build); the collector's own thresholds
    after it. Usable as a decorator; nested uses keep the outer one's."""
    before = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(before, START_THRESHOLDS)))
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextlib.contextmanager
def heap_frozen():
    """The objects that exist now (the modules imported so far) left out of every collection during the block
    (`gc.freeze`), and under the collector again after it (`gc.unfreeze`): for a block that collects the whole heap
    several times, as vLLM's engine does while it starts (~0.2 s a collection)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
