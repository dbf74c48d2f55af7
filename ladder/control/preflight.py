"""The checks before a ladder (or a single rung) starts, in one place: `validate`, `run`, `submit`, the submitted
job's driver and `train-rung` all call `preflight`, so a bad dataset, model or work directory fails in one line."""
from __future__ import annotations

import json
from pathlib import Path

from ladder.judging.resolve import resolve_judge


def preflight(spec, gate: bool = True, offline: bool = False):
    """Fail in one line, before Ray starts, on a dataset that cannot be used (`gate`: a ladder, whose gate needs
    reference answers), a missing or broken student or judge model, or a work directory that cannot be written;
    returns the rung-1 judge. `offline` (`ladder validate`): the files alone, nothing created, MLflow not asked."""
    from ladder.tasks.sets import check_tasks

    if offline:
        check_tasks(spec, gate)
        check_local_models(spec)
        check_tensor_parallel(spec)
        return check_lora(spec)
    check_workdir(spec.workdir)
    check_tasks(spec, gate)
    check_lora(spec)
    check_tensor_parallel(spec)
    judge = resolve_judge(spec)
    for model in [spec.student.base] + ([judge.location] if judge.kind == "model" else []):
        check_model(model, spec)
    if gate:
        check_student_as_judge(spec)
    return judge


def check_student_as_judge(spec) -> None:
    """The student's tokenizer can judge in the modes the gate measures its candidates in (rung k+1's, the last
    rung's own): a verdict word that is not one token for it fails here, in one line, not at the first gate after a
    rung of training (every candidate keeps the student's tokenizer)."""
    from ladder.errors import first_line
    from ladder.rung.prompts import load_tokenizer, vocab_only
    from ladder.rung.roles import model_store
    from stages.judge import JudgeConfig, JudgeError, verdict_token_ids
    from stages.scoring import VerdictTokens

    gated = {min(k + 1, spec.rungs) for k in range(1, spec.rungs + 1)}
    configs = [JudgeConfig.from_spec(spec.for_rung(k).judge) for k in sorted(gated)]
    configs = [cfg for cfg in configs if isinstance(cfg.settings, VerdictTokens)]
    if not configs:
        return
    store = model_store(spec)
    # its vocabulary alone first: a word it finds one token is one (milliseconds); what it refuses, or a model
    # without a `tokenizer.json`, the full tokenizer decides (the one the gate's engines use)
    light = None if spec.trust_remote_code else vocab_only(spec.student.base, store)
    if light is not None and all(_verdict_ok(light, cfg) for cfg in configs):
        return
    tokenizer = load_tokenizer(spec.student.base, store, spec.trust_remote_code)
    for cfg in configs:
        try:
            verdict_token_ids(tokenizer, cfg)
        except JudgeError as err:
            raise JudgeError(f"{first_line(err, None)} (the student's tokenizer, {spec.student.base}: each "
                             f"candidate is measured as a judge at the gate)") from None


def _verdict_ok(tokenizer, cfg) -> bool:
    from stages.judge import JudgeError, verdict_token_ids

    try:
        verdict_token_ids(tokenizer, cfg)
        return True
    except JudgeError:
        return False


def check_local_models(spec) -> None:
    """The spec's model directories (student base, a directory judge), read without MLflow or Ray: one line naming
    the file when one is missing or broken (`ladder validate`)."""
    from stages.models import check_model_dir, is_model_uri

    initial = spec.judge.initial
    for model in [spec.student.base] + ([initial.path] if initial.kind == "model" else []):
        if not is_model_uri(model):
            check_model_dir(model)


class LoraError(ValueError):
    """LoRA settings the student or the rollout engines cannot take (one line)."""


def check_lora(spec) -> None:
    """Each rung's `train.lora` against the student's modules (read from its weights files' headers, no torch):
    every target must match a linear module, and with `sync: adapter` every module matched must be one a vLLM
    engine takes adapters on. A student that is not a local folder is checked when its trainer loads it."""
    from stages.lora import engine_refusal, linear_modules, unmatched_targets
    from stages.models import is_model_uri

    settings = {k: spec.for_rung(k).train.lora for k in range(1, spec.rungs + 1)}
    base = spec.student.base
    if all(lora is None for lora in settings.values()) or is_model_uri(base) or not Path(base).is_dir():
        return
    modules = linear_modules(base)
    for lora in {id(lora): lora for lora in settings.values() if lora is not None}.values():
        missing = unmatched_targets(modules, lora.target_modules)
        if missing:
            names = sorted({m.rpartition(".")[2] for m in modules})
            raise LoraError(f"train.lora.target_modules: {missing[0]!r} matches no linear module of the student "
                            f"{base} (its linear modules end in {', '.join(names[:8])})")
        why = engine_refusal(modules, lora.target_modules)
        if why and lora.sync == "adapter":
            raise LoraError(f"train.lora.sync: adapter: a vLLM engine cannot take {why}; use sync: merged or auto")


class TensorParallelError(ValueError):
    """A tensor-parallel size a model's attention heads cannot be split by (one line)."""


def check_tensor_parallel(spec) -> None:
    """Each engine's tensor-parallel size against the model it serves (its config.json, where it is a local
    folder): the student in the rollout engines, and in the judge engines the initial judge and, from rung 2 on
    (the gate's judge engines too), the students that become judges. vLLM splits the attention heads over the
    workers (and the key/value heads, or copies them where there are fewer than workers)."""
    from stages.models import is_model_uri

    initial = spec.judge.initial
    judge_tp = spec.judge_pool.tensor_parallel_size
    served = [("rollout.tensor_parallel_size", spec.rollout.tensor_parallel_size, spec.student.base, "student {}")]
    if initial.kind == "model":
        served.append(("judge_pool.tensor_parallel_size", judge_tp, initial.path, "judge {}"))
    if spec.rungs > 1:
        served.append(("judge_pool.tensor_parallel_size", judge_tp, spec.student.base,
                       "student {} (a judge from rung 2)"))
    for field, tp, model, what in served:
        if tp > 1 and not is_model_uri(model) and (Path(model) / "config.json").is_file():
            why = unsplittable(json.loads((Path(model) / "config.json").read_text()), tp)
            if why:
                raise TensorParallelError(f"{field}: {tp}: the {what.format(model)} {why}")


def unsplittable(config: dict, tp: int) -> str:
    """Why a model of `config` cannot be split over `tp` tensor-parallel workers ("" if it can)."""
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    if heads and heads % tp:
        return f"has {heads} attention heads, which {tp} workers cannot share evenly"
    if kv and (kv % tp if kv >= tp else tp % kv):
        return f"has {kv} key/value heads, which {tp} workers cannot share or copy evenly"
    return ""


class WorkdirError(ValueError):
    """A work directory the ladder cannot write (one line)."""


def check_workdir(workdir: str) -> None:
    import tempfile

    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise WorkdirError(f"workdir {workdir}: not writable ({exc.strerror or exc})") from None


def check_model(location: str, spec) -> None:
    """A model directory that holds an HF model, or a `models:/<name>/<version>` that MLflow has."""
    from ladder.registry.mlmodels import check_model_uri
    from ladder.registry.store import tracking_uri_for
    from stages.models import check_model_dir, is_model_uri

    if is_model_uri(location):
        return check_model_uri(location, tracking_uri_for(spec))
    return check_model_dir(location)
