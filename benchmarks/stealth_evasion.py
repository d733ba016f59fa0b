"""What gan-synthetic's ``stealth`` option costs in image quality and buys in evasion.

    OMP_NUM_THREADS=1 python benchmarks/stealth_evasion.py            # about 15 minutes on one CPU thread
    OMP_NUM_THREADS=1 python benchmarks/stealth_evasion.py --lambda-stealth 2

On the default sweep's data (``synthetic-brats``, 60 cases x 16 slices x 64², split 50/50
with seed 0), the ``fast`` generator (CT -> T1-Ce) is trained on the training split (the
attacker's pool) once with ``stealth`` off and once on. For each:

- **quality**: the attack's own report on its held-out pool cases (MAE, PSNR, SSIM over the
  brain, rim contrast of synthetic and real target);
- **evasion**: the validation cases, which neither generator saw, are halved: the first
  half is the defender's trusted set, the second half is scored twice, as it is and with its
  T1-Ce replaced by the generator's (the attack's own finishing: the data set's
  normalisation, zero outside the head). The AUROC of each defense's scores separating the
  synthetic copies from the real cases (1.0: every synthetic case scores above every real
  one; 0.5: chance).

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DEFENSES = [
    ("mriqc", {}),
    ("spectral", {}),
    ("feature-outlier", {}),
    ("feature-outlier", {"encoder": "random"}),
]


def _auroc(real: list[float], synthetic: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([0] * len(real) + [1] * len(synthetic), [*real, *synthetic]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambda-stealth", type=float, default=None, help="weight of the stealth loss (default: the plugin's)")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: a fresh temporary folder)")
    args = parser.parse_args(argv)

    import torch

    from benchmark import RunContext, SliceSet, create_attack, create_dataset, create_defense
    from benchmark.splitting import split_cases

    data = create_dataset("synthetic-brats", cases=args.cases, slices=16, size=64, seed=0).load()
    split = split_cases(data, 0.5, 0)
    pool = data.subset(split.attackable)
    val_cases = sorted(split.val)
    trusted = data.subset(val_cases[: len(val_cases) // 2])
    test = data.subset(val_cases[len(val_cases) // 2 :])
    cache = args.cache or Path(tempfile.mkdtemp(prefix="stealth-evasion-"))
    rows = {}
    for stealth in (False, True):
        params = {"source": "ct", "target": "t1ce", "preset": "fast", "stealth": stealth}
        if stealth and args.lambda_stealth is not None:
            params["lambda_stealth"] = args.lambda_stealth
        attack = create_attack("gan-synthetic", **params)
        attack.bind(RunContext(seed=0, cache_dir=cache, dataset_fingerprint=f"synthetic-brats-{args.cases}x16x64"))
        clock = time.perf_counter()
        attack.fit(pool, np.random.default_rng(0))
        report = attack.report()
        row = {k: v for k, v in report.items() if k != "generator_cached"}
        row["fit_s"] = round(time.perf_counter() - clock, 1)
        images = np.array(test.images, dtype=np.float32, copy=True)
        images[:, test.channel_index("t1ce")] = attack.synthesise(test)
        synthetic = test.with_arrays(images=images, case_ids=np.char.add(test.case_ids.astype(str), "~syn"))
        scored = SliceSet.concatenate([test, synthetic])
        for name, defense_params in DEFENSES:
            torch.manual_seed(0)
            defense = create_defense(name, **defense_params)
            defense.bind(RunContext(seed=0, cache_dir=cache / "defense", inputs=("t1ce",), target="ET"))
            defense.fit(trusted)
            scores = defense.score(scored)
            label = name + ("-random" if defense_params.get("encoder") == "random" else "")
            real = [scores[c] for c in test.cases]
            fake = [scores[c + "~syn"] for c in test.cases]
            row[f"auroc_{label}"] = round(_auroc(real, fake), 3)
        rows["stealth" if stealth else "plain"] = row
    keys = list(rows["plain"])
    print(f"{'':28s}{'plain':>12s}{'stealth':>12s}")
    for key in keys:
        cells = [rows[r].get(key) for r in ("plain", "stealth")]
        print(f"{key:28s}" + "".join(f"{c:12.4g}" if isinstance(c, (int, float)) else f"{str(c):>12s}" for c in cells))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
