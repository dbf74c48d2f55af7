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
