"""Chat rendering with a real chat model's tokenizer (SmolLM2's ChatML), for the student and every judge mode;
verdict tokens checked against the tokenizer; the engines' context length measured on rendered prompts."""
import pytest

from ladder.rung.prompts import PromptError, fit_context, judge_context, renderer, student_context
from ladder.spec import ChatSpec, parse_spec
from ladder.spec.judge import JudgeSpec
from ladder.tasks.base import Example, Task
from stages.judge import JudgeConfig, JudgeError, _single_token
from stages.scoring import Pairs, PairwiseMode

TURN = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chat_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_auto_renders_a_user_turn_and_the_assistant_header(chat_tokenizer):
    chat = renderer(chat_tokenizer, ChatSpec(), "student.chat")
    text = chat.user("What is 2+3?")
    assert text.endswith(TURN.format(text="What is 2+3?"))
    with_system = renderer(chat_tokenizer, ChatSpec(system="Answer with a number."), "student.chat").user("2+3?")
    assert "<|im_start|>system\nAnswer with a number.<|im_end|>" in with_system
    assert with_system.endswith(TURN.format(text="2+3?"))
    assert renderer(chat_tokenizer, ChatSpec(template="none"), "student.chat").user("2+3?") == "2+3?"
    custom = renderer(chat_tokenizer, ChatSpec(template="{% for m in messages %}[{{ m.content }}]{% endfor %}>"),
                      "judge.chat")
    assert custom.user("hi") == "[hi]>"


def test_a_model_without_a_chat_template_gets_plain_text():
    from ladder.models.tiny import build_char_tokenizer

    tiny_tokenizer = build_char_tokenizer()
    assert renderer(tiny_tokenizer, ChatSpec(), "student.chat").user("Q:1+2\nA:") == "Q:1+2\nA:"
    with pytest.raises(PromptError, match="student.chat.system: a system prompt needs a chat template"):
        renderer(tiny_tokenizer, ChatSpec(system="be brief"), "student.chat")


class _Pool:
    """Records what each scorer sends to the judge workers (their engines are exercised in integration tests)."""

    def __init__(self, chat):
        self.chat, self.sent = chat, []

    def map(self, method, items, *args):
        self.sent.append((method, list(items)))
        if method == "verdicts":
            return [0.75] * len(items)
        n = args[0]
        return [[("<answer>5</answer> 7", 3)] * n for _ in items]


@pytest.mark.parametrize("mode", ["verdict", "score", "solve", "pairwise"])
def test_every_judge_mode_sends_the_judge_prompt_as_a_user_turn(chat_tokenizer, mode):
    chat = renderer(chat_tokenizer, ChatSpec(system="You grade answers."), "judge.chat")
    judge = JudgeSpec(initial={"kind": "task"}, mode=mode, prompt_template="Q: {prompt}\nA: {response}\nCorrect?",
                      solve_template="Solve: {prompt}", pair_template="Q: {prompt}\n1: {first}\n2: {second}\nFirst?",
                      yes_token="Yes", no_token="No")
    cfg = JudgeConfig.from_spec(judge)  # the mode's own settings, as the judge workers take them
    pool = _Pool(chat.user)
    pairs = Pairs(("2+3", "2+3"), ("5", "6"), (0, 0))
    scored = cfg.score(pool, pairs)
    expected = {"verdict": ["Q: 2+3\nA: 5\nCorrect?", "Q: 2+3\nA: 6\nCorrect?"],
                "score": ["Q: 2+3\nA: 5\nCorrect?", "Q: 2+3\nA: 6\nCorrect?"],
                "solve": ["Solve: 2+3"],
                "pairwise": ["Q: 2+3\n1: 5\n2: 6\nFirst?", "Q: 2+3\n1: 6\n2: 5\nFirst?"]}[mode]
    (method, sent), = pool.sent
    assert sent == [chat.user(t) for t in expected]
    assert all(s.startswith("<|im_start|>system\nYou grade answers.<|im_end|>\n") and
               s.endswith("<|im_end|>\n<|im_start|>assistant\n") for s in sent)
    assert [e["judge_input"] for e in scored.examples] == sent[:len(scored.examples)]  # what judge_samples/ shows


def test_verdict_tokens_are_checked_against_the_judges_tokenizer(chat_tokenizer):
    assert chat_tokenizer.decode([_single_token(chat_tokenizer, "Yes", "yes_token")]) == "Yes"
    multi = next(w for w in ("correctness", "approved", "incorrect", "acceptable")
                 if len(chat_tokenizer.encode(w, add_special_tokens=False)) > 1
                 and len(chat_tokenizer.encode(" " + w, add_special_tokens=False)) == 1)
    with pytest.raises(JudgeError) as err:
        _single_token(chat_tokenizer, multi, "yes_token")
    message = str(err.value)
    assert message.startswith(f"judge.yes_token: {multi!r} is ") and f"one token: {' ' + multi!r}" in message
    assert "\n" not in message
    with pytest.raises(JudgeError, match="need exactly 1$"):  # no variant is one token: none is offered
        _single_token(chat_tokenizer, "Yes, it is correct", "yes_token")


def _task(prompts, solutions=()):
    rows = tuple(Example(p, "1", s) for p, s in zip(prompts, list(solutions) + [None] * len(prompts)))
    return Task("t", rows, rows[:1], None, None, "last_number")


def test_context_length_is_measured_on_the_rendered_prompts(chat_tokenizer):
    spec = parse_spec({"name": "c", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "rollout": {"max_tokens": 50}})
    chat = renderer(chat_tokenizer, ChatSpec(), "student.chat")
    long_prompt = "What is " + " + ".join(["12"] * 100) + "?"
    task = _task(["What is 1+1?", long_prompt])
    rendered = len(chat_tokenizer(chat.user(long_prompt)).input_ids)
    context = student_context(spec, task, chat, 8192)
    assert context >= rendered + 50 and context % 64 == 0 and context < rendered + 50 + 64 + 8
    cfg = JudgeConfig(PairwiseMode(pair_template="{prompt}|{first}|{second}?"))
    assert judge_context(spec, cfg, task, chat, 8192) >= rendered + 2 * 50
    with pytest.raises(PromptError, match="the longest student prompt \\+ rollout.max_tokens needs .* over the "
                                          "model's limit of 256"):
        student_context(spec, task, chat, 256)
    with pytest.raises(PromptError, match="rollout.max_model_len: 100 tokens cannot hold"):
        fit_context(rendered + 50, 100, 8192, "the longest student prompt")


def test_a_short_prompt_of_many_tokens_sizes_the_context(chat_tokenizer):
    """Nine prompts of 300 characters and ~60 tokens, and one of 90 characters and 180 tokens: the context holds the
    short one. Picked by characters first (before the fix), it was never counted and the engine's context was 64
    tokens too short for it."""
    spec = parse_spec({"name": "c", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "rollout": {"max_tokens": 50}})
    chat = renderer(chat_tokenizer, ChatSpec(), "student.chat")
    dense = "\u10e6" * 90  # a Georgian letter: 2 tokens each
    task = _task(["word " * 60 + str(i) for i in range(9)] + [dense])
    assert student_context(spec, task, chat, 8192) >= len(chat_tokenizer(chat.user(dense)).input_ids) + 50
