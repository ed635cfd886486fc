"""Fields every stage config shares, documented and validated once.

Stage configs (``TeacherLabelConfig``, ``TrainStudentConfig``) are composed of frozen,
keyword-only sections (these two, and the teacher's labeling, LoRA and scale-out sections) and
add their own fields. Each section validates its own fields in ``__post_init__``; a stage
config's ``__post_init__`` runs every section in its ``SECTIONS`` order, then its own checks.
The constructor stays flat: every field of every section is a keyword.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

from dora.checks import check_number, positive_ints
from dora.errors import ConfigError
from dora.pipeline.data.inputs import Fields

Preset = Literal["none", "paper"]
C = TypeVar("C")

# The paper's settings (Kang, Xu and Ritter 2023: its README's commands and run_t5.py defaults):
# AdamW at 3e-5, batch 32, linear decay without warm-up or weight decay, sources cut to 128
# tokens and targets to 8, generation with max_length 8 (7 new tokens after T5's start token),
# KD at T = 2 with no cross-entropy term, evaluation every 2,000 steps. Distillation ran 50
# epochs, training on gold labels (the annotate route, and the T5-XXL teacher) 20.
PAPER: dict[str, Any] = {
    "learning_rate": 3e-5, "batch_size": 32, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0,
    "max_source_length": 128, "max_target_length": 8, "max_new_tokens": 7,
}
PAPER_STUDENT: dict[str, Any] = {"temperature": 2.0, "alpha": 0.0, "eval_every": 2000}
PAPER_EPOCHS = {"distill": 50.0, "annotate": 20.0}


MAX_EPOCHS = 1e6  # far past any real run; bounds the step count computed from it


PRESET_FIELDS = frozenset({*PAPER, *PAPER_STUDENT, "epochs"})
"""Every field a preset may set: an option given explicitly wins over the preset."""


def with_preset(cls: type[C], preset: str, given: dict[str, Any]) -> C:
    """Build the stage config ``cls`` from the options ``given`` explicitly, the preset's values
    filling every field not given (``preset`` "none": the config's own defaults).

    The student distills (50 epochs) when a cache is given and annotates (20) otherwise; the
    teacher is fine-tuned on gold labels like the paper's annotate runs (20 epochs).
    """
    if preset not in ("none", "paper"):
        raise ConfigError(f"--preset must be none or paper, got {preset!r}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if preset == "paper":
        # The teacher's ``temperature`` is its sampling temperature, not KD's: student settings stay with students.
        values = {**PAPER, **(PAPER_STUDENT if getattr(cls, "PRESET_STAGE", "") == "student" else {})}
        route = "distill" if given.get("cache") is not None else "annotate"
        values["epochs"] = PAPER_EPOCHS[route]
        values = {k: v for k, v in values.items() if k in names and k not in given}
    config = cls(**{**values, **given})
    object.__setattr__(config, "preset", preset)
    object.__setattr__(config, "preset_values", values)
    return config



@dataclass(frozen=True, kw_only=True)
class TaskInputs:
    """Which task, and how to read its files."""

    task: str
    """Task name (fever, multipit_id, stanceosaurus, wlp, nq, multipit_gen), or your own with ``metric``."""
    metric: str | None = None
    """Metric for a task of your own (accuracy, f1, squad, bleu, rouge)."""
    prefix: str | None = None
    """Source prefix; default ``"<task>: "``."""
    fields: Fields = field(default_factory=Fields)
    """Column names of source, target and id in the input files."""
    max_source_length: int = 256
    """Input tokens kept (prefix included); longer inputs are cut."""
    max_target_length: int = 64
    """Target tokens trained on (EOS included)."""
    max_new_tokens: int = 64
    """Most tokens generated per output (EOS included)."""
    revision: str | None = None
    """Hub revision of the model."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository to run. Off unless you trust it."""

    def __post_init__(self) -> None:
        positive_ints(self, "max_source_length", "max_target_length", "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class Optimisation:
    """How a model is trained (teacher fine-tuning or student training)."""

    PRESET_STAGE: ClassVar[str] = "teacher"  # which preset settings apply (see ``with_preset``)

    epochs: float = 3.0
    """Training epochs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs``."""
    batch_size: int = 16
    """Training micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate (linear warm-up, then linear decay)."""
    warmup_ratio: float = 0.0
    """Fraction of steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 42
    """Seed for data order and initialisation."""
    report_to: str = "none"
    """Where training curves go besides ``curves.csv``: none, tensorboard or wandb."""
    preset: str = field(default="none", init=False)
    """The settings preset this config was built with (``with_preset``): none or paper."""
    preset_values: dict[str, Any] = field(default_factory=dict, init=False)
    """The fields the preset set (every one not given explicitly)."""

    def __post_init__(self) -> None:
        positive_ints(self, "batch_size", "grad_accum")
        if self.max_steps is not None:
            positive_ints(self, "max_steps")
        # Every float is checked for NaN and infinity too: NaN passes any `x < 0` test.
        if self.max_steps is None:
            check_number(self.epochs, "--epochs", low=0, low_open=True, high=MAX_EPOCHS)
        else:  # ignored with --max-steps, but never nonsense
            check_number(self.epochs, "--epochs", low=0, high=MAX_EPOCHS)
        check_number(self.learning_rate, "--learning-rate", low=0, high=1, low_open=True, high_open=True,
                     hint="try 1e-4 to 1e-3 for T5")
        check_number(self.warmup_ratio, "--warmup-ratio", low=0, high=1, high_open=True)
        check_number(self.weight_decay, "--weight-decay", low=0, high=1, hint="AdamW decays usually take 0 to 0.1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            # The loop seeds torch with seed * 1,000,003 + epoch, which must fit in 64 bits.
            raise ConfigError(f"--seed must be an integer from 0 to {2**32 - 1}, got {self.seed!r}")
        from dora.pipeline.train.tracking import check_report_to

        check_report_to(self.report_to)

    def loop_settings(self, *, eval_every: int | None, save_every: int | None, resume: bool = True,
                      patience: int | None = None) -> Any:
        from dora.pipeline.train.loop import LoopSettings

        names = {f.name for f in fields(Optimisation)} - {"report_to", "preset", "preset_values"}
        return LoopSettings(**{n: getattr(self, n) for n in names}, eval_every=eval_every,
                            save_every=save_every, resume=resume, patience=patience)
