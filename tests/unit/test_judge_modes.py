"""A judge mode is a settings model and a scorer: the spec's judge section is made of the modes' models, the
judge workers take the current mode's model, and a mode added here, in a test, scores through the pool."""
from dataclasses import fields
from typing import Literal

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from ladder.spec import TrainSpec
from ladder.spec.judge import JudgeSpec
from stages.judge import JudgeConfig, JudgePool
from stages.scoring import JUDGE_MODES, JUDGE_SCORERS, JudgeMode, ModeSettings, Pairs, Scored, ScoreMode, SolveMode
from stages.train import TrainConfig


def test_the_judge_section_is_every_modes_settings_and_the_workers_take_the_current_modes():
    modes = {name for model in JUDGE_MODES.values() for name in model.model_fields}
    assert set(JudgeSpec.model_fields) == modes | {"initial", "chat"}
    judge = JudgeSpec(initial={"kind": "task"}, mode="solve", solve_samples=8, prompt_template="{prompt}?{response}")
    assert judge.settings() == SolveMode(solve_samples=8)  # verdict mode's template stays with the spec
    cfg = JudgeConfig.from_spec(judge.model_copy(update={"mode": "score"}), r"#(\d+)")
    assert cfg.settings == ScoreMode(prompt_template="{prompt}?{response}") and cfg.answer_pattern == r"#(\d+)"


def test_a_mode_is_chosen_by_its_name():
    adapter = TypeAdapter(JudgeMode)
    assert adapter.validate_python({"mode": "score", "score_max": 5}) == ScoreMode(score_max=5)
    with pytest.raises(ValidationError, match="solve_samples"):
        adapter.validate_python({"mode": "score", "solve_samples": 2})  # a setting of another mode
    with pytest.raises(ValidationError, match="vibes"):
        adapter.validate_python({"mode": "vibes"})


class LengthMode(ModeSettings):
    """A mode for this test only: a response earns its length, up to `cap` characters."""
    mode: Literal["length"] = "length"
    cap: int = Field(10, ge=1, description="Characters worth a reward of 1.")

    def bare_prompt(self, prompt: str) -> str:  # the judge would read "<prompt> => <response>"
        return f"{prompt} => "

    def context_room(self, response_tokens: int) -> int:  # the response, nothing written
        return response_tokens


def score_length(pool, settings: LengthMode, pairs: Pairs, answer_pattern: str) -> Scored:
    return Scored(tuple(min(len(r), settings.cap) / settings.cap for r in pairs.responses), 0, 0)


def test_adding_a_judge_mode_is_a_settings_model_and_a_scorer(monkeypatch):
    monkeypatch.setitem(JUDGE_SCORERS, LengthMode, score_length)
    pool = JudgePool([object()], batch_size=4, cfg=JudgeConfig(LengthMode(cap=4)))
    assert pool.score_items(["q", "q", "r"], ["ab", "abcdef", ""], [0, 0, 1]).scores == (0.5, 1.0, 0.0)


def test_a_modes_settings_size_the_judge_engines_context():
    """The judge's context length is measured on what the mode's settings say the judge reads and writes."""
    from types import SimpleNamespace

    from ladder.rung.prompts import MARGIN, judge_context
    from ladder.tasks import Example

    chars = SimpleNamespace(user=lambda text: text, n_tokens=lambda texts: [len(t) for t in texts])  # 1 char: 1 token
    rows = (Example("What is 1+1?", "2"), Example("Q" * 100, "1"))
    spec = SimpleNamespace(rollout=SimpleNamespace(max_tokens=50, max_model_len=None))
    needed = len("Q" * 100 + " => ") + 50 + MARGIN
    assert judge_context(spec, JudgeConfig(LengthMode()), SimpleNamespace(train=rows, eval=rows), chars, None) \
        == -(-needed // 64) * 64


def test_the_trainers_config_keeps_step_with_the_train_spec():
    """`TrainConfig` (stages/ imports nothing of the spec) is filled from `TrainSpec` by name: every field of it
    is one of the spec's, with the spec's default, but for the two the rung sets."""
    set_by_the_rung = {"trust_remote_code", "checkpoint_shard_size"}
    for f in fields(TrainConfig):
        if f.name not in set_by_the_rung:
            assert f.name in TrainSpec.model_fields, f"TrainConfig.{f.name} is not a field of TrainSpec"
            assert TrainSpec.model_fields[f.name].default == f.default, f"train.{f.name}: defaults differ"
    spec = TrainSpec(lr=3e-4, overlap=True, dtype="float32")
    assert TrainConfig.from_spec(spec, True) == TrainConfig(lr=3e-4, overlap=True, dtype="float32",
                                                            trust_remote_code=True)


def test_placeholders_written_inside_the_data_reach_the_judge_as_written():
    """Issue 35, 10: a response that writes `{second}` (or a prompt that writes `{response}`) is not filled with the
    other response (a reward hack RL can find: the judge would read the rival's text as this one's). Without the
    one-pass fill the chained `.replace` substituted into text already filled in."""
    from stages.scoring import PairwiseMode, VerdictMode

    pair = PairwiseMode(pair_template="Q: {prompt}\nA: {first}\nB: {second}")
    assert pair.render_pair("2+2?", "I agree with {second}", "4") == "Q: 2+2?\nA: I agree with {second}\nB: 4"
    one = VerdictMode(prompt_template="Q: {prompt}\nA: {response}")
    assert one.render("say {response}", "5") == "Q: say {response}\nA: 5"
