"""An MLflow outage mid-rung: the ladder's `mlflow server` is stopped (by its process group) for 30 s and started
again on the same port and store. Training goes on meanwhile, every metric arrives once, one version is
registered. MLflow's own HTTP retries are cut to one here, so the ladder's retries are what carry it through."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import free_port, stop_group, wait_http  # tests/integration/servers.py
from test_service import progress_of, service_spec, steps_logged

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUTAGE_S = 30.0


def start_mlflow(port: int, store: Path):
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def test_a_ladder_rides_out_an_mlflow_outage(tiny_model, tmp_path, fault_figures):
    port, store = free_port(), tmp_path / "store"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    name, steps = "outage", 12
    spec = service_spec(tiny_model, tmp_path / "w", name, uri, rungs=1, checkpoint_every=6,
                        train={"lr": 1e-4, "kl_coef": 0.0, "steps": steps, "prompts_per_step": 16},
                        promotion={"policy": "auto", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0})
    env = {**os.environ, "RAY_ADDRESS": "", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    server = start_mlflow(port, store)
    run = subprocess.Popen([sys.executable, "-m", "ladder.cli", "run", str(spec), "--json"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 900
        while (p := progress_of(name, uri)) is None or p.rung_run is None or not steps_logged(uri, name, 1):
            assert run.poll() is None and time.monotonic() < deadline, "the ladder ended before its first step"
            time.sleep(1)
        stop_group(server)  # MLflow goes away mid-rung
        down = time.time()
        time.sleep(OUTAGE_S)  # the outage itself
        up = time.time()
        server = start_mlflow(port, store)
        out, err = run.communicate(timeout=1200)
        assert run.returncode == 0, err[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(60)
        stop_group(server)
        server = start_mlflow(port, store)  # read back below from the same store

    try:
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["status"]["state"] == "completed"
        assert steps_logged(uri, name, 1) == list(range(1, steps + 1))  # nothing lost, nothing twice
        from ladder.registry import Registry

        reg = Registry.find(name, uri)
        assert [v.tags["ladder.rung"] for v in reg.versions()] == ["1"]  # one version for the rung
        run_id = reg.versions()[0].run_id
        history = reg.client.get_metric_history(run_id, "reward.mean")
        during = [m.step for m in history if down * 1000 <= m.timestamp <= up * 1000]
        assert during, "no step ran while MLflow was down: training waited for it"
        retries = reg.client.get_metric_history(run_id, "faults.mlflow_retries")
        assert retries and max(m.value for m in retries) >= 1
        fault_figures(f"MLflow server stopped for {OUTAGE_S:.0f} s mid-rung, then started on the same port and store",
                      f"steps {during} ran meanwhile; {int(max(m.value for m in retries))} delivery retries; "
                      f"steps logged once each: 1..{steps}; one version; steps redone: 0")
    finally:
        stop_group(server)
