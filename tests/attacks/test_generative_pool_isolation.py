"""The generative attacks learn from and poison the attacker's pool only: never a validation or trusted case."""

from __future__ import annotations

import numpy as np
import pytest
from attack_toys import toy_sliceset

from benchmark import ATTACKS

#: tiny sizes of each generative attack (one training pass, one held-out case)
TINY = {
    "gan-synthetic": dict(epochs=1, batch_size=4, width=4, blocks=2, disc_width=4, holdout_cases=1),
    "diffusion-synthetic": dict(epochs=1, batch_size=4, channels=[4, 8], crop=16, ddim_steps=2, train_timesteps=20, holdout_cases=1),
}


@pytest.mark.parametrize("stealth", [False, True])
@pytest.mark.parametrize("name", sorted(TINY))
def test_the_attacker_never_reads_validation_or_trusted_cases(name, stealth, tmp_path, monkeypatch):
    """Through the runner, with trusted cases: what fit() and poison() receive is the attackable split
    (with ``stealth``, the reference statistics are taken from what fit() receives)."""
    from benchmark.config import expand_cells, validate_config
    from benchmark.runner import run_cell
    from benchmark.splitting import split_cases

    data = toy_sliceset(cases=8, slices=2, size=32)
    config = validate_config({
        "dataset": {"name": "synthetic-brats", "cases": 8, "slices": 2, "size": 32},
        "split": {"val_fraction": 0.25, "seed": 0, "trusted": 2},
        "segmenters": [{"name": "unet", "epochs": 1, "batch_size": 8, "channels": [4, 8]}],
        "attacks": [{"name": name, "rates": [0.5], "stealth": stealth, **TINY[name]}],
        "device": "cpu",
    })
    cell = expand_cells(config, "toy", "test")[0]
    cls = ATTACKS.get(name)
    seen: dict[str, list[set[str]]] = {"fit": [], "poison": []}
    original_fit, original_poison = cls.fit, cls.poison

    def fit(self, pool, rng):
        seen["fit"].append(set(pool.cases))
        return original_fit(self, pool, rng)

    def poison(self, train, rate, rng):
        seen["poison"].append(set(train.cases))
        return original_poison(self, train, rate, rng)

    monkeypatch.setattr(cls, "fit", fit)
    monkeypatch.setattr(cls, "poison", poison)
    record = run_cell(cell, data, "cpu", "toy", cache_dir=tmp_path)
    assert record.status == "finished", record.error

    split = split_cases(data, 0.25, 0, 2)
    val, trusted, attackable = set(split.val), set(split.trusted), set(split.attackable)
    assert len(val) == 2 and len(trusted) == 2 and len(attackable) == 4  # the test has something to leak
    assert seen["fit"] and seen["poison"]
    for pools in seen.values():
        for cases in pools:
            assert not cases & val and not cases & trusted
            assert cases == attackable
    assert record.attack_report["poisoned_cases"] == 2
    assert set(record.attack_report["poisoned_case_ids"]) <= attackable
    assert np.isfinite(record.attack_report["ssim"])  # measured on a held-out pool case, not a validation one
