"""One naming and grouping scheme for every run, hand-made or launched by the sweep.

    run name     <dataset>-<model>[-<variant>]-<protocol>-s<seed>   hopper-medium-dmamba-release-s12
    wandb group  <table>/<dataset>/<model>[-<variant>]/<protocol>   table1/hopper-medium/dmamba/release
                 (<table> is table<N> for the sweep, "hand" for a run started by hand)
    tags         data:<source> and protocol:<protocol>; "generated" for files made by
                 tools/generate_dataset.py, so they never pass for D4RL; "smoke" for the
                 sweep's --smoke runs (their wandb project is SMOKE_WANDB_PROJECT)

<dataset> is the D4RL name (hopper-medium), a file's stem (hopper-medium-v4-gen: the env
is prefixed only when the stem lacks it), a Minari id with / as - , or the Atari game.
<protocol> is protocols.protocol_label: the protocol plus any switch set otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decision_mamba.data.d4rl import is_file_dataset
from decision_mamba.protocols import protocol_label

GENERATED_SUFFIX = "-gen"  # tools/generate_dataset.py names its files <env>-<dataset>-<version>-gen.hdf5
SMOKE_WANDB_PROJECT = "decision-mamba-smoke"  # sweep --smoke: runs on generated / emulator-recorded data

# model.mixer -> (our short name of the model built with it: run names, wandb groups, sweep
# --models; the paper's name of that model: reports and tables). A mixer missing here (one
# you added to mixers.MIXERS) goes by its own name in both.
MODEL_NAMES = {"mamba": ("dmamba", "DMamba"), "attention": ("dt", "DT"), "conv": ("dc", "DC"), "s4": ("ds4", "DS4"),
               "mamba2": ("dmamba2", "DMamba-2")}


def model_name(mixer: str) -> str:
    """mamba -> dmamba."""
    return MODEL_NAMES[mixer][0] if mixer in MODEL_NAMES else mixer


def paper_name(mixer: str) -> str:
    """mamba -> DMamba."""
    return MODEL_NAMES[mixer][1] if mixer in MODEL_NAMES else mixer


def mixer_of_model(model: str) -> str | None:
    """dmamba -> mamba; None for a name that is no model's."""
    return next((mixer for mixer, (short, _) in MODEL_NAMES.items() if short == model), None)


def dataset_name(cfg: Any) -> str:
    """hopper-medium | hopper-medium-v4-gen | mujoco-hopper-medium-v0 | breakout (the suite's rule)."""
    from decision_mamba.suites import suite_of

    return suite_of(cfg).dataset_name(cfg)


def data_source(cfg: Any) -> str:
    """d4rl | minari | file | dqn-replay."""
    from decision_mamba.suites import suite_name

    suite = suite_name(cfg)
    if suite == "atari":
        return "dqn-replay"
    if suite == "d4rl":
        return "file" if is_file_dataset(str(cfg.dataset)) else "d4rl"
    return suite


def model_label(cfg: Any, variant: str = "") -> str:
    model = model_name(cfg.model.mixer)  # dmamba, dt, ...
    return f"{model}-{variant}" if variant else model


def run_name(cfg: Any, variant: str = "") -> str:
    return f"{dataset_name(cfg)}-{model_label(cfg, variant)}-{protocol_label(cfg)}-s{cfg.seed}"


def run_group(cfg: Any, table: int | None = None, variant: str = "") -> str:
    where = f"table{table}" if table is not None else "hand"
    return f"{where}/{dataset_name(cfg)}/{model_label(cfg, variant)}/{protocol_label(cfg)}"


def run_tags(cfg: Any) -> list[str]:
    tags = [f"data:{data_source(cfg)}", f"protocol:{protocol_label(cfg)}"]
    if data_source(cfg) == "file" and Path(str(cfg.dataset)).stem.endswith(GENERATED_SUFFIX):
        tags.append("generated")
    if cfg.run.wandb_project == SMOKE_WANDB_PROJECT:
        tags.append("smoke")
    return tags
