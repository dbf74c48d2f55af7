"""Construction of vLLM engines and in-place weight loading, shared by rollout and judge workers.

Engines run in-process (no engine-core subprocess) so `collective_rpc` can pass tensors directly.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from cluster.processes import pid_alive
from stages.lora import engine_rank
from stages.models import TOKENIZER_CORE, ModelStore, check_model_dir, without_unused_libraries
from stages.startup import few_collections, heap_frozen
from stages.weight_sync import EXTENSION as WEIGHT_RECEIVER  # every engine can join a collective weight sync

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_CONFIGURE_LOGGING": "1",
}


@dataclass(frozen=True)
class EngineConfig:
    model: str                    # a local directory or models:/<name>/<version> (fetched by the worker)
    seed: int = 0
    kv_cache_gib: float = 0.5
    max_model_len: int = 512
    dtype: str = "auto"           # auto: float32 on CPU (trainer and engine logprobs agree), bfloat16 on GPU
    compiled: bool = False        # vLLM's compiled model (faster steps, a slower start) instead of eager mode
    gpu_memory_utilization: float = 0.5   # on GPU: the share of the device the engine may take
    trust_remote_code: bool = False       # the model's own Python code runs only when the spec says so
    lora_rank: int = 0                    # > 0: the engine takes LoRA adapters of this rank (a LoRA rung's rollout)
    tensor_parallel_size: int = 1         # > 1: the model split over this many worker processes of the engine
    store: ModelStore = ModelStore()


TMP_PREFIX = "ladder-engine-"
_SYSTEM_TMP = tempfile.gettempdir()


def use_private_tmp() -> str:
    """Point this process's temp folder at a folder of its own, removed when it exits. vLLM writes a
    `vllm_dist_*` file store per engine into the temp folder and never removes it; an actor killed by Ray
    cannot clean up either, so every engine start and every rung's end sweeps the folders of dead processes."""
    path = os.path.join(_SYSTEM_TMP, f"{TMP_PREFIX}{os.getpid()}")
    if tempfile.tempdir != path:
        keep_compiled_kernels()
        sweep_engine_tmp()
        os.makedirs(path, exist_ok=True)
        tempfile.tempdir = path
        atexit.register(shutil.rmtree, path, True)
    return path


def keep_compiled_kernels() -> None:
    """torch's compiled-kernel cache and precompiled headers stay where they are without a temp folder of our own
    (in the system's): an engine compiles a few C++ kernels even in eager mode, at its first sampling call (~14 s
    on 2 cores), and under the private folder every engine start compiled them again. Call before the temp folder
    changes: torch fixes the headers' folder when `torch._inductor.codecache` is first imported."""
    import importlib

    try:
        importlib.import_module("torch._inductor.codecache")  # its header folder, from the system temp folder
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # no torch here: nothing to keep
        return
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())


def sweep_engine_tmp() -> list[str]:
    """Remove the private temp folders of engine processes on this node that are gone; returns them."""
    swept = []
    for entry in os.scandir(_SYSTEM_TMP):
        pid = entry.name.removeprefix(TMP_PREFIX)
        if entry.name.startswith(TMP_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            swept.append(entry.path)
    return swept


@few_collections()
def build_llm(cfg: EngineConfig):
    """A vLLM `LLM` for `cfg`; the environment must be set before vLLM is imported."""
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    without_unused_libraries()  # before torch's inductor is imported (`use_private_tmp`): it imports Triton
    use_private_tmp()
    model = cfg.store.local(cfg.model)
    check_model_dir(model)
    from vllm import LLM

    memory = dict(gpu_memory_utilization=cfg.gpu_memory_utilization) if on_gpu() else \
        dict(kv_cache_memory_bytes=int(cfg.kv_cache_gib * 2**30))
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu() else "float32")
    if cfg.lora_rank:  # one adapter at a time, replaced in place each step (`RolloutWorker.load_adapter`)
        memory.update(enable_lora=True, max_lora_rank=engine_rank(cfg.lora_rank), max_loras=1)
    if cfg.tensor_parallel_size > 1:  # worker processes of this actor, on its node (its resources cover them all)
        memory.update(tensor_parallel_size=cfg.tensor_parallel_size, distributed_executor_backend="mp")
        if not on_gpu():  # the workers share the actor's cores
            share_cores(cfg.tensor_parallel_size)
    with heap_frozen():  # the modules imported are no garbage: vLLM's collections while it starts skip them
        llm = LLM(
            model=model, dtype=dtype, seed=cfg.seed, max_model_len=cfg.max_model_len, enforce_eager=not cfg.compiled,
            load_format="safetensors", trust_remote_code=cfg.trust_remote_code,
            max_logprobs=20, enable_prefix_caching=False, worker_extension_cls=WEIGHT_RECEIVER, **memory,
        )
    if cfg.tensor_parallel_size > 1:
        end_with_a_dead_worker(llm)
    return llm


def share_cores(workers: int) -> None:
    """(CPU) The engine's workers split this actor's threads between them, unbound: vLLM's automatic binding wants
    a NUMA node for each worker, which one node's actor does not have."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // workers))


def end_with_a_dead_worker(llm) -> None:
    """An engine of several workers that lost one cannot serve again (vLLM shuts the rest down): this process ends
    at once, so its callers see the actor dead and replace it as they replace a killed one. A call in flight when
    the worker died fails first: `exit_if_a_worker_died` ends the process then."""
    executor = worker_executor(llm)
    if executor is not None and hasattr(executor, "register_failure_callback"):
        executor.register_failure_callback(lambda: os._exit(1))


def exit_if_a_worker_died(llm) -> None:
    """(after a call failed) End this process if its engine has lost a worker process; else return."""
    executor = worker_executor(llm)
    workers = getattr(executor, "workers", None) or []
    if getattr(executor, "is_failed", False) or any(not w.proc.is_alive() for w in workers):
        os._exit(1)


def worker_executor(llm):
    """The executor of an in-process engine core (one of several worker processes: vLLM's multiprocessing one)."""
    core = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "engine_core", None)
    return getattr(core, "model_executor", None)


def on_gpu() -> bool:
    """Whether this actor was given a GPU (Ray sets CUDA_VISIBLE_DEVICES for actors with num_gpus)."""
    import torch

    return torch.cuda.is_available()


class EngineMismatch(ValueError):
    """A model that a running engine cannot take in place (another architecture or tokenizer)."""


CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")


def architecture_difference(current_dir: str, new_dir: str) -> str:
    """Why the model in `new_dir` cannot replace the one in `current_dir` in a running engine ("" if it can):
    the configs must agree on everything but names and versions, and the tokenizers must be the same."""

    def config(d: str) -> dict:
        data = json.loads(open(os.path.join(d, "config.json")).read())
        return {k: v for k, v in data.items() if k not in CONFIG_KEYS_IGNORED}

    a, b = config(current_dir), config(new_dir)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"config differs in {', '.join(keys[:4])}"
    for name in TOKENIZER_CORE:
        fa, fb = os.path.join(current_dir, name), os.path.join(new_dir, name)
        if os.path.isfile(fa) != os.path.isfile(fb) or (os.path.isfile(fa) and
                                                         open(fa, "rb").read() != open(fb, "rb").read()):
            return f"tokenizer differs ({name})"
    return ""


def load_model_into(llm, current_dir: str, location: str, store: ModelStore) -> str:
    """Put the model at `location` into a running engine that serves the one in `current_dir`, in place (no new
    engine); returns the new model's local directory. EngineMismatch when its architecture is another. Each of the
    engine's workers reads the files itself (`WeightReceiver.load_folder`)."""
    new_dir = store.local(location)
    check_model_dir(new_dir)
    why = architecture_difference(current_dir, new_dir)
    if why:
        raise EngineMismatch(f"{location}: cannot replace the engine's model in place: {why}")
    llm.collective_rpc("load_folder", args=(new_dir,))
    llm.reset_prefix_cache()
    return new_dir


def load_state_dict_into(llm, state: dict) -> None:
    """Replace the engine's weights in place (no restart) with `state` (HF parameter names), through the workers'
    named method `WeightReceiver.load_state` (no pickled closure: it works for an engine of several workers)."""
    llm.collective_rpc("load_state", args=(state,))
    llm.reset_prefix_cache()
