"""The plugin SDK: everything an attack, defense, segmenter or data set imports.

Plugins import these names from ``benchmark`` (or from here; both are the same objects).
Each name is imported from its module on first use: importing a plugin's parameter model
costs no torch, and only `fit_binary_segmentation` / `predict_binary_segmentation` (the
shared training loop) import it. What drives and reads sweeps (config loading, results
store, reports, analysis, executors) is in `benchmark.tools`.

Example::

    from benchmark import IntensityAttack, PluginParams, register_attack
"""

from __future__ import annotations

from ._exports import lazy_attributes

#: public name -> module defining it
EXPORTS: dict[str, str] = {
    # plugin base classes, parameters and the context a plugin runs in
    **dict.fromkeys(
        ["Plugin", "PluginParams", "RunContext", "Attack", "CaseAttack", "IntensityAttack", "Defense", "DefenseParams",
         "Segmenter", "DatasetSource", "select_cases", "poison_order"],
        ".plugins",
    ),
    # registration, creation and listing of plugins
    **dict.fromkeys(
        ["ATTACKS", "DEFENSES", "SEGMENTERS", "DATASETS", "register_attack", "register_defense", "register_segmenter",
         "register_dataset", "create_attack", "create_defense", "create_segmenter", "create_dataset", "list_attacks",
         "list_defenses", "list_segmenters", "list_datasets"],
        ".catalog",
    ),
    # the base of attacks whose trained model synthesises the target channel
    **dict.fromkeys(["GenerativeAttack", "GenerativeParams", "training_environment"], ".generative"),
    "Registry": ".registry",
    "NO_ATTACK": ".identity", "NO_DEFENSE": ".identity", "NoAttack": ".identity", "NoDefense": ".identity",
    # the data contract
    "SliceSet": ".sliceset",
    **dict.fromkeys(["SliceGeometry", "CaseGrid", "stack_slices"], ".geometry"),
    **dict.fromkeys(["CaseNormalisation", "Normalisation", "ZSCORE", "IDENTITY", "renormalise_like"], ".normalisation"),
    **dict.fromkeys(["REGIONS", "region_mask", "to_common_labels"], ".regions"),
    # the exporter's NIfTI writing (a segmenter that trains on files: nnU-Net)
    **dict.fromkeys(["case_volume", "nnunet_channel_name", "write_nifti"], ".datasets.export"),
    # image quality of synthetic images (the generative attacks' report)
    **dict.fromkeys(["NORMAL_BRAIN_MARGIN", "image_quality", "rim_contrast"], ".synthesis_quality"),
    "SEED_STREAMS": ".seeding", "SeedStreams": ".seeding",
    # errors a plugin raises
    **dict.fromkeys(["BenchError", "ConfigError", "DataError", "PluginError", "ExitCode"], ".errors"),
    # expensive artifacts cached on disk, and what the machine is
    **dict.fromkeys(["artifact_dir", "build_artifact", "cached_sliceset"], ".cache"),
    "cache_root": ".paths",
    "environment": ".environment",
    # the training loop torch segmenters share (imports torch)
    "fit_binary_segmentation": ".training", "predict_binary_segmentation": ".training",
    **dict.fromkeys(["STEALTH_PARTS", "StealthEncoder", "StealthLoss", "quality_statistics", "radial_log_spectrum", "stealth_reference"], ".stealth"),
}

__all__ = list(EXPORTS)

__getattr__, __dir__ = lazy_attributes("benchmark", EXPORTS)
