"""A student that cannot judge is found before the start: every candidate keeps the student's tokenizer and is
measured as a judge at the gate, so a verdict word that is not one token for it is refused by `preflight` in one
line (a tiny model built here; no Ray, no engine)."""
import pytest

from ladder.control.preflight import preflight
from ladder.spec import parse_spec
from stages.judge import JudgeError


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "student", "nano"))


def ladder(student: str, tmp_path, no_token: str, rungs: int = 2) -> object:
    """A ladder whose rung 1 is judged by the task's checker, so no judge model is checked before the start."""
    return parse_spec({"name": "x", "rungs": rungs, "workdir": str(tmp_path / "w"), "student": {"base": student},
                       "judge": {"initial": {"kind": "task"}, "mode": "verdict", "no_token": no_token},
                       "task": {"source": {"kind": "builtin"}},
                       "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})


def test_a_verdict_word_the_students_tokenizer_splits_is_refused_before_the_start(student, tmp_path):
    """Issue 35, 10: found only at rung 1's gate (`judge_prompts` building the candidate's judge pool), after a
    rung of training."""
    with pytest.raises(JudgeError) as err:
        preflight(ladder(student, tmp_path, "incorrect"))
    message = str(err.value)
    assert message.startswith("judge.no_token: 'incorrect' is 9 tokens for this judge's tokenizer, need exactly 1")
    assert f"(the student's tokenizer, {student}: each candidate is measured as a judge at the gate)" in message
    assert "\n" not in message
    preflight(ladder(student, tmp_path, "no"))  # one token for it: the ladder starts
    preflight(ladder(student, tmp_path, "incorrect"), gate=False)  # `train-rung`: no gate, no candidate judged


def test_a_word_the_vocabulary_alone_accepts_is_checked_without_transformers(student, tmp_path):
    """`run`, `submit` and the job's driver check the student's verdict words from its `tokenizer.json` alone: the
    same ids as the full tokenizer gives, and the command imports neither transformers nor torch for it (~7
    CPU-seconds a command). A word it refuses is decided by the full tokenizer (the refusal test above)."""
    import json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from ladder.rung.prompts import vocab_only
    from stages.judge import JudgeConfig, verdict_token_ids

    full, light = AutoTokenizer.from_pretrained(student), vocab_only(student)
    for yes, no in [("yes", "no"), ("Y", "N"), ("1", "0")]:
        cfg = JudgeConfig.from_spec(ladder(student, tmp_path, no).judge.model_copy(update={"yes_token": yes}))
        assert verdict_token_ids(light, cfg) == verdict_token_ids(full, cfg)
    spec = tmp_path / "spec.json"
    spec.write_text(ladder(student, tmp_path, "no").model_dump_json())
    code = ("import json, sys; from ladder.control.preflight import check_student_as_judge; "
            "from ladder.spec import LadderSpec; "
            f"check_student_as_judge(LadderSpec.model_validate_json(open({str(spec)!r}).read())); "
            "print(json.dumps(sorted(m for m in ('transformers', 'torch') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
