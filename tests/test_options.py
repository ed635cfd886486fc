"""The CLI from the configs: every option of a command that runs a stage is a field of the stage's
config (``dora.pipeline.stages.config``), and its default and help are the field's, read from the
config, never restated (library callers and the CLI get the same run). Every config field has an
option unless the command lists it as library-only, with the reason."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import dora.cli as cli
from dora.cli import COMMANDS, app
from dora.pipeline.data.inputs import Fields
from dora.pipeline.engines.settings import EngineSettings, LabelingSettings
from dora.pipeline.kd.objectives import KD_LOSSES, OBJECTIVES, kd_loss_help
from dora.pipeline.stages.config import TeacherLabelConfig, TrainStudentConfig

CLI_ONLY = {"ctx", "preset", "engine_arg", "engine_config", "json_out", "source_field", "target_field", "id_field"}
"""Options that are not config fields: each becomes a field (or says how to build one) in the command."""


def _click(name: str):
    return typer.main.get_command(app).commands[name]


def _params(name: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(next(c for c in app.registered_commands if c.name == name).callback).parameters)


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_its_config_fields_default_and_help(command):
    spec = COMMANDS[command]
    fields = {f.name: f for f in dataclasses.fields(spec.config)}
    click = {p.name: p for p in _click(command).params}
    checked = 0
    for field in spec.fields():
        param = click[spec.params.get(field.name, field.name)]
        if field.name not in spec.parsed:  # text parsed into a tuple: None either way
            assert param.default == _default(fields[field.name]) or param.required, (command, field.name)
        assert param.help == cli._field_help(spec.config, field.name, spec.option_of), (command, field.name)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_an_option_or_a_reason(command):
    spec = COMMANDS[command]
    options = {spec.params.get(n, n) for n in _params(command)} - CLI_ONLY
    fields = {f.name for f in dataclasses.fields(spec.config) if f.init} - {"fields"}
    missing = fields - {spec.params.get(n, n) for n in options} - set(spec.library_only)
    missing -= {f for f, p in spec.params.items() if p in options}
    assert not missing, f"{spec.config.__name__} fields without a dora {command} option: {sorted(missing)}"
    assert all(reason.strip() for reason in spec.library_only.values())
    assert set(spec.library_only) <= fields, "a library-only name that is no field"
    extra = {spec.params.get(n, n) for n in _params(command)} - fields - CLI_ONLY - set(spec.params.values())
    assert not extra, f"dora {command} options that are no field of {spec.config.__name__}: {sorted(extra)}"


def test_help_shows_the_fields_default_and_docstring():
    """What ``--help`` prints is the field's docstring and default, as written in the config."""
    out = CliRunner().invoke(app, ["teacher-label", "--help"]).output
    text = " ".join(out.replace("│", " ").split())  # the help as one line, however rich wrapped it
    assert ("--shard-size <int> Pool rows per cache shard (shard i holds pool rows i*size to (i+1)*size - 1). "
            "[default: 4096]") in text
    # A reference to another field (``dev`` in the docstring) is written as that field's option.
    assert "--patience <int> Fine-tuning: stop after N evaluations on --dev without a better score." in text


def test_a_changed_default_in_a_subclass_changes_the_option():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Changed(TeacherLabelConfig):
        top_k: int = 21
        """Five more than you need."""

    spec = dataclasses.replace(COMMANDS["teacher-label"], config=Changed)
    top_k = spec.signature().parameters["top_k"]
    assert top_k.default == 21 and COMMANDS["teacher-label"].signature().parameters["top_k"].default == 20
    assert top_k.annotation.__metadata__[0].help == "Five more than you need."

    @cli.app.command("changed-for-this-test")
    @spec
    def changed(**options):
        raise AssertionError("not run")

    try:
        option = next(p for p in typer.main.get_command(app).commands["changed-for-this-test"].params
                      if p.name == "top_k")
        assert option.default == 21 and option.help == "Five more than you need."
    finally:
        app.registered_commands.pop()


def test_no_option_default_is_restated_in_the_cli():
    """cli.py writes no default of an option that a config field has: every literal default of a
    parameter there belongs to an option no config has (report's --out, budget's --device, ...)."""
    tree = ast.parse(Path(cli.__file__).read_text())
    fields = {f.name for spec in COMMANDS.values() for f in dataclasses.fields(spec.config)} | {
        f"{f.name}_field" for f in dataclasses.fields(Fields)}
    restated = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in node.decorator_list):
            args = node.args
            positional = args.args[len(args.args) - len(args.defaults):]
            for arg, default in [*zip(positional, args.defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
                if default is not None and not isinstance(default, ast.Call) and arg.arg in fields:
                    restated.append(f"{node.name}: {arg.arg}")
    assert sorted(restated) == sorted(OWN_MEANING)


OWN_MEANING = {
    "report_cmd: overwrite": "replaces report.csv/png, not a stage's output",
    "cache_select_cmd: overwrite": "replaces the annotation queue",
    "cache_select_cmd: budget": "dollars for labels, not forecast's budget",
    "cache_merge_cmd: shard_size": "None: the first cache's shard size, not teacher-label's 4096",
}
"""Options of commands without a config that share a field's name, not its meaning (or its default)."""


def test_one_labeling_settings_record():
    """Each labeling field is declared once (``LabelingSettings``); the teacher and sweep configs and
    the engines' settings hold that record, none lists its fields again."""
    labeling = {f.name for f in dataclasses.fields(LabelingSettings)}
    assert "top_k" in labeling and "label_batch_size" in labeling
    from dora.pipeline.stages.config import SweepConfig

    for cls in (TeacherLabelConfig, SweepConfig, EngineSettings):
        assert issubclass(cls, LabelingSettings)
        assert not labeling & set(vars(cls).get("__annotations__", {})), cls.__name__
    config = TeacherLabelConfig(task="fever", teacher="t", pool="p.jsonl", out="o", finetune=False, top_k=7,
                                label_batch_size=3, max_source_length=100, seed=5)
    settings = EngineSettings.of(config, kd_temperatures=(1.0,))
    assert (settings.top_k, settings.label_batch_size, settings.max_source_length, settings.seed) == (7, 3, 100, 5)
    assert settings.kd_temperatures == (1.0,) and config.kd_temperatures is None


def test_kd_loss_choices_and_help_come_from_the_registry():
    assert KD_LOSSES == ("auto", "topk", "aligned", "uld", "labels", "sequence")
    help_text = kd_loss_help()
    for name in KD_LOSSES[1:]:
        assert f"{name} ({OBJECTIVES[name].help})" in help_text
    assert next(p for p in _click("train-student").params if p.name == "kd_loss").help == help_text


def test_the_cli_built_options_parse_into_the_config(tmp_path):
    """Options given as text (``--labels``, ``--kd-temperatures``) and the column options become the
    config's fields."""
    spec = COMMANDS["teacher-label"]
    options = {p: (v.default if v.default is not inspect.Parameter.empty else None)
               for p, v in spec.signature().parameters.items() if p not in ("ctx", "engine_arg", "engine_config")}
    options |= {"task": "fever", "teacher": "t", "pool": tmp_path / "p.jsonl", "out": tmp_path / "c",
                "finetune": False, "labels": "YES, NO", "kd_temperatures": "1,4", "id_field": "key"}
    options = {k: getattr(v, "default", v) for k, v in options.items()}  # typer.Option defaults: their values
    config = spec.config_from(options, engine_args={"x": 1})
    assert config.labels == ("YES", "NO") and config.kd_temperatures == (1.0, 4.0)
    assert config.fields == Fields(id="key") and config.engine_args == {"x": 1} and config.top_k == 20


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
        from dora.pipeline.stages.config import LoraOptions, ScaleOutOptions

        for section, bad, message in [(LabelingSettings, {"top_k": 0}, "--top-k must be a positive integer"),
                                      (LoraOptions, {"lora_r": 0}, "--lora-r must be a positive integer"),
                                      (ScaleOutOptions, {"ray_workers": 2}, "--ray-workers needs --ray")]:
            with pytest.raises(ConfigError, match=message):
                section(**bad)
            with pytest.raises(ConfigError, match=message):  # and so does the stage config it is part of
                TeacherLabelConfig(task="fever", teacher="t", pool="p.jsonl", out="o", finetune=False, **bad)
