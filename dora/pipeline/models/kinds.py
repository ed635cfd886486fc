"""What kind of model a config describes, without loading it: what loading, GGUF conversion and
the engines decide by."""

from __future__ import annotations

from typing import Any, Literal

ModelKind = Literal["seq2seq", "causal", "classifier"]
"""seq2seq and causal models generate their outputs; a classifier (an encoder with a head over a
closed label set, ``AutoModelForSequenceClassification``) picks one of the task's labels."""


def kind_of(config: Any) -> ModelKind:
    """seq2seq (encoder-decoder, like T5), classifier (a sequence-classification checkpoint, or a
    bare encoder such as BERT or MiniLM, which gets a new head over the task's labels) or causal
    (decoder-only), from a model config."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "classifier" if classifier_checkpoint(config) or is_encoder_only(config) else "causal"


def classifier_checkpoint(config: Any) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def is_encoder_only(config: Any) -> bool:
    """A bidirectional encoder (BERT, RoBERTa, MiniLM, DeBERTa, ...): a model type with a masked-LM
    head and no decoder-only checkpoint among its architectures."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(config, "is_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    return not any(a.endswith(("ForCausalLM", "LMHeadModel", "WithLMHead")) for a in architectures)


def architecture_of(config: Any) -> str:
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]
