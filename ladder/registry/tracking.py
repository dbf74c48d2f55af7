"""The tracking side of a ladder in MLflow: its experiment, the parent and rung runs, per-step metrics (through an
outbox that outlives MLflow outages), the saved progress and spec, stop requests, and checkpoints as artifacts.

`Registry` (registry.py) adds the model registry: versions, aliases and decisions.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from ladder.registry.store import local_artifact_root, store_lock, tracking_uri_for
from ladder.errors import first_line
from ladder.registry.tags import Tag

STEP_METRIC = "reward.mean"  # logged at every step of a rung: which steps a rung run holds
TAG_MAX_CHARS = 5000  # MLflow's limit on a tag's value (8000 on recent servers, 5000 on older ones)




class Tracking:
    """The experiment `ladder/<name>` and its runs."""

    def __init__(self, name: str, tracking_uri: str, artifact_root: Optional[str] = None, retry_s: float = 0.0):
        from mlflow import MlflowClient

        from ladder.registry.retrying import RetryingClient

        self.name = name
        self.tracking_uri = tracking_uri  # never set globally: one process may hold several ladders
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in our output
        self.retry_s = retry_s
        self.outbox = None                               # per-step writes go through a background outbox once set
        self.fence = None  # a controller's lease check (`lease.LeaseKeeper.check`): called before each state write
        self._claimed: dict[str, int] = {}  # rung run -> the last step whose metrics are logged (`claim_step`)
        with store_lock(tracking_uri):  # a new SQLite store's tables and the experiment: created once
            self.raw = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.client = RetryingClient(self.raw, retry_s)  # every call outlives an MLflow outage of `retry_s`
            #                                                 (0, for commands: MLflow's own retries, then one line)
            self.experiment_id = self._experiment(f"ladder/{name}", artifact_root)

    @classmethod
    def for_spec(cls, spec, retry_s: float = 0.0):
        uri = tracking_uri_for(spec)
        return cls(spec.name, uri, local_artifact_root(uri, spec.workdir), retry_s)

    def buffer_writes(self) -> None:
        """From now on `log_metrics` and `log_judge_examples` return at once; a background thread delivers
        them in order, retrying through MLflow outages."""
        from ladder.registry.retrying import Outbox

        if self.outbox is None:
            self.outbox = Outbox(self.retry_s)

    def flush_writes(self) -> None:
        if self.outbox is not None:
            self.outbox.flush()

    @classmethod
    def find(cls, name: str, tracking_uri: str):
        """The registry of an existing ladder, or None when MLflow has never seen one of that name."""
        from mlflow import MlflowClient

        with store_lock(tracking_uri):
            if MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(f"ladder/{name}") is None:
                return None
        return cls(name, tracking_uri)

    @staticmethod
    def ladder_names(tracking_uri: str) -> list[str]:
        """Every ladder MLflow knows (experiments named ladder/<name>)."""
        from mlflow import MlflowClient

        with store_lock(tracking_uri):
            found = MlflowClient(tracking_uri=tracking_uri).search_experiments(filter_string="name LIKE 'ladder/%'")
        return sorted(e.name.removeprefix("ladder/") for e in found)

    def _experiment(self, name: str, artifact_root: Optional[str]) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_root)

    # runs -------------------------------------------------------------------------------
    def start_ladder_run(self, spec, job: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name}-{job}",
                                     tags={Tag.JOB: job, Tag.KIND: "ladder"})
        params = spec.flat()
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i: i + 100])
        return run.info.run_id

    def start_rung_run(self, parent_run_id: str, rung: int, job: str, rung_uid: Optional[str] = None) -> str:
        """The rung's run, created once per `rung_uid` (a create retried through an outage is not doubled)."""
        self.fenced()
        from ladder.registry.retrying import with_retry

        uid = rung_uid or f"{job}-{rung}-0"

        def create() -> str:
            found = self.raw.search_runs([self.experiment_id], f"tags.`{Tag.RUNG_UID}` = '{uid}' and "
                                                               f"tags.`{Tag.KIND}` = 'rung'", max_results=1)
            if found:
                return found[0].info.run_id
            return self.raw.create_run(self.experiment_id, run_name=f"rung-{rung}", tags={
                "mlflow.parentRunId": parent_run_id, Tag.RUNG: str(rung), Tag.JOB: job,
                Tag.KIND: "rung", Tag.RUNG_UID: uid}).info.run_id
        return with_retry(create, self.retry_s, "create rung run")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # fixed here: a batch delivered twice is stored once
        batch = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
        self._write("log metrics", lambda client: client.log_batch(run_id, metrics=batch))

    def claim_step(self, run_id: str, step: int) -> bool:
        """True the first time step `step` of rung run `run_id` is claimed, by this process or an earlier one
        (whose step metrics MLflow holds); the caller then logs the step. A step redone after a restart from a
        checkpoint is claimed already: MLflow keeps every point it is sent and cannot delete one, so each step
        is logged once, by the attempt that first ran it."""
        if run_id not in self._claimed:
            self.flush_writes()  # what this process sent is in MLflow before MLflow is asked
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            self._claimed[run_id] = max((m.step for m in history), default=0)
        if step <= self._claimed[run_id]:
            return False
        self._claimed[run_id] = step
        return True

    def record_judge_probe(self, run_id: str, scores: list[float]) -> None:
        """The judge pool's scores of fixed calibration items: proof of which weights it served."""
        import json

        self.client.set_tag(run_id, Tag.JUDGE_PROBE, json.dumps([round(s, 6) for s in scores]))

    def record_lora_sync(self, run_id: str, mode: str, why: str = "") -> None:
        """A LoRA rung's sync choice: `adapter` (the engines keep the base, the adapter moves) or `merged: <why>`."""
        self.client.set_tag(run_id, Tag.LORA_SYNC, f"{mode}: {why}" if why else mode)

    def upload_adapter(self, run_id: str, local_dir: str) -> str:
        """A LoRA rung's final adapter (peft files) as an artifact of its run, beside the merged model."""
        self.fenced()
        self.client.log_artifacts(run_id, local_dir, artifact_path="adapter")
        return f"runs:/{run_id}/adapter"

    def record_ended_by(self, run_id: str, reason: str) -> None:
        from ladder.progress import bounded

        self.client.set_tag(run_id, Tag.ENDED_BY, bounded(reason, TAG_MAX_CHARS))

    def latest_metrics(self, run_id: Optional[str]) -> dict[str, float]:
        """A run's latest value of every metric, named as the step loop names them (`reward/mean`)."""
        metrics = self.client.get_run(run_id).data.metrics if run_id else {}
        return {k.replace(".", "/"): v for k, v in metrics.items()}


    def log_judge_examples(self, run_id: str, step: int, examples, folder: str = "judge_samples") -> None:
        """A few of the judge's outputs at this step (or, in `student_samples`, the student's), as a JSON artifact
        people can read."""
        import json

        if not examples:
            return
        text, path = json.dumps(list(examples), indent=1), f"{folder}/step-{step:04d}.json"
        self._write("log judge samples", lambda client: client.log_text(run_id, text, path))

    def _write(self, what: str, call) -> None:
        """A per-step write: through the outbox when one is set (delivered in the background, retried there),
        else now, with retries."""
        if self.outbox is not None:
            self.outbox.put(what, lambda: call(self.raw))
        else:
            call(self.client)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.fenced()  # a controller whose lease was taken over ends no run of the ladder
        self.client.set_terminated(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def fail_run(self, run_id: str, reason: str) -> None:
        """A run that failed says why (the MLflow UI shows it beside its metrics)."""
        self.record_ended_by(run_id, reason)
        self.end_run(run_id, "FAILED")

    def fenced(self) -> None:
        """Before a write of the ladder's state (progress, checkpoints, versions, aliases): LeaseLost when the
        controller writing through this store lost its lease; nothing when no controller writes through it."""
        if self.fence is not None:
            self.fence()

    # saved progress and control requests ------------------------------------------------
    def save_progress(self, progress) -> None:
        """The ladder's progress on its parent run (the one value status, stop and resume read)."""
        self.fenced()
        self.client.set_tag(progress.parent_run, Tag.PROGRESS, progress.to_json())

    def ladder_runs(self) -> list:
        """Parent runs of this ladder, newest first."""
        return self.client.search_runs([self.experiment_id], f"tags.`{Tag.KIND}` = 'ladder'",
                                       order_by=["attributes.start_time DESC"], max_results=100)

    def load_progress(self, job: Optional[str] = None):
        """The newest job's saved progress (or `job`'s); None when the ladder never started one."""
        from ladder.progress import Progress

        for run in self.ladder_runs():
            text = run.data.tags.get(Tag.PROGRESS)
            if text and (job is None or run.data.tags.get(Tag.JOB) == job):
                return Progress.from_json(text)
        return None

    def save_spec(self, run_id: str, spec) -> None:
        """`spec.json`, and its hash as a tag: `resume` refuses a `spec.json` edited since (`spec_changed`)."""
        self.client.log_text(run_id, spec.model_dump_json(indent=1), "spec.json")
        self.client.set_tag(run_id, Tag.SPEC_SHA256, spec.sha256())

    def spec_changed(self, run_id: str, spec) -> Optional[str]:
        """The hash the job started with, when `spec` (its saved `spec.json`, read back) no longer has it."""
        recorded = self.client.get_run(run_id).data.tags.get(Tag.SPEC_SHA256)
        return recorded if recorded and recorded != spec.sha256() else None

    def load_spec(self, run_id: str):
        """The spec a job was started with (resume runs exactly it)."""
        import tempfile

        from ladder.spec import LadderSpec

        with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
            text = Path(self.client.download_artifacts(run_id, "spec.json", tmp)).read_text()
        return LadderSpec.model_validate_json(text)

    def save_calibration(self, parent_run: str, rung_run: Optional[str], name: str, text: str) -> None:
        """A sampled calibration set, logged with the rung run that sampled it (`calibration/<name>`), then named
        on the job's run (the tag last: it never points at a set that is not there)."""
        self.fenced()
        run = rung_run or parent_run
        self.client.log_text(run, text, f"calibration/{name}")
        self.client.set_tag(parent_run, Tag.CALIBRATION + name, run)

    def load_calibration(self, parent_run: str, name: str) -> Optional[str]:
        """The text of a calibration set `save_calibration` kept for this job (None when there is none)."""
        import tempfile

        run = self.client.get_run(parent_run).data.tags.get(Tag.CALIBRATION + name)
        if not run:
            return None
        with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
            return Path(self.client.download_artifacts(run, f"calibration/{name}", tmp)).read_text()

    def request_stop(self, run_id: str, now: bool) -> None:
        """A stop request on the job's run; a graceful one never replaces a `now` already there (a stop only
        escalates)."""
        if not now and self.stop_request(run_id) == "now":
            return
        self.client.set_tag(run_id, Tag.STOP_REQUEST, "now" if now else "graceful")

    def stop_request(self, run_id: str) -> Optional[str]:
        return self.client.get_run(run_id).data.tags.get(Tag.STOP_REQUEST) or None

    def clear_stop_request(self, run_id: str) -> None:
        self.client.set_tag(run_id, Tag.STOP_REQUEST, "")

    # checkpoints ------------------------------------------------------------------------
    def upload_checkpoint(self, run_id: str, local_dir: str, step: int) -> str:
        """Log a complete checkpoint folder to the rung run; returns its artifact URI (used only once logged)."""
        path = f"checkpoints/step-{step:05d}"
        self.fenced()
        try:
            self.client.log_artifacts(run_id, local_dir, artifact_path=path)
        except Exception as exc:
            from ladder.registry.retrying import MlflowUnavailable, transient

            if not (isinstance(exc, MlflowUnavailable) or transient(exc)):  # the store answers: clean it now
                self.delete_artifacts(run_id, path)  # nothing points at a partial upload; nothing of it stays
            raise
        return f"runs:/{run_id}/{path}"

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove `path` (a file or folder) from the run's artifacts. Best effort: a warning naming the path
        when that fails (nothing points at it; the next upload of that step writes over it)."""
        import logging

        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(self.raw.get_run(run_id).info.artifact_uri, tracking_uri=self.tracking_uri)
            repo.delete_artifacts(path)
        except Exception as exc:  # cleanup must never hide the failure that called it
            logging.getLogger(__name__).warning("run %s: could not delete the partial artifacts %s (%s)", run_id,
                                                path, first_line(exc, 200))

    def download_checkpoint(self, uri: str, dst: str) -> str:
        import mlflow

        Path(dst).mkdir(parents=True, exist_ok=True)
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=self.tracking_uri)
