"""Nothing left behind by engines: vLLM's `vllm_dist_*` file stores land in the engine process's own temp
folder, and the folder of a process that was killed (as Ray kills actors) is swept."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KILLED_ENGINE = """
import os, signal
from stages.engine import use_private_tmp
from vllm.utils.network_utils import get_file_store_init_method
private = use_private_tmp()
store = get_file_store_init_method().removeprefix("file://")
open(store, "w").close()  # what torch's FileStore creates for the engine's process group
print(private, store, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no exit handlers: as `ray.kill` ends an actor
"""


def test_a_killed_engines_temp_files_are_swept(tmp_path):
    from stages.engine import _SYSTEM_TMP, TMP_PREFIX, sweep_engine_tmp

    res = subprocess.run([sys.executable, "-c", KILLED_ENGINE], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    private, store = res.stdout.split()
    assert Path(private).parent == Path(_SYSTEM_TMP) and Path(private).name.startswith(TMP_PREFIX)
    assert Path(store).parent == Path(private) and Path(store).name.startswith("vllm_dist_")
    assert Path(store).exists()  # the killed process could not clean up
    live = Path(_SYSTEM_TMP) / f"{TMP_PREFIX}{os.getpid()}"  # a live process's folder is never swept
    live.mkdir(exist_ok=True)
    try:
        assert private in sweep_engine_tmp()
        assert not Path(private).exists() and live.exists()
    finally:
        if live.exists() and not os.listdir(live):
            live.rmdir()
