"""A real pretrained chat model (SmolLM2-135M-Instruct: Llama architecture, 49k BPE vocabulary, ChatML) as the
student, first against the task's own checker, then as its own judge reading Yes/No from its assistant turn.
One rung's engines and trainer are shared by both tests (the second rung takes them over)."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "smollm2" / "data" / "questions.jsonl"
JUDGE_PROMPT = "Question: {prompt}\nProposed answer: {response}\nIs the proposed answer correct? Answer Yes or No."


def smol_spec(model: str, workdir: Path, judge: dict, **judge_fields) -> object:
    from ladder.spec import parse_spec

    return parse_spec({
        "name": "smol", "seed": 0, "rungs": 1, "workdir": str(workdir),
        "student": {"base": model},
        "judge": {"initial": judge, **judge_fields},
        "task": {"source": {"kind": "jsonl", "path": str(DATA), "prompt_field": "question",
                            "answer_pattern": "last_number"}, "eval_size": 16},
        "rollout": {"workers": 1, "group_size": 4, "max_tokens": 48, "kv_cache_gib": 0.25},
        "judge_pool": {"batch_size": 32},
        "train": {"lr": 1e-5, "kl_coef": 0.0, "steps": 2, "prompts_per_step": 4},  # 8 groups: some mixed
        "eval": {"every": 100},
    })


@pytest.fixture(scope="module")
def task_rung(ray_local, smollm2_dir, tmp_path_factory):
    from ladder.judging.resolve import resolve_judge
    from ladder.rung.driver import Rung
    from ladder.tasks import build_task

    spec = smol_spec(smollm2_dir, tmp_path_factory.mktemp("smol"), {"kind": "task"})
    task = build_task(spec.task, spec.seed)
    rung = Rung(spec, task, smollm2_dir, resolve_judge(spec), spec.seed)
    rung.ready()
    yield rung
    rung.shutdown()  # a no-op for actors the second rung took over: it shuts them down itself


def test_a_rung_on_a_pretrained_chat_model_against_the_task_checker(task_rung, smollm2_dir):
    import ray
    from transformers import AutoTokenizer

    rung = task_rung
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert rung.chat.chat  # `auto` found the model's ChatML template
    before = rung.evaluate(8)
    assert 0.0 <= before["eval/accuracy"] <= 1.0
    start = ray.get(rung.trainer.parameter_checksum.remote())
    for _ in range(2):
        metrics = rung.step(prefetch=False)
        assert metrics["train/skipped"] == 0.0
    assert ray.get(rung.trainer.parameter_checksum.remote()) != start
    assert ray.get(rung.rollout[0].weights_version.remote()) == rung.weights_version == 2
    # the student saw each question as a user turn, and answered in the assistant turn
    from stages.answers import extract_answer, same_answer

    answers = {ex.prompt: ex.answer for ex in (*rung.task.train, *rung.task.eval)}
    for s in rung.last_samples:
        question = s["student_input"].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        assert s["student_input"] == rung.chat.user(question)
        assert s["student_input"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert s["reward"] == float(same_answer(extract_answer("last_number", s["response"]), answers[question]))
    batch = rung.generate(rung.next_prompts(), 1, 0.0)
    assert tok.decode(batch.samples[0].prompt_ids) == rung.chat.user(batch.prompts[0])


def test_the_pretrained_model_judges_itself_in_verdict_mode(task_rung, smollm2_dir):
    """Its verdict is read from the first token of its assistant turn: the engine's P(Yes)/(P(Yes)+P(No)) equals
    the one transformers computes on the rendered judge prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.judging.resolve import resolve_judge
    from ladder.rung.driver import Rung

    spec = smol_spec(smollm2_dir, Path(task_rung.spec.workdir), {"kind": "model", "path": smollm2_dir},
                     mode="verdict", prompt_template=JUDGE_PROMPT, yes_token="Yes", no_token="No")
    rung = Rung(spec, task_rung.task, smollm2_dir, resolve_judge(spec), spec.seed, stages=task_rung.handover())
    try:
        assert rung.stages.reused == 2 and rung.stages.started == 1  # trainer and rollout taken over
        rung.ready()
        metrics = rung.step(prefetch=False)
        examples = rung.last_examples
    finally:
        rung.shutdown()
    assert metrics["judge/parse_failure_rate"] == 0.0
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    for example in examples:
        text = example["judge_input"]
        assert text.startswith("<|im_start|>") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "Is the proposed answer correct? Answer Yes or No.<|im_end|>" in text
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt")).logits[0, -1].float()
        expected = torch.softmax(logits[[yes, no]], -1)[0].item()
        assert example["score"] == pytest.approx(expected, abs=2e-3)
