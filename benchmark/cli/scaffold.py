"""``bench new``: a working plugin module and its test, ready to install through an entry point.

The plugin is rendered from `benchmark.cli.templates`: a typed parameters model, a
docstring, and the methods of its kind with a minimal body that works, so that the test
written beside it passes as written and the registry-wide contract tests accept it.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["KINDS", "NAME_PATTERN", "Scaffold", "plan_scaffold", "render_scaffold", "write_scaffold"]

#: kind -> (registry key, class-name suffix, the one-line summary of the template)
KINDS: dict[str, tuple[str, str, str]] = {
    "attack": ("attacks", "Attack", "Add Gaussian noise to the target channel of the chosen cases (a template to edit)."),
    "defense": ("defenses", "Defense", "Flag cases whose intensity statistics lie far from the trusted cases' (a template to edit)."),
    "segmenter": ("segmenters", "Segmenter", "Segment by one intensity threshold fitted to the training masks (a template to edit)."),
    "dataset": ("datasets", "Source", "Small generated cases: a disk of noise with a bright enhancing tumour (a template to edit)."),
}

#: a plugin name: lower-case words of letters and digits joined by single hyphens
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME_LENGTH = 40


@dataclass(frozen=True)
class Scaffold:
    """What `bench new` writes for one plugin.

    Attributes:
        kind: ``attack``, ``defense``, ``segmenter`` or ``dataset``.
        name: the registered name (``my-attack``).
        module: the Python module of the plugin (``my_attack``).
        cls: the plugin's class (``MyAttack``).
        plugin_path: the plugin module's file.
        test_path: its test's file.
    """

    kind: str
    name: str
    module: str
    cls: str
    plugin_path: Path
    test_path: Path

    @property
    def group(self) -> str:
        """The entry-point group of the kind (``poisonbench.attacks``)."""
        return f"poisonbench.{KINDS[self.kind][0]}"

    def entry_point(self) -> str:
        """The ``pyproject.toml`` lines that install the plugin."""
        return f'[project.entry-points."{self.group}"]\n{self.name} = "{self.module}:{self.cls}"'


def plan_scaffold(kind: str, name: str, folder: Path) -> Scaffold:
    """Check ``name`` and the files it would write.

    Raises:
        ConfigError: an unknown kind, a name that is not a plugin name, that another
            plugin of the kind already has or whose module would shadow an installed
            one, or a file that exists already.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(KINDS)}; got {kind!r}.")
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"NAME: {name!r} is not a plugin name; expected lower-case letters and digits, starting with a letter, "
            f"words joined by single hyphens, at most {MAX_NAME_LENGTH} characters (e.g. 'my-{kind}')."
        )
    module = name.replace("-", "_")
    if keyword.iskeyword(module):
        raise ConfigError(f"NAME: {name!r} would make the module '{module}', a Python keyword; choose another name.")
    if importlib.util.find_spec(module) is not None:
        raise ConfigError(f"NAME: the module '{module}' would shadow the installed module of that name; choose another name.")
    from ..catalog import REGISTRIES

    registry = REGISTRIES[KINDS[kind][0]]
    if name in registry:
        existing = registry.get(name)
        raise ConfigError(f"NAME: {kind} '{name}' is already registered ({existing.__module__}.{existing.__qualname__}); choose another name.")
    words = "".join(word.capitalize() for word in name.split("-"))
    suffix = KINDS[kind][1]
    cls = words if words.endswith(suffix) else words + suffix
    folder = Path(folder)
    scaffold = Scaffold(kind, name, module, cls, folder / f"{module}.py", folder / f"test_{module}.py")
    for path in (scaffold.plugin_path, scaffold.test_path):
        if path.exists():
            raise ConfigError(f"{path}: exists already; nothing was written (choose another NAME or --dir).")
    return scaffold


def render_scaffold(scaffold: Scaffold) -> tuple[str, str]:
    """The plugin module's text and its test's text."""
    import jinja2

    from .templates import TEMPLATES

    summary = KINDS[scaffold.kind][2]
    values = {
        "name": scaffold.name, "module": scaffold.module, "cls": scaffold.cls,
        "summary": summary, "summary_lower": summary[0].lower() + summary[1:],
    }
    environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
    plugin, test = TEMPLATES[scaffold.kind]
    return environment.from_string(plugin).render(values), environment.from_string(test).render(values)


def write_scaffold(kind: str, name: str, folder: Path) -> Scaffold:
    """Write the plugin of ``kind`` called ``name`` and its test into ``folder`` (created if needed).

    Returns:
        what was written.

    Raises:
        ConfigError: see `plan_scaffold`; nothing is written then.
    """
    scaffold = plan_scaffold(kind, name, Path(folder))
    plugin, test = render_scaffold(scaffold)
    scaffold.plugin_path.parent.mkdir(parents=True, exist_ok=True)
    with open(scaffold.plugin_path, "x", encoding="utf-8") as handle:  # never over a file written meanwhile
        handle.write(plugin)
    with open(scaffold.test_path, "x", encoding="utf-8") as handle:
        handle.write(test)
    return scaffold
