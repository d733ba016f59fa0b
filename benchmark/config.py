"""``bench.yaml``: reading, ``--set`` overrides, validation as a whole, and cell expansion.

The file is validated before any work starts: the sweep's own keys against a pydantic
schema, then every plugin's parameters against that plugin's ``Params`` model. All
problems are reported at once, each named by its key path (``attacks[0].rates[2]``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
    model_serializer, model_validator,
)

from .catalog import ATTACKS, DATASETS, DEFENSES, SEGMENTERS, create_plugin
from .errors import ConfigError
from .identity import NO_ATTACK, NO_DEFENSE
from .registry import Registry
from .validation import validation_messages

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_SEED",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "MAX_LOAD_WORKERS",
    "TaskConfig",
    "SplitConfig",
    "ExecutorConfig",
    "PluginSpec",
    "SweepConfig",
    "Cell",
    "check_out_folder",
    "parse_yaml",
    "read_config_file",
    "apply_overrides",
    "load_config",
    "validate_config",
    "expand_cells",
]


MAX_SEED = 2**63 - 1
"""Largest seed: results store seeds as SQLite INTEGER (signed 64 bit), torch seeds its generators from it."""
MAX_CONFIG_BYTES = 1024 * 1024
"""Largest sweep file read (1 MiB); anything larger is refused before parsing."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections accepted."""
MAX_YAML_NODES = 100_000
"""Most values a YAML document may expand to once its aliases are followed (no alias bombs)."""
MAX_LOAD_WORKERS = 1024
"""Most processes ``dataset.workers`` may ask for."""

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """What is segmented from what."""

    inputs: list[str] = Field(["t1ce"], min_length=1, description="input channel names")
    target: Literal["ET", "TC", "WT"] = Field("ET", description="target region")
    dims: Literal[2, 3] = Field(
        2, description="2: segmenters train and predict on slices; 3: on each case's slices stacked as a volume"
    )

    @model_serializer(mode="wrap")
    def _omit_default_dims(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a 2-D task dumps as it did before volumes existed, so cell keys and studies of 2-D configs stay the same
        data = handler(self)
        if self.dims == 2:
            data.pop("dims", None)
        return data


class SplitConfig(_Strict):
    """How cases are divided; splits are by case, never by slice."""

    val_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="fraction of cases held out for validation")
    seed: Seed = Field(0, description="seed of the case split")
    trusted: float = Field(
        0.0, ge=0, description="trusted real training cases given to defenses: a fraction (< 1) or a count (>= 1)"
    )


class ExecutorConfig(_Strict):
    """Where cells run: ``local`` (one after another here), ``process`` (N worker
    processes on this machine), ``ray`` (one Ray task per cell) or ``slurm`` (one Slurm
    job per cell, submitted through submitit; `benchmark.slurm_executor`)."""

    name: Literal["local", "process", "ray", "slurm"] = Field("local", description="executor")
    workers: int | None = Field(
        None, ge=1, le=1024,
        description="cells run at once (process: worker processes; ray: tasks in flight; slurm: jobs queued or running, unset: all)",
    )
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch CPU threads per cell; unset: torch's default (local), cores // workers (process), num_cpus (ray), "
        "cpus_per_task (slurm). CPU results are bit-identical only at equal thread counts, so fix it to compare executors or machines",
    )
    address: str | None = Field(None, description="ray: cluster address ('auto', 'ray://host:10001'); unset starts a local Ray")
    num_cpus: float = Field(1.0, gt=0, description="ray: CPUs reserved per cell")
    num_gpus: float = Field(
        0.0, ge=0, validation_alias=AliasChoices("num_gpus", "gpus_per_cell"),
        description="ray: GPUs per cell (also spelt gpus_per_cell); a fraction (0.25) lets cells share a GPU",
    )
    # slurm: the names of submitit's (and hydra-submitit-launcher's) parameters
    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="slurm: 'slurm' submits with sbatch; 'local' runs the same jobs as processes here (submitit's local executor)"
    )
    partition: str | None = Field(None, min_length=1, description="slurm: partition (sbatch --partition); unset: the cluster's default")
    account: str | None = Field(None, min_length=1, description="slurm: account charged (sbatch --account)")
    timeout_min: int = Field(60, ge=1, description="slurm: time limit per cell in minutes (sbatch --time); a cell past it is recorded as failed")
    cpus_per_task: int = Field(1, ge=1, le=1024, description="slurm: CPUs per cell (sbatch --cpus-per-task)")
    gpus_per_node: int = Field(0, ge=0, le=64, description="slurm: GPUs per cell (sbatch --gpus-per-node; a cell is one task on one node)")
    mem_gb: float | None = Field(None, gt=0, description="slurm: memory per cell in GB (sbatch --mem); unset: the cluster's default")
    sbatch: dict[str, str | int | float | bool] = Field(
        {}, description="slurm: further sbatch options by long name, e.g. {qos: high, constraint: a100, mail-type: FAIL}"
    )
    setup: list[str] = Field(
        [], description="slurm: shell lines run in each job before the cell (e.g. 'module load cuda', 'source venv/bin/activate')"
    )
    folder: str | None = Field(
        None, min_length=1, description="slurm: folder of the job scripts, logs and results; on a real cluster one the nodes share. Unset: OUT/slurm"
    )

    @model_validator(mode="after")
    def _keys_fit_the_executor(self) -> "ExecutorConfig":
        if self.name == "local" and self.workers not in (None, 1):
            raise ValueError(f"executor.workers: the local executor runs one cell at a time; got {self.workers} (use name: process or ray)")
        if self.name != "ray":
            for key in ("address", "num_gpus"):
                if key in self.model_fields_set:
                    raise ValueError(f"executor.{key}: only the ray executor takes '{key}'; this executor is '{self.name}'")
        if self.name != "slurm":
            for key in sorted(_SLURM_KEYS & self.model_fields_set):
                raise ValueError(f"executor.{key}: only the slurm executor takes '{key}'; this executor is '{self.name}'")
        elif importlib.util.find_spec("submitit") is None:
            raise ValueError("executor.name: 'slurm' needs submitit; install it with: pip install 'poisonbench[slurm]'")
        return self


_SLURM_KEYS = frozenset(
    {"cluster", "partition", "account", "timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "sbatch", "setup", "folder"}
)


class _RawSweep(_Strict):
    dataset: dict[str, Any]
    task: TaskConfig = TaskConfig()
    split: SplitConfig = SplitConfig()
    segmenters: list[dict[str, Any]] = Field(min_length=1)
    attacks: list[dict[str, Any]] = Field([{"name": NO_ATTACK}], min_length=1)
    defenses: list[dict[str, Any]] = Field([{"name": NO_DEFENSE}], min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    executor: ExecutorConfig = ExecutorConfig()
    out: str = "results"

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct; got {seeds}")
        return seeds

    @field_validator("out")
    @classmethod
    def _usable_out(cls, out: str) -> str:
        problem = out_folder_problem(out)
        if problem:
            raise ValueError(problem)
        return out


@dataclass(frozen=True)
class PluginSpec:
    """A plugin named in the config, with its fully resolved parameters."""

    name: str
    params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep; plugin parameters carry every default filled in."""

    dataset: PluginSpec
    task: TaskConfig
    split: SplitConfig
    segmenters: list[PluginSpec]
    attacks: list[tuple[PluginSpec, list[float]]]
    defenses: list[PluginSpec]
    seeds: list[int]
    device: str
    executor: ExecutorConfig
    out: str
    source: str = "<config>"
    #: ``dataset.workers``: processes reading cases when the data set is built (None: the
    #: cores this process may use). It changes how fast the data is read, not the data, so
    #: it is in neither the dataset's parameters, its fingerprint, the cell keys nor `resolved`.
    dataset_workers: int | None = None

    def resolved(self) -> dict[str, Any]:
        """The whole sweep as plain data (stored with results and exports)."""
        return {
            "dataset": self.dataset.as_dict(),
            "task": self.task.model_dump(),
            "split": self.split.model_dump(),
            "segmenters": [s.as_dict() for s in self.segmenters],
            "attacks": [{**a.as_dict(), "rates": rates} for a, rates in self.attacks],
            "defenses": [d.as_dict() for d in self.defenses],
            "seeds": list(self.seeds),
            "device": self.device,
            "executor": {"name": self.executor.name, **self.executor.model_dump(exclude_defaults=True)},
            "out": self.out,
        }


@dataclass(frozen=True)
class Cell:
    """One segmenter × attack × rate × defense × seed of a sweep."""

    dataset: PluginSpec
    task: TaskConfig
    split: SplitConfig
    segmenter: PluginSpec
    attack: PluginSpec
    rate: float
    defense: PluginSpec
    seed: int
    key: str = field(default="", compare=False)

    def config(self) -> dict[str, Any]:
        """Everything that determines the cell's result."""
        return {
            "dataset": self.dataset.as_dict(),
            "task": self.task.model_dump(),
            "split": self.split.model_dump(),
            "segmenter": self.segmenter.as_dict(),
            "attack": self.attack.as_dict(),
            "rate": self.rate,
            "defense": self.defense.as_dict(),
            "seed": self.seed,
        }

    @property
    def label(self) -> str:
        return f"{self.segmenter.name} | {self.attack.name}@{self.rate:.3g} | {self.defense.name} | seed {self.seed}"


def out_folder_problem(out: str) -> str | None:
    """Why ``out`` cannot hold a sweep's results (None when it can): empty, a NUL byte, or a file-system root."""
    if not out.strip():
        return "the output folder must not be empty"
    if "\x00" in out:
        return "the output folder must not contain a NUL character"
    try:
        resolved = Path(out).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a link loop, an unknown user in '~name'
        return f"the output folder {out!r} cannot be resolved: {exc}"
    if resolved == Path(resolved.anchor):
        return f"the output folder {out!r} is the file-system root; give a folder of its own, e.g. 'results'"
    return None


def check_out_folder(out: str, option: str = "--out") -> str:
    """``out`` unchanged, or a ConfigError naming ``option`` when it cannot hold results (see `out_folder_problem`)."""
    problem = out_folder_problem(out)
    if problem:
        raise ConfigError(f"{option}: {problem}.")
    return out


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and nesting deeper than `MAX_YAML_DEPTH`."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges may be overridden by explicit keys, as YAML intends
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {_short(key)}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """Values the document holds once every alias is followed (at most ``limit + 1``), without recursion.

    Raises:
        ValueError: an alias refers to a collection that contains it (a recursive document).
    """
    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            in_progress.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children(node)))
            continue
        if id(node) in sizes:
            continue
        in_progress.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in in_progress:
                raise ValueError(f"line {child.start_mark.line + 1}: an alias refers to a collection that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML with the safe loader, bounded: no duplicate keys, no deep nesting, no alias bombs.

    Args:
        text: the document.
        source: what to name in errors (a file, ``--set KEY``).

    Raises:
        ConfigError: the text is not valid YAML, or breaks one of the bounds.
    """
    try:
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters at once
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            expanded = _expanded_nodes(node, MAX_YAML_NODES)
        except ValueError as exc:
            raise ConfigError(f"{source}: recursive YAML is not accepted ({exc}).") from None
        if expanded > MAX_YAML_NODES:
            raise ConfigError(f"{source}: the YAML expands to more than {MAX_YAML_NODES} values through its aliases (&anchor / *alias).")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply.") from None
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping (safe loader only: no Python objects; size, depth and aliases bounded)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; a sweep file is a few kilobytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} cannot be read: not UTF-8 ({exc}).") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys (dataset, task, ...); got {type(data).__name__}.")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set KEY=VALUE`` overrides (dotted path, list indices, value parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. dataset.cases=12.")
        key, raw = item.split("=", 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"--set {key[:80]}: the value is larger than {MAX_CONFIG_BYTES} bytes.")
        value = parse_yaml(raw, f"--set {key[:80]}")
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment.")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not _INDEX.match(part) or not -len(node) <= int(part) < len(node):
                    raise ConfigError(f"--set {key}: '{where}' is not an index of a list of {len(node)} items.")
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:depth])}' is a {type(node).__name__}, not a mapping or list.")
    return data


_INDEX = re.compile(r"^-?[0-9]{1,9}$")


def _plugin_spec(registry: Registry, raw: Any, where: str, problems: list[str], drop: tuple[str, ...] = ()) -> PluginSpec | None:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping with a 'name' key; got {type(raw).__name__}.")
        return None
    name = raw.get("name")
    if not isinstance(name, str):
        problems.append(f"{where}.name: expected the name of a registered {registry.kind}; got {_short(name)}.")
        return None
    params = {k: v for k, v in raw.items() if k != "name" and k not in drop}
    try:
        plugin = create_plugin(registry, name, params, where)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    return PluginSpec(name, plugin.params.model_dump(mode="json"))


def _rates(raw: Any, where: str, problems: list[str]) -> list[float]:
    if raw is None:
        return [0.0]
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: expected a non-empty list of poison rates in [0, 1]; got {_short(raw)}.")
        return []
    rates = []
    for i, rate in enumerate(raw):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            problems.append(f"{where}[{i}]: expected a number in [0, 1]; got {_short(rate)}.")
        elif not 0.0 <= float(rate) <= 1.0:
            problems.append(f"{where}[{i}]: {rate} is not in [0, 1].")
        elif float(rate) in rates:
            problems.append(f"{where}[{i}]: rate {rate} is listed twice.")
        else:
            rates.append(float(rate))
    return rates


def validate_config(data: dict[str, Any], source: str = "<config>") -> SweepConfig:
    """Validate a parsed sweep; raises ConfigError listing every problem."""
    problems: list[str] = []
    try:
        raw = _RawSweep.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_messages(exc, "", _RawSweep, owner="bench.yaml"))
        raw = None
    if raw is None:
        # still check plugin sections that parsed, so the user sees everything at once
        sections = {k: data.get(k) for k in ("dataset", "segmenters", "attacks", "defenses")}
    else:
        sections = {"dataset": raw.dataset, "segmenters": raw.segmenters, "attacks": raw.attacks, "defenses": raw.defenses}

    dataset = None
    if isinstance(sections["dataset"], (dict, str)):
        dataset = _plugin_spec(DATASETS, sections["dataset"], "dataset", problems, drop=("workers",))
    dataset_workers = _dataset_workers(sections["dataset"], problems)
    segmenters = [
        _plugin_spec(SEGMENTERS, s, f"segmenters[{i}]", problems) for i, s in enumerate(_as_list(sections["segmenters"]))
    ]
    attacks = []
    for i, spec in enumerate(_as_list(sections["attacks"])):
        where = f"attacks[{i}]"
        rates = _rates(spec.get("rates") if isinstance(spec, dict) else None, f"{where}.rates", problems)
        attacks.append((_plugin_spec(ATTACKS, spec, where, problems, drop=("rates",)), rates))
    defenses = [
        _plugin_spec(DEFENSES, d, f"defenses[{i}]", problems) for i, d in enumerate(_as_list(sections["defenses"]))
    ]
    if raw is not None:
        _check_unique([s for s in segmenters if s], "segmenters", problems)
        _check_unique([a for a, _ in attacks if a], "attacks", problems)
        _check_unique([d for d in defenses if d], "defenses", problems)
        _check_trusted(raw.split, defenses, problems)
        _check_dims(raw.task, {"segmenters": (SEGMENTERS, segmenters), "attacks": (ATTACKS, [a for a, _ in attacks]),
                               "defenses": (DEFENSES, defenses)}, problems)
        if dataset is not None:
            _check_channels(dataset, raw.task, [a for a, _ in attacks], defenses, problems)
    if problems or raw is None:
        raise ConfigError(problems, source=source)
    return SweepConfig(
        dataset=dataset,  # type: ignore[arg-type]
        task=raw.task,
        split=raw.split,
        segmenters=segmenters,  # type: ignore[arg-type]
        attacks=attacks,  # type: ignore[arg-type]
        defenses=defenses,  # type: ignore[arg-type]
        seeds=raw.seeds,
        device=raw.device,
        executor=raw.executor,
        out=raw.out,
        source=source,
        dataset_workers=dataset_workers,
    )


def _dataset_workers(raw: Any, problems: list[str]) -> int | None:
    """``dataset.workers``, the processes reading the data set's cases; None (unset or null): the cores this process may use."""
    value = raw.get("workers") if isinstance(raw, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LOAD_WORKERS:
        problems.append(
            f"dataset.workers: expected a number of processes in [1, {MAX_LOAD_WORKERS}], or null for the cores this "
            f"process may use; got {_short(value)}."
        )
        return None
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _check_unique(specs: list[PluginSpec], section: str, problems: list[str]) -> None:
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        ident = json.dumps(spec.as_dict(), sort_keys=True)
        if ident in seen:
            problems.append(f"{section}[{i}]: the same {spec.name} entry with the same parameters appears twice.")
        seen.add(ident)


def _check_trusted(split: SplitConfig, defenses: list[PluginSpec | None], problems: list[str]) -> None:
    for i, spec in enumerate(defenses):
        if spec is not None and DEFENSES.get(spec.name).requires_trusted and split.trusted <= 0:
            problems.append(
                f"defenses[{i}]: defense '{spec.name}' needs trusted real cases; set split.trusted "
                "to a fraction (< 1) or a count (>= 1) of the training cases."
            )


def _check_dims(
    task: TaskConfig, sections: dict[str, tuple[Registry, list[PluginSpec | None]]], problems: list[str]
) -> None:
    """Every plugin that declares the dimensions it works in (a ``dims`` class attribute, e.g.
    `Segmenter.dims`) against ``task.dims``; plugins without one work per case in either."""
    for section, (registry, specs) in sections.items():
        for i, spec in enumerate(specs):
            dims = getattr(registry.get(spec.name), "dims", None) if spec is not None else None
            if dims is not None and task.dims not in dims:
                supported = " or ".join(f"{d}-D" for d in dims)
                fitting = [name for name, cls in registry.items() if task.dims in getattr(cls, "dims", ())]
                hint = f" {registry.kind.capitalize()}s for {task.dims}-D: {', '.join(fitting)}." if fitting else ""
                problems.append(
                    f"{section}[{i}]: {registry.kind} '{spec.name}' works in {supported} only; task.dims is {task.dims}.{hint}"
                )


def _check_channels(
    dataset: PluginSpec, task: TaskConfig, attacks: list[PluginSpec | None], defenses: list[PluginSpec | None],
    problems: list[str],
) -> None:
    """Every channel the config names (``task.inputs``, the plugins' `named_channels`) against
    the data set's, when the data set declares them without loading (`DatasetSource.channels`)."""
    available = create_plugin(DATASETS, dataset.name, dataset.params, "dataset").channels()
    if available is None:
        return

    def check(where: str, names: tuple[str, ...] | list[str]) -> None:
        for name in names:
            if name not in available:
                problems.append(
                    f"{where}: channel '{name}' is not in data set '{dataset.name}'; available channels: {', '.join(available)}."
                )

    for i, name in enumerate(task.inputs):
        check(f"task.inputs[{i}]", [name])
    for section, registry, specs in (("attacks", ATTACKS, attacks), ("defenses", DEFENSES, defenses)):
        for i, spec in enumerate(specs):
            if spec is not None:
                for parameter, names in create_plugin(registry, spec.name, spec.params).named_channels().items():
                    check(f"{section}[{i}].{parameter}", names)


def load_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read, override and validate a sweep file."""
    data = apply_overrides(read_config_file(path), overrides or [])
    return validate_config(data, source=str(path))


def cell_key(cell_config: dict[str, Any], dataset_fingerprint: str, version: str) -> str:
    """Stable key of a cell: hash of its resolved config, data fingerprint and package version."""
    payload = json.dumps(
        {"cell": cell_config, "dataset": dataset_fingerprint, "version": version}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def expand_cells(config: SweepConfig, dataset_fingerprint: str, version: str) -> list[Cell]:
    """Every segmenter × attack × rate × defense × seed of the sweep, with its key."""
    cells = []
    attack_rates = [(attack, rate) for attack, rates in config.attacks for rate in rates]
    for segmenter, (attack, rate), defense, seed in itertools.product(
        config.segmenters, attack_rates, config.defenses, config.seeds
    ):
        cell = Cell(config.dataset, config.task, config.split, segmenter, attack, rate, defense, seed)
        cells.append(_with_key(cell, dataset_fingerprint, version))
    return cells


def _with_key(cell: Cell, fingerprint: str, version: str) -> Cell:
    from dataclasses import replace

    return replace(cell, key=cell_key(cell.config(), fingerprint, version))
