"""Projected wall time of the BraTS 2021 study (``configs/brats.yaml``) on this machine.

    python benchmarks/brats_scale.py                   # a couple of minutes on a CPU
    python benchmarks/brats_scale.py --cases 16 --train-steps 20   # a longer slice, e.g. on a GPU

It runs a measured slice of the study and multiplies each measured rate by the work the
full study does (1,251 cases; the config's cells, epochs, steps, batch sizes and
generators):

- **load**: ``--load-cases`` BraTS-sized stand-in cases (240 × 240 × 155, four contrasts and
  a segmentation, gzip NIfTI: `test_loading.write_brats_standin`) read by the ``brats``
  reader with the config's slice selection and every usable core (``dataset.workers``),
  into an empty cache: seconds per case and kept slices per case;
- **train**: the config's U-Net trained by `benchmark.fit_binary_segmentation` on T1-Ce of
  a ``synthetic-brats`` stand-in at 240² (``--cases`` cases), timed over ``--train-steps``
  steps after one warm-up step: seconds per image (a step of the config's batch is
  projected as that many images; on a CPU the default batch is smaller than the
  config's, ``--train-batch``);
- **predict**: `benchmark.predict_binary_segmentation` over the stand-in's slices: seconds
  per slice, times the slices of a validation case;
- **generator**: the ``gan-synthetic`` trainer with the config's parameters on the
  stand-in (T1, T2, FLAIR -> T1-Ce), ``--gan-steps`` steps after a warm-up: seconds per
  slice pair; and its translation of whole slices (the poisoning): seconds per slice.

The projection: load + generators (one per seed; epochs × the pool's slices) + for each
cell, training (epochs × steps × batch) + prediction (the validation cases' slices) +
poisoning (rate × the training cases' slices). Printed as a table and one JSON line.
What it leaves out (the results store, metrics, the generator's quality check on two
held-out cases) takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BRATS_2021_CASES = 1251


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure_load(dataset: dict, cases: int, scratch: Path) -> tuple[float, float]:
    """(wall seconds per case with every usable core, kept slices per case) of the brats reader on stand-in files."""
    from benchmark import create_dataset
    from test_loading import write_brats_standin

    root = write_brats_standin(scratch / "brats-standin", cases)
    params = {k: v for k, v in dataset.items() if k != "root"}
    source = create_dataset("brats", root=str(root), **params)
    data = None

    def load() -> None:
        nonlocal data
        data = source.load()

    seconds = _seconds(load)
    return seconds / cases, len(data) / cases  # type: ignore[arg-type]


def measure_training(segmenter: dict, images: np.ndarray, masks: np.ndarray, device: str, batch: int, steps: int):
    """(seconds per training image, the trained net) of the config's segmenter at ``batch``."""
    import torch

    from benchmark import RunContext, create_segmenter, fit_binary_segmentation

    plugin = create_segmenter(segmenter["name"], **{k: v for k, v in segmenter.items() if k != "name"})
    context = RunContext(device=device, seed=0, deterministic=False)
    options = dict(channels_last=plugin.params.channels_last, flip_augment=plugin.params.flip_augment)
    net = plugin.build(images.shape[1])
    fit_binary_segmentation(net, images, masks, context, 1, batch, plugin.params.lr, steps_per_epoch=1, **options)  # warm-up

    def train() -> None:
        fit_binary_segmentation(net, images, masks, context, 1, batch, plugin.params.lr, steps_per_epoch=steps, **options)
        if device == "cuda":
            torch.cuda.synchronize()

    return _seconds(train) / (steps * batch), net


def measure_prediction(net, images: np.ndarray, device: str) -> float:
    """Seconds per predicted slice."""
    from benchmark import RunContext, predict_binary_segmentation

    context = RunContext(device=device)
    predict_binary_segmentation(net, images[:2], context)  # warm-up
    return _seconds(lambda: predict_binary_segmentation(net, images, context)) / len(images)


def measure_generator(attack: dict, data, device: str, batch: int, steps: int) -> tuple[float, float]:
    """(seconds per slice pair of generator training at ``batch``, seconds per translated slice)."""
    from attacks.gan_synthetic.training import GanTrainer, translate
    from benchmark import create_attack

    plugin = create_attack("gan-synthetic", **{k: v for k, v in attack.items() if k not in ("name", "rates")})
    config = dataclasses.replace(plugin._config(), epochs=1, batch_size=batch)
    source = plugin.source_slices(np.asarray(data.images), data.channels)
    target_index = data.channel_index(plugin.params.target)
    target = np.ascontiguousarray(data.images[:, target_index : target_index + 1], dtype=np.float32)
    GanTrainer(config, device, 0).fit(source[:batch], target[:batch])  # warm-up
    trainer = GanTrainer(config, device, 0)
    pairs = min(len(source), steps * batch)
    train_s = _seconds(lambda: trainer.fit(source[:pairs], target[:pairs]))
    translate(trainer.generator, source[:2], device)  # warm-up
    translate_s = _seconds(lambda: translate(trainer.generator, source, device))
    return train_s / pairs, translate_s / len(source)


def project(config, rates: dict[str, float], slices_per_case: float, cases: int = BRATS_2021_CASES) -> dict[str, float]:
    """Seconds of each part of the full study from measured rates (see the module docstring)."""
    segmenter = config.segmenters[0].params
    (attack, attack_rates), = config.attacks
    n_val = max(1, int(round(config.split.val_fraction * cases)))
    n_train = cases - n_val
    pool_slices = (n_train - min(attack.params["holdout_cases"], n_train // 2)) * slices_per_case
    cells = len(attack_rates) * len(config.seeds) * len(config.segmenters) * len(config.defenses)
    train_images = segmenter["epochs"] * segmenter["steps_per_epoch"] * segmenter["batch_size"]
    gan_pairs = attack.params["epochs"] * math.ceil(pool_slices / attack.params["batch_size"]) * attack.params["batch_size"]
    parts = {
        "load_s": cases * rates["load_s_per_case"],
        "generators_s": len(config.seeds) * gan_pairs * rates["gan_s_per_pair"],
        "training_s": cells * train_images * rates["train_s_per_image"],
        "prediction_s": cells * n_val * slices_per_case * rates["predict_s_per_slice"],
        "poisoning_s": len(config.seeds) * sum(attack_rates) * n_train * slices_per_case * rates["translate_s_per_slice"],
    }
    parts["total_s"] = sum(parts.values())
    parts["cells"] = cells
    return parts


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "brats.yaml"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--load-cases", type=int, default=4, help="BraTS-sized NIfTI stand-in cases read (default 4)")
    parser.add_argument("--cases", type=int, default=3, help="synthetic-brats cases at 240² for training and prediction (default 3)")
    parser.add_argument("--slices", type=int, default=8, help="slices per synthetic-brats case (default 8)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps (default 2)")
    parser.add_argument("--train-batch", type=int, default=None, help="batch of the timed steps (default: the config's on a GPU, 4 on a CPU)")
    parser.add_argument("--gan-steps", type=int, default=2, help="timed generator steps (default 2)")
    parser.add_argument("--gan-batch", type=int, default=None, help="batch of the timed generator steps (default: the config's on a GPU, 8 on a CPU)")
    args = parser.parse_args()

    import torch

    from benchmark import create_dataset, region_mask
    from benchmark.config import load_config
    from benchmark.datasets._parallel import default_workers

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available.", file=sys.stderr)
        raise SystemExit(2)
    config = load_config(args.config)
    segmenter = config.segmenters[0].as_dict()
    (attack_spec, _), = config.attacks
    attack = attack_spec.as_dict()
    train_batch = args.train_batch or (segmenter["batch_size"] if device == "cuda" else 4)
    gan_batch = args.gan_batch or (attack["batch_size"] if device == "cuda" else 8)
    if device == "cpu":
        torch.set_num_threads(default_workers())
    scratch = Path(tempfile.mkdtemp(prefix="brats-scale-"))
    os.environ["POISONBENCH_CACHE"] = str(scratch / "cache")
    try:
        clock = time.perf_counter()
        load_s_per_case, slices_per_case = measure_load(config.dataset.params, args.load_cases, scratch)
        data = create_dataset("synthetic-brats", cases=args.cases, slices=args.slices, size=240, seed=0).load()
        task = [data.channel_index(c) for c in config.task.inputs]
        images = np.ascontiguousarray(data.images[:, task], dtype=np.float32)
        masks = region_mask(np.asarray(data.labels), config.task.target).astype(np.uint8)
        train_s_per_image, net = measure_training(segmenter, images, masks, device, train_batch, args.train_steps)
        predict_s_per_slice = measure_prediction(net, images, device)
        gan_s_per_pair, translate_s_per_slice = measure_generator(attack, data, device, gan_batch, args.gan_steps)
        rates = {
            "load_s_per_case": load_s_per_case, "train_s_per_image": train_s_per_image, "predict_s_per_slice": predict_s_per_slice,
            "gan_s_per_pair": gan_s_per_pair, "translate_s_per_slice": translate_s_per_slice,
        }
        parts = project(config, rates, slices_per_case)
        machine = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {default_workers()} usable cores"
        print(f"\nBraTS 2021 study ({Path(args.config).name}: {parts['cells']} cells, {BRATS_2021_CASES} cases) on {machine}")
        print(f"  measured in {time.perf_counter() - clock:.0f} s: load {load_s_per_case:.2f} s/case ({slices_per_case:.1f} slices kept), "
              f"train {train_s_per_image * 1000:.1f} ms/image (batch {train_batch}), predict {predict_s_per_slice * 1000:.1f} ms/slice, "
              f"generator {gan_s_per_pair * 1000:.1f} ms/pair (batch {gan_batch}), translate {translate_s_per_slice * 1000:.1f} ms/slice")
        for name in ("load_s", "generators_s", "training_s", "prediction_s", "poisoning_s", "total_s"):
            print(f"  {name[:-2]:<12} {_duration(parts[name]):>12}")
        print(json.dumps({"figure": "brats_study_projection", "machine": machine, "device": device, "train_batch": train_batch,
                          "gan_batch": gan_batch, "slices_per_case": round(slices_per_case, 2),
                          **{k: round(v, 6) for k, v in rates.items()}, **{k: round(v, 1) for k, v in parts.items()}}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
