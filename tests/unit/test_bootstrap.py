"""`ladder bootstrap`: harder levels in the mix, the recipe kept beside the model, one-line refusals."""
import json
import random

import pytest
from typer.testing import CliRunner

from ladder.models.bootstrap import _examples
from ladder.cli.app import app
from ladder.tasks.arithmetic import build

runner = CliRunner()


def test_harder_levels_take_their_share_of_the_examples():
    easy = build(terms=4, max_operand=5, train_size=200, eval_size=8, seed=1)
    hard = build(terms=4, max_operand=9, train_size=200, eval_size=8, seed=1)
    hard_prompts = {ex.prompt for ex in hard.train} - {ex.prompt for ex in easy.train}
    out = _examples(easy, "", random.Random(0), 4000, "yes", "no", judge_share=0.0, direct_share=0.0,
                    harder=((hard, 0.3),))
    share = sum(prefix in hard_prompts for prefix, _, _ in out) / len(out)
    assert 0.2 < share < 0.3  # 0.3 of the draws, less the hard prompts that easy also has (operands all <= 5)
    assert all(prefix not in hard_prompts for prefix, _, _ in
               _examples(easy, "", random.Random(0), 500, "yes", "no", 0.0, 0.0))


@pytest.mark.parametrize("args, message", [
    (["--level", "4x9"], "--level: '4x9' is not TERMSxMAX_OPERAND:SHARE"),
    (["--level", "9x9:0.2"], "--level: '9x9:0.2' is not"),
    (["--level", "4x7:0.6", "--level", "4x9:0.5"], "add up to 1 or more"),
])
def test_a_malformed_level_is_one_line(tmp_path, args, message):
    res = runner.invoke(app, ["bootstrap", "--out", str(tmp_path / "m"), *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m").exists()  # nothing written


def test_a_model_is_reused_only_for_its_own_recipe(tmp_path):
    out = tmp_path / "m"
    base = ["bootstrap", "--out", str(out), "--size", "nano", "--steps", "2", "--json"]
    first = runner.invoke(app, [*base, "--level", "4x9:0.25"])
    assert first.exit_code == 0, first.output
    report = json.loads((out / "bootstrap.json").read_text())
    assert report["recipe"]["levels"] == [[4, 9, 0.25]] and len(report["levels"]) == 1
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = runner.invoke(app, [*base, "--level", "4x9:0.25"])
    assert again.exit_code == 0 and (out / "model.safetensors").stat().st_mtime_ns == stamp  # same recipe: kept
    other = runner.invoke(app, [*base, "--level", "none"])  # no harder level: another recipe, rebuilt
    assert other.exit_code == 0 and "another recipe; rebuilding" in other.output
    assert json.loads((out / "bootstrap.json").read_text())["recipe"]["levels"] == []


def test_a_step_in_runs_of_similar_length_has_the_whole_batchs_gradient(tmp_path):
    """The bootstrap pads a bare answer only to its own run's length (`_by_length`), and each run's loss divides by
    the whole batch's token counts: the runs' gradients add up to the one-batch gradient (a run's own count in
    the denominator would not)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import _backward, _by_length
    from ladder.models.tiny import build_tiny_model

    build_tiny_model(tmp_path / "m", size="nano", seed=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64)
    task = build(terms=4, max_operand=5, train_size=200, eval_size=8, seed=1)
    pairs = _examples(task, "{prompt}{response}\nok?", random.Random(0), 32, "yes", "no", 0.3, 0.6)

    def grad(parts):
        model.zero_grad()
        loss = _backward(model, tok, pairs, parts)
        return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    short, long = _by_length(pairs)
    assert max(len(a) + len(b) for a, b, _ in short) <= min(len(a) + len(b) for a, b, _ in long)
    (loss_runs, runs), (loss_whole, whole) = grad(2), grad(1)
    assert loss_runs == pytest.approx(loss_whole, rel=1e-9)
    assert torch.allclose(runs, whole, rtol=1e-9, atol=1e-12)
