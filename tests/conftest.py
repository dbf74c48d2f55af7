"""Shared test setup: engine environment before vLLM is imported, tiers by folder.

The rules every test here keeps, because `make test` must pass on any fresh x86 machine, loaded or not:

1. A threshold in a learning test rests on an effect far larger than the spread between CPUs.
   Float results differ between CPUs, so two machines' training trajectories part after a few
   steps. Never assert on one machine's trajectory (a per-step reward, a small rise of a noisy
   mean). Measure before and after with enough samples that sampling noise is small, choose a
   setting whose effect is several times the threshold (check it by running it, and by breaking
   the update on purpose: learning rate 0 or a flipped advantage must fail the test), and say in
   the test what the margin is.
2. A kill, stop or start is awaited through Ray or the OS, never assumed. `ray.kill` only asks for
   the kill; wait for the actor's death with `wait_dead` (integration conftest), for a process with
   its pid, and give deadlines, not sleeps, for anything that must happen.
3. A test shares nothing with other processes on the machine. Its Ray is its own (`address="local"`: a
   bare `ray.init()` joins whatever Ray another process started), servers it starts (`ray start --head`,
   `mlflow server`) listen on 127.0.0.1 on free ports and are stopped by their process group id, and
   pytest keeps a lock on the session's temp dir (retention policy "failed", not "none", under which a
   second pytest run beside this one deletes its files mid-run).
4. `make test` runs two test processes (pytest-xdist), each taking a whole module at a time (`MODULE_ORDER`
   below): module fixtures stay in one process. The processes share only the test model (built once, under a
   lock, by the first that asks) and the SmolLM2 folder; everything else a test starts is its own.
"""
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# a Ray started by a test (or a ladder a test runs) prestarts no idle workers for its first driver: the stage
# actors start workers of their own (a runtime environment each), so on 2 cores those idle ones only took CPU
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one of a run's test processes (`make test` starts one per core): one torch thread in each process, its stage
    # actors' included. Two threads beside another busy process spin at their barriers (a bootstrap step measured
    # 2-5 s instead of 0.44 s)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("LADDER_THREADS", "1")

# Everything a run writes to the temp folder (pytest's own folders, Ray's sessions, vLLM's and torch's sockets and
# file stores, multiprocessing's `pymp-*`, torch's compiled kernels) goes into one folder of the run's, removed when
# the run passes and named when it does not. The run's first process makes it; its test processes (pytest-xdist
# workers) and everything they start inherit it through TMPDIR (Ray reads TMPDIR on Linux too).
_RUN_TMP_OWNER = "LADDER_TEST_TMP" not in os.environ
if _RUN_TMP_OWNER:
    os.environ["LADDER_TEST_TMP"] = tempfile.mkdtemp(prefix="lt-run-")  # short: Ray's socket paths live under it
RUN_TMP = os.environ["LADDER_TEST_TMP"]
os.environ["TMPDIR"] = RUN_TMP
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(RUN_TMP, "inductor")  # one kernel cache for the run's engines
tempfile.tempdir = RUN_TMP

import pytest  # noqa: E402  (after the engine environment above)

FAULT = "injected fault"  # the key of a fault's line among a test report's user properties
SMOLLM2_CACHE = Path(__file__).resolve().parents[1] / ".ladder" / "test-cache" / "smollm2"  # .ladder is git-ignored


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a plain HF folder, built once (about 35 s) and kept under the repo's
    `.ladder/test-cache`, so later runs reuse it. Skips the test without the `smollm2` extra."""
    from filelock import FileLock

    from ladder.models.smollm2 import SmolLM2Missing, build_smollm2

    SMOLLM2_CACHE.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(SMOLLM2_CACHE) + ".lock"):  # one build when the run's test processes all ask at once
            return build_smollm2(SMOLLM2_CACHE)
    except SmolLM2Missing as err:
        pytest.skip(str(err))


@pytest.fixture
def fault_figures(record_property):
    """`fault_figures(fault, figures)`: one line of the table of injected faults `make test` prints at its end
    (what was injected and when, what the ladder did, its recovery time and the steps redone, from this run).
    Kept on the test's report, which a test process of a distributed run sends back to the one that prints."""
    return lambda fault, figures: record_property(FAULT, (fault, figures))


# The order a run's test processes (`make test` starts two, pytest-xdist, a module to one process) take the
# modules in, with the seconds each took in a run on 2 cores. The longest first, so no process waits alone at the
# end, except that what needs no test model (the pretrained model's tests, the unit tests) comes right after the
# first module: one process builds the test model (~3 min) while the other runs those. Unlisted modules run last.
MODULE_ORDER = [
    ("integration/test_service.py", 615), ("integration/test_pretrained.py", 205), ("unit", 170),
    ("integration/test_rung.py", 350), ("integration/test_user_data.py", 210), ("integration/test_stages.py", 195),
    ("integration/test_tensor_parallel.py", 140), ("integration/test_ladder.py", 135),
    ("integration/test_controller_faults.py", 60), ("integration/test_placement.py", 60),
    ("integration/test_train_group.py", 60), ("integration/test_weight_sync.py", 35),
    ("integration/test_mlflow_auth.py", 35), ("integration/test_integrity.py", 25),
    ("integration/test_mlflow_models.py", 20),
]


def module_rank(item) -> int:
    path = Path(str(item.fspath)).relative_to(Path(__file__).parent).as_posix()
    return next((i for i, (key, _) in enumerate(MODULE_ORDER) if path == key or path.startswith(key + "/")),
                len(MODULE_ORDER))


def pytest_collection_modifyitems(items):
    items.sort(key=module_rank)  # stable: a module's tests keep their order


def pytest_xdist_make_scheduler(config, log):
    """With `--dist loadfile` (`make test`), a test process is given its next module once it has one test left to run,
    not two (pytest-xdist's own rule): by two, the module after test_service went, ~4 minutes early, to the process
    still running test_service's fault scenario, and that process ran ~100 s past the others at the end (a run of
    three processes)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class NextModuleAtTheLastTest(LoadFileScheduling):
        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
            elif self._pending_of(self.assigned_work[node]) <= 1:  # the process waits for a next test to run it
                self._assign_work_unit(node)

    return NextModuleAtTheLastTest(config, log)


_PASSED = pytest.StashKey[bool]()  # whether the run passed: its temp folder goes then


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_PASSED] = exitstatus == 0


def pytest_unconfigure(config):
    if not _RUN_TMP_OWNER:
        return
    if config.stash.get(_PASSED, False):
        shutil.rmtree(RUN_TMP, ignore_errors=True)
    else:
        print(f"\nthis run's temp folder is kept: {RUN_TMP}")


def pytest_terminal_summary(terminalreporter):
    faults = [value for reports in terminalreporter.stats.values() for r in reports
              for key, value in getattr(r, "user_properties", ()) if key == FAULT and r.when == "call"]
    if faults:
        terminalreporter.section("faults injected in this run")
        for fault, figures in faults:
            terminalreporter.line(f"{fault}: {figures}")
