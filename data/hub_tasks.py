"""GPT-1 fine-tuning tasks from the Hugging Face hub (SST-2, RTE, MNLI, MRPC, QQP, HellaSwag,
RACE) through HF `datasets`, mapped into the records of data/gpt1_inputs.py; `data_files=` reads
local files with the hub's columns instead. `get_task` finds any task by name, offline or hub.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from data.code_tasks import DEFAULT_TASKS, default_task
from data.gpt1_inputs import Task

@dataclasses.dataclass(frozen=True)
class HubTask:
    kind: str
    path: str
    config: str | None
    splits: dict[str, str]   # our split -> the hub's split
    num_classes: int
    record: Callable[[dict], dict | None]  # hub row -> record (None: no label, skipped)
    description: str = ""


def _label(row) -> int | None:
    return None if row["label"] is None or int(row["label"]) < 0 else int(row["label"])


def _glue(fields: dict[str, str]):
    def record(row):
        label = _label(row)
        return None if label is None else {**{ours: row[theirs] for ours, theirs in fields.items()},
                                           "label": label}
    return record


def _hellaswag(row):
    if row["label"] in ("", None):
        return None
    return {"context": row["ctx"], "answers": list(row["endings"]), "label": int(row["label"])}


def _race(row):
    return {"context": f"{row['article']}\n{row['question']}", "answers": list(row["options"]),
            "label": "ABCD".index(row["answer"])}


# GLUE's test labels are hidden: its tasks report the validation split as "test" too.
_GLUE_SPLITS = {"train": "train", "val": "validation", "test": "validation"}
HUB_TASKS: dict[str, HubTask] = {
    "sst2": HubTask("classification", "nyu-mll/glue", "sst2", _GLUE_SPLITS, 2,
                    _glue({"text": "sentence"}), "SST-2 sentiment"),
    "rte": HubTask("entailment", "nyu-mll/glue", "rte", _GLUE_SPLITS, 2,
                   _glue({"premise": "sentence1", "hypothesis": "sentence2"}), "RTE"),
    "mnli": HubTask("entailment", "nyu-mll/glue", "mnli",
                    {"train": "train", "val": "validation_matched",
                     "test": "validation_mismatched"}, 3,
                    _glue({"premise": "premise", "hypothesis": "hypothesis"}), "MultiNLI"),
    "mrpc": HubTask("similarity", "nyu-mll/glue", "mrpc", _GLUE_SPLITS, 2,
                    _glue({"text1": "sentence1", "text2": "sentence2"}), "MRPC paraphrase"),
    "qqp": HubTask("similarity", "nyu-mll/glue", "qqp", _GLUE_SPLITS, 2,
                   _glue({"text1": "question1", "text2": "question2"}), "Quora question pairs"),
    # HellaSwag's test labels are hidden too.
    "hellaswag": HubTask("multiple_choice", "Rowan/hellaswag", None,
                         {"train": "train", "val": "validation", "test": "validation"}, 4,
                         _hellaswag, "HellaSwag sentence completion"),
    "race": HubTask("multiple_choice", "ehovy/race", "all",
                    {"train": "train", "val": "validation", "test": "test"}, 4, _race,
                    "RACE reading comprehension"),
}

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def hub_task(name: str, data_files: dict[str, str | list[str]] | None = None,
             max_examples: int | None = None) -> Task:
    """A hub task as records; `data_files` maps the hub's split names to local files with the
    hub's columns (json/jsonl/csv/parquet) to read instead of the hub, e.g. the parse of
    "train=a.jsonl,validation=b.jsonl" by data.sources.parse_data_files."""
    import datasets

    if name not in HUB_TASKS:
        raise ValueError(f"unknown hub task {name!r}; choose from {sorted(HUB_TASKS)}")
    spec = HUB_TASKS[name]
    if data_files is not None and not isinstance(data_files, dict):
        raise ValueError(f"files for hub task {name!r} must name the hub's splits "
                         f"({sorted(set(spec.splits.values()))}), e.g. "
                         f"'train=a.jsonl,validation=b.jsonl'; got {data_files!r}")
    splits = {}
    for ours, theirs in spec.splits.items():
        if data_files is not None:
            builder, files = _local_files(name, data_files, theirs)
            ds = datasets.load_dataset(builder, data_files=files, split=theirs)
        else:
            ds = datasets.load_dataset(spec.path, spec.config, split=theirs)
        if max_examples is not None:
            ds = ds.select(range(min(max_examples, len(ds))))
        splits[ours] = _records(name, spec, ds, theirs)
    return Task(name, spec.kind, spec.num_classes, splits, spec.description)


def _records(name: str, spec: HubTask, ds, split: str) -> list[dict]:
    """The split's rows as records, every label checked: a missing column, a label that is not
    a class index, or one outside the task's classes (which would make the loss NaN) is named."""
    records = []
    for i, row in enumerate(ds):
        try:
            record = spec.record(row)
        except KeyError as e:
            raise ValueError(f"hub task {name!r}: the {split!r} data has no column {e}; it has "
                             f"{ds.column_names}") from None
        except ValueError as e:
            raise ValueError(f"hub task {name!r}: row {i} of {split!r} has label "
                             f"{row.get('label', row.get('answer'))!r}, not a class index "
                             f"({e})") from None
        if record is None:
            continue
        if not 0 <= record["label"] < spec.num_classes:
            raise ValueError(f"hub task {name!r}: row {i} of {split!r} has label "
                             f"{record['label']}, outside its {spec.num_classes} classes "
                             f"0..{spec.num_classes - 1}")
        records.append(record)
    if not records:
        raise ValueError(f"hub task {name!r}: the {split!r} data has no labelled rows")
    return records


def _local_files(name: str, data_files: dict, split: str) -> tuple[str, dict[str, list[str]]]:
    """(datasets builder, data_files) that read the hub split `split` from local files."""
    if split not in data_files:
        raise ValueError(f"hub task {name!r} needs a file for its split {split!r}; "
                         f"got files for {sorted(data_files)}")
    files = data_files[split]
    files = [files] if isinstance(files, str) else list(files)
    ext = os.path.splitext(files[0])[1]
    if ext not in _FILE_BUILDERS:
        raise ValueError(f"cannot read {files[0]!r}: expected one of {sorted(_FILE_BUILDERS)}")
    return _FILE_BUILDERS[ext], {split: files}


def get_task(name: str, **kwargs) -> Task:
    """Any task by name: an offline default (data/code_tasks.py), else a hub task."""
    if name in DEFAULT_TASKS:
        return default_task(name, **kwargs)
    return hub_task(name, **kwargs)
