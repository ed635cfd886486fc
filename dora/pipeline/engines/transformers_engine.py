"""The transformers labeling engine: any seq2seq or decoder-only model, batched ``generate`` with
raw logits, so the tail mass outside the top-k is known at every temperature."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dora.pipeline.engines.generation import Generated, hf_generate, hf_score, pick_device
from dora.pipeline.engines.settings import EngineSettings, PrecisionCheck
from dora.pipeline.models.kinds import ModelKind
from dora.pipeline.models.loading import check_top_k, load_model, vocab_size


class TransformersEngine:
    name = "transformers"

    @classmethod
    def start(cls, teacher_path: str, tokenizer: Any, kind: ModelKind, settings: EngineSettings, *,
              revision: str | None = None, trust_remote_code: bool = False, model: Any = None) -> TransformersEngine:
        """Load the teacher at ``teacher_path`` (or take ``model``, already loaded), spread over every
        visible GPU (``device_map="auto"``) when there are several, so a teacher bigger than one
        device still labels."""
        if model is None:
            model, _ = load_model(teacher_path, revision=revision, trust_remote_code=trust_remote_code,
                                  device_map="auto" if _gpu_count() > 1 else None)
        check_top_k(settings.top_k, vocab_size(model), teacher_path)
        return cls(model, tokenizer, kind, settings)

    @classmethod
    def settle(cls, settings: EngineSettings) -> tuple[EngineSettings, str]:
        """(``settings``, their dtype): the teacher computes in ``--dtype``, nothing to resolve."""
        return settings, settings.dtype

    def __init__(self, model: Any, tokenizer: Any, kind: ModelKind, settings: EngineSettings) -> None:
        import torch
        import transformers

        self.version = transformers.__version__
        self.model, self.tokenizer, self.kind, self.s = model, tokenizer, kind, settings
        if getattr(model, "hf_device_map", None):  # spread over several GPUs (device_map="auto")
            self.device = next(model.parameters()).device
            model.to(dtype=getattr(torch, settings.dtype))
        else:
            self.device = pick_device()
            model.to(device=self.device, dtype=getattr(torch, settings.dtype))
        if settings.temperature > 0:
            torch.manual_seed(settings.seed)

    def label(self, prompts: Sequence[list[int]], on_batch: Callable[[int], None] | None = None) -> list[Generated]:
        s = self.s
        return hf_generate(self.model, self.tokenizer, self.kind, prompts, batch_size=s.label_batch_size,
                           max_new_tokens=s.max_new_tokens, k=s.top_k, device=self.device, on_batch=on_batch,
                           temperature=s.temperature, top_p=s.top_p, kd_temperatures=s.kd_temperatures,
                           batch_tokens=s.label_batch_tokens)

    def settings(self) -> dict[str, Any]:
        spread = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()})
        return {"device": ",".join(spread) if len(spread) > 1 else str(self.device), "batch_size": self.s.label_batch_size,
                "batch_tokens": self.s.label_batch_tokens}

    def check_precision(self, sample: Callable[[], Sequence[list[int]]]) -> PrecisionCheck | None:
        """Nothing to check: the teacher computes in the ``--dtype`` asked for."""
        return None

    def device_count(self) -> int:
        return max(1, len({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()}))

    def score(self, prompts: Sequence[list[int]], continuations: Sequence[list[int]]) -> np.ndarray:
        return hf_score(self.model, self.tokenizer, self.kind, prompts, continuations, batch_size=self.s.label_batch_size,
                        device=self.device)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
