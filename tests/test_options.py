"""One source of truth for option defaults: every CLI option that builds a stage config has the
default of the config field it fills (library callers and the CLI get the same run), and every
config field is reachable from the command line unless listed here as library-only."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from dora.cli import app
from dora.pipeline.data.inputs import Fields
from dora.pipeline.kd.objectives import KD_LOSSES, OBJECTIVES, kd_loss_help
from dora.pipeline.stages.demo.tiny import DemoConfig
from dora.pipeline.stages.evaluate import EvaluateConfig
from dora.pipeline.stages.make_student import MakeStudentConfig
from dora.pipeline.stages.teacher_label import TeacherLabelConfig
from dora.pipeline.stages.train_student import TrainStudentConfig

CONFIGS = {"teacher-label": TeacherLabelConfig, "train-student": TrainStudentConfig, "evaluate": EvaluateConfig,
           "demo": DemoConfig, "make-student": MakeStudentConfig}
# Options the CLI parses into another type before the config sees them (the config's default is None
# or empty either way), and fields only the library sets.
CONVERTED = {"labels": "comma-separated text -> tuple", "kd_temperatures": "comma-separated text -> tuple",
             "engine_arg": "KEY=VALUE pairs -> engine_args", "engine_config": "a file -> engine_args"}
LIBRARY_ONLY = {"fields": "built from --source-field/--target-field/--id-field", "engine_args": "--engine-arg/--engine-config",
                "eval": "the deprecated --eval, a hidden option of its own",
                "max_target_length": "evaluate only generates (max_new_tokens); a field it shares with training stages"}
COLUMNS = {"source_field": Fields().source, "target_field": Fields().target, "id_field": Fields().id}


def _command(name: str):
    return next(c for c in app.registered_commands if c.name == name)


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty  # required


def drift(command: str, cls: type) -> tuple[list[str], int]:
    """(options whose CLI default differs from ``cls``'s field default, options compared)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems, checked = [], 0
    for name, param in inspect.signature(_command(command).callback).parameters.items():
        if name in ("ctx", "preset") or name in CONVERTED:
            continue
        expected = COLUMNS[name] if name in COLUMNS else _default(fields[name])
        if param.default != expected:
            problems.append(f"dora {command} --{name.replace('_', '-')}: CLI default {param.default!r}, "
                            f"{cls.__name__}.{name} default {expected!r}")
        checked += 1
    return problems, checked


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_cli_default_is_the_config_default(command):
    problems, checked = drift(command, CONFIGS[command])
    assert problems == []
    assert checked >= (3 if command == "demo" else 7 if command == "make-student" else 10)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_config_field_has_an_option(command):
    params = set(inspect.signature(_command(command).callback).parameters)
    fields = {f.name for f in dataclasses.fields(CONFIGS[command]) if f.init}
    library_only = set(LIBRARY_ONLY) - ({"max_target_length"} if command != "evaluate" else set())
    missing = fields - params - library_only - set(CONVERTED)
    assert not missing, f"{CONFIGS[command].__name__} fields without a dora {command} option: {sorted(missing)}"


def test_the_drift_check_catches_a_changed_default():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Changed(TeacherLabelConfig):
        top_k: int = 21

    problems, _ = drift("teacher-label", Changed)
    assert problems == ["dora teacher-label --top-k: CLI default 20, Changed.top_k default 21"]


def test_kd_loss_choices_and_help_come_from_the_registry():
    assert KD_LOSSES == ("auto", "topk", "aligned", "uld", "labels", "sequence")
    help_text = kd_loss_help()
    for name in KD_LOSSES[1:]:
        assert f"{name} ({OBJECTIVES[name].help})" in help_text
    import typer

    command = typer.main.get_command(app).commands["train-student"]
    assert next(p for p in command.params if p.name == "kd_loss").help == help_text


@pytest.mark.parametrize("cls", [TeacherLabelConfig, TrainStudentConfig])
def test_stage_configs_are_composed_of_sections_that_validate_themselves(cls):
    """Each field belongs to one section (or the stage itself), and a section alone rejects a bad value."""
    from dora.errors import ConfigError

    owners: dict[str, str] = {}
    for section in cls.SECTIONS:
        for f in dataclasses.fields(section):
            assert f.name not in owners or f.name in ("preset", "preset_values"), (f.name, owners.get(f.name))
            owners.setdefault(f.name, section.__name__)
    own = {f.name for f in dataclasses.fields(cls)} - set(owners)
    assert own and own <= set(cls.__annotations__), own  # the stage's own fields are declared on the stage
    if cls is TeacherLabelConfig:
        from dora.pipeline.stages.teacher_label import LabelingOptions, LoraOptions, ScaleOutOptions

        for section, bad, message in [(LabelingOptions, {"top_k": 0}, "--top-k must be a positive integer"),
                                      (LoraOptions, {"lora_r": 0}, "--lora-r must be a positive integer"),
                                      (ScaleOutOptions, {"ray_workers": 2}, "--ray-workers needs --ray")]:
            with pytest.raises(ConfigError, match=message):
                section(**bad)
            with pytest.raises(ConfigError, match=message):  # and so does the stage config it is part of
                TeacherLabelConfig(task="fever", teacher="t", pool="p.jsonl", out="o", finetune=False, **bad)
