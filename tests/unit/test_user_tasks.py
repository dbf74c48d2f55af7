"""A user's data as a task: JSONL / Parquet field mapping, one-line errors, the answer checker, calibration
items from worked solutions and from sampled responses, reasoning-gym, and a harder task per rung."""
import json
import re
from typing import Literal

import pytest
from pydantic import Field

from ladder.spec import TaskSpec, parse_spec
from ladder.tasks import TASK_SOURCES, AnswerChecker, BuiltinTaskSpec, Example, Task, TaskError, build_task

GSM8K_ROWS = [  # as `datasets.Dataset.to_json` / `to_parquet` export openai/gsm8k: the solution in `answer`
    {"question": f"Tom has {n} apples and buys {n + 2} more. How many apples does he have?",
     "answer": f"Tom has {n} + {n + 2} = <<{n}+{n + 2}={2 * n + 2}>>{2 * n + 2} apples.\n#### {2 * n + 2:,}",
     "split": "train", "id": n}
    for n in range(500, 520)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet}


def task_spec(kind, path, eval_size=4, **fields):
    return TaskSpec(source={"kind": kind, "path": str(path), **fields}, eval_size=eval_size)


def one_line_error(spec, seed=0) -> str:
    with pytest.raises(TaskError) as err:
        build_task(spec, seed)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_source_kind_has_a_builder():
    from typing import get_args

    from ladder.spec import TaskSource

    sources = get_args(get_args(TaskSource)[0])
    assert {get_args(s.model_fields["kind"].annotation)[0] for s in sources} == set(TASK_SOURCES)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_hf_export_with_extra_columns_maps_fields_and_reads_gsm8k_solutions(tmp_path, kind):
    """openai/gsm8k as exported: `question`, and `answer` holding the worked solution ending in `#### N`. The
    answer is read from it, the text serves as the worked solution, extra columns are ignored."""
    path = WRITERS[kind](tmp_path / f"gsm8k.{kind}", GSM8K_ROWS)
    task = build_task(task_spec(kind, path, prompt_field="question", answer_pattern="gsm8k"), seed=1)
    assert len(task.train) == 16 and len(task.eval) == 4 and task.name == f"gsm8k.{kind}"
    assert task.has_answers and task.has_solutions and not task.needs_sampled_calibration
    ex = task.eval[0]
    assert ex.prompt.startswith("Tom has") and ex.answer == ex.solution.rsplit("#### ", 1)[1]
    assert task.verifier(ex.prompt, f"so #### {ex.answer.replace(',', '')}", ex.answer) == 1.0
    assert task.verifier(ex.prompt, "#### 3", ex.answer) == 0.0 and task.verifier(ex.prompt, "idk", ex.answer) == 0.0
    assert task.accuracy(["#### 1,024", "#### 1024.0", "1024"], ["1024", "1,024", "1024"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_numeric_answers_are_text_and_ints_stay_ints(tmp_path, kind):
    rows = [{"q": f"{i}+1?", "a": float(i + 1) if i % 2 else i + 1, "steps": f"{i}+1={i + 1}#{i + 1}", "x": None}
            for i in range(10)]
    path = WRITERS[kind](tmp_path / f"d.{kind}", rows)
    task = build_task(task_spec(kind, path, prompt_field="q", answer_field="a", solution_field="steps"), seed=0)
    answers = {ex.prompt: ex.answer for ex in (*task.train, *task.eval)}
    assert answers == {f"{i}+1?": str(i + 1) for i in range(10)}
    assert task.has_solutions


def test_split_is_seeded_and_holds_out_eval_size(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "answer": i} for i in range(30)])
    a, b = (build_task(task_spec("jsonl", path, eval_size=5), seed=s) for s in (0, 0))
    c = build_task(task_spec("jsonl", path, eval_size=5), seed=1)
    assert a.eval == b.eval and len(a.eval) == 5 and a.eval != c.eval
    assert not {e.prompt for e in a.eval} & {e.prompt for e in a.train}


def test_rows_without_answers_have_no_checker(tmp_path):
    path = write_jsonl(tmp_path / "open.jsonl", [{"prompt": f"Write a poem about {i}"} for i in range(10)])
    task = build_task(task_spec("jsonl", path), seed=0)
    assert task.verifier is None and not task.has_answers and not task.needs_sampled_calibration
    for build in (lambda: task.calibration(8, 0), lambda: task.calibration_from([], 8, 0), task.checker):
        with pytest.raises(TaskError, match="open.jsonl: rows have no reference answers"):
            build()


@pytest.mark.parametrize("kind,rows,message", [
    ("jsonl", [{"question": "q", "answer": 1}],
     r'questions.jsonl:1: .*no field "prompt" \(fields: question, answer\); set task.source.prompt_field'),
    ("parquet", [{"question": "q", "answer": 1}] * 3,
     r'questions.parquet row 1: .*no field "prompt" \(fields: question, answer\)'),
    ("jsonl", [{"prompt": "a", "answer": 1}, {"prompt": "  ", "answer": 2}],
     r'questions.jsonl:2: .*"prompt".* is empty'),
    ("parquet", [{"prompt": "a", "answer": 1}, {"prompt": None, "answer": 2}],
     r"questions.parquet row 2: .*is empty"),
    ("jsonl", [{"prompt": f"p{i}", "answer": (i if i % 4 == 2 else None)} for i in range(12)],
     r'questions.jsonl: lines 1, 2, 4, 5, 6 and 4 more have no answer \(field "answer"\): give every row one or none'),
    ("parquet", [{"prompt": f"p{i}", "answer": (None if i in (2, 6) else i)} for i in range(12)],
     r"questions.parquet: rows 3, 7 have no answer .*: give every row one or none"),
    ("jsonl", [{"prompt": "p", "answer": 5, "solution": "2+2=4#4"}],
     r"questions.jsonl:1: the solution \(field \"solution\"\) gives '4', the answer is '5'"),
    ("jsonl", [{"prompt": f"p{i}", "answer": i} for i in range(3)],
     r"questions.jsonl: 3 rows, need more than task.eval_size=4"),
])
def test_dataset_errors_are_one_line_naming_the_row_and_field(tmp_path, kind, rows, message):
    path = WRITERS[kind](tmp_path / f"questions.{kind}", rows)
    assert re.search(message, one_line_error(task_spec(kind, path)))


def test_missing_empty_and_unreadable_files_are_one_line(tmp_path):
    assert one_line_error(task_spec("jsonl", tmp_path / "nope.jsonl")).endswith("nope.jsonl: no such dataset file")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert one_line_error(task_spec("jsonl", tmp_path / "empty.jsonl")).endswith("empty.jsonl: dataset is empty")
    write_parquet(tmp_path / "empty.parquet", [])
    assert "empty.parquet: dataset is empty" in one_line_error(task_spec("parquet", tmp_path / "empty.parquet"))
    (tmp_path / "fake.parquet").write_text('{"prompt": "p"}\n')
    fake = one_line_error(task_spec("parquet", tmp_path / "fake.parquet"))
    assert "fake.parquet: not a readable Parquet file" in fake


def solution_task(tmp_path, pattern="gsm8k"):
    return build_task(task_spec("jsonl", write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS), eval_size=6,
                                prompt_field="question", answer_pattern=pattern), seed=0)


def test_calibration_from_solutions_is_paired_balanced_and_labelled_right(tmp_path):
    """Items 2m / 2m+1: the worked solution and the same solution with only its final answer made wrong."""
    task = solution_task(tmp_path)
    items = task.calibration(20, seed=3)
    assert [i.correct for i in items] == [True, False] * 10
    for right, wrong in zip(items[::2], items[1::2]):
        assert right.prompt == wrong.prompt and right.reference == wrong.reference
        assert task.verifier(right.prompt, right.response, right.reference) == 1.0
        assert task.verifier(wrong.prompt, wrong.response, wrong.reference) == 0.0
        head, _, tail = wrong.response.rpartition("#### ")
        assert right.response.startswith(head) and "," in tail  # the steps kept, the answer's format kept
    assert task.calibration(20, seed=3) == items


def test_calibration_with_text_answers_borrows_another_rows_answer(tmp_path):
    rows = [{"prompt": f"Capital of country {i}?", "answer": city, "solution": f"It is <answer>{city}</answer>"}
            for i, city in enumerate(["Paris", "Rome", "Lima", "Oslo", "Bern", "Kyiv"])]
    path = write_jsonl(tmp_path / "cities.jsonl", rows)
    task = build_task(task_spec("jsonl", path, eval_size=3, answer_pattern="answer_tag"), seed=0)
    items = task.calibration(6, seed=0)
    for wrong in items[1::2]:
        said = task.extract(wrong.response)
        assert said in {r["answer"] for r in rows} and said != wrong.reference


def reference_only_task(tmp_path):
    rows = [{"prompt": f"What is {i} * 3?", "answer": 3 * i} for i in range(12)]
    return build_task(task_spec("jsonl", write_jsonl(tmp_path / "ref.jsonl", rows), eval_size=4,
                                answer_pattern="last_number"), seed=0)


def test_calibration_from_samples_makes_the_side_a_prompt_lacks(tmp_path):
    """Per prompt one right and one wrong item: real samples where there are both; a right one made from a wrong
    sample (its answer replaced by the reference); a wrong one made from a right sample; a sample with no
    readable answer only ever wrong; a prompt whose samples give nothing to make a right one from is left out."""
    task = reference_only_task(tmp_path)
    assert task.needs_sampled_calibration and not task.has_solutions
    with pytest.raises(TaskError, match="held-out rows have no worked solutions"):
        task.calibration(8, 0)
    mixed, only_wrong, only_right, unreadable = task.eval
    samples = [
        (mixed.prompt, f"so {mixed.answer}"), (mixed.prompt, "so 1"), (mixed.prompt, "no idea"),
        (only_wrong.prompt, "3 times it is 1000"), (only_wrong.prompt, "hmm"),
        (only_right.prompt, f"it is {only_right.answer}.0"), (only_right.prompt, f"= {only_right.answer}"),
        (unreadable.prompt, "no idea"), (unreadable.prompt, "pass"),
    ]
    items = task.calibration_from(samples, 24, seed=5)
    assert [i.correct for i in items] == [True, False] * 12
    assert {i.prompt for i in items} == {mixed.prompt, only_wrong.prompt, only_right.prompt}
    for right, wrong in zip(items[::2], items[1::2]):
        assert right.prompt == wrong.prompt
        assert task.verifier(right.prompt, right.response, right.reference) == 1.0
        assert task.verifier(wrong.prompt, wrong.response, wrong.reference) == 0.0
    responses = {(i.prompt, i.response) for i in items}
    assert (only_wrong.prompt, f"3 times it is {only_wrong.answer}") in responses
    assert (only_wrong.prompt, "hmm") in responses or (only_wrong.prompt, "3 times it is 1000") in responses
    assert any(p == only_right.prompt and not task.verifier(p, r, only_right.answer) for p, r in responses)
    assert task.calibration_from(samples, 24, seed=5) == items
    assert len(task.calibration_from(samples, 7, seed=5)) == 7


def test_calibration_from_samples_refuses_unknown_prompts_and_samples_with_nothing_to_use(tmp_path):
    task = reference_only_task(tmp_path)
    with pytest.raises(TaskError, match="no sampled response gives a calibration pair"):
        task.calibration_from([(task.eval[0].prompt, "no idea")], 8, 0)
    with pytest.raises(TaskError, match="is not one of the task's prompts"):
        task.calibration_from([("What is love?", "42")], 8, 0)


def test_builtin_arithmetic_is_built_through_the_registry():
    task = build_task(TaskSpec(source={"kind": "builtin", "terms": 2, "train_size": 50}, eval_size=8), seed=0)
    assert task.name == "arithmetic" and task.corrupt is not None and task.has_answers
    assert not task.needs_sampled_calibration
    items = task.calibration_from([(task.eval[0].prompt, task.eval[0].solution)], 4, seed=0)
    assert [i.correct for i in items] == [True, False] * 2


CHAIN_SUM = {"kind": "reasoning_gym", "name": "chain_sum", "train_size": 40,
             "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}


def test_reasoning_gym_chain_sum_checks_with_its_own_scorer():
    pytest.importorskip("reasoning_gym")
    task = build_task(TaskSpec(source=CHAIN_SUM, eval_size=8), seed=0)
    assert len(task.eval) == 8 and len(task.train) == 40
    assert not {e.prompt for e in task.eval} & {e.prompt for e in task.train}
    ex = task.eval[0]
    assert "<answer>" in ex.prompt and ex.prompt.startswith("State the final answer")
    assert task.verifier(ex.prompt, f"I add them up.\n<answer>{ex.answer}</answer>", ex.answer) == 1.0
    assert task.verifier(ex.prompt, f"<answer>{int(ex.answer) + 1}</answer>", ex.answer) == 0.0
    assert task.verifier(ex.prompt, f"the answer is {ex.answer}", ex.answer) == 0.0  # no tags: nothing read
    prompts = [e.prompt for e in task.eval[:2]]
    right = [f"<answer>{e.answer}</answer>" for e in task.eval[:2]]
    assert task.accuracy(right, [e.answer for e in task.eval[:2]], prompts) == 1.0
    assert task.has_answers and task.needs_sampled_calibration
    items = task.calibration_from([(ex.prompt, "<answer>-12345</answer>")], 4, seed=0)
    assert [(i.response, i.correct) for i in items[:2]] == [(f"<answer>{ex.answer}</answer>", True),
                                                            ("<answer>-12345</answer>", False)]


def test_reasoning_gym_builds_are_deterministic_and_differ_by_seed():
    pytest.importorskip("reasoning_gym")
    a, b, c = (build_task(TaskSpec(source=CHAIN_SUM, eval_size=8), seed=s) for s in (3, 3, 4))
    assert a.eval == b.eval and a.train == b.train and a.eval != c.eval


@pytest.mark.parametrize("source,message", [
    ({"name": "chain_summ"}, r"reasoning_gym chain_summ: no such dataset \(e.g. chain_sum"),
    ({"name": "chain_sum", "config": {"terms": 3}}, r"reasoning_gym chain_sum: bad config .*unexpected keyword "
                                                    r"argument 'terms' \(settings: min_terms, max_terms"),
    ({"name": "chain_sum", "config": {"min_terms": 5, "max_terms": 2}}, r"bad config .*max_terms must be >= min_terms"),
    ({"name": "chain_sum", "config": {"seed": 3}}, r"config must not set seed"),
])
def test_reasoning_gym_errors_are_one_line(source, message):
    pytest.importorskip("reasoning_gym")
    assert re.search(message, one_line_error(TaskSpec(source={"kind": "reasoning_gym", **source}, eval_size=4)))


def test_a_schedule_makes_a_later_rung_harder():
    """The schedule swaps the task per rung: from rung 2 on, chain sums of more terms."""
    pytest.importorskip("reasoning_gym")
    harder = {**CHAIN_SUM, "config": {"min_terms": 4, "max_terms": 5, "min_digits": 1, "max_digits": 2}}
    spec = parse_spec({"name": "gym", "rungs": 3, "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
                       "task": {"source": CHAIN_SUM, "eval_size": 8}, "schedule": [{"rung": 2, "task": harder}]})
    terms = {}
    for k in (1, 2, 3):
        task = build_task(spec.for_rung(k).task, spec.seed)
        terms[k] = max(e.prompt.split("=")[0].count(" + ") + e.prompt.split("=")[0].count(" - ") + 1
                       for e in task.eval)
    assert terms[1] == 2 and terms[2] >= 4 and terms[3] == terms[2]


def test_a_sample_without_a_readable_answer_is_never_a_right_item():
    """Even where the checker would pass it (a lenient one here), it serves only as a wrong item."""
    from ladder.tasks import Example, Task

    rows = tuple(Example(f"q{i}", str(i)) for i in range(4))
    task = Task("lenient", rows[2:], rows[:2], lambda p, r, ref: 1.0, None, "answer_tag")
    items = task.calibration_from([("q0", "no tags"), ("q0", "<answer>7</answer>")], 4, seed=0)
    assert [(i.response, i.correct) for i in items[:2]] == [("<answer>7</answer>", True), ("no tags", False)]


class CountingSpec(BuiltinTaskSpec):
    """A built-in task for this test only (its module would hold it): how many letters a word of a's has."""
    name: Literal["counting"] = Field("counting", description="Name of the built-in task.")
    words: int = Field(20, ge=1, description="Words generated, the longest `words` letters.")

    def build(self, eval_size: int, seed: int) -> Task:
        rows = tuple(Example(f"How many letters has {'a' * n}?", str(n)) for n in range(1, self.words + 1))
        return Task("counting", rows[eval_size:], rows[:eval_size], AnswerChecker("last_number"), None, "last_number")

    def label(self) -> str:
        return f"counting words={self.words}"


def test_adding_a_builtin_task_is_its_module_and_its_registry_line(monkeypatch):
    """The spec section, the task and its lineage label all come from the task's model once it is listed; the YAML
    shape is the one arithmetic has, and a bad field or name is one line."""
    from ladder.spec import LadderSpec, SpecError
    from ladder.tasks import BUILTIN_TASKS

    monkeypatch.setitem(BUILTIN_TASKS, "counting", CountingSpec)

    def spec(source):
        return parse_spec({"name": "c", "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
                           "task": {"source": source, "eval_size": 4},
                           "schedule": [{"rung": 2, "task": {"kind": "builtin", "terms": 4}}]})

    counting = spec({"kind": "builtin", "name": "counting", "words": 12})
    assert counting.task.source == CountingSpec(kind="builtin", words=12)
    assert counting.task_label() == "counting words=12"
    assert counting.for_rung(2).task_label() == "arithmetic terms=4 max_operand=9"  # beside arithmetic
    task = build_task(counting.task, seed=0)
    assert len(task.train) == 8 and task.verifier("q", "it has 3", "3") == 1.0
    assert LadderSpec.model_validate_json(counting.model_dump_json()) == counting  # saved and read back whole
    with pytest.raises(SpecError, match=r"^spec: task.source.builtin.words: Input should be greater than or equal "
                                        r"to 1$"):
        spec({"kind": "builtin", "name": "counting", "words": 0})
    with pytest.raises(SpecError, match=r"^spec: task.source.builtin.name: Input should be 'arithmetic' or "
                                        r"'counting'$"):
        spec({"kind": "builtin", "name": "spelling"})
