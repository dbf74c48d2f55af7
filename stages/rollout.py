"""Rollout worker: one vLLM engine holding the student's current weights; samples completions.

Weights arrive as `WeightsRef` (numpy arrays in the Ray object store) and replace the engine's in place; a LoRA
rung's engine keeps its base and takes each new adapter in place of the last (`load_adapter`).
"""
from __future__ import annotations

from stages.actors import Timed
from stages.batches import Sample, WeightsRef
from stages.engine import EngineConfig, build_llm, load_model_into, load_state_dict_into, use_private_tmp

ADAPTER_ID = 1  # the engine's one adapter slot (a LoRA rung's student)


class RolloutWorker(Timed):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.llm = build_llm(cfg)
        self.model_dir = cfg.store.local(cfg.model)
        self.version = 0
        self.lora = None  # (a LoRA rung) the adapter every request runs with, once one was loaded

    def load_model(self, location: str) -> str:
        """Serve another model of the same architecture (a new rung's student) in this engine, in place."""
        self.model_dir = load_model_into(self.llm, self.model_dir, location, self.cfg.store)
        if self.lora is not None:  # the new student's base alone until its first adapter
            self.llm.llm_engine.remove_lora(ADAPTER_ID)
            self.lora = None
        self.version = 0
        return self.model_dir

    def load_adapter(self, ref: WeightsRef) -> int:
        """(a LoRA rung) A new adapter version (its files in the object store) in place of the last: the base stays
        as loaded. The files are written to this process's own temp folder, where vLLM reads them."""
        from pathlib import Path

        import ray
        from vllm.lora.request import LoRARequest

        from stages.lora import write_adapter

        folder = write_adapter(ray.get(ref.blob), Path(use_private_tmp()) / "adapter")
        self.llm.llm_engine.add_lora(LoRARequest("student", ADAPTER_ID, folder, load_inplace=True))
        self.lora = LoRARequest("student", ADAPTER_ID, folder)  # later requests use the loaded one as it is
        self.version = ref.version
        return self.version

    def generate(self, prompts: list[str], n: int, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Sample]]:
        """`n` samples for each prompt (temperature 0: greedy), with the sampled tokens' logprobs."""
        from vllm import SamplingParams

        # The text is decoded once at the end, not token by token while the engine steps (4% of a rollout)
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                logprobs=0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        texts = iter(self.llm.get_tokenizer().batch_decode([c.token_ids for out in outputs for c in out.outputs],
                                                           skip_special_tokens=True))
        return [[_sample(out.prompt_token_ids, c, next(texts)) for c in out.outputs] for out in outputs]

    def load_weights(self, ref: WeightsRef) -> int:
        """Load a new weights version in place; returns the version now served."""
        import warnings

        import ray
        import torch

        arrays = ray.get(ref.blob)
        with warnings.catch_warnings():  # read-only views of the object store: the engine copies them in
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            load_state_dict_into(self.llm, {k: torch.from_numpy(v) for k, v in arrays.items()})
        self.version = ref.version
        return self.version

    def sync_width(self) -> int:
        """How many members this engine adds to a collective weight sync group (its workers)."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def join_weight_sync(self, host: str, port: int, first_rank: int, world: int, timeout_s: float = 120.0):
        """Join a collective weight sync group (`stages.weight_sync.connect`); this engine's workers' ranks."""
        return self.llm.collective_rpc("join_weight_sync", args=(host, port, first_rank, world, timeout_s))

    def receive_weights(self) -> int:
        """Load the weights the trainer broadcasts next (`stages.weight_sync.push`) in place; the version."""
        self.version = self.llm.collective_rpc("receive_weights")[0]
        self.llm.reset_prefix_cache()
        return self.version

    def weights_version(self) -> int:
        return self.version


def _sample(prompt_ids, completion, text: str) -> Sample:
    ids = tuple(completion.token_ids)
    logprobs = tuple(step[tok].logprob for step, tok in zip(completion.logprobs or [], ids))
    return Sample(tuple(prompt_ids), ids, text, logprobs)
