"""The paper's six tasks plus a generic task for the user's own data.

A task fixes the source prefix (``"<task>: "``, as the paper's T5 inputs), the closed label set
where there is one, and the metric that scores predictions against references.

>>> get_task("fever").labels
('SUPPORTS', 'REFUTES')
>>> get_task("fever").paper_label_ids
{'REFUTES': 0, 'SUPPORTS': 1}
>>> get_task("generic", metric="rouge").primary
'rougeL'
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from dora.errors import ConfigError

MetricName = Literal[
    "accuracy", "stance", "wlp", "squad", "bert_ibleu", "f1", "bleu", "rouge"
]
GENERIC_METRICS = ("accuracy", "f1", "squad", "bleu", "rouge")

# Entity types of WLP (W-NUT 2020) in the order of the paper's class ids (run_t5.py, label_to_id): upper
# case is canonical and matching is case-insensitive (the shipped targets write "Action", "pH",
# "Generic-Measure"). MISC and UNIT never occur in the shipped data but are in the paper's set.
WLP_LABELS = (
    "AMOUNT", "REAGENT", "DEVICE", "TIME", "SPEED", "ACTION", "MENTION", "LOCATION", "NUMERICAL", "METHOD",
    "TEMPERATURE", "MODIFIER", "CONCENTRATION", "SIZE", "GENERIC-MEASURE", "SEAL", "MEASURE-TYPE", "MISC", "PH",
    "UNIT",
)
STANCE_LABELS = ("Irrelevant", "Supporting", "Refuting", "Discussing", "Querying")

# The key of the number that decides "best" for each metric (higher is better).
_PRIMARY: dict[str, str] = {
    "accuracy": "accuracy",
    "stance": "macro_f1",
    "wlp": "micro_f1",
    "squad": "f1",
    "bert_ibleu": "bert_ibleu",
    "f1": "macro_f1",
    "bleu": "bleu",
    "rouge": "rougeL",
}


@dataclass(frozen=True, kw_only=True)
class Task:
    """What a task means to dora.

    name: task name; also the source prefix ``"<name>: "`` unless ``prefix`` overrides it.
    metric: which scorer in ``dora.pipeline.tasks.metrics`` applies.
    labels: the closed label set, or None for free-form outputs.
    annotation_usd: the paper's estimated cost of one human label (None where unknown).
    paper_labels: the paper's class ids for closed-label tasks, in id order (label ``i`` has id ``i``),
        upper case as its ``label_to_id``; its metric code maps an unparseable prediction to id 0.
    """

    name: str
    metric: MetricName
    labels: tuple[str, ...] | None = None
    prefix: str | None = None
    annotation_usd: float | None = None
    paper_labels: tuple[str, ...] | None = None

    @property
    def paper_label_ids(self) -> dict[str, int]:
        """The paper's ``label_to_id`` (empty where the paper has no class ids for the task)."""
        return {label: i for i, label in enumerate(self.paper_labels or ())}

    @property
    def source_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"{self.name}: "

    @property
    def primary(self) -> str:
        """The metric key used to pick the best checkpoint."""
        return _PRIMARY[self.metric]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(name="fever", metric="accuracy", labels=("SUPPORTS", "REFUTES"), annotation_usd=0.129,
             paper_labels=("REFUTES", "SUPPORTS")),
        Task(name="multipit_id", metric="accuracy", labels=("YES", "NO"), annotation_usd=0.200,
             paper_labels=("NO", "YES")),
        Task(name="stanceosaurus", metric="stance", labels=STANCE_LABELS, annotation_usd=0.364,
             paper_labels=tuple(label.upper() for label in STANCE_LABELS)),
        Task(name="wlp", metric="wlp", labels=None, annotation_usd=0.260, paper_labels=WLP_LABELS),
        Task(name="nq", metric="squad", annotation_usd=0.129),
        Task(name="multipit_gen", metric="bert_ibleu", annotation_usd=0.371),
    )
}


def get_task(name: str, *, metric: str | None = None, prefix: str | None = None) -> Task:
    """Look up a task by name; ``generic`` (or any unknown name with ``metric``) is the user's own.

    For the six paper tasks ``metric`` must be None or the task's own metric.
    """
    if name not in TASKS and name.lower() in TASKS:  # --task FEVER is FEVER: recorded as the catalog spells it
        name = name.lower()
    if name in TASKS:
        task = TASKS[name]
        if metric is not None and metric != task.metric:
            raise ConfigError(
                f"task {name!r} is scored with {task.metric!r}; drop --metric, or use "
                f"--task generic --metric {metric} for your own scoring"
            )
        if prefix is not None:
            task = replace(task, prefix=prefix)
        return task
    if metric is None:
        known = ", ".join([*TASKS, "generic"])
        raise ConfigError(
            f"unknown task {name!r}; use one of {known}, or pass --metric "
            f"({'|'.join(GENERIC_METRICS)}) to score your own task"
        )
    if metric not in GENERIC_METRICS:
        raise ConfigError(f"--metric {metric!r} is not one of {', '.join(GENERIC_METRICS)}")
    return Task(name=name, metric=metric, prefix=prefix)  # type: ignore[arg-type]
