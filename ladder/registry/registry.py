"""The model registry side of a ladder in MLflow: one version per rung candidate with its lineage tags, the aliases
(`judge`, `champion`, `rung-<k>`, `candidate`) and the decisions on versions.

MLflow is the source of truth for lineage and promotion decisions (design.md section 5); a `Registry` is also the
ladder's `Tracking` (runs, metrics, progress, checkpoints: tracking.py), on the same client.
"""
from __future__ import annotations

from typing import Optional

from ladder.errors import first_line
from ladder.progress import Progress, ResolvedJudge
from ladder.registry.tags import Tag
from ladder.registry.tracking import Tracking
from stages.models import RegistryError, fetch_model, is_model_uri, model_id_of, model_uri, if_exists, parse_model_uri


def rung_tags(progress, spec_sha256: str, task: str, judge_mode: str) -> dict[str, str]:
    """The lineage tags of a rung's model version."""
    return {Tag.RUNG: str(progress.rung), Tag.JUDGE: progress.judge or "-",
            Tag.STUDENT_INIT: progress.results.student_init,
            Tag.SPEC_SHA256: spec_sha256, Tag.JOB: progress.job, Tag.RUNG_UID: progress.rung_uid,
            Tag.TASK: task, Tag.JUDGE_MODE: judge_mode}


def version_tags(spec, p: Progress) -> dict[str, str]:
    """The lineage tags of rung `p.rung`'s model version."""
    rspec = spec.for_rung(p.rung)
    mode = "verifier" if p.results.judge_is_verifier else rspec.judge.mode
    tags = rung_tags(p, spec.sha256(), rspec.task_label(), mode)
    if p.results.yardstick is not None:
        tags[Tag.YARDSTICK] = f"{p.results.yardstick:.6f}"
    return tags


class Registry(Tracking):
    """Versions, aliases and decisions of one ladder (registered model = ladder name), beside its runs."""

    # versions ---------------------------------------------------------------------------
    def find_version(self, rung_uid: str):
        found = self.client.search_model_versions(f"name='{self.name}' and tag.`{Tag.RUNG_UID}`='{rung_uid}'")
        return found[0] if found else None

    def log_model(self, run_id: str, hf_dir: str, tags: dict[str, str], step: int = 0) -> str:
        """The rung's trained student as an MLflow model (transformers flavor) output by its run; its id."""
        from ladder.registry.mlmodels import log_hf_model

        self.fenced()
        card = (f"# {self.name}, rung {tags.get(Tag.RUNG, '?')}\n\nA student trained with GRPO by judge-ladder "
                f"against the frozen judge {tags.get(Tag.JUDGE, '-')}.")
        return log_hf_model(self.client, self.experiment_id, run_id, hf_dir, f"{self.name}-rung-{tags.get(Tag.RUNG)}",
                            tags, card, step)

    def register(self, run_id: str, hf_dir: Optional[str], tags: dict[str, str], model_id: Optional[str] = None,
                 step: int = 0) -> str:
        """Register the rung's model as a version, idempotent on `ladder.rung_uid`: the logged model `model_id`
        when the rung logged it already, else `hf_dir` logged now. A version found already registered (a crash
        after it) still gets its aliases and description."""
        from ladder.registry.mlmodels import register_logged_model
        from ladder.registry.retrying import with_retry

        self.fenced()
        mv = self.find_version(tags[Tag.RUNG_UID])
        if mv is None:
            if if_exists(lambda: self.client.get_registered_model(self.name)) is None:
                self.client.create_registered_model(self.name, tags={"ladder": "judge-ladder"},
                                                    description=f"judge-ladder {self.name}: one version per rung; "
                                                                "alias judge = the rung that judges the next one.")
            model_id = model_id or self.log_model(run_id, hf_dir, tags, step)
            mv = with_retry(lambda: self.find_version(tags[Tag.RUNG_UID]) or register_logged_model(
                self.raw, self.tracking_uri, self.name, model_id, run_id, {Tag.STATUS: "candidate", **tags}),
                self.retry_s, "register model version")
            mv = self._one_version(tags[Tag.RUNG_UID], mv)
        rung = tags.get(Tag.RUNG)
        self.fenced()
        if rung:
            self.client.set_registered_model_alias(self.name, f"rung-{rung}", mv.version)
        self.client.set_registered_model_alias(self.name, "candidate", mv.version)
        self.describe(str(mv.version))
        return str(mv.version)

    def _one_version(self, rung_uid: str, mv):
        """The rung's single version: a create that MLflow's HTTP client retried after a lost response may
        have made two; the later ones are deleted."""
        found = sorted(self.client.search_model_versions(
            f"name='{self.name}' and tag.`{Tag.RUNG_UID}`='{rung_uid}'"), key=lambda v: int(v.version))
        for extra in found[1:]:
            self.client.delete_model_version(self.name, str(extra.version))
        return found[0] if found else mv

    def record_judge_input(self, run_id: str, judge: "ResolvedJudge") -> None:
        """Name the rung's judge on its run: a registered judge as the run's model input (an MLflow link),
        a verifier or a model directory by kind and label."""
        from mlflow.entities import LoggedModelInput

        kind = "verifier" if judge.kind == "verifier" else "registered model" if is_model_uri(judge.location) \
            else "model directory"
        self.client.set_tag(run_id, Tag.JUDGE_KIND, kind)
        if kind == "registered model":
            ref = parse_model_uri(judge.location)
            model_id = model_id_of(self.client.get_model_version(ref.name, ref.version))
            if model_id:
                self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])

    def describe(self, version: str) -> None:
        """Write the version's description for people (and the same text on its rung run)."""
        from ladder.registry.lineage import describe

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

    # decisions (decisions.py) --------------------------------------------------------
    def promote(self, version: str, by: str = "auto", reason: str = "") -> None:
        """Move `judge` and `champion` to `version`; record who/when/why on the version."""
        from ladder.registry.decisions import promote

        promote(self, str(version), by, reason)

    def reject(self, version: str, by: str = "auto", reason: str = "") -> None:
        """Mark `version` rejected; `judge`/`champion`, where it holds them, go back to the last promoted version."""
        from ladder.registry.decisions import reject

        reject(self, str(version), by, reason)

    def decision(self, version: str) -> Optional[str]:
        """The decision recorded on `version` ("promoted" or "rejected", by the gate or by hand), else None."""
        status = self.status_of(version)
        return status if status in ("promoted", "rejected") else None

    def record_gate(self, version: str, gate) -> None:
        """The gate's verdict on a version: pass/fail, the deciding rule, its numbers."""
        from ladder.registry.decisions import gate_tags

        self.fenced()  # a controller whose lease was taken over mid-gate records no verdict
        for key, value in gate_tags(gate).items():  # the verdict last: `recorded_gate` reads it
            self.client.set_model_version_tag(self.name, str(version), key, value)
        self.describe(version)

    def recorded_gate(self, version: str):
        """The gate's verdict already recorded on `version` (`decisions.Verdict`), or None."""
        from ladder.registry.decisions import recorded_gate

        return recorded_gate(self.version(version).tags)

    def heldout_accuracy(self, version: str) -> Optional[float]:
        """The student's held-out accuracy at the end of the version's rung (None if not recorded)."""
        run_id = self.version(version).run_id
        return self.client.get_run(run_id).data.metrics.get("eval.accuracy") if run_id else None

    def yardstick(self, version: str) -> Optional[float]:
        """The version's accuracy on the ladder's one yardstick (None if not recorded)."""
        value = self.version(version).tags.get(Tag.YARDSTICK)
        return float(value) if value else None

    def status_of(self, version: str) -> str:
        return self.version(version).tags.get(Tag.STATUS, "candidate")

    def versions(self) -> list:
        return sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version))

    def lineage(self) -> list[dict]:
        from ladder.registry.lineage import lineage_rows

        return lineage_rows(self)

    def log_ladder_chart(self, run_id: str, out_dir: str) -> Optional[str]:
        from ladder.registry.lineage import log_chart

        return log_chart(self, run_id, out_dir)

    def close_ladder(self, progress, chart_dir: str) -> None:
        """The ladder's last writes: pending metrics, its final progress, the rung chart, its run ended. The
        progress is saved even when the metrics outbox has given up (its failure may be why the ladder failed)."""
        try:
            self.flush_writes()
        except Exception as exc:  # metrics lost: said once, and the final state is saved all the same
            import logging

            logging.getLogger(__name__).warning("ladder %s: pending metrics not delivered (%s)", self.name,
                                                first_line(exc, 200))
        self.save_progress(progress)
        if self.versions():
            self.log_ladder_chart(progress.parent_run, chart_dir)
        self.end_run(progress.parent_run, {"completed": "FINISHED", "failed": "FAILED"}.get(progress.state.value,
                                                                                           "KILLED"))

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
