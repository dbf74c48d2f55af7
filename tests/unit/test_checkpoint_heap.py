"""A checkpoint passes through the controller without its bytes in the controller's heap (issue 35, item 9): the
trainer's files arrive as blobs mapped from Ray's object store (`stages/files.py`) and are written from there, and a
restore's files go to the trainer mapped from disk. Measured with tracemalloc in this process, in the controller's
place, around `Rung.checkpoint`, `Rung.save_student` and `Rung.restore` with a real trainer actor; when the files
travelled as bytes, each of them held at least the weights' size (7 MB here) in this heap."""
import tracemalloc
from types import SimpleNamespace

import pytest
from local_ray import module_ray  # tests/unit/local_ray.py

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ray_local():
    yield from module_ray(__name__)


def heap_peak(call) -> tuple[object, int]:
    """`call()`'s result and the most bytes this process's Python heap held beyond its start meanwhile."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        out = call()
        return out, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_checkpoints_and_the_student_pass_the_controller_mapped_not_copied(ray_local, tmp_path):
    from ladder.models.tiny import build_tiny_model
    from ladder.rung.driver import Rung
    from ladder.rung.prompt_cursor import PromptCursor
    from stages.actors import kill_all, spawn
    from stages.train import TrainConfig, Trainer

    model = build_tiny_model(tmp_path / "micro", "micro", seed=0)
    weights = (model / "model.safetensors").stat().st_size
    trainer = spawn(Trainer, str(model), TrainConfig(lr=1e-3))
    try:
        rung = SimpleNamespace(trainer=trainer, from_trainer=ray_local.get, step_no=3, cursor=PromptCursor(50, 0),
                               _next=None, sync=lambda: None)
        rung.cursor_state = rung.cursor.state
        ckpt, wrote = heap_peak(lambda: Rung.checkpoint(rung, str(tmp_path / "ckpt")))
        student, saved = heap_peak(lambda: Rung.save_student(rung, str(tmp_path / "student")))
        rung.step_no = 0
        step, restored = heap_peak(lambda: Rung.restore(rung, ckpt))
    finally:
        kill_all([trainer])
    assert (tmp_path / "ckpt" / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "student" / "model.safetensors").read_bytes()
    assert (tmp_path / "student" / "model.safetensors").stat().st_size >= weights * 0.9
    assert step == 3  # the trainer took the checkpoint's step back with its files
    assert max(wrote, saved, restored) < weights / 4, (wrote, saved, restored, weights)
