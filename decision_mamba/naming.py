"""One naming and grouping scheme for every run, hand-made or launched by the sweep.

    run name     <dataset>-<model>[-<variant>]-<protocol>-s<seed>   hopper-medium-dmamba-release-s12
    wandb group  <table>/<dataset>/<model>[-<variant>]/<protocol>   table1/hopper-medium/dmamba/release
                 (<table> is table<N> for the sweep, "hand" for a run started by hand)
    tags         data:<source> and protocol:<protocol>; "generated" for files made by
                 decision_mamba.data.generate, so they never pass for D4RL; "smoke" for the
                 sweep's --smoke runs (their wandb project is SMOKE_WANDB_PROJECT)

<dataset> is the D4RL name (hopper-medium), a file's stem (hopper-medium-v4-gen: the env
is prefixed only when the stem lacks it), a Minari id with / as - , or the Atari game.
<protocol> is protocols.protocol_label: the protocol plus any switch set otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decision_mamba.protocols import protocol_label

# Our short model names per model.mixer (the paper's names are model.MODEL_NAMES).
MODEL_OF_MIXER = {"mamba": "dmamba", "attention": "dt", "conv": "dc", "s4": "ds4"}
GENERATED_SUFFIX = "-gen"  # decision_mamba.data.generate names its files <env>-<dataset>-<version>-gen.hdf5
SMOKE_WANDB_PROJECT = "decision-mamba-smoke"  # sweep --smoke: runs on generated / emulator-recorded data


def is_file_dataset(dataset: str) -> bool:
    return "/" in dataset or dataset.endswith((".hdf5", ".h5", ".pkl")) or dataset.startswith("minari:")


def dataset_name(cfg: Any) -> str:
    """hopper-medium | hopper-medium-v4-gen | mujoco-hopper-medium-v0 | breakout."""
    if hasattr(cfg, "game"):
        return str(cfg.game).lower()
    dataset = str(cfg.dataset)
    if not is_file_dataset(dataset):
        return f"{cfg.env}-{dataset}"
    if dataset.startswith("minari:"):
        stem = dataset.removeprefix("minari:").strip("/").replace("/", "-")
    else:
        stem = Path(dataset).stem
    return stem if stem.startswith(f"{cfg.env}-") or stem.startswith(f"mujoco-{cfg.env}") else f"{cfg.env}-{stem}"


def data_source(cfg: Any) -> str:
    """d4rl | minari | file | dqn-replay."""
    if hasattr(cfg, "game"):
        return "dqn-replay"
    dataset = str(cfg.dataset)
    if dataset.startswith("minari:"):
        return "minari"
    return "file" if is_file_dataset(dataset) else "d4rl"


def model_label(cfg: Any, variant: str = "") -> str:
    model = MODEL_OF_MIXER.get(cfg.model.mixer, cfg.model.mixer)
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
