"""The MLflow side of a ladder: experiment, parent and rung runs, model versions, tags, aliases.

MLflow is the source of truth for lineage and promotion decisions (design.md section 5).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ladder.decisions import STATUS_TAG
from ladder.mlflow_store import local_artifact_root, tracking_uri_for
from ladder.runtime import first_line
from stages.models import (RegistryError, fetch_model, is_model_uri, model_id_of, model_uri, if_exists,
                           parse_model_uri)

if TYPE_CHECKING:
    from ladder.judges import ResolvedJudge

PROGRESS_TAG = "ladder.progress"
STOP_TAG = "ladder.stop_request"


class Registry:
    """Runs, versions and aliases of one ladder (registered model = ladder name)."""

    def __init__(self, name: str, tracking_uri: str, artifact_root: Optional[str] = None, retry_s: float = 0.0):
        from mlflow import MlflowClient

        from ladder.retrying import RetryingClient

        self.name = name
        self.tracking_uri = tracking_uri  # never set globally: one process may hold several ladders
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in our output
        self.raw = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.client = RetryingClient(self.raw, retry_s)  # every call outlives an MLflow outage of `retry_s`
        #                                                 (0, for commands: MLflow's own retries, then one line)
        self.retry_s = retry_s
        self.outbox = None                               # per-step writes go through a background outbox once set
        self.experiment_id = self._experiment(f"ladder/{name}", artifact_root)

    @classmethod
    def for_spec(cls, spec, retry_s: float = 0.0) -> "Registry":
        uri = tracking_uri_for(spec)
        return cls(spec.name, uri, local_artifact_root(uri, spec.workdir), retry_s)

    def buffer_writes(self) -> None:
        """From now on `log_metrics` and `log_judge_examples` return at once; a background thread delivers
        them in order, retrying through MLflow outages."""
        from ladder.retrying import Outbox

        if self.outbox is None:
            self.outbox = Outbox(self.retry_s)

    def flush_writes(self) -> None:
        if self.outbox is not None:
            self.outbox.flush()

    @classmethod
    def find(cls, name: str, tracking_uri: str) -> Optional["Registry"]:
        """The registry of an existing ladder, or None when MLflow has never seen one of that name."""
        from mlflow import MlflowClient

        if MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(f"ladder/{name}") is None:
            return None
        return cls(name, tracking_uri)

    @staticmethod
    def ladder_names(tracking_uri: str) -> list[str]:
        """Every ladder MLflow knows (experiments named ladder/<name>)."""
        from mlflow import MlflowClient

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
                                     tags={"ladder.job": job, "ladder.kind": "ladder"})
        params = spec.flat()
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i: i + 100])
        return run.info.run_id

    def start_rung_run(self, parent_run_id: str, rung: int, job: str, rung_uid: Optional[str] = None) -> str:
        """The rung's run, created once per `rung_uid` (a create retried through an outage is not doubled)."""
        from ladder.retrying import with_retry

        uid = rung_uid or f"{job}-{rung}-0"

        def create() -> str:
            found = self.raw.search_runs([self.experiment_id], f"tags.`ladder.rung_uid` = '{uid}' and "
                                                               "tags.`ladder.kind` = 'rung'", max_results=1)
            if found:
                return found[0].info.run_id
            return self.raw.create_run(self.experiment_id, run_name=f"rung-{rung}", tags={
                "mlflow.parentRunId": parent_run_id, "ladder.rung": str(rung), "ladder.job": job,
                "ladder.kind": "rung", "ladder.rung_uid": uid}).info.run_id
        return with_retry(create, self.retry_s, "create rung run")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # fixed here: a batch delivered twice is stored once
        batch = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
        self._write("log metrics", lambda client: client.log_batch(run_id, metrics=batch))

    def record_judge_probe(self, run_id: str, scores: list[float]) -> None:
        """The judge pool's scores of fixed calibration items: proof of which weights it served."""
        import json

        self.client.set_tag(run_id, "ladder.judge_probe", json.dumps([round(s, 6) for s in scores]))

    def record_ended_by(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "ladder.ended_by", reason)

    def latest_metrics(self, run_id: Optional[str]) -> dict[str, float]:
        """A run's latest value of every metric, named as the step loop names them (`reward/mean`)."""
        metrics = self.client.get_run(run_id).data.metrics if run_id else {}
        return {k.replace(".", "/"): v for k, v in metrics.items()}

    @staticmethod
    def rung_tags(progress, spec_sha256: str, task: str, judge_mode: str) -> dict[str, str]:
        """The lineage tags of a rung's model version."""
        return {"ladder.rung": str(progress.rung), "ladder.judge": progress.judge or "-",
                "ladder.student_init": progress.results.student_init,
                "ladder.spec_sha256": spec_sha256, "ladder.job": progress.job, "ladder.rung_uid": progress.rung_uid,
                "ladder.task": task, "ladder.judge_mode": judge_mode}

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
        self.client.set_terminated(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    # saved progress and control requests ------------------------------------------------
    def save_progress(self, progress) -> None:
        """The ladder's progress on its parent run (the one value status, stop and resume read)."""
        self.client.set_tag(progress.parent_run, PROGRESS_TAG, progress.to_json())

    def ladder_runs(self) -> list:
        """Parent runs of this ladder, newest first."""
        return self.client.search_runs([self.experiment_id], "tags.`ladder.kind` = 'ladder'",
                                       order_by=["attributes.start_time DESC"], max_results=100)

    def load_progress(self, job: Optional[str] = None):
        """The newest job's saved progress (or `job`'s); None when the ladder never started one."""
        from ladder.progress import Progress

        for run in self.ladder_runs():
            text = run.data.tags.get(PROGRESS_TAG)
            if text and (job is None or run.data.tags.get("ladder.job") == job):
                return Progress.from_json(text)
        return None

    def save_spec(self, run_id: str, spec) -> None:
        self.client.log_text(run_id, spec.model_dump_json(indent=1), "spec.json")

    def load_spec(self, run_id: str):
        """The spec a job was started with (resume runs exactly it)."""
        import tempfile

        from ladder.spec import LadderSpec

        with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
            text = Path(self.client.download_artifacts(run_id, "spec.json", tmp)).read_text()
        return LadderSpec.model_validate_json(text)

    def request_stop(self, run_id: str, now: bool) -> None:
        self.client.set_tag(run_id, STOP_TAG, "now" if now else "graceful")

    def stop_request(self, run_id: str) -> Optional[str]:
        return self.client.get_run(run_id).data.tags.get(STOP_TAG) or None

    def clear_stop_request(self, run_id: str) -> None:
        self.client.set_tag(run_id, STOP_TAG, "")

    # checkpoints ------------------------------------------------------------------------
    def upload_checkpoint(self, run_id: str, local_dir: str, step: int) -> str:
        """Log a complete checkpoint folder to the rung run; returns its artifact URI (used only once logged)."""
        path = f"checkpoints/step-{step:05d}"
        try:
            self.client.log_artifacts(run_id, local_dir, artifact_path=path)
        except Exception as exc:
            from ladder.retrying import MlflowUnavailable, transient

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

    # versions ---------------------------------------------------------------------------
    def find_version(self, rung_uid: str):
        found = self.client.search_model_versions(f"name='{self.name}' and tag.`ladder.rung_uid`='{rung_uid}'")
        return found[0] if found else None

    def log_model(self, run_id: str, hf_dir: str, tags: dict[str, str], step: int = 0) -> str:
        """The rung's trained student as an MLflow model (transformers flavor) output by its run; its id."""
        from ladder.mlmodels import log_hf_model

        card = (f"# {self.name}, rung {tags.get('ladder.rung', '?')}\n\nA student trained with GRPO by judge-ladder "
                f"against the frozen judge {tags.get('ladder.judge', '-')}.")
        return log_hf_model(self.client, self.experiment_id, run_id, hf_dir, f"{self.name}-rung-{tags.get('ladder.rung')}",
                            tags, card, step)

    def register(self, run_id: str, hf_dir: Optional[str], tags: dict[str, str], model_id: Optional[str] = None,
                 step: int = 0) -> str:
        """Register the rung's model as a version, idempotent on `ladder.rung_uid`: the logged model `model_id`
        when the rung logged it already, else `hf_dir` logged now. A version found already registered (a crash
        after it) still gets its aliases and description."""
        from ladder.mlmodels import register_logged_model
        from ladder.retrying import with_retry

        mv = self.find_version(tags["ladder.rung_uid"])
        if mv is None:
            if if_exists(lambda: self.client.get_registered_model(self.name)) is None:
                self.client.create_registered_model(self.name, tags={"ladder": "judge-ladder"},
                                                    description=f"judge-ladder {self.name}: one version per rung; "
                                                                "alias judge = the rung that judges the next one.")
            model_id = model_id or self.log_model(run_id, hf_dir, tags, step)
            mv = with_retry(lambda: self.find_version(tags["ladder.rung_uid"]) or register_logged_model(
                self.raw, self.tracking_uri, self.name, model_id, run_id, {STATUS_TAG: "candidate", **tags}),
                self.retry_s, "register model version")
            mv = self._one_version(tags["ladder.rung_uid"], mv)
        rung = tags.get("ladder.rung")
        if rung:
            self.client.set_registered_model_alias(self.name, f"rung-{rung}", mv.version)
        self.client.set_registered_model_alias(self.name, "candidate", mv.version)
        self.describe(str(mv.version))
        return str(mv.version)

    def _one_version(self, rung_uid: str, mv):
        """The rung's single version: a create that MLflow's HTTP client retried after a lost response may
        have made two; the later ones are deleted."""
        found = sorted(self.client.search_model_versions(
            f"name='{self.name}' and tag.`ladder.rung_uid`='{rung_uid}'"), key=lambda v: int(v.version))
        for extra in found[1:]:
            self.client.delete_model_version(self.name, str(extra.version))
        return found[0] if found else mv

    def record_judge_input(self, run_id: str, judge: "ResolvedJudge") -> None:
        """Name the rung's judge on its run: a registered judge as the run's model input (an MLflow link),
        a verifier or a model directory by kind and label."""
        from mlflow.entities import LoggedModelInput

        kind = "verifier" if judge.kind == "verifier" else "registered model" if is_model_uri(judge.location) \
            else "model directory"
        self.client.set_tag(run_id, "ladder.judge_kind", kind)
        if kind == "registered model":
            ref = parse_model_uri(judge.location)
            model_id = model_id_of(self.client.get_model_version(ref.name, ref.version))
            if model_id:
                self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])

    def describe(self, version: str) -> None:
        """Write the version's description for people (and the same text on its rung run)."""
        from ladder.lineage import describe

        mv = self.version(version)
        text = describe(self, mv)
        self.client.update_model_version(self.name, str(version), description=text)
        if mv.run_id:
            self.client.set_tag(mv.run_id, "mlflow.note.content", text)

    # lookups: "there is none" only when MLflow says so; an outage or a refusal propagates ----------------
    def version(self, version: str):
        found = if_exists(lambda: self.client.get_model_version(self.name, str(version)))
        if found is None:
            raise RegistryError(f"model {self.name!r} has no version {version}")
        return found

    def aliases(self) -> dict[str, str]:
        """alias -> version of the ladder's registered model (empty before the first rung registers)."""
        model = if_exists(lambda: self.client.get_registered_model(self.name))
        return {k: str(v) for k, v in model.aliases.items()} if model else {}

    def alias(self, alias: str) -> Optional[str]:
        """The version `alias` points to; None only when MLflow answers that there is no such alias (or model)."""
        found = if_exists(lambda: self.client.get_model_version_by_alias(self.name, alias))
        return str(found.version) if found else None

    # decisions (ladder/decisions.py) --------------------------------------------------------
    def promote(self, version: str, by: str = "auto", reason: str = "") -> None:
        """Move `judge` and `champion` to `version`; record who/when/why on the version."""
        from ladder.decisions import promote

        promote(self, str(version), by, reason)

    def reject(self, version: str, by: str = "auto", reason: str = "") -> None:
        """Mark `version` rejected; `judge`/`champion`, where it holds them, go back to the last promoted version."""
        from ladder.decisions import reject

        reject(self, str(version), by, reason)

    def decision(self, version: str) -> Optional[str]:
        """The decision recorded on `version` ("promoted" or "rejected", by the gate or by hand), else None."""
        status = self.status_of(version)
        return status if status in ("promoted", "rejected") else None

    def record_gate(self, version: str, gate) -> None:
        """The gate's verdict on a version: pass/fail, the deciding rule, its numbers."""
        from ladder.decisions import gate_tags

        for key, value in gate_tags(gate).items():  # the verdict last: `recorded_gate` reads it
            self.client.set_model_version_tag(self.name, str(version), key, value)
        self.describe(version)

    def recorded_gate(self, version: str):
        """The gate's verdict already recorded on `version` (`decisions.Verdict`), or None."""
        from ladder.decisions import recorded_gate

        return recorded_gate(self.version(version).tags)

    def heldout_accuracy(self, version: str) -> Optional[float]:
        """The student's held-out accuracy at the end of the version's rung (None if not recorded)."""
        run_id = self.version(version).run_id
        return self.client.get_run(run_id).data.metrics.get("eval.accuracy") if run_id else None

    def status_of(self, version: str) -> str:
        return self.version(version).tags.get(STATUS_TAG, "candidate")

    def versions(self) -> list:
        return sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version))

    def lineage(self) -> list[dict]:
        from ladder.lineage import lineage_rows

        return lineage_rows(self)

    def log_ladder_chart(self, run_id: str, out_dir: str) -> Optional[str]:
        from ladder.lineage import log_chart

        return log_chart(self, run_id, out_dir)

    # judges -----------------------------------------------------------------------------
    def download(self, version: str, dst: str) -> str:
        """The version's HF checkpoint as a local directory (cached under `dst`)."""
        self.version(version)
        return fetch_model(model_uri(self.name, version), self.tracking_uri, dst)

    def pinned(self, uri: str):
        """The version `models:/<name>@<alias>` or `models:/<name>/<version>` names (RegistryError when none)."""
        ref = parse_model_uri(uri)
        found = if_exists(lambda: self.client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias else
                          self.client.get_model_version(ref.name, ref.version))
        if found is None:
            what = f"no alias {ref.alias!r}" if ref.alias else f"no version {ref.version}"
            raise RegistryError(f"{uri}: model {ref.name!r} has {what}")
        return found
