"""Rungs as MLflow models on a SQLite store: the transformers flavor loads and serves, vLLM and the trainer get
the same files as a plain HF folder (stored once), the judge and the student are the rung run's model input and
output, versions carry descriptions with the gate's numbers, and a store written before all this still reads."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from servers import free_port, stop_group, wait_http  # tests/integration/servers.py

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PROMPT = "3+4-2="


def tags(rung: int, judge: str) -> dict[str, str]:
    return {"ladder.rung": str(rung), "ladder.rung_uid": f"job-{rung}-0", "ladder.judge": judge,
            "ladder.job": "job", "ladder.task": "arithmetic", "ladder.judge_mode": "verdict"}


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    """Two rungs recorded as the controller records them: rung 1 judged by a model directory, gated and
    promoted; rung 2 judged by the registered rung 1 (`models:/mm@judge`)."""
    from ladder.judging.gate import GateResult, JudgeQuality
    from ladder.progress import ResolvedJudge
    from ladder.judging.resolve import registered_judge
    from ladder.registry.registry import Registry

    root = tmp_path_factory.mktemp("models-store")
    reg = Registry("mm", f"sqlite:///{root / 'mlflow.db'}", (root / "art").as_uri())
    parent = reg.client.create_run(reg.experiment_id, tags={"ladder.kind": "ladder"}).info.run_id
    run1 = reg.start_rung_run(parent, 1, "job")
    reg.record_judge_input(run1, ResolvedJudge("model", tiny_model, tiny_model))
    reg.log_metrics(run1, {"eval/accuracy": 0.25}, 0)
    reg.log_metrics(run1, {"eval/accuracy": 0.5}, 4)
    v1 = reg.register(run1, tiny_model, tags(1, tiny_model), step=4)
    quality = JudgeQuality(accuracy=0.8125, auc=0.9375, identical_share=0.1)
    reg.record_gate(v1, GateResult(quality, quality, True, "AUC 0.938 >= 0.55"))
    reg.promote(v1, by="auto", reason="gate passed")
    judge = registered_judge(reg, "models:/mm@judge")
    run2 = reg.start_rung_run(parent, 2, "job")
    reg.record_judge_input(run2, judge)
    v2 = reg.register(run2, tiny_model, {**tags(2, judge.label), "ladder.judge": "a tag that is not read"})
    return reg, root, (v1, run1), (v2, run2)


def greedy(model_dir: str, prompt: str, new_tokens: int = 12) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)


def test_a_rung_loads_as_a_transformers_pipeline(store, tiny_model):
    import mlflow

    from ladder.registry.mlmodels import global_tracking_uri

    reg = store[0]
    before = os.environ.get("MLFLOW_TRACKING_URI")
    with global_tracking_uri(reg.tracking_uri):
        pipe = mlflow.transformers.load_model("models:/mm@judge")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # nothing leaks into the rest of the session
    assert pipe.task == "text-generation"
    out = pipe(PROMPT, max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert out and out == greedy(tiny_model, PROMPT)  # the registered weights, generating


def test_the_weights_are_stored_once_and_fetched_as_an_hf_folder(store, tiny_model, tmp_path):
    reg, root, (v1, _), (v2, _) = store
    stored = sorted(root.joinpath("art").rglob("*.safetensors"))
    assert len(stored) == 2, stored  # one copy per version: nothing logged twice under the runs
    local = Path(reg.download(v1, str(tmp_path)))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in local.iterdir()}
    assert (local / "model.safetensors").read_bytes() == (Path(tiny_model) / "model.safetensors").read_bytes()
    assert "MLmodel" not in {p.name for p in local.iterdir()}  # the HF files only


def test_judge_and_student_are_the_rung_runs_input_and_output(store):
    from stages.models import model_id_of

    reg, _, (v1, run1), (v2, run2) = store
    m1, m2 = (model_id_of(reg.version(v)) for v in (v1, v2))
    assert m1 and m2 and m1 != m2
    assert [m.model_id for m in reg.client.get_run(run2).inputs.model_inputs] == [m1]
    assert [m.model_id for m in reg.client.get_run(run1).outputs.model_outputs] == [m1]
    assert [m.model_id for m in reg.client.get_run(run2).outputs.model_outputs] == [m2]
    assert reg.client.get_run(run1).data.tags["ladder.judge_kind"] == "model directory"
    assert reg.client.get_run(run2).data.tags["ladder.judge_kind"] == "registered model"
    assert json.loads(reg.client.get_logged_model(m1).tags["mlflow.modelVersions"]) == [{"name": "mm", "version": v1}]
    rows = {r["rung"]: r for r in reg.lineage()}
    assert rows[2]["judged_by"] == "mm/v1" and rows[2]["judge_link"] == "model input"  # the link, not the tag
    assert rows[1]["judge_link"] == "tag" and rows[1]["model_id"] == m1


def test_versions_and_rung_runs_carry_a_description_with_the_gate_numbers(store):
    reg, _, (v1, run1), (v2, _) = store
    text = reg.version(v1).description
    for part in ("Rung 1 of ladder mm", "0.250 before, 0.500 after", "accuracy 0.8125", "AUC 0.9375",
                 "Gate: pass", "AUC 0.938 >= 0.55", "Decision: promoted by auto"):
        assert part in text, (part, text)
    assert reg.client.get_run(run1).data.tags["mlflow.note.content"] == text
    assert "Decision: pending" in reg.version(v2).description


def test_registration_and_logging_are_idempotent(store, tiny_model):
    reg, _, (v1, run1), _ = store
    found = reg.client.search_logged_models([reg.experiment_id])
    assert reg.register(run1, tiny_model, tags(1, "x")) == v1
    assert reg.log_model(run1, tiny_model, tags(1, "x")) in {m.model_id for m in found}
    assert len(reg.client.search_logged_models([reg.experiment_id])) == len(found) == 2


def test_mlflow_models_serve_answers(store):
    reg = store[0]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": reg.tracking_uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/mm@champion", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(
            {"inputs": [PROMPT]}).encode(), headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]
    finally:
        stop_group(proc)
    assert len(answer) == 1 and answer[0].startswith(PROMPT) and len(answer[0]) > len(PROMPT)


def test_a_store_written_before_models_still_reads(tiny_model, tmp_path):
    """Versions of bare HF files under the run (the format before MLflow models): lineage and fetch still work."""
    from ladder.registry.registry import Registry

    reg = Registry("old", f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri())
    reg.client.create_registered_model("old")
    for rung in (1, 2):
        run = reg.start_rung_run(reg.client.create_run(reg.experiment_id).info.run_id, rung, "job")
        reg.client.log_artifacts(run, tiny_model, artifact_path="model")
        source = f"{reg.client.get_run(run).info.artifact_uri}/model"
        reg.client.create_model_version("old", source, run_id=run, tags=tags(rung, "old/v1" if rung == 2 else "base"))
    rows = reg.lineage()
    assert [(r["rung"], r["judged_by"], r["judge_link"], r["model_id"]) for r in rows] == [
        (1, "base", "tag", None), (2, "old/v1", "tag", None)]
    local = Path(reg.download("2", str(tmp_path / "dl")))
    assert (local / "model.safetensors").read_bytes() == (Path(tiny_model) / "model.safetensors").read_bytes()
    from ladder.cli.run import format_table

    assert "old/v1" in format_table(rows, reg.aliases())
