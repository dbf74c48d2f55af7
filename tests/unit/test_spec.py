"""Spec validation: valid specs load, malformed ones fail with one line naming the field."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ladder.spec import SpecError, json_schema, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

VALID = {
    "name": "demo",
    "student": {"base": "models/base"},
    "judge": {"initial": {"kind": "model", "path": "models/judge"}},
    "task": {"source": {"kind": "builtin", "name": "arithmetic"}},
}


def with_change(path: str, value):
    spec = copy.deepcopy(VALID)
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return spec


DELETE = object()

MALFORMED = [
    ("name", "Not A Slug", "name"),
    ("name", DELETE, "name"),
    ("rungs", 0, "rungs"),
    ("seed", -1, "seed"),
    ("typo_field", 3, "typo_field"),
    ("student.init", "latest", "student.init"),
    ("student.base", DELETE, "student.base"),
    ("judge.initial", {"kind": "oracle", "path": "x"}, "judge.initial"),
    ("judge.initial", {"kind": "registry", "uri": "runs:/abc/model"}, "judge.initial.registry.uri"),
    ("judge.initial", {"kind": "verifier", "function": "no colon"}, "judge.initial.verifier.function"),
    ("judge.initial", {"kind": "model"}, "judge.initial.model.path"),
    ("judge.mode", "vibes", "judge.mode"),
    ("judge.prompt_template", "{prompt} only", "judge.prompt_template"),
    ("judge.score_pattern", "([unclosed", "judge.score_pattern"),
    ("judge.fallback_score", 2.0, "judge.fallback_score"),
    ("judge.no_token", "yes", "judge.yes_token and judge.no_token"),
    ("task.source", {"kind": "jsonl"}, "task.source.jsonl.path"),
    ("task.eval_size", 0, "task.eval_size"),
    ("rollout.group_size", 1, "rollout.group_size"),
    ("rollout.temperature", 0, "rollout.temperature"),
    ("rollout.workerz", 2, "rollout.workerz"),
    ("train.lr", 0, "train.lr"),
    ("train.clip_eps", 1.5, "train.clip_eps"),
    ("train.steps", "many", "train.steps"),
    ("promotion.policy", "sometimes", "promotion.policy"),
    ("promotion.tolerance", -0.1, "promotion.tolerance"),
    ("saturation", {"enabled": True, "window": 50}, "saturation.window"),
]


def test_valid_spec_loads_with_defaults():
    spec = parse_spec(VALID)
    assert spec.judge.mode == "verdict" and spec.rollout.group_size >= 2
    assert spec.flat()["judge.initial.kind"] == "model"
    assert len(spec.sha256()) == 64


@pytest.mark.parametrize("path,value,field", MALFORMED, ids=[m[0] + "-" + str(i) for i, m in enumerate(MALFORMED)])
def test_malformed_spec_is_rejected_naming_the_field(path, value, field):
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value), "spec.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert field in message, message


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="mapping"):
        parse_spec(["a", "list"])


def test_load_spec_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_schema_describes_every_field():
    schema = json_schema()
    assert "properties" in schema and "name" in schema["properties"]
    for model in schema["$defs"].values():
        for name, prop in model.get("properties", {}).items():
            assert prop.get("description"), f"{model['title']}.{name} has no description"


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_validate_bad_spec_one_line_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("train.lr", -1)))
    res = run_cli("validate", str(bad))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.lr" in lines[0]


def test_cli_validate_good_spec_and_json(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(VALID))
    res = run_cli("validate", str(good), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["name"] == "demo"


def test_help_and_validate_do_not_import_heavy_libraries(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(VALID))
    code = (
        "import sys; from typer.testing import CliRunner; from ladder.cli import app;"
        f"r = CliRunner().invoke(app, ['validate', {str(good)!r}]); assert r.exit_code == 0, r.output;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0;"
        "heavy = [m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules]; print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_trust_remote_code_is_off_unless_the_spec_says_so():
    """Engines and the trainer run a model's own Python code only when the spec turns it on."""
    from ladder.rung.roles import engine_config
    from stages.train import TrainConfig

    for value in (False, True):
        spec = parse_spec({**VALID, "trust_remote_code": True}) if value else parse_spec(VALID)
        assert spec.trust_remote_code is value
        assert engine_config(spec, "models/base", 0).trust_remote_code is value
        assert TrainConfig.from_spec(spec.train, spec.trust_remote_code).trust_remote_code is value


def test_distillation_from_the_judge_needs_the_filter_advantage_in_every_rung_it_applies_to():
    spec = with_change("judge", {**VALID["judge"], "mode": "solve", "solve_distill": True})
    with pytest.raises(SpecError, match="judge.solve_distill .rung 1.: .* needs train.advantage: filter"):
        parse_spec(spec, "spec.yaml")
    spec["train"] = {**spec.get("train", {}), "advantage": "filter"}
    assert parse_spec(spec).judge.solve_distill
    spec["schedule"] = [{"rung": 2, "train": {"advantage": "group"}}]
    with pytest.raises(SpecError, match=r"judge.solve_distill \(rung 2\)"):
        parse_spec(spec, "spec.yaml")
    checker = with_change("judge", {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"},
                                    "mode": "solve", "solve_distill": True})
    checker["schedule"] = [{"rung": 2, "train": {"advantage": "filter"}}]
    assert parse_spec(checker).train.advantage == "group"  # rung 1's checker writes no answers: GRPO stays


def test_a_schedule_changes_a_rungs_sampling_and_nothing_else_of_the_rollout():
    spec = {**VALID, "rungs": 3, "rollout": {"group_size": 8, "temperature": 1.0, "max_tokens": 40},
            "schedule": [{"rung": 2, "rollout": {"group_size": 2}}]}
    parsed = parse_spec(spec)
    assert [parsed.for_rung(k).rollout.group_size for k in (1, 2, 3)] == [8, 2, 2]
    assert parsed.for_rung(3).rollout.max_tokens == 40 and parsed.for_rung(3).rollout.temperature == 1.0
    for change, said in (({"workers": 2}, "rollout.workers cannot change between rungs"),
                         ({"group_size": 1}, "rollout: group_size: Input should be greater")):
        with pytest.raises(SpecError, match=r"schedule \(rung 2\): " + said) as err:
            parse_spec({**spec, "schedule": [{"rung": 2, "rollout": change}]}, "spec.yaml")
        assert "\n" not in str(err.value)
