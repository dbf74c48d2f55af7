"""The arithmetic task, its verifier and calibration set; JSONL loading; the tiny model factory."""
import json
import random

import pytest

from ladder.tasks.arithmetic import build, corrupt, exact, final_answer, make_example, solution_steps, verify
from ladder.tasks.base import TaskError
from ladder.tasks.files import load_jsonl


def test_worked_solution_is_correct_and_verified():
    rng = random.Random(0)
    for _ in range(200):
        ex = make_example(rng, 4, 9)
        assert eval(ex.prompt[2:-3]) == int(ex.answer)
        assert final_answer(ex.solution) == ex.answer
        assert verify(ex.prompt, ex.solution, ex.answer) == 1.0


def test_corrupted_responses_are_wrong():
    """Every corruption ends in a wrong final answer (a slipped step carries through), so a judge that
    only checks final answers can still tell every calibration pair apart."""
    rng = random.Random(1)
    for terms in (2, 3, 4):
        for _ in range(200):
            ex = make_example(rng, terms, 9)
            bad = corrupt(rng, ex)
            assert final_answer(bad) != ex.answer
            assert verify(ex.prompt, bad, ex.answer) < 1.0


def test_verifier_partial_credit_and_garbage():
    assert verify("Q:1+2+3\nA:", "1+2=3,3+3=7#7", "6") == 0.25
    assert verify("Q:1+2+3\nA:", "zzzz", "6") == 0.0


def test_verifier_gives_no_credit_for_steps_that_are_not_the_problems():
    """Valid arithmetic unrelated to the prompt cannot be farmed for partial credit."""
    assert verify("Q:1+2+3\nA:", "5+5=10,10+1=11#11", "6") == 0.0
    assert verify("Q:1+2+3\nA:", "1+2=3,1+2=3,1+2=3#3", "6") == 0.25
    assert verify("Q:1+2+3\nA:", "#6", "6") == 1.0
    assert exact("Q:1+2+3\nA:", "1+2=3,3+3=7#7", "6") == 0.0
    assert exact("Q:1+2+3\nA:", "1+2=3,3+3=6#6", "6") == 1.0
    assert solution_steps("Q:12-3+4\nA:") == ["12-3=9", "9+4=13"]


def test_the_checkers_reward_what_held_out_accuracy_counts_as_right():
    """`#07` and `#6.0` are right answers to the task (`Task.correct`), so the checkers give them full credit: a
    checker stricter than the measurement rewards a right answer as wrong (seen once in the collapse-guard test,
    whose judge is 1 - exact)."""
    task = build(terms=3, max_operand=9, train_size=8, eval_size=4, seed=0)
    for response in ("1+2=3,3+3=6#06", "#6.0", "#006"):
        assert task.correct([response], ["6"]) == [True]
        assert exact("Q:1+2+3\nA:", response, "6") == 1.0 and verify("Q:1+2+3\nA:", response, "6") == 1.0
    assert exact("Q:1+2+3\nA:", "#60", "6") == 0.0 and exact("Q:1+2+3\nA:", "#6", None) == 0.0
    assert solution_steps("What is love?") == []


def test_split_has_no_overlap_and_calibration_is_balanced():
    task = build(3, 9, 500, 50, seed=3)
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.eval}
    items = task.calibration(40, seed=0)
    assert sum(i.correct for i in items) == 20
    assert all(verify(i.prompt, i.response, None) <= 1 for i in items)


@pytest.mark.parametrize("content,message", [
    ("", "empty"),
    ("{not json}\n", ":1: not valid JSON"),
    ('{"answer": 3}\n', ':1: each line needs a non-empty string field "prompt"'),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(TaskError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_jsonl(path)


def test_jsonl_loads(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Q:{i}+1\nA:", "answer": i + 1}) for i in range(5)))
    rows = load_jsonl(path)
    assert [r.answer for r in rows] == ["1", "2", "3", "4", "5"]


def test_char_tokenizer_round_trips_and_verdict_words_are_single_tokens():
    from ladder.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    text = "Q:3+4-2\nA:3+4=7,7-2=5#5"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert len(tok.encode("yes", add_special_tokens=False)) == 1
    assert len(tok.encode("no", add_special_tokens=False)) == 1


def test_tiny_model_builds_with_requested_size(tmp_path):
    from transformers import AutoConfig

    from ladder.models.tiny import SIZES, build_tiny_model, count_parameters

    small = build_tiny_model(tmp_path / "a", "nano")
    bigger = build_tiny_model(tmp_path / "b", "micro")
    cfg = AutoConfig.from_pretrained(small)
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert cfg.hidden_size == SIZES["nano"].hidden
    assert count_parameters(bigger) > count_parameters(small) > 100_000


def test_model_directories_must_hold_safetensors_weights(tmp_path):
    """Weights are read only as safetensors: a directory with only a pickled checkpoint is refused in one line
    before any engine or trainer would unpickle it."""
    import pytest

    from ladder.models.tiny import build_tiny_model
    from stages.models import ModelNotFound, check_model_dir

    good = build_tiny_model(tmp_path / "good", "nano")
    check_model_dir(str(good))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((good / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ModelNotFound, match="no .safetensors weights"):
        check_model_dir(str(pickled))
    with pytest.raises(ModelNotFound, match="no such model directory"):
        check_model_dir(str(tmp_path / "missing"))


def test_a_model_directory_without_a_tokenizer_is_refused_in_one_line(tmp_path):
    import shutil

    import pytest

    from ladder.models.tiny import build_tiny_model
    from stages.models import ModelNotFound, check_model_dir

    model = build_tiny_model(tmp_path / "m", "nano")
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, bare / name)
    with pytest.raises(ModelNotFound, match=r"no-tokenizer: no tokenizer \(tokenizer.json or") as err:
        check_model_dir(str(bare))
    assert "\n" not in str(err.value)


def test_a_verifier_that_raises_is_named_in_one_line():
    import pytest

    from stages.judge import JudgeError, JudgePool

    def broken(prompt, response, reference):
        if response.endswith("9"):
            raise KeyError("unexpected")
        return 1.0

    pool = JudgePool([], batch_size=4, verifier=broken)
    assert pool.score_items(["1+1="], ["1+1=2#2"], references=["2"]).scores == (1.0,)
    with pytest.raises(JudgeError, match=r"verifier .*broken raised KeyError: 'unexpected' \(prompt '4\+5=', "
                                         r"response '4\+5=9'\)") as err:
        pool.score_items(["1+1=", "4+5="], ["1+1=2", "4+5=9"], references=["2", "9"])
    assert "\n" not in str(err.value)


def test_a_work_directory_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    import pytest

    from ladder.control.preflight import WorkdirError, check_workdir

    check_workdir(str(tmp_path / "fresh" / "work"))  # created
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match=r"workdir .*a-file/work: not writable \(Not a directory\)"):
        check_workdir(str(blocker / "work"))
