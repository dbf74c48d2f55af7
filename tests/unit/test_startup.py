"""A stage's start collects garbage rarely (`stages.startup`): the collector's thresholds raised for the imports and
the model build of an engine and a trainer, and back after; vLLM's collections while it starts skip the heap that was
there before. The CPU it saves: `bench/stage_start.py`."""
import gc

import pytest

from stages.startup import START_THRESHOLDS, few_collections, heap_frozen


def test_few_collections_raises_the_thresholds_for_the_block_and_restores_them_whatever_happens():
    before = gc.get_threshold()
    with pytest.raises(KeyError):
        with few_collections():
            assert gc.get_threshold() == tuple(max(a, b) for a, b in zip(before, START_THRESHOLDS))
            with few_collections():  # nested: the outer's stay
                pass
            assert gc.get_threshold()[0] == max(before[0], START_THRESHOLDS[0])
            raise KeyError("a start that failed")
    assert gc.get_threshold() == before


def test_heap_frozen_leaves_the_present_objects_out_of_collections_for_the_block_only():
    before = gc.get_freeze_count()
    kept = [object() for _ in range(1000)]
    with heap_frozen():
        assert gc.get_freeze_count() >= before + len(kept)
    assert gc.get_freeze_count() == 0  # all under the collector again


def threshold_at_model_check(monkeypatch, module) -> list:
    """The collector's thresholds each time `module` checks a model folder (its first step of a start), after which
    the start fails (FileNotFoundError)."""
    seen = []

    def check(path):
        seen.append(gc.get_threshold())
        raise FileNotFoundError(path)

    monkeypatch.setattr(module, "check_model_dir", check)
    return seen


def test_a_trainer_starts_with_few_collections(monkeypatch, tmp_path):
    """`Trainer.__init__` raises the thresholds before it imports torch and transformers and builds the model (seen
    at its check of the model folder), and restores them after, here after that check failed."""
    import stages.train

    seen = threshold_at_model_check(monkeypatch, stages.train)
    before = gc.get_threshold()
    with pytest.raises(FileNotFoundError):
        stages.train.Trainer(str(tmp_path), stages.train.TrainConfig())
    assert seen and seen[0][0] >= START_THRESHOLDS[0] and gc.get_threshold() == before


def test_an_engine_starts_with_few_collections(monkeypatch, tmp_path):
    """`build_llm` raises the thresholds before it imports vLLM (seen at its first check of the model folder)
    and restores them after, here after that check failed."""
    import stages.engine

    seen = threshold_at_model_check(monkeypatch, stages.engine)
    before = gc.get_threshold()
    with pytest.raises(FileNotFoundError):
        stages.engine.build_llm(stages.engine.EngineConfig(model=str(tmp_path)))
    assert seen and seen[0][0] >= START_THRESHOLDS[0] and gc.get_threshold() == before
