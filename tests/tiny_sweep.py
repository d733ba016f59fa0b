"""The smallest sweep config the tests run: importable by name from any test module."""

TINY_CONFIG = {
    "dataset": {"name": "synthetic-brats", "cases": 6, "slices": 4, "size": 32, "seed": 0},
    "task": {"inputs": ["t1ce"], "target": "ET"},
    "split": {"val_fraction": 0.34, "seed": 0},
    "segmenters": [{"name": "unet", "epochs": 2, "batch_size": 8, "lr": 0.003, "channels": [4, 8, 16]}],
    "attacks": [{"name": "none", "rates": [0]}],
    "defenses": [{"name": "none"}],
    "seeds": [0],
    "device": "cpu",
    "executor": {"name": "local"},
    "out": "results",
}
