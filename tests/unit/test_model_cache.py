"""The local model cache holds what it says: keyed by the logged model's id (or, for bare files, where they are),
never by `name-vN`, so a model re-created under its name or another MLflow server sharing the work directory never
serves the first one's weights. Real MLflow on SQLite, no Ray."""
import json


def model_files(folder, marker: str) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"marker": marker}))
    return folder.as_uri()


def test_a_recreated_model_or_another_server_never_gets_the_cached_weights_of_the_first(tmp_path):
    from mlflow import MlflowClient

    from stages.models import fetch_model

    cache = str(tmp_path / "model-cache")  # one work directory's cache
    served = []
    for server in ("a", "b"):  # two MLflow servers, each with its own model "lad" version 1
        uri = f"sqlite:///{tmp_path / server}.db"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("lad")
        client.create_model_version("lad", model_files(tmp_path / f"files-{server}", server))
        served.append(json.loads((tmp_path / fetch_model("models:/lad/1", uri, cache) / "config.json")
                                 .read_text())["marker"])
        if server == "b":  # on server b: the model deleted and re-created, its version 1 now other files
            client.delete_registered_model("lad")
            client.create_registered_model("lad")
            client.create_model_version("lad", model_files(tmp_path / "files-b2", "b2"))
            served.append(json.loads((tmp_path / fetch_model("models:/lad/1", uri, cache) / "config.json")
                                     .read_text())["marker"])
    assert served == ["a", "b", "b2"]


def test_a_logged_model_is_cached_under_its_id():
    from types import SimpleNamespace

    from stages.models import cache_key

    assert cache_key(SimpleNamespace(model_id="m-0a1b", source="models:/m-0a1b")) == "m-0a1b"
    assert cache_key(SimpleNamespace(model_id=None, source="models:/m-77")) == "m-77"  # an id in the source only
    bare = [cache_key(SimpleNamespace(model_id=None, source=s)) for s in ("file:///a/model", "file:///b/model")]
    assert bare[0] != bare[1] and all(k.startswith("files-") for k in bare)


def test_the_cache_keeps_the_models_used_last_and_no_download_of_a_dead_process(tmp_path):
    """A ladder of many rungs: the node's cache keeps the 4 models used last (a rung's judge, student and candidate,
    and one more), and a download cut short by a killed process is removed by the next download, while one
    still running is left alone."""
    import os
    import subprocess

    from mlflow import MlflowClient

    from stages.models import CACHE_KEEP, fetch_model

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("lad")
    for v in range(1, 7):
        client.create_model_version("lad", model_files(tmp_path / f"files-{v}", str(v)))
    cache = tmp_path / "model-cache"
    cache.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has ended: its download was cut short
    (cache / f".partial-{dead.pid}-lad-v9-x").mkdir()
    running = cache / f".partial-{os.getpid()}-lad-v8-y"
    running.mkdir()
    for v in (1, 2, 3, 4, 1, 5, 6):  # version 1 used again after 4
        fetch_model(f"models:/lad/{v}", uri, str(cache))
    kept = {json.loads((e / "config.json").read_text())["marker"] for e in cache.iterdir() if e.name[0] != "."}
    assert CACHE_KEEP == 4 and kept == {"1", "4", "5", "6"}
    assert sorted(e.name for e in cache.iterdir() if e.name[0] == ".") == [running.name]
