"""The vLLM labeling engine: offline ``vllm.LLM`` over token-id prompts, raw top-k logprobs.

vLLM returns, per generated token, the top-k log-probabilities plus the sampled token's when
that token is outside the top-k. dora keeps exactly k entries per position (ranks 1..k) in
``topk_*`` and takes the sampled token's id and log-probability for ``target_ids`` and the
sequence log-probability, so the cache matches the transformers engine's. The tail mass
outside the top-k follows from them at T = 1 only (``tail_logprobs`` has one column).

Anything vLLM accepts that dora does not declare passes through ``--engine-arg key=value`` or
``--engine-config FILE`` (for example ``enforce_eager=true``, ``kv_cache_memory_bytes=...``,
``quantization=fp8``); those win over dora's defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dora.errors import ModelError, first_line
from dora.pipeline.engines.generation import Generated
from dora.pipeline.engines.settings import EngineSettings, PrecisionCheck
from dora.pipeline.models.kinds import ModelKind
from dora.pipeline.models.loading import free_accelerator_memory, local

# Prompts handed to vLLM per call: big enough for its scheduler to batch well, small enough to
# report progress and keep the outputs of one call in memory.
CHUNK = 1024


class VllmEngine:
    name = "vllm"

    @classmethod
    def start(cls, teacher_path: str, tokenizer: Any, kind: ModelKind, settings: EngineSettings, *,
              revision: str | None = None, trust_remote_code: bool = False, model: Any = None) -> VllmEngine:
        """Start vLLM on the saved teacher at ``teacher_path``; a loaded ``model`` (the fine-tuning
        copy) is dropped first and accelerator memory freed, since vLLM loads its own."""
        del model, kind
        free_accelerator_memory()
        return cls(local(teacher_path), tokenizer, settings, trust_remote_code=trust_remote_code, revision=revision)

    @classmethod
    def settle(cls, settings: EngineSettings) -> tuple[EngineSettings, str]:
        """(``settings``, their dtype): the teacher computes in ``--dtype``, nothing to resolve."""
        return settings, settings.dtype

    def __init__(self, model_path: str, tokenizer: Any, settings: EngineSettings, *, trust_remote_code: bool = False,
                 revision: str | None = None) -> None:
        import vllm
        from vllm import LLM

        self.version = vllm.__version__
        self.s = settings
        self.eos = tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "model": model_path, "tokenizer": model_path, "dtype": settings.dtype,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "pipeline_parallel_size": settings.pipeline_parallel_size,
            "max_logprobs": settings.top_k, "logprobs_mode": "raw_logprobs", "seed": settings.seed,
            "trust_remote_code": trust_remote_code, "revision": revision,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "generation_config": "vllm",  # ignore sampling defaults in the model's generation_config.json
        }
        if settings.max_model_len is not None:
            kwargs["max_model_len"] = settings.max_model_len
        kwargs.update(settings.engine_args)
        self.kwargs = kwargs
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # vLLM raises many types for a bad argument or an unfit model
            raise ModelError(f"vLLM could not start {model_path} ({first_line(e, 300)}); check --engine-arg / "
                             "--engine-config values, or use --engine transformers") from None

    def settings(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.kwargs.items() if k not in ("model", "tokenizer")}
        return {k: v for k, v in shown.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}

    def check_precision(self, sample: Callable[[], Sequence[list[int]]]) -> PrecisionCheck | None:
        """Nothing to check: the teacher computes in the ``--dtype`` asked for."""
        return None

    def device_count(self) -> int:
        import torch

        return self.s.tensor_parallel_size * self.s.pipeline_parallel_size if torch.cuda.is_available() else 1

    def label(self, prompts: Sequence[list[int]], on_batch: Callable[[int], None] | None = None) -> list[Generated]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = self.s
        params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p if s.temperature > 0 else 1.0, max_tokens=s.max_new_tokens,
            logprobs=s.top_k, seed=s.seed if s.temperature > 0 else None, stop_token_ids=[self.eos],
            detokenize=False, skip_special_tokens=False,
        )
        results: list[Generated] = []
        for start in range(0, len(prompts), CHUNK):
            chunk = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts[start : start + CHUNK]]
            try:
                outputs = self.llm.generate(chunk, params, use_tqdm=False)
            except Exception as e:  # e.g. a model shape the device's kernels do not support
                raise ModelError(f"vLLM failed while generating ({first_line(e, 300)}); complete shards are kept; "
                                 "use --engine transformers if this model does not run on vLLM here") from None
            results.extend(self._convert(out.outputs[0]) for out in outputs)
            if on_batch:
                on_batch(len(chunk))
        return results

    def score(self, prompts: Sequence[list[int]], continuations: Sequence[list[int]]) -> np.ndarray:
        """Continuation log-probabilities as prompt log-probabilities of prompt + continuation."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        out = np.zeros((len(prompts), len(continuations)), np.float32)
        for c, cont in enumerate(continuations):
            for start in range(0, len(prompts), CHUNK):
                chunk = [TokensPrompt(prompt_token_ids=list(p) + list(cont)) for p in prompts[start : start + CHUNK]]
                try:
                    results = self.llm.generate(chunk, params, use_tqdm=False)
                except Exception as e:
                    raise ModelError(f"vLLM failed while scoring labels ({first_line(e, 300)})") from None
                for r, res in enumerate(results):
                    ids = res.prompt_token_ids
                    n = len(cont)
                    out[start + r, c] = sum(float(res.prompt_logprobs[p][ids[p]].logprob)
                                            for p in range(len(ids) - n, len(ids)))
        return out

    def _convert(self, completion: Any) -> Generated:
        k = self.s.top_k
        ids = list(completion.token_ids)
        if not ids:
            return Generated(ids=np.zeros(0, np.int32), topk_ids=np.zeros((0, k), np.int32),
                             topk_logprobs=np.zeros((0, k), np.float32), seq_logprob=0.0,
                             tail_logprobs=np.zeros((0, 1), np.float32))
        top_ids = np.empty((len(ids), k), np.int32)
        top_lp = np.empty((len(ids), k), np.float32)
        tails = np.empty((len(ids), 1), np.float32)
        chosen = 0.0
        for j, token in enumerate(ids):
            entries = completion.logprobs[j]
            # Ranks 1..k are the top-k; a sampled token outside them comes as an extra entry.
            ranked = sorted(entries.items(), key=lambda kv: (-kv[1].logprob, kv[1].rank))[:k]
            if len(ranked) < k:
                raise ModelError(f"vLLM returned {len(ranked)} log-probabilities for a token, fewer than --top-k {k}")
            top_ids[j] = [t for t, _ in ranked]
            top_lp[j] = [lp.logprob for _, lp in ranked]
            chosen += float(entries[token].logprob)
            tails[j, 0] = _log_tail(top_lp[j])
        return Generated(ids=np.asarray(ids, np.int32), topk_ids=top_ids, topk_logprobs=top_lp, seq_logprob=chosen,
                         tail_logprobs=tails)


def _log_tail(topk_logprobs: np.ndarray) -> float:
    """log(1 - sum p) over the top-k at T = 1 (vLLM's float32 log-probabilities: exact to about 1e-7
    of mass); -inf when the top-k holds everything."""
    rest = 1.0 - float(np.exp(topk_logprobs.astype(np.float64)).sum())
    return float(np.log(rest)) if rest > 0 else float("-inf")
