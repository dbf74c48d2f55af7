"""Broken model files are found before any actor starts: a truncated safetensors file, a header cut short, a
config.json that is not JSON, an index naming a missing shard. One line naming the file, through `validate`,
`train-rung` and `run`, exit 2, no traceback (a tiny model built here, then damaged; no Ray)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.models import ModelBroken, check_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from ladder.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "good", "nano")


def damaged(good: Path, where: Path, file: str, damage) -> Path:
    """A copy of the model with `file` rewritten by `damage(bytes) -> bytes`."""
    shutil.copytree(good, where)
    (where / file).write_bytes(damage((where / file).read_bytes()))
    return where


CASES = {  # name: (file, damage, what the message says)
    "weights cut in half": ("model.safetensors", lambda b: b[: len(b) // 2], "truncated safetensors file"),
    "weights cut in the header": ("model.safetensors", lambda b: b[:200], "truncated or not a safetensors file"),
    "weights of 4 bytes": ("model.safetensors", lambda b: b[:4], "not even its header length"),
    "config.json cut short": ("config.json", lambda b: b[: len(b) // 2], "not valid JSON"),
    "config.json a list": ("config.json", lambda b: b"[1, 2]", "not a JSON object"),
}


def test_an_intact_model_passes(good):
    check_model_dir(str(good))


@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_file_is_named_in_one_line(good, tmp_path, case):
    file, damage, says = CASES[case]
    model = damaged(good, tmp_path / "m", file, damage)
    with pytest.raises(ModelBroken, match=says) as err:
        check_model_dir(str(model))
    assert str(err.value).startswith(str(model / file)) and "\n" not in str(err.value)


def test_the_safetensors_loader_agrees_a_truncated_file_is_broken(good, tmp_path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for case in ("weights cut in half", "weights cut in the header"):
        file, damage, _ = CASES[case]
        model = damaged(good, tmp_path / case.replace(" ", "-"), file, damage)
        with pytest.raises(SafetensorError):
            load_file(model / file)


def test_an_index_naming_a_missing_shard_is_refused(good, tmp_path):
    model = damaged(good, tmp_path / "m", "config.json", lambda b: b)
    (model / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    with pytest.raises(ModelBroken, match="missing weight file.*model-00002-of-00002.safetensors"):
        check_model_dir(str(model))


def spec_file(tmp_path: Path, student: Path, judge: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "broken", "workdir": str(tmp_path / "w"), "student": {"base": str(student)},
        "judge": {"initial": {"kind": "model", "path": str(judge)}},
        "task": {"source": {"kind": "builtin", "name": "arithmetic"}}, "train": {"steps": 1}}))
    return path


@pytest.fixture
def no_heavy_imports(tmp_path) -> dict:
    """An environment in which importing Ray, vLLM or torch fails at once: a command that got past its checks
    fails the test in a second instead of starting engines."""
    blocked = tmp_path / "blocked"
    for name in ("ray", "vllm", "torch"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} imported: past the checks')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)])}


@pytest.mark.parametrize("command, broken_role, case", [
    ("validate", "student", "weights cut in half"),
    ("train-rung", "student", "config.json cut short"),
    ("train-rung", "judge", "weights cut in half"),
    ("run", "judge", "weights cut in the header"),
])
def test_commands_refuse_a_broken_model_in_one_line(good, tmp_path, no_heavy_imports, command, broken_role, case):
    file, damage, says = CASES[case]
    bad = damaged(good, tmp_path / "bad", file, damage)
    student, judge = (bad, good) if broken_role == "student" else (good, bad)
    res = subprocess.run([sys.executable, "-m", "ladder.cli", command, str(spec_file(tmp_path, student, judge))],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=no_heavy_imports)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad / file}: {says}"), lines
