"""poisonbench: how poisoned training data damages medical image segmentation.

Two public surfaces, both served from here (``from benchmark import X``):

* `benchmark.sdk`, the plugin SDK: what attacks, defenses, segmenters and data sets
  import (base classes, registration, `SliceSet`, normalisation, seeds, errors, the
  artifact cache, the shared training loop). Plugins import from ``benchmark`` only.
* `benchmark.tools`, the tools: config loading, the sweep runner, the results store,
  metrics, analysis, reports and figures.

Every name is imported from its module on first use, so ``import benchmark`` (and a
plugin's parameter model) costs no torch.
"""

from __future__ import annotations

from ._exports import lazy_attributes
from .environment import environment  # bound now: the submodule of that name would shadow it once imported
from .sdk import EXPORTS as _SDK
from .tools import EXPORTS as _TOOLS

__all__ = [*_SDK, *_TOOLS]

__getattr__, __dir__ = lazy_attributes("benchmark", {**_SDK, **_TOOLS})
