"""What each defense wins back under attack and what it costs without one: ``defenses.csv``.

The numbers come from `benchmark.analysis` (the one place they are defined: clean
baseline, pairing over seeds and cases, recovery, clean cost, the detectable difference
that gates a recovery); this module reads them from a results database's tables.

For every segmenter × attack × defense other than ``none`` × attack rate, against the
undefended cells of the same segmenter and attack, over the seeds and cases they share:

- ``recovery`` = (Dice with the defense − Dice without) / (clean Dice − Dice without):
  1 when the defense restores clean Dice, 0 when it changes nothing, negative when it
  makes things worse; empty where the attack's damage (clean − without) is not above
  the study's detectable difference (and never below `RECOVERY_MIN_DAMAGE`), with the
  reason in ``recovery_note``.
- ``clean_cost`` = clean Dice − the defense's Dice at rate 0.

Plugins that appear with several parameter sets are labelled with the parameters that
differ, e.g. ``spectral (budget=0.2)``.
"""

from __future__ import annotations

import pandas as pd

from .analysis import DEFENSE_EFFECT_COLUMNS, RECOVERY_MIN_DAMAGE, DetectableDifference, defense_effect, study_tables

__all__ = ["DEFENSE_EFFECT_COLUMNS", "RECOVERY_MIN_DAMAGE", "defense_effect_frame"]


def defense_effect_frame(runs: pd.DataFrame, metrics: pd.DataFrame, detectable: DetectableDifference | None = None) -> pd.DataFrame:
    """One row per segmenter × attack × rate × defense other than ``none`` (`DEFENSE_EFFECT_COLUMNS`).

    Args:
        runs: `ResultStore.runs` of one study.
        metrics: `ResultStore.case_metrics` of the same cells.
        detectable: the study's detectable difference. Defaults to the one computed from ``metrics``.
    """
    cells, cases = study_tables(runs, metrics)
    return defense_effect(cells, cases, detectable)
