"""A ladder goes on only with the data it started with: the sha256 of each dataset file is saved with the progress at
the start, and a resume (or a controller Ray restarts) whose file differs is refused in one line naming the file,
instead of splitting other rows into training and held-out prompts. In-process controllers on MLflow (SQLite)."""
import json

from ladder.progress import Phase, State


def rows(n: int, offset: int = 0) -> str:
    return "".join(json.dumps({"prompt": f"Q:{i}+{offset}\nA:", "answer": str(i + offset)}) + "\n" for i in range(n))


def controller(registry, data, resume=False):
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec
    from ladder.tasks.sets import TaskSets

    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "eval": {"yardstick_size": 0},
                       "judge": {"initial": {"kind": "task"}},
                       "task": {"source": {"kind": "jsonl", "path": str(data)}, "eval_size": 4}})
    ctl = LadderController(spec, job="job", resume=resume)

    def prepare():
        ctl.registry, ctl.tasks = registry, TaskSets(spec, data.parent)
    ctl.prepare = prepare
    return ctl


def run(ctl, trained: list) -> dict:
    """The ladder's train phase records its step and stops (as `ladder stop` would)."""
    ctl.HANDLERS = {Phase.TRAIN: lambda c, p: trained.append(p.step) or p.to(state=State.STOPPED)}
    return ctl.run()


def test_a_dataset_changed_between_stop_and_resume_is_refused_in_one_line_naming_the_file(registry, tmp_path):
    """Issue 35, 10: without the hash the resumed ladder re-split the edited file silently and trained on."""
    data = tmp_path / "rows.jsonl"
    data.write_text(rows(20))
    trained: list = []
    assert run(controller(registry, data), trained)["state"] == "stopped" and trained == [0]
    assert list(registry.load_progress("job").data) == [str(data)]

    assert run(controller(registry, data, resume=True), trained)["state"] == "stopped"  # the same file: goes on
    assert trained == [0, 0]

    data.write_text(rows(20, offset=1))  # the same number of rows, other contents
    final = run(controller(registry, data, resume=True), trained)
    assert trained == [0, 0] and final["state"] == "failed", final
    assert final["error"].startswith(f"DataChanged: {data}: the dataset file the ladder started with was changed")
    assert "\n" not in final["error"]
    assert registry.load_progress("job").state is State.FAILED
