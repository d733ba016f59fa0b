"""Harness overhead, metric speed, cached-load time and resume cost (executor scaling: test_executor_throughput.py)."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import yaml

from benchmark import validate_config
from benchmark.cli import main
from benchmark.config import expand_cells
from benchmark.metrics import case_metrics
from benchmark.regions import region_mask
from benchmark.runner import CellRunner, plan_sweep
from benchmark.splitting import split_cases
from conftest import report

CONFIG = {
    "dataset": {"name": "synthetic-brats", "cases": 12, "slices": 8, "size": 64, "seed": 0},
    "task": {"inputs": ["t1ce"], "target": "ET"},
    "split": {"val_fraction": 0.25, "seed": 0},
    "segmenters": [{"name": "unet", "epochs": 4, "batch_size": 16, "lr": 0.001, "flip_augment": False}],
    "attacks": [{"name": "none", "rates": [0]}],
    "defenses": [{"name": "none"}],
    "seeds": [0],
    "device": "cpu",
}


def _hand_written_cell(train_x, train_y, val_x, val_y, val_ids, epochs, batch_size, lr, seed):
    """A minimal torch + MONAI loop doing the same work as one cell."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(2, train_x.shape[1], 1, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y).float().unsqueeze(1)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(net(x[index]), y[index]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = (net(torch.from_numpy(val_x))[:, 0] > 0).numpy()
    return case_metrics(pred, val_y, val_ids)


def _interleaved_best(first, second, repeats: int) -> tuple[float, float]:
    """Best time of each, alternating runs so that load drift hits both alike."""
    a, b = [], []
    for _ in range(repeats):
        a.append(_best_of(first, 1))
        b.append(_best_of(second, 1))
    return min(a), min(b)


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_harness_overhead_vs_hand_written_loop(benchmark):
    config = validate_config(copy.deepcopy(CONFIG))
    plan = plan_sweep(config)
    data = plan.source.load()
    split = split_cases(data, 0.25, 0)
    runner = CellRunner(data, split, "cpu", plan.fingerprint)
    cell = plan.cells[0]
    train, val = data.subset(split.train), data.subset(split.val)
    arrays = (
        train.select_channels(["t1ce"]), region_mask(train.labels, "ET").astype(np.uint8),
        val.select_channels(["t1ce"]), region_mask(val.labels, "ET"), val.case_ids,
    )
    params = cell.segmenter.params

    def harness():
        record = runner.run(cell)
        assert record.status == "finished", record.error

    def baseline():
        _hand_written_cell(*arrays, params["epochs"], params["batch_size"], params["lr"], cell.seed)

    harness()  # warm-up: imports, allocator
    baseline_s, harness_s = _interleaved_best(baseline, harness, 3)
    benchmark.pedantic(harness, rounds=1, iterations=1)
    ratio = harness_s / baseline_s
    benchmark.extra_info.update(harness_s=harness_s, baseline_s=baseline_s, ratio=ratio)
    report("harness overhead", harness_s=harness_s, baseline_s=baseline_s, ratio=ratio)


def test_metrics_one_pass_vs_monai(benchmark):
    from monai.metrics import ConfusionMatrixMetric, DiceMetric

    rng = np.random.default_rng(0)
    cases, slices, size = 20, 32, 128
    truth = rng.random((cases * slices, size, size)) < 0.05
    pred = np.where(rng.random(truth.shape) < 0.02, ~truth, truth)
    ids = np.repeat([f"c{i}" for i in range(cases)], slices)

    def ours():
        return case_metrics(pred, truth, ids)

    def monai():
        p = torch.from_numpy(pred.reshape(cases, slices, size, size)).float().unsqueeze(1)
        t = torch.from_numpy(truth.reshape(cases, slices, size, size)).float().unsqueeze(1)
        dice = DiceMetric(include_background=True, reduction="none")(p, t)[:, 0]
        cm = ConfusionMatrixMetric(
            include_background=True, metric_name=["threat score", "accuracy", "sensitivity", "specificity"], reduction="none"
        )
        cm(p, t)
        return dice, [m[:, 0] for m in cm.aggregate()]

    result = ours()
    dice, (jaccard, accuracy, sensitivity, specificity) = monai()
    for name, reference in [("dice", dice), ("jaccard", jaccard), ("accuracy", accuracy), ("sensitivity", sensitivity), ("specificity", specificity)]:
        np.testing.assert_allclose(result[name].to_numpy(), reference.numpy(), atol=1e-6)
    ours_s = _best_of(ours, 5)
    monai_s = _best_of(monai, 5)
    benchmark.pedantic(ours, rounds=3, iterations=1)
    benchmark.extra_info.update(ours_s=ours_s, monai_s=monai_s, speedup=monai_s / ours_s)
    report("metrics", ours_s=ours_s, monai_s=monai_s, speedup=monai_s / ours_s)


def test_cached_dataset_load(benchmark):
    config = validate_config({**copy.deepcopy(CONFIG), "dataset": {"name": "synthetic-brats", "cases": 40, "slices": 16, "size": 128, "seed": 0}})
    source = plan_sweep(config).source
    start = time.perf_counter()
    source.load()
    first_s = time.perf_counter() - start
    cached_s = _best_of(source.load, 3)
    benchmark.pedantic(source.load, rounds=3, iterations=1)
    benchmark.extra_info.update(first_s=first_s, cached_s=cached_s, ratio=cached_s / first_s)
    report("dataset load (40 cases x 16 slices at 128^2)", generate_s=first_s, cached_s=cached_s, ratio=cached_s / first_s)


def _write(tmp_path, config, name="bench.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_resume_vs_first_run(benchmark, tmp_path):
    config = {**copy.deepcopy(CONFIG), "attacks": [{"name": "none", "rates": [0, 0.5]}], "seeds": [0, 1]}
    config["segmenters"][0]["epochs"] = 1
    path = _write(tmp_path, config)
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    first_s = time.perf_counter() - start
    resume_s = _best_of(lambda: main(["run", str(path), "--out", str(out), "--quiet"]), 3)
    benchmark.pedantic(lambda: main(["run", str(path), "--out", str(out), "--quiet"]), rounds=1, iterations=1)
    benchmark.extra_info.update(first_s=first_s, resume_s=resume_s, ratio=resume_s / first_s)
    report("resume (4 cells, all skipped)", first_s=first_s, resume_s=resume_s, ratio=resume_s / first_s)


def test_cells_expand_quickly(benchmark):
    config = validate_config({**copy.deepcopy(CONFIG), "attacks": [{"name": "none", "rates": [i / 6 for i in range(6)]}], "seeds": list(range(10))})
    cells = benchmark(expand_cells, config, "fingerprint", "1")
    assert len(cells) == 60
