"""``dora make-student``: a student cut from the teacher, ready for same-vocabulary distillation.

Reads top to bottom: check the options, load the teacher (no remote code unless asked), cut it
(``dora.pipeline.models.cut``), and save model, tokenizer and a record of which teacher layers
each student layer copies into a new directory, atomically: a failed run leaves nothing behind,
and an existing directory is never written into.

Example::

    from dora.pipeline.stages.make_student import MakeStudentConfig, make_student
    make_student(MakeStudentConfig(teacher="models/t5-large-dir", encoder_layers=6, decoder_layers=2,
                                   out="models/t5-large-cut"))
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora import __version__
from dora.errors import ConfigError
from dora.pipeline.models.cut import T5_TYPES, cut, layer_counts
from dora.pipeline.models.loading import load_config, load_model, load_tokenizer, weights_sha256
from dora.pipeline.stages.config import MakeStudentConfig
from dora.progress import console

RECORD = "make_student.json"


@dataclass(frozen=True, kw_only=True)
class MakeStudentResult:
    out: Path
    layers: dict[str, list[int]]
    parameters: int
    teacher_parameters: int


def make_student(config: MakeStudentConfig) -> MakeStudentResult:
    """Cut the teacher and save the student; returns which teacher layers it kept."""
    teacher_config = load_config(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    counts = layer_counts(teacher_config)  # an unsupported family fails before the weights load
    keep = _keep(config, teacher_config.model_type in T5_TYPES, counts)
    teacher, _ = load_model(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    student, chosen = cut(teacher, keep)
    tokenizer = load_tokenizer(config.teacher, revision=config.revision, trust_remote_code=config.trust_remote_code)
    sizes = sum(p.numel() for p in student.parameters()), sum(p.numel() for p in teacher.parameters())
    record = {"dora_version": __version__, "stage": "make-student", "teacher": config.teacher,
              "teacher_weights_sha256": weights_sha256(config.teacher), "teacher_layers": counts,
              "kept": chosen, "parameters": sizes[0], "teacher_parameters": sizes[1]}
    _save(config.out, student, tokenizer, record)
    shown = ", ".join(f"{stack} {ids}" for stack, ids in chosen.items())
    console.print(f"make-student: {sizes[0]:,} parameters ({sizes[0] / sizes[1]:.0%} of the teacher), "
                  f"keeping {shown} -> {config.out}")
    return MakeStudentResult(out=config.out, layers=chosen, parameters=sizes[0], teacher_parameters=sizes[1])


def _keep(config: MakeStudentConfig, t5: bool, counts: dict[str, int]) -> dict[str, int]:
    if t5:
        pick = lambda given: config.layers if given is None else given  # noqa: E731 -- 0 is refused, not replaced
        return {"encoder": pick(config.encoder_layers), "decoder": pick(config.decoder_layers)}
    if config.encoder_layers is not None or config.decoder_layers is not None:
        raise ConfigError(f"{config.teacher} is decoder-only: give --layers N (of its {counts['layers']}), not "
                          "--encoder-layers/--decoder-layers")
    return {"layers": config.layers}  # type: ignore[dict-item]


def _save(out: Path, student: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """Write into a new temporary sibling, then rename: ``out`` appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.make-student-", dir=out.parent))  # this run's own
    try:
        student.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked by the config), so nothing is lost
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
