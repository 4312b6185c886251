"""The run lists of the paper's Tables 1-4, and launching them on one machine or on SLURM.

    python -m decision_mamba.sweep table1 --dry-run                  # list the 180 runs
    python -m decision_mamba.sweep table1 --models dmamba --slots 2   # 45 runs, 2 at a time
    python -m decision_mamba.sweep table1 --seeds 12 -- train.num_iterations=1 eval.episodes=2
    python -m decision_mamba.sweep table2 --launcher slurm --partition gpu --gpus-per-node 1 \
        --time 2880 --array-parallelism 12
    python -m decision_mamba.sweep table2 --smoke                     # the protocol at a tiny budget

--smoke runs the table's protocol (every model / variant, the first three seeds) at a tiny
budget on data made here: the bundled data/hopper-medium-v4-gen.hdf5 for the gym tables
(one row, hopper-medium), a DQN-replay-format dataset recorded from the real emulator
(tools/record_atari.py, Breakout unless --datasets) for the Atari tables. It
writes into runs/smoke/table<N> (never the real table's runs/table<N>) and logs to the wandb
project decision-mamba-smoke. It checks the pipeline end to end; its scores measure nothing.

A run is an entry point (gym/experiment.py or atari/train_atari.py), a config file and
`key=value` overrides; the sweep adds model.mixer, seed, run.out_dir, run.name and
run.wandb_group (table<N>/<dataset>/<model>, so wandb groups runs by table, dataset and
model). Everything after `--` is passed to every run (e.g. data_dir=..., a smaller
train.num_iterations for a smoke test).

Launchers
    local           runs in parallel on this machine, `--slots` at a time (default: one per
                    GPU, or 1 on the CPU), each slot pinned to a GPU with CUDA_VISIBLE_DEVICES.
                    submitit's LocalExecutor starts every submitted job at once, so this
                    launcher uses a concurrent.futures thread pool of `--slots` workers (threads
                    are enough: each run is its own subprocess). Logs: <out-dir>/logs/<run>.log.
    submitit-local  the same jobs through submitit's LocalExecutor (pickled, as on SLURM),
                    throttled to `--slots` at a time here; for trying a sweep before sending
                    it to a cluster. Logs: <out-dir>/submitit/.
    slurm           one submitit job array per table (AutoExecutor, cluster="slurm"), with
                    `--array-parallelism` tasks at a time; returns once submitted. A task that
                    hits its time limit is requeued and resumes from its last checkpoint.

The console shows each run as it starts and ends, `[k/N]` with its time and the sweep's,
and a failed run's own one-line error from its log. Missing data files stop the sweep
before it launches anything (--dry-run lists the runs and names them). Ctrl-C or SIGTERM to
the sweep stops its running runs too (they resume from their checkpoints when the same
command is run again): no run is left training on its own.

Re-launching the same command is safe: runs with a summary.json are skipped, runs with a
run directory but no summary.json are continued with --resume, and a run directory made
with other settings (say a smoke test's train.num_iterations=1) is an error, not a skip.

wandb: `--wandb offline` writes each run's log to <run dir>/wandb/; upload them later with
    wandb sync runs/table1/*/wandb/offline-run-*
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf

from decision_mamba import naming
from decision_mamba.config import AtariConfig, GymConfig, flatten, load_config
from decision_mamba.atomic import write_text_atomic
from decision_mamba.checkpoint import RESUME_MAY_DIFFER
from decision_mamba.errors import UserError, cli_main, interrupted_again
from decision_mamba.protocols import PROTOCOLS, protocol_label

GYM_ENTRY = "gym/experiment.py"
ATARI_ENTRY = "atari/train_atari.py"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Rows in the order of the paper's tables.
GYM_DATASETS = (
    "halfcheetah-medium", "hopper-medium", "walker2d-medium",
    "halfcheetah-medium-replay", "hopper-medium-replay", "walker2d-medium-replay",
    "halfcheetah-medium-expert", "hopper-medium-expert", "walker2d-medium-expert",
)
MEDIUM_DATASETS = ("halfcheetah-medium", "hopper-medium", "walker2d-medium")
# Table 1 on Minari (--suite minari, scripts/table1_minari.sh): the same models, seeds and
# settings on Minari's mujoco/<env>/<level>-v0 datasets (configs/minari/mujoco-<env>-<level>.yaml),
# under the clean protocol; not comparable with D4RL's Table 1 (docs/results.md).
MINARI_DATASETS = tuple(f"{env}-{level}" for level in ("simple", "medium", "expert")
                        for env in ("halfcheetah", "hopper", "walker2d"))
SUITES = ("d4rl", "minari")
ATARI_GAMES = ("breakout", "qbert", "pong", "seaquest")

# The table scripts re-run the experiment behind the paper's numbers unless told otherwise.
DEFAULT_PROTOCOL = "release"

# The seeds of the authors' release (docs/protocol.md, "Hyperparameters").
GYM_SEEDS = (12, 23, 34, 45, 51)
ATARI_SEEDS = (123, 231, 312)

# Table 3 ablation: default, "RC" (no channel-mixing MLP), "RC & 2L" (no MLP, twice the layers).
TABLE3_VARIANTS = ("default", "rc", "rc-2l")
# Table 4: context length K on Atari, as train.context_len=K over Table 2's configs/atari/<game>.yaml
# (whose K = 30 is the paper's default).
TABLE4_CONTEXTS = (10, 30, 40, 60)

# Keys the sweep sets on every run, with the flag to use instead of an override.
MANAGED_KEYS = {
    "model.mixer": "--models",
    "seed": "--seeds",
    "run.out_dir": "--out-dir",
    "protocol": "--protocol",
    "run.name": "nothing (derived from dataset, model, variant, protocol and seed)",
    "run.wandb_group": "nothing (table<N>/<dataset>/<model>/<protocol>)",
    "run.wandb": "--wandb",
}
TABLE_MANAGED_KEYS = {
    3: {"model.channel_mlp": "--variants", "model.n_layer": "--variants"},
    4: {"train.context_len": "--variants (k10, k30, k40, k60)"},
}

# Keys that may differ between a run directory and a re-launch without changing the result:
# those --resume accepts (checkpoint.RESUME_MAY_DIFFER), and what the launcher sets per
# machine (threads are compared on resume through the run's identity instead).
IGNORED_WHEN_COMPARING = {
    *RESUME_MAY_DIFFER, "run.wandb_project", "run.keep_checkpoints",
    "train.device", "train.num_threads", "model.scan_backend",
}


class SweepError(UserError, ValueError):
    """A sweep request that cannot be honoured (unknown names, conflicting settings)."""


# --smoke: the tiny budget (everything but the table's own keys), per kind of table.
SMOKE_DATA_GYM = "data/hopper-medium-v4-gen.hdf5"  # bundled, generated by tools/generate_dataset.py
SMOKE_DATASETS = {"gym": ("hopper-medium",), "atari": ("breakout",)}  # the rows run by default
SMOKE_BUDGET = {
    "gym": ("model.d_model=16", "train.batch_size=8", "train.context_len=5", "train.warmup_steps=10",
            "train.num_iterations=2", "train.steps_per_iteration=10", "eval.episodes=1", "eval.max_ep_len=20"),
    "atari": ("num_buffers=2", "num_steps=400", "trajectories_per_buffer=2", "model.d_model=16", "model.n_head=2",
              "train.batch_size=8", "train.num_iterations=2", "train.steps_per_iteration=10",
              "train.warmup_tokens=100", "eval.episodes=1", "eval.max_ep_len=30"),
}
SMOKE_COMMON = ("train.num_threads=1", f"run.wandb_project={naming.SMOKE_WANDB_PROJECT}")  # tagged "smoke"
SMOKE_SEEDS = 3  # the table's first three seeds: the fewest the aggregator gives intervals for
SMOKE_RECORDING = {"buffers": 2, "transitions": 300, "max_steps": 100}  # per game, a few seconds


def smoke_out_dir(table: int) -> str:
    return f"runs/smoke/table{table}"


def smoke_data_dir(out_dir: str | Path) -> Path:
    """Where --smoke records its Atari data: beside the smoke run folders, shared by tables 2 and 4."""
    return Path(out_dir).parent / "dqn_replay_recorded"


def record_smoke_data(runs: list[Run]) -> None:
    """Record the Atari smoke dataset of each game the runs read, unless it is there
    (recorded into a hidden folder, then renamed: a killed recording leaves nothing half-made)."""
    for run in runs:
        cfg = run.resolved_config()
        root = Path(cfg.data_dir)
        if not isinstance(cfg, AtariConfig) or (root / cfg.game).is_dir():
            continue
        partial = root / f".recording-{cfg.game}"
        print(f"# --smoke: recording {SMOKE_RECORDING['buffers']} buffers of random {cfg.game} play into {root}",
              flush=True)
        subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "record_atari.py"), "--game", cfg.game,
                        "--out", str(partial), "--seed", "0",
                        *(f"--{key.replace('_', '-')}={value}" for key, value in SMOKE_RECORDING.items())], check=True)
        os.replace(partial / cfg.game, root / cfg.game)
        partial.rmdir()


@dataclass(frozen=True)
class TableSpec:
    number: int
    datasets: tuple[str, ...]  # gym datasets or Atari games
    models: tuple[str, ...]  # the paper's columns, run by default
    variants: tuple[str, ...]  # ("",) when the table has no variants
    seeds: tuple[int, ...]
    # Models beyond the paper: run only when --models names them, never by default; the
    # aggregator puts them after the paper's columns, with no paper number.
    extra_models: tuple[str, ...] = ()

    @property
    def all_models(self) -> tuple[str, ...]:
        return (*self.models, *self.extra_models)


# DMamba-2 (model.mixer=mamba2) is in no table of the paper; every table runs it on request.
BEYOND_PAPER = ("dmamba2",)

TABLES: dict[int, TableSpec] = {
    # Each table's models (naming.MODEL_NAMES), in the paper's column order.
    1: TableSpec(1, GYM_DATASETS, ("dmamba", "dt", "dc", "ds4"), ("",), GYM_SEEDS, BEYOND_PAPER),
    2: TableSpec(2, ATARI_GAMES, ("dmamba", "dt", "dc"), ("",), ATARI_SEEDS, BEYOND_PAPER),
    3: TableSpec(3, MEDIUM_DATASETS, ("dmamba",), TABLE3_VARIANTS, GYM_SEEDS, BEYOND_PAPER),
    4: TableSpec(4, ("breakout", "qbert"), ("dmamba",), tuple(f"k{k}" for k in TABLE4_CONTEXTS), ATARI_SEEDS,
                 BEYOND_PAPER),
}


@dataclass(frozen=True)
class Run:
    """One training run: what to execute and where its run directory is."""

    table: int
    dataset: str
    model: str  # a short model name (naming.MODEL_NAMES)
    variant: str  # "" | default | rc | rc-2l | k10 | k30 | k40 | k60
    seed: int
    entry_point: str  # relative to the repository root
    config: str  # relative to the repository root
    overrides: tuple[str, ...]  # every key=value, the pass-through ones last
    out_dir: str
    name: str
    group: str = ""  # the wandb group, naming.run_group

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def label(self) -> str:
        return f"{self.model}-{self.variant}" if self.variant else self.model

    def command(self, python: str = sys.executable, resume: bool = False) -> list[str]:
        return [python, _shown(REPO_ROOT / self.entry_point), "--config", _shown(REPO_ROOT / self.config),
                *self.overrides, *(["--resume"] if resume else [])]

    def resolved_config(self) -> GymConfig | AtariConfig:
        schema = GymConfig if self.entry_point == GYM_ENTRY else AtariConfig
        return load_config(schema, REPO_ROOT / self.config, list(self.overrides))


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is under it (readable dry-runs)."""
    try:
        # abspath, not resolve: keep .venv/bin/python rather than the interpreter it links to
        return str(Path(os.path.abspath(path)).relative_to(os.getcwd()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ run lists
def _pick(kind: str, requested: list | None, available: tuple, table: int, on_request: tuple = ()) -> tuple:
    """The requested names in the table's order; all of `available` when none is requested.
    `on_request`: names the table runs only when asked for (models beyond the paper)."""
    if not requested:
        return available
    known = (*available, *on_request)
    unknown = [r for r in requested if r not in known]
    if unknown:
        beyond = f", or beyond the paper {list(on_request)}" if on_request else ""
        raise SweepError(f"table {table} has no {kind} {unknown}; choose from {list(available)}{beyond}")
    return tuple(r for r in known if r in requested)  # keep the table's order


def check_overrides(overrides: list[str], managed: dict[str, str], scope: str) -> None:
    """Refuse an override that is not key=value, or that sets a key the sweep sets for every run
    of `scope` ("table 1", "the memory study"); `managed`: key -> the option to use instead."""
    for override in overrides:
        key, eq, _ = override.partition("=")
        if not eq or not key:
            raise SweepError(f"overrides after -- must look like key=value (e.g. train.num_iterations=1), "
                             f"got {override!r}")
        if key.strip() in managed:
            raise SweepError(f"{key} is set by the sweep for every run of {scope}; "
                             f"use {managed[key.strip()]} instead of the override {override!r}")


def _config_path(table: int, dataset: str, suite: str = "d4rl") -> str:
    if suite == "minari":
        return f"configs/minari/mujoco-{dataset}.yaml"
    if table in (1, 3):
        return f"configs/gym/{dataset}.yaml"
    return f"configs/atari/{dataset}.yaml"


def _variant_overrides(table: int, config: str, variant: str) -> list[str]:
    if table == 3 and variant == "rc":
        return ["model.channel_mlp=false"]
    if table == 3 and variant == "rc-2l":
        n_layer = OmegaConf.load(REPO_ROOT / config).model.n_layer  # twice the table's own depth
        return ["model.channel_mlp=false", f"model.n_layer={2 * int(n_layer)}"]
    if table == 4:
        return [f"train.context_len={variant.removeprefix('k')}"]
    return []


def table_runs(table: int, *, out_dir: str | None = None, datasets: list[str] | None = None,
               models: list[str] | None = None, variants: list[str] | None = None,
               seeds: list[int] | None = None, overrides: list[str] | tuple[str, ...] = (),
               wandb: str = "disabled", protocol: str = DEFAULT_PROTOCOL, smoke: bool = False,
               suite: str = "d4rl") -> list[Run]:
    """Every run of the table (datasets x models x variants x seeds), filtered, under `protocol`.

    Names and groups come from the resolved config (naming.py), so a pass-through
    override that changes the data (dataset=FILE) or a protocol switch shows in them.
    smoke: the table's protocol at SMOKE_BUDGET on generated / recorded data, into
    runs/smoke/table<N> (see the module docstring); `overrides` still win.
    """
    if table not in TABLES:
        raise SweepError(f"no table {table}; the paper's tables are {sorted(TABLES)}")
    spec = TABLES[table]
    if suite not in SUITES or (suite == "minari" and (table != 1 or smoke or protocol == "release")):
        raise SweepError(f"--suite {suite}: the suites are {', '.join(SUITES)}; minari is Table 1's, under "
                         f"--protocol clean (the Minari suite refuses the release's D4RL settings), without --smoke")
    if suite == "minari":
        spec = dataclasses.replace(spec, datasets=MINARI_DATASETS)
        out_dir = out_dir or f"runs/table{table}-minari"
    if variants and spec.variants == ("",):
        raise SweepError(f"table {table} has no variants; --variants is for tables 3 and 4")
    if wandb not in ("disabled", "offline", "online"):
        raise SweepError(f"--wandb must be disabled, offline or online, got {wandb!r}")
    if protocol not in PROTOCOLS:
        raise SweepError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    check_overrides(list(overrides), {**MANAGED_KEYS, **TABLE_MANAGED_KEYS.get(table, {})}, f"table {table}")
    schema = GymConfig if table in (1, 3) else AtariConfig
    entry = GYM_ENTRY if table in (1, 3) else ATARI_ENTRY
    if smoke:
        kind = "gym" if table in (1, 3) else "atari"
        out_dir = out_dir or smoke_out_dir(table)
        if Path(os.path.abspath(out_dir)) == Path(os.path.abspath(f"runs/table{table}")):
            raise SweepError(f"--smoke never writes into the real table's runs/table{table}; "
                             f"leave --out-dir out (default {smoke_out_dir(table)}) or choose another folder")
        if kind == "gym" and datasets and set(datasets) - set(SMOKE_DATASETS["gym"]):
            raise SweepError(f"--smoke runs the gym tables on the generated {SMOKE_DATA_GYM} only, that is the "
                             f"row {SMOKE_DATASETS['gym'][0]}; drop --datasets")
        datasets = datasets or list(SMOKE_DATASETS[kind])
        seeds = seeds or list(spec.seeds[:SMOKE_SEEDS])
        data = (f"dataset={_shown(REPO_ROOT / SMOKE_DATA_GYM)}" if kind == "gym"
                else f"data_dir={smoke_data_dir(out_dir)}")
        overrides = [*SMOKE_BUDGET[kind], *SMOKE_COMMON, data, *overrides]
    out_dir = out_dir or f"runs/table{table}"

    runs = []
    for dataset in _pick("dataset", datasets, spec.datasets, table):
        for model in _pick("model", models, spec.models, table, spec.extra_models):
            for variant in _pick("variant", variants, spec.variants, table):
                config = _config_path(table, dataset, suite)
                variant_overrides = _variant_overrides(table, config, variant)
                chosen = [f"model.mixer={naming.mixer_of_model(model)}", f"protocol={protocol}"]
                resolved = load_config(schema, REPO_ROOT / config, variant_overrides + chosen + list(overrides))
                # Any seed may be asked for; the default is the paper's.
                for seed in seeds or spec.seeds:
                    cfg = dataclasses.replace(resolved, seed=int(seed))
                    name, group = naming.run_name(cfg, variant), naming.run_group(cfg, table, variant)
                    managed = [*chosen, f"seed={seed}", f"run.out_dir={out_dir}",
                               f"run.name={name}", f"run.wandb_group={group}",
                               f"run.wandb={wandb}", "run.progress=false"]
                    runs.append(Run(table=table, dataset=dataset, model=model, variant=variant, seed=int(seed),
                                    entry_point=entry, config=config,
                                    overrides=tuple(variant_overrides + managed + list(overrides)),
                                    out_dir=out_dir, name=name, group=group))
    return runs


# ------------------------------------------------------------ studies
# Studies beyond the paper's tables: run lists built like a table's and launched by the same
# launchers (`python -m decision_mamba.sweep memory`), aggregated with
# `python -m decision_mamba.aggregate RUNS --study memory`. Their runs' wandb groups start with
# the study's name instead of table<N>: memory/<dataset>/<model>[-<variant>]/<protocol>.
#
# memory (docs/memory.md): T-Maze success against the corridor length L, each model trained
# on whole episodes (context K = L + 2) and evaluated with its recurrent step; Hopper-P
# (positions only) DMamba vs DT at K = 20 (DT's windows) and on whole episodes.
MEMORY_LENGTHS = (10, 30, 100, 300, 1000)
MEMORY_SEEDS = (12, 23, 34)
TMAZE_STUDY_CONFIG = "configs/memory/tmaze-study.yaml"
TMAZE_STUDY_DATA_DIR = "data/generated/memory-study"
# The study's T-Maze data, the same shares at every length. No random moves: the time limit
# (L + 2) leaves one step of slack, so any fixed share of random moves would leave the long
# corridors' data without a single choice at the junction. One choice in ten is wrong, so the
# data holds both returns and the cue predicts the choice (docs/memory.md, "The design": with
# half the choices wrong, only cue and return-to-go together predict it, and no model learned
# that at the cpu budget).
TMAZE_STUDY_SHARES = {"episodes": 1000, "random_move": 0.0, "wrong_choice": 0.1, "seed": 0}
# Whole episodes per training batch, the same at every length: learning the cue is counted in
# updates, and too few episodes per update did not learn it at all (docs/memory.md, "The design").
TMAZE_STUDY_BATCH = 16
HOPPER_P_CONFIGS = {"k20": "configs/memory/hopper-P-medium.yaml",  # DT's random K = 20 windows
                    "episode": "configs/memory/hopper-P-medium-episode.yaml"}  # K = 1000 from each episode's start


@dataclass(frozen=True)
class StudyRow:
    """One dataset of a study, with its models and variants."""

    dataset: str  # tmaze-L10 | hopper-P-medium
    models: tuple[str, ...]
    variants: tuple[str, ...] = ("",)


STUDIES: dict[str, tuple[StudyRow, ...]] = {
    "memory": (*(StudyRow(f"tmaze-L{length}", ("dmamba", "dt", "dc", "ds4")) for length in MEMORY_LENGTHS),
               StudyRow("hopper-P-medium", ("dmamba", "dt"), tuple(HOPPER_P_CONFIGS))),
}
STUDY_SEEDS = {"memory": MEMORY_SEEDS}


def tmaze_study_length(dataset: str) -> int | None:
    """tmaze-L300 -> 300; None for a dataset that is not the study's T-Maze."""
    prefix = "tmaze-L"
    return int(dataset.removeprefix(prefix)) if dataset.startswith(prefix) else None


def tmaze_study_file(length: int) -> str:
    return f"{TMAZE_STUDY_DATA_DIR}/tmaze-L{length}.hdf5"


@functools.cache  # builds a small mixer: once per name
def has_recurrent_step(mixer: str) -> bool:
    """Whether the mixer has init_state and step (mixers.py), so eval.mode=recurrent can run it."""
    from decision_mamba.config import ModelConfig
    from decision_mamba.mixers import build_mixer

    module = build_mixer(ModelConfig(mixer=mixer, d_model=8, n_head=1))
    return hasattr(module, "init_state") and hasattr(module, "step")


def _study_row_settings(row: StudyRow, variant: str, mixer: str) -> tuple[str, list[str]]:
    """The config file and the overrides that make a run of `row` (before the sweep's own keys)."""
    length = tmaze_study_length(row.dataset)
    if length is not None:
        episode = length + 2  # the time limit: the context covers the whole episode
        return TMAZE_STUDY_CONFIG, [
            f"dataset=tmaze:{tmaze_study_file(length)}", f"model.max_ep_len={episode}",
            f"train.context_len={episode}", f"eval.max_ep_len={episode}", f"train.batch_size={TMAZE_STUDY_BATCH}",
            "train.window_start=episode",
            # a mixer without a step is evaluated on its window, which covers the episode too
            f"eval.mode={'recurrent' if has_recurrent_step(mixer) else 'window'}"]
    config = HOPPER_P_CONFIGS[variant]
    if variant == "episode":
        return config, [f"eval.mode={'recurrent' if has_recurrent_step(mixer) else 'window'}"]
    return config, []


def study_runs(study: str, *, out_dir: str | None = None, datasets: list[str] | None = None,
               models: list[str] | None = None, variants: list[str] | None = None,
               seeds: list[int] | None = None, overrides: list[str] | tuple[str, ...] = (),
               wandb: str = "disabled", protocol: str = "clean") -> list[Run]:
    """Every run of a study (its rows x models x variants x seeds), filtered; `overrides` win
    over the study's per-row settings (a budget's batch size too)."""
    if study not in STUDIES:
        raise SweepError(f"no study {study!r}; the studies are {', '.join(STUDIES)}")
    rows = STUDIES[study]
    if wandb not in ("disabled", "offline", "online"):
        raise SweepError(f"--wandb must be disabled, offline or online, got {wandb!r}")
    if protocol not in PROTOCOLS:
        raise SweepError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    check_overrides(list(overrides), MANAGED_KEYS, f"the {study} study")
    for kind, requested, available in (
            ("dataset", datasets, [r.dataset for r in rows]),
            ("model", models, list(dict.fromkeys(m for r in rows for m in r.models))),
            ("variant", variants, list(dict.fromkeys(v for r in rows for v in r.variants if v)))):
        unknown = [x for x in requested or [] if x not in available]
        if unknown:
            raise SweepError(f"the {study} study has no {kind} {unknown}; choose from {available}")
    out_dir = out_dir or f"runs/{study}-study"
    runs = []
    for row in rows:
        if datasets and row.dataset not in datasets:
            continue
        for model in row.models:
            if models and model not in models:
                continue
            mixer = naming.mixer_of_model(model)
            for variant in row.variants:
                if variants and variant and variant not in variants:
                    continue
                config, row_overrides = _study_row_settings(row, variant, mixer)
                chosen = [f"model.mixer={mixer}", f"protocol={protocol}"]
                resolved = load_config(GymConfig, REPO_ROOT / config, row_overrides + chosen + list(overrides))
                for seed in seeds or STUDY_SEEDS[study]:
                    cfg = dataclasses.replace(resolved, seed=int(seed))
                    name = naming.run_name(cfg, variant)
                    group = f"{study}/{naming.dataset_name(cfg)}/{naming.model_label(cfg, variant)}/" \
                            f"{protocol_label(cfg)}"
                    managed = [*chosen, f"seed={seed}", f"run.out_dir={out_dir}", f"run.name={name}",
                               f"run.wandb_group={group}", f"run.wandb={wandb}", "run.progress=false"]
                    runs.append(Run(table=0, dataset=row.dataset, model=model, variant=variant, seed=int(seed),
                                    entry_point=GYM_ENTRY, config=config,
                                    overrides=tuple(row_overrides + managed + list(overrides)),
                                    out_dir=out_dir, name=name, group=group))
    return runs


def study_data(runs: list[Run]) -> dict[Path, int]:
    """The study's own T-Maze files the runs read, with their corridor lengths (a file passed
    with dataset=... after -- is the user's, not the study's)."""
    found: dict[Path, int] = {}
    for run in runs:
        length = tmaze_study_length(run.dataset)
        if length is not None and run.resolved_config().dataset == f"tmaze:{tmaze_study_file(length)}":
            found[Path(tmaze_study_file(length))] = length
    return found


def tmaze_study_command(path: Path, length: int, python: str = "python") -> list[str]:
    """The command that makes the study's T-Maze file of this length (TMAZE_STUDY_SHARES)."""
    return [python, _shown(REPO_ROOT / "tools" / "make_tmaze_data.py"), "--length", str(length), "--out", str(path),
            *(f"--{key.replace('_', '-')}={value}" for key, value in TMAZE_STUDY_SHARES.items())]


def make_study_data(runs: list[Run], python: str = sys.executable) -> None:
    """Make the study's T-Maze files that are not here (written under a hidden name, then
    renamed: a killed maker leaves nothing half-made); refuse one made with other shares."""
    import h5py

    for path, length in study_data(runs).items():
        if path.is_file():
            wanted = {"corridor_length": length, "episodes": TMAZE_STUDY_SHARES["episodes"],
                      "random_move_prob": TMAZE_STUDY_SHARES["random_move"],
                      "wrong_choice_prob": TMAZE_STUDY_SHARES["wrong_choice"], "seed": TMAZE_STUDY_SHARES["seed"]}
            with h5py.File(path, "r") as f:
                found = {key: f.attrs.get(key) for key in wanted}
            if any(found[key] != value for key, value in wanted.items()):
                shown = {key: value.item() if hasattr(value, "item") else value for key, value in found.items()}
                raise SweepError(f"{path} was made with {shown}, not the study's {wanted}; delete it and the "
                                 f"sweep remakes it, or pass dataset=tmaze:<file> after -- to train on it on purpose")
            continue
        partial = path.with_name(f".making-{path.name}")
        print(f"# making the study's T-Maze data: {shlex.join(tmaze_study_command(path, length))}", flush=True)
        subprocess.run(tmaze_study_command(partial, length, python), check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))})
        os.replace(partial, path)

# ------------------------------------------------------- run directory states
def run_status(run: Run, cwd: str | Path = ".") -> str:
    """done (summary.json written) | resume (started, not finished) | new."""
    run_dir = Path(cwd) / run.run_dir
    if (run_dir / "summary.json").is_file():
        return "done"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "resume"
    return "new"


def settings_differences(run: Run) -> list[str]:
    """Where the config.yaml in the run directory differs from what this sweep would run."""
    path = run.run_dir / "config.yaml"
    if not path.is_file():
        return []
    wanted = flatten(OmegaConf.to_container(OmegaConf.structured(run.resolved_config())))
    found = flatten(OmegaConf.to_container(OmegaConf.load(path)))
    return [f"{key}: {found.get(key)!r} in the run directory, {wanted.get(key)!r} now"
            for key in sorted(set(wanted) | set(found))
            if key not in IGNORED_WHEN_COMPARING and wanted.get(key) != found.get(key)]


def plan(runs: list[Run]) -> dict[str, list[Run]]:
    """Split runs by state; refuse to skip or resume a run directory made with other settings."""
    states: dict[str, list[Run]] = {"done": [], "resume": [], "new": []}
    conflicts = []
    for run in runs:
        state = run_status(run)
        differences = settings_differences(run) if state != "new" else []
        if differences:
            conflicts.append(f"{run.run_dir} ({'; '.join(differences)})")
        states[state].append(run)
    if conflicts:
        raise SweepError("these run directories were made with other settings, so they can be neither "
                         "skipped nor resumed: " + ", ".join(conflicts)
                         + "; delete them, or pass --out-dir to write this sweep elsewhere")
    return states


def _without_memory_prefix(dataset: str) -> str:
    """tmaze:<file> / positions:<name or file> -> what the memory suites read (suites/memory.py)."""
    prefix, sep, rest = dataset.partition(":")
    return rest if sep and prefix in ("tmaze", "positions") else dataset


def missing_data(runs: list[Run]) -> str | None:
    """One line naming the data files the runs need that are not here and the commands that
    download them; None when everything is here. Looks at paths only (reading is the run's)."""
    from decision_mamba.data.atari_replay import replay_dir
    from decision_mamba.data.d4rl import d4rl_download_command, d4rl_source_files, is_file_dataset

    missing: dict[str, str] = {}  # file or folder -> how to get it
    for run in runs:
        cfg = run.resolved_config()
        if isinstance(cfg, AtariConfig):
            folder = replay_dir(cfg.data_dir, cfg.game)
            if not (folder.is_dir() and any(folder.iterdir())):
                missing[str(folder)] = f"python -m decision_mamba.data.download dqn-replay {cfg.game} " \
                                       f"--num-buffers {cfg.num_buffers} --data-dir {cfg.data_dir}"
        elif str(cfg.dataset).startswith("minari:"):
            continue  # an id is found (or downloaded) by minari itself
        elif is_file_dataset(dataset := _without_memory_prefix(str(cfg.dataset))):
            if not Path(dataset).is_file():
                missing[dataset] = ("python tools/make_tmaze_data.py --length <L> --out " + dataset
                                    if str(cfg.dataset).startswith("tmaze:") else "the file given as dataset=...")
        else:
            name = f"{cfg.env}-{dataset}-v2"
            for file_name in d4rl_source_files(name):
                if not (Path(cfg.data_dir) / file_name).is_file():
                    missing[str(Path(cfg.data_dir) / file_name)] = d4rl_download_command(name, cfg.data_dir)
    if not missing:
        return None
    files = list(missing)
    commands = list(dict.fromkeys(missing.values()))
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"{len(files)} data file(s) or folder(s) the runs read are missing: {shown}; get them with: "
            + " && ".join(commands) + " (scripts/README.md says where each table's data comes from)")


# --------------------------------------------------------------------- jobs
class Children:
    """The run processes this sweep has started and that still run, so that an interrupted
    sweep can stop them (SIGTERM, then SIGKILL after `grace_s`) and start no more."""

    def __init__(self, grace_s: float = 60.0):
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopping = False
        self.grace_s = grace_s

    def run(self, command: list[str], **popen: Any) -> None:
        """subprocess.run(command, check=True, **popen), unless the sweep is stopping."""
        with self.lock:
            if self.stopping:
                raise SweepStopped(f"not started: the sweep is stopping ({shlex.join(command)})")
            process = subprocess.Popen(command, **popen)
            self.running.add(process)
        try:
            status = process.wait()
        finally:
            with self.lock:
                self.running.discard(process)
        if status != 0:
            raise subprocess.CalledProcessError(status, command)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stop every running child and wait for it; returns how many there were. Ctrl-C in a
        terminal reaches the children too: they get a few seconds to stop on their own
        before a SIGTERM (a second SIGINT would cut their clean-up short)."""
        with self.lock:
            self.stopping = True
            processes = list(self.running)
        if signum == signal.SIGINT:
            deadline = time.monotonic() + 5.0
            for process in processes:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for process in processes:
            if process.poll() is None:
                process.terminate()  # each ends in one line naming --resume (errors.cli_main)
        deadline = time.monotonic() + self.grace_s
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return len(processes)


class SweepStopped(RuntimeError):
    """A run not started because the sweep was interrupted."""


CHILDREN = Children()


@dataclass
class RunJob(submitit.helpers.Checkpointable):
    """One run as a picklable callable (for submitit) that is also called directly by the local launcher.

    It decides at start whether to skip or resume, so a job requeued after a time-out, or a
    sweep re-launched after a crash, continues from the run's last checkpoint.
    """

    run: Run
    python: str = sys.executable
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    log_path: str | None = None  # None: inherit stdout/stderr (submitit captures them)

    def __call__(self) -> str:
        state = run_status(self.run, self.cwd)
        summary = Path(self.cwd) / self.run.run_dir / "summary.json"
        if state == "done":
            return str(summary)
        command = self.run.command(self.python, resume=state == "resume")
        # Unbuffered: a run's log file shows its progress as it goes, not only once it exits.
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.log_path is None:
            CHILDREN.run(command, cwd=self.cwd, env=environment)
        else:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as log:
                log.write(f"$ {shlex.join(command)}\n")
                log.flush()
                CHILDREN.run(command, cwd=self.cwd, env=environment, stdout=log, stderr=subprocess.STDOUT)
        if not summary.is_file():
            raise RuntimeError(f"{shlex.join(command)} exited without writing {summary}")
        return str(summary)


def visible_gpus() -> list[int]:
    """The GPUs torch sees (none on a CPU machine)."""
    import torch

    return list(range(torch.cuda.device_count()))


def _slot_env(slot: int, slots: int, gpus: list[int]) -> dict[str, str]:
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": str(gpus[slot % len(gpus)])}
    # On the CPU, share the cores between slots rather than oversubscribing them: torch
    # reads OMP_NUM_THREADS, numba's scan kernels NUMBA_NUM_THREADS. A user's setting wins.
    per_slot = str(max(1, (os.cpu_count() or 1) // slots))
    return {name: per_slot for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS") if name not in os.environ}


def failure_line(error: BaseException, log_path: Path | None) -> str:
    """What made a run fail, in one line: the `error: ...` (or `interrupted ...`) line the
    run printed into its log, else the log's last line (a crash's exception), else `error`."""
    lines = []
    if log_path is not None and log_path.is_file():
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error: ", "interrupted (")):
            return line
    if lines and not lines[-1].startswith("$ "):
        return lines[-1][:300]
    return f"{type(error).__name__}: {error}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def launch_local(runs: list[Run], slots: int, gpus: list[int], log_dir: Path) -> dict[str, str | None]:
    """Run `slots` runs at a time; return {run name: None if it succeeded, else the error}.

    Prints `[k/N]` as each run starts and ends, with its time and the sweep's. Interrupted
    (Ctrl-C, SIGTERM), it stops the running runs, starts no other, and re-raises."""
    CHILDREN.stopping = False  # a sweep earlier in this process may have been stopped
    free_slots: queue.Queue[int] = queue.Queue()
    for slot in range(slots):
        free_slots.put(slot)
    total, started_at = len(runs), time.monotonic()
    counter, began = {"started": 0}, {}
    counter_lock = threading.Lock()

    def work(run: Run) -> str:
        slot = free_slots.get()  # never blocks: the pool has exactly `slots` workers
        try:
            with counter_lock:
                counter["started"] += 1
                k = counter["started"]
                began[run.name] = time.monotonic()
            print(f"[{k}/{total}] start {run.name} (slot {slot}; sweep {_duration(time.monotonic() - started_at)} "
                  f"so far)", flush=True)
            job = RunJob(run, env=_slot_env(slot, slots, gpus), log_path=str(log_dir / f"{run.name}.log"))
            return job()
        finally:
            free_slots.put(slot)

    outcome: dict[str, str | None] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=slots)
    try:
        futures = {pool.submit(work, run): run for run in runs}
        for future in concurrent.futures.as_completed(futures):
            run = futures[future]
            error = future.exception()
            log = log_dir / f"{run.name}.log"
            outcome[run.name] = None if error is None else f"{failure_line(error, log)} (log: {log})"
            now = time.monotonic()
            took = f"after {_duration(now - began[run.name])}; " if run.name in began else ""
            print(f"[{len(outcome)}/{total}] {'done' if error is None else 'FAILED'} {run.name} ({took}sweep "
                  f"{_duration(now - started_at)} so far)" + ("" if error is None else f": {outcome[run.name]}"),
                  flush=True)
    except KeyboardInterrupt as interrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        stopped = CHILDREN.stop(getattr(interrupt, "signum", signal.SIGTERM))
        raise interrupted_again(interrupt, f"the sweep stopped {stopped} running run(s) and started no other; run "
                                           f"the same command again to continue (finished runs are skipped, "
                                           f"stopped ones resume from their checkpoints)") from None
    finally:
        pool.shutdown(wait=True)
    return outcome


def launch_submitit_local(runs: list[Run], slots: int, gpus: list[int], folder: Path,
                          timeout_min: int, poll_s: float = 1.0) -> dict[str, str | None]:
    """The SLURM code path on this machine: submitit's LocalExecutor, `slots` jobs at a time."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min)
    running: dict[int, tuple[Any, Run]] = {}
    outcome: dict[str, str | None] = {}

    def collect(slot: int) -> None:
        job, run = running.pop(slot)
        try:
            job.result()
            outcome[run.name] = None
            print(f"done: {run.name}", flush=True)
        except Exception as error:  # submitit re-raises the job's error with its log
            outcome[run.name] = f"{type(error).__name__} (logs: {job.paths.stdout}, {job.paths.stderr})"
            print(f"FAILED: {run.name}: {outcome[run.name]}", flush=True)

    try:
        for run in runs:
            while len(running) >= slots:
                finished = [slot for slot, (job, _) in running.items() if job.done()]
                for slot in finished:
                    collect(slot)
                if not finished:
                    time.sleep(poll_s)
            slot = min(set(range(slots)) - set(running))
            if gpus:
                executor.update_parameters(gpus_per_node=1, visible_gpus=(gpus[slot % len(gpus)],))
            job = executor.submit(RunJob(run, env=_slot_env(slot, slots, gpus)))
            print(f"[{len(outcome) + len(running) + 1}/{len(runs)}] [slot {slot}] submitted {run.name} "
                  f"(submitit job {job.job_id})", flush=True)
            running[slot] = (job, run)
        for slot in list(running):
            collect(slot)
    except KeyboardInterrupt as interrupt:
        for job, _ in running.values():
            job.cancel(check=False)
        raise interrupted_again(interrupt, f"the sweep cancelled {len(running)} running submitit job(s); run the "
                                           f"same command again to continue") from None
    return outcome


def launch_slurm(runs: list[Run], folder: Path, *, table: int | str, partition: str | None, gpus_per_node: int,
                 cpus_per_task: int, mem_gb: float | None, timeout_min: int, array_parallelism: int,
                 account: str | None = None) -> list[str]:
    """Submit the runs as one job array; return the job ids (does not wait)."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    parameters: dict[str, Any] = {
        "name": f"dmamba-{table}" if isinstance(table, str) else f"dmamba-table{table}", "timeout_min": timeout_min, "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task, "slurm_array_parallelism": array_parallelism,
    }
    if partition:
        parameters["slurm_partition"] = partition
    if mem_gb:
        parameters["mem_gb"] = mem_gb
    if account:
        parameters["slurm_account"] = account
    executor.update_parameters(**parameters)
    jobs = []
    try:
        with executor.batch():  # everything submitted inside the block becomes one array
            for run in runs:
                jobs.append(executor.submit(RunJob(run)))
    except Exception as error:  # sbatch refused the array (partition, account, limits, ...)
        raise SweepError(f"SLURM submission failed, nothing was submitted: {type(error).__name__}: {error}; "
                         "check --partition / --account / --time and the sbatch output above") from error
    return [job.job_id for job in jobs]


# ---------------------------------------------------------------------- CLI
def _record_sweep(out_dir: Path, argv: list[str], launcher: str, launched: list[Run], skipped: list[Run],
                  **extra: Any) -> None:
    """Append this invocation to <out-dir>/sweeps.jsonl (the aggregator quotes it).

    Called once the runs are started (local launchers) or submitted (SLURM), never before:
    a submission that fails records nothing as launched.
    """
    path = out_dir / "sweeps.jsonl"
    previous = path.read_text() if path.is_file() else ""
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": shlex.join(["python", "-m", "decision_mamba.sweep", *argv]),
              "launcher": launcher, "launched": [r.name for r in launched], "skipped": [r.name for r in skipped],
              **extra}
    write_text_atomic(path, previous + json.dumps(record) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m decision_mamba.sweep", description=__doc__.splitlines()[0],
        epilog="key=value overrides for every run go after --, e.g. -- train.num_iterations=1 data_dir=data")
    parser.add_argument("table", choices=[*(f"table{n}" for n in TABLES), *STUDIES],
                        help="a paper table, or a study beyond them (memory: docs/memory.md)")
    parser.add_argument("--out-dir", help="where the run directories go (default runs/table<N>)")
    parser.add_argument("--datasets", nargs="+", help="gym datasets (hopper-medium ...) or Atari games (breakout ...)")
    parser.add_argument("--models", nargs="+", help=", ".join(short for short, _ in naming.MODEL_NAMES.values()))
    parser.add_argument("--variants", nargs="+", help="table 3: default rc rc-2l; table 4: k10 k30 k40 k60")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the paper's seeds")
    parser.add_argument("--wandb", default="disabled", choices=["disabled", "offline", "online"])
    parser.add_argument("--protocol", choices=list(PROTOCOLS),
                        help="release: every switch as in the authors' code behind the paper's numbers "
                             "(the tables' default); clean: this project's corrected behaviour "
                             "(decision_mamba/protocols.py; the studies' default)")
    parser.add_argument("--suite", default="d4rl", choices=list(SUITES),
                        help="table1 only: minari runs Table 1 on Minari's mujoco/*-v0 datasets "
                             "(with --protocol clean; scripts/table1_minari.sh)")
    parser.add_argument("--dry-run", action="store_true", help="print one command line per run, launch nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="the table's protocol at a tiny budget on generated / recorded data, into "
                             "runs/smoke/table<N> (never the real table's folder); scripts/README.md says more")
    parser.add_argument("--launcher", default="local", choices=["local", "submitit-local", "slurm"])
    parser.add_argument("--slots", type=int, help="local launchers: runs at a time (default: #GPUs, or 1)")
    parser.add_argument("--time", type=int, default=3 * 24 * 60, help="time limit per run, minutes")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--gpus-per-node", type=int, default=1)
    slurm.add_argument("--cpus-per-task", type=int, default=4)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--array-parallelism", type=int, default=16, help="array tasks running at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is overrides; split by hand so nargs="+" flags cannot swallow them.
    own, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    study = args.table if args.table in STUDIES else None
    table = 0 if study else int(args.table.removeprefix("table"))
    what = f"the {study} study" if study else f"table {table}"
    # SweepError and ConfigError are UserErrors: cli_main prints them in one line, status 2.
    if study:
        if args.smoke or args.suite != "d4rl":
            raise SweepError(f"--smoke and --suite are the tables'; the {study} study's smoke test is "
                             f"BUDGET=smoke scripts/{study}_study.sh")
        runs = study_runs(study, out_dir=args.out_dir, datasets=args.datasets, models=args.models,
                          variants=args.variants, seeds=args.seeds, overrides=overrides, wandb=args.wandb,
                          protocol=args.protocol or "clean")
    else:
        runs = table_runs(table, out_dir=args.out_dir, datasets=args.datasets, models=args.models,
                          variants=args.variants, seeds=args.seeds, overrides=overrides, wandb=args.wandb,
                          protocol=args.protocol or DEFAULT_PROTOCOL, smoke=args.smoke, suite=args.suite)
    for run in runs[:1]:
        run.resolved_config()  # a misspelt override fails here, before anything starts
    if args.slots is not None and args.slots < 1:
        raise SweepError(f"--slots must be at least 1 (runs at a time), got {args.slots}")
    if args.smoke and not args.dry_run:
        record_smoke_data(runs)
    if study and not args.dry_run:
        make_study_data(runs)
    states = plan(runs)
    todo = states["resume"] + states["new"]
    made_here = study_data(todo) if study else {}  # made above, or by the launch a dry run shows
    absent = missing_data([r for r in todo if not (study and Path(str(r.resolved_config().dataset)
                                                                     .removeprefix("tmaze:")) in made_here)])
    if absent and not args.dry_run and args.launcher != "slurm":  # a cluster's nodes may see other files
        raise SweepError(f"nothing launched: {absent}")
    out_dir = Path(runs[0].out_dir) if runs else Path(args.out_dir or f"runs/table{table}")
    print(f"# {what}: {len(runs)} runs ({len(states['done'])} done and skipped, "
          f"{len(states['resume'])} to resume, {len(states['new'])} new)", flush=True)

    if args.dry_run:
        # `... --dry-run | head` should stop quietly, as other command-line tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        for path, length in made_here.items():
            if not path.is_file():
                print(f"# makes first: {shlex.join(tmaze_study_command(path, length))}")
        for run in states["done"]:
            print(f"# done, skipped: {run.run_dir}")
        for run in todo:
            print(shlex.join(run.command(_shown(Path(sys.executable)), resume=run in states["resume"])))
        if absent:
            print(f"warning: these runs would not start here: {absent}", file=sys.stderr)
        return 0
    if not todo:
        return 0
    recorded_argv = own + (["--", *overrides] if overrides else [])

    if args.launcher == "slurm":
        if absent:
            print(f"warning: not on this machine, so the cluster's nodes must see them: {absent}", file=sys.stderr)
        ids = launch_slurm(todo, out_dir / "submitit", table=study or table, partition=args.partition,
                           gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                           timeout_min=args.time, array_parallelism=args.array_parallelism, account=args.account)
        _record_sweep(out_dir, recorded_argv, args.launcher, todo, states["done"], slurm_job_ids=ids)
        print(f"submitted {len(ids)} runs as SLURM job array {ids[0].split('_')[0]}; logs in {out_dir / 'submitit'}; "
              f"re-run this command to resubmit unfinished runs")
        return 0
    gpus = visible_gpus()
    slots = args.slots or max(1, len(gpus))
    _record_sweep(out_dir, recorded_argv, args.launcher, todo, states["done"])
    if args.launcher == "local":
        outcome = launch_local(todo, slots, gpus, out_dir / "logs")
    else:
        outcome = launch_submitit_local(todo, slots, gpus, out_dir / "submitit", timeout_min=args.time)
    failed = [name for name, error in outcome.items() if error]
    print(f"# {len(outcome) - len(failed)} of {len(outcome)} runs finished"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
