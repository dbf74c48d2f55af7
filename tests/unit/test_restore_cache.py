"""Checkpoints fetched back to the controller's disk (`RungStore.local_checkpoint`): keyed by the checkpoint itself,
so a retried rung never restores the previous attempt's weights, and one restore on disk at a time. No MLflow: the
store's download is a stand-in that writes what the URI names."""
from pathlib import Path

from ladder.control.rung_store import RungStore
from ladder.progress import Progress


class Downloads:
    """`download_checkpoint` of a registry: the checkpoint folder named by the URI, holding the URI itself."""

    def __init__(self):
        self.calls = 0

    def download_checkpoint(self, uri: str, dst: str) -> str:
        self.calls += 1
        folder = Path(dst) / Path(uri).name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cursor.json").write_text("{}")
        (folder / "weights").write_text(uri)
        return str(folder)


def at(attempt: int, step: int, run: str) -> Progress:
    return Progress("lad", "job", rung=1, attempt=attempt, step=step,
                    checkpoint=f"runs:/{run}/checkpoints/step-{step:05d}")


def test_a_retried_rung_restores_its_own_checkpoint_not_the_previous_attempts(tmp_path):
    """Issue 35, 2: after `on_reject: retry`, attempt 1's checkpoint at step 2 restored; without the URI and the
    attempt in the key the cached folder of attempt 0 at step 2 was returned (its weights, its optimizer, its
    cursor), and nothing was downloaded."""
    registry = Downloads()
    store = RungStore(registry, tmp_path)
    first = store.local_checkpoint(at(0, 2, "attempt0run"))
    assert (Path(first) / "weights").read_text() == "runs:/attempt0run/checkpoints/step-00002"
    assert store.local_checkpoint(at(0, 2, "attempt0run")) == first and registry.calls == 1  # cached: once
    retried = store.local_checkpoint(at(1, 2, "attempt1run"))
    assert (Path(retried) / "weights").read_text() == "runs:/attempt1run/checkpoints/step-00002"
    assert registry.calls == 2


def test_ten_restores_leave_one_restore_folder_on_disk(tmp_path):
    """Issue 35, 9: restores of ten rungs' checkpoints, each leaving a download cut short; without the cleanup
    every `restore-*` folder (and every cut-off `.restore-*`) stayed."""
    store = RungStore(Downloads(), tmp_path)
    for rung in range(1, 11):
        p = at(0, 5, f"run{rung}").to(rung=rung)
        store.local_checkpoint(p)
        (tmp_path / f"rung-{rung}" / f".restore-a0-00007-cut{rung}").mkdir()  # a download a killed controller left
    store.local_checkpoint(at(0, 9, "run11"))
    assert len(list(tmp_path.glob("rung-*/restore-*"))) == 1
    assert list(tmp_path.glob("rung-*/.restore-*")) == []
