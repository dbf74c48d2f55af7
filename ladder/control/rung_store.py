"""Where a rung's state goes between its trainer and MLflow: checkpoints (written whole, logged to the rung run,
only then pointed at by the progress), the final student as an MLflow model, and checkpoints fetched back."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from ladder.progress import Progress
from stages.models import logged_model_uri


class CheckpointError(RuntimeError):
    """A checkpoint or candidate that could not be written whole (a full disk): one line; nothing points at it."""


@contextmanager
def whole_or_nothing(what: str, local: Path):
    """Write `local` and log it; a failed write (full disk, file size limit) ends in one CheckpointError naming
    what and why, and the local folder is removed either way."""
    try:
        yield
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise CheckpointError(f"{what} not written ({exc.strerror or exc}{where}); the last complete "
                              "checkpoint stands") from None
    finally:
        shutil.rmtree(local, ignore_errors=True)


class RungStore:
    """Checkpoints (when, and where) and candidates of one job's rungs; local folders live under
    `<workdir>/<ladder>/<job>/`."""

    def __init__(self, registry, root: Path, every: int = 10):
        self.registry = registry
        self.root = root
        self.every = every  # steps between checkpoints (the spec's checkpoint_every)

    def due(self, step: int, last: int) -> bool:
        """Whether a checkpoint follows `step`: every `every` steps, but not after the rung's `last` (its
        candidate is saved then)."""
        return step % self.every == 0 and step != last

    def checkpoint(self, rung, p: Progress, step: int) -> Progress:
        """Write a complete checkpoint, log it to the rung run, and only then point the progress at it."""
        local = self.root / f"rung-{p.rung}" / f"ckpt-{step:05d}"
        with whole_or_nothing(f"rung {p.rung} checkpoint at step {step}", local):
            rung.checkpoint(str(local))
            uri = self.registry.upload_checkpoint(p.rung_run, str(local), step)
        self.registry.flush_writes()  # steps up to a checkpoint are never redone: their metrics must be in
        return p.to(step=step, cursor=rung.cursor_state(), checkpoint=uri)

    def at_stop(self, rung, p: Progress) -> Progress:
        """A rung stopped between checkpoints keeps the steps it did: checkpointed now (unless none since)."""
        return self.checkpoint(rung, p, rung.step_no) if rung.step_no > p.step else p

    def log_candidate(self, rung, p: Progress, tags: dict[str, str]) -> Progress:
        """The rung's final student logged as an MLflow model, output of the rung run: the candidate that is
        registered next (the weights are stored once; nothing trains from them)."""
        local = self.root / f"rung-{p.rung}" / "candidate"
        with whole_or_nothing(f"rung {p.rung} trained student", local):
            rung.save_student(str(local / "model"))  # a LoRA rung's: the adapter merged into its base
            model_id = self.registry.log_model(p.rung_run, str(local / "model"), tags, rung.step_no)
            if rung.lora_sync:  # its adapter beside it, as an artifact of the rung run
                self.registry.upload_adapter(p.rung_run, rung.save_adapter(str(local / "adapter")))
        self.registry.flush_writes()
        return p.to(step=rung.step_no, cursor=rung.cursor_state(), checkpoint=logged_model_uri(model_id))

    def local_checkpoint(self, p: Progress) -> str:
        """The progress' checkpoint as a local folder, downloaded once per checkpoint: keyed by the rung, its attempt,
        the step and the checkpoint's URI (a retried rung never finds the previous attempt's files); the restores
        of other checkpoints, and downloads a killed controller left half done, are removed (one restore on disk)."""
        import hashlib

        key = hashlib.sha256(str(p.checkpoint).encode()).hexdigest()[:12]
        dst = self.root / f"rung-{p.rung}" / f"restore-a{p.attempt}-{p.step:05d}-{key}"
        for old in [*self.root.glob("rung-*/restore-*"), *self.root.glob("rung-*/.restore-*")]:  # and cut-off ones
            if old != dst:
                shutil.rmtree(old, ignore_errors=True)
        if not (dst / "cursor.json").is_file():
            staging = dst.parent / f".{dst.name}"
            self.registry.download_checkpoint(p.checkpoint, str(staging))
            shutil.rmtree(dst, ignore_errors=True)
            (staging / Path(p.checkpoint).name).rename(dst)
            shutil.rmtree(staging, ignore_errors=True)
        return str(dst)


class RunCalibration:
    """The controller's `CalibrationKeeper`: sampled calibration sets logged with the rung run that samples them
    and read back through the job's run (a resume on another node finds them)."""

    def __init__(self, ctl):  # the controller (its `progress` and `registry`)
        self.ctl = ctl

    def save(self, name: str, text: str) -> None:
        p = self.ctl.progress
        self.ctl.registry.save_calibration(p.parent_run, p.rung_run, name, text)

    def load(self, name: str):
        p = self.ctl.progress
        return self.ctl.registry.load_calibration(p.parent_run, name) if p.parent_run else None
