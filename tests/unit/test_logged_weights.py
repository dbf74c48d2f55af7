"""The logged candidate is the evaluated one: `log_hf_model` is idempotent on the rung and on the weights' checksum.
Real MLflow on SQLite; the transformers flavor stood in for by a copy of the folder."""
import shutil


def weights(tmp_path, name: str, content: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_text(content)
    (folder / "config.json").write_text("{}")
    return str(folder)


def test_a_rung_redone_after_a_crash_logs_the_weights_it_evaluated(registry, tmp_path, monkeypatch):
    """Issue 35, 7: the controller died right after logging the candidate; restarted, it redid the steps after the
    last checkpoint (other weights) and evaluated those. Without the checksum in the key the earlier logged model
    came back (registered weights != evaluated weights); a second log of the same weights still reuses it."""
    from ladder.registry import mlmodels
    from ladder.registry.tags import Tag

    monkeypatch.setattr(mlmodels, "_save_flavor", lambda hf_dir, out, card: shutil.copytree(hf_dir, out))
    run = registry.client.create_run(registry.experiment_id).info.run_id
    tags = {Tag.RUNG_UID: "job-1-0", Tag.RUNG: "1"}
    first = registry.log_model(run, weights(tmp_path, "a", "weights before the crash"), tags)
    redone = registry.log_model(run, weights(tmp_path, "b", "weights of the redone steps"), tags)
    assert redone != first
    assert registry.log_model(run, weights(tmp_path, "c", "weights of the redone steps"), tags) == redone
