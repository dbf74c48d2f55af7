"""A real `mlflow server --app-name basic-auth` on 127.0.0.1: the ladder works with credentials from MLflow's
environment variables, and a command without them (or with a wrong password) ends in one line, exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servers import free_port, stop_group, wait_http  # tests/integration/servers.py

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "ladder-Test-pass-8371"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-server")
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'users.db'}\nadmin_username = admin\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    cheap_admin(f"sqlite:///{root / 'users.db'}")
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "t" * 32,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "art")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def cheap_admin(db_uri: str) -> None:
    """The server's admin user made before it starts, its password hashed with 1000 rounds of PBKDF2: the server
    checks the password of every request against the stored hash, and with its default (scrypt) that took ~0.2
    CPU-seconds a request, ~25 s of the credentials test. The server finds the user and keeps it."""
    import sqlite3

    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    from werkzeug.security import generate_password_hash

    store = SqlAlchemyStore()
    store.init_db(db_uri)
    store.create_user("admin", PASSWORD, is_admin=True)
    store.engine.dispose()
    with sqlite3.connect(db_uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE username = 'admin'",
                   (generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"),))


def ladder(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**base, **env})


def test_credentials_from_mlflows_environment(auth_server, tiny_model, monkeypatch):
    from ladder.registry.registry import Registry

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    reg = Registry("authz", auth_server)
    run = reg.start_rung_run(reg.client.create_run(reg.experiment_id).info.run_id, 1, "job")
    reg.register(run, tiny_model, {"ladder.rung": "1", "ladder.rung_uid": "job-1-0", "ladder.judge": "base"})

    ok = ladder("lineage", "authz", "--tracking-uri", auth_server, "--json",
                MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert [r["version"] for r in json.loads(ok.stdout)] == [1]


@pytest.mark.parametrize("creds", [{}, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"}],
                         ids=["none", "wrong-password"])
def test_no_or_wrong_credentials_end_in_one_line(auth_server, creds):
    res = ladder("lineage", "authz", "--tracking-uri", auth_server, **creds)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: MLflow refused the request: not authenticated (set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD)"]
