"""Shared test setup: engine environment before vLLM is imported, tiers by folder.

Two rules every test here keeps, because `make test` must pass on any fresh x86 machine, loaded or not:

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
"""
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402  (after the engine environment above)

FAULTS: list[tuple[str, str]] = []
SMOLLM2_CACHE = Path(__file__).resolve().parents[1] / ".ladder" / "test-cache" / "smollm2"  # .ladder is git-ignored


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a plain HF folder, built once (about 35 s) and kept under the repo's
    `.ladder/test-cache`, so later runs reuse it. Skips the test without the `smollm2` extra."""
    from ladder.models.smollm2 import SmolLM2Missing, build_smollm2

    try:
        return build_smollm2(SMOLLM2_CACHE)
    except SmolLM2Missing as err:
        pytest.skip(str(err))


@pytest.fixture
def fault_figures():
    """`fault_figures(fault, figures)`: one line of the table of injected faults `make test` prints at its end
    (what was injected and when, what the ladder did, its recovery time and the steps redone, from this run)."""
    return lambda fault, figures: FAULTS.append((fault, figures))


def pytest_terminal_summary(terminalreporter):
    if FAULTS:
        terminalreporter.section("faults injected in this run")
        for fault, figures in FAULTS:
            terminalreporter.line(f"{fault}: {figures}")
