"""The paper's Tables 1-4 from run directories, beside the paper's numbers, plus learning curves.

    python -m decision_mamba.aggregate runs/table1 --table 1 --out results/table1

reads every run directory under runs/table1 (config.yaml + summary.json + metrics.jsonl)
and writes
    results/table1.md            the table (Markdown), how it was made, incomplete runs
    results/table1.csv           the same numbers at full precision: one row per cell (empty
                                 `seed`), each followed by one row per seed of the cell
    results/table1-<dataset>.png learning curves: normalized score vs training step and vs
    results/table1-<dataset>.svg the run's wall-clock, one line per model (mean over seeds,
                                 shaded ± std), the paper's number dotted with its ± std band
    results/table1-stats.csv     IQM and mean over datasets and seeds per model and protocol,
                                 and P(DMamba > each baseline), with 95% stratified-bootstrap
                                 intervals (decision_mamba/stats.py), for last and best
    results/table1-{intervals,profiles,improvement}.{png,svg}   their plots, and the
                                 performance profiles
    results/table1-runs.csv      the run index: one row per run directory (seed, protocol,
                                 data fingerprint, config digest, commit, wall time, scores, wandb URL)

The Markdown also states the protocol (episodes per target, the targets, how the reported
number is picked, the data and the hardware) and the cost: the runs' wall time, summed.

A cell is a dataset (or game), a model (Table 3: a variant; Table 4: a context length
K) and a protocol (decision_mamba/protocols.py: release, clean, or one of them with named
switches changed); runs of different protocols are never averaged together. It shows mean ± std over its seeds of both the **last** evaluation and the **best**
evaluation seen during training (the paper's release reports the best one), with the
number of seeds it has ("1 seed" rather than a std of 0). A run's score is its summary.json "score": the best over the
return-to-go targets of the mean normalized score of that evaluation. Runs that have not
finished are listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from decision_mamba import naming, stats  # noqa: E402
from decision_mamba.atomic import atomic_path, write_text_atomic  # noqa: E402
from decision_mamba.config import AtariConfig, GymConfig  # noqa: E402
from decision_mamba.data.atari_replay import ReplayFileError, read_replay_buffer  # noqa: E402
from decision_mamba.data.d4rl import is_file_dataset  # noqa: E402
from decision_mamba.data.download_atari import NUM_BUFFERS  # noqa: E402
from decision_mamba.errors import UserError, cli_main  # noqa: E402
from decision_mamba.protocols import protocol_label  # noqa: E402
from decision_mamba.checkpoint import IDENTITY_FILE  # noqa: E402
from decision_mamba.runlog import RUN_INFO_FILE  # noqa: E402
from decision_mamba.scores import run_score  # noqa: E402
from decision_mamba.sweep import MINARI_DATASETS, REPO_ROOT, SUITES, TABLES  # noqa: E402

# --------------------------------------------------------------------------
# The paper's numbers (its Tables 1-4; docs/protocol.md), keyed by table, then (dataset, column):
# column = model for Tables 1 and 2, variant for Table 3, "k<K>" for Table 4.
# (mean, std); std None where the paper quotes a bare mean. Table 1's DT, DS4 and DC
# numbers are quoted by the paper from the Decision ConvFormer paper.
PAPER_NUMBERS: dict[int, dict[tuple[str, str], tuple[float, float | None]]] = {
    1: {
        ("halfcheetah-medium", "dt"): (42.6, None), ("halfcheetah-medium", "ds4"): (42.5, None),
        ("halfcheetah-medium", "dc"): (43.0, None), ("halfcheetah-medium", "dmamba"): (42.8, 0.08),
        ("hopper-medium", "dt"): (68.4, None), ("hopper-medium", "ds4"): (54.2, None),
        ("hopper-medium", "dc"): (92.5, None), ("hopper-medium", "dmamba"): (83.5, 12.5),
        ("walker2d-medium", "dt"): (75.5, None), ("walker2d-medium", "ds4"): (78.0, None),
        ("walker2d-medium", "dc"): (79.2, None), ("walker2d-medium", "dmamba"): (78.2, 0.6),
        ("halfcheetah-medium-replay", "dt"): (37.0, None), ("halfcheetah-medium-replay", "ds4"): (15.2, None),
        ("halfcheetah-medium-replay", "dc"): (41.3, None), ("halfcheetah-medium-replay", "dmamba"): (39.6, 0.1),
        ("hopper-medium-replay", "dt"): (85.6, None), ("hopper-medium-replay", "ds4"): (49.6, None),
        ("hopper-medium-replay", "dc"): (94.2, None), ("hopper-medium-replay", "dmamba"): (82.6, 4.6),
        ("walker2d-medium-replay", "dt"): (71.2, None), ("walker2d-medium-replay", "ds4"): (69.0, None),
        ("walker2d-medium-replay", "dc"): (76.6, None), ("walker2d-medium-replay", "dmamba"): (70.9, 4.3),
        ("halfcheetah-medium-expert", "dt"): (88.8, None), ("halfcheetah-medium-expert", "ds4"): (92.7, None),
        ("halfcheetah-medium-expert", "dc"): (93.0, None), ("halfcheetah-medium-expert", "dmamba"): (91.9, 0.6),
        ("hopper-medium-expert", "dt"): (109.6, None), ("hopper-medium-expert", "ds4"): (110.8, None),
        ("hopper-medium-expert", "dc"): (110.4, None), ("hopper-medium-expert", "dmamba"): (111.1, 0.3),
        ("walker2d-medium-expert", "dt"): (109.3, None), ("walker2d-medium-expert", "ds4"): (105.7, None),
        ("walker2d-medium-expert", "dc"): (109.6, None), ("walker2d-medium-expert", "dmamba"): (108.3, 0.5),
    },
    2: {
        ("breakout", "dt"): (242.4, 31.8), ("breakout", "dc"): (352.7, 44.7), ("breakout", "dmamba"): (239.2, 26.4),
        ("qbert", "dt"): (28.8, 10.3), ("qbert", "dc"): (67.0, 14.7), ("qbert", "dmamba"): (42.3, 8.5),
        ("pong", "dt"): (105.6, 2.9), ("pong", "dc"): (106.5, 2.0), ("pong", "dmamba"): (63.2, 102.1),
        ("seaquest", "dt"): (2.7, 0.7), ("seaquest", "dc"): (2.6, 0.3), ("seaquest", "dmamba"): (2.2, 0.03),
    },
    3: {
        ("halfcheetah-medium", "default"): (42.8, 0.08), ("hopper-medium", "default"): (83.5, 12.5),
        ("walker2d-medium", "default"): (78.2, 0.6),
        ("halfcheetah-medium", "rc"): (42.9, 0.01), ("hopper-medium", "rc"): (82.9, 5.8),
        ("walker2d-medium", "rc"): (78.0, 2.0),
        ("halfcheetah-medium", "rc-2l"): (42.8, 0.06), ("hopper-medium", "rc-2l"): (85.2, 14.9),
        ("walker2d-medium", "rc-2l"): (77.0, 1.1),
    },
    4: {
        ("breakout", "k10"): (231.6, 16.2), ("qbert", "k10"): (56.4, 16.6),
        ("breakout", "k30"): (239.2, 26.4), ("qbert", "k30"): (42.3, 8.5),
        ("breakout", "k40"): (295.9, 34.7), ("qbert", "k40"): (28.1, 4.5),
        ("breakout", "k60"): (271.1, 70.8), ("qbert", "k60"): (15.7, 5.5),
    },
}

# Table 1 on Minari (--suite minari): labelled as such wherever its numbers appear.
MINARI_TITLE = "Table 1 on Minari's MuJoCo datasets: normalized score (not comparable with D4RL's Table 1)"
MINARI_LABEL = "Table 1 on Minari (not comparable with D4RL's)"
MINARI_NOTE = ("**Not comparable with D4RL's Table 1, nor with the paper's numbers.** Minari's "
               "`mujoco/<env>/<level>-v0` datasets are recorded on the gymnasium -v5 environments by other "
               "policies (Minari's 'medium' is near D4RL's expert level), and they carry no reference scores: "
               "scores here are 100 * (return - random) / (expert - random) with this project's pinned -v5 "
               "references (decision_mamba/scores.py, MINARI_REFERENCE_RETURNS: a random policy measured "
               "here, the expert dataset's mean return). No DT or DMamba numbers on these datasets are published.")
TABLE_TITLES = {
    1: "Table 1: D4RL normalized score",
    2: "Table 2: Atari gamer-normalized score",
    3: "Table 3: ablation on the medium datasets",
    4: "Table 4: context length K on Atari",
}
# What the column that varies within a dataset is called, per table.
COLUMN_HEADERS = {1: "Model", 2: "Model", 3: "Variant", 4: "K"}
VARIANT_NAMES = {"default": "default", "rc": "RC", "rc-2l": "RC & 2L",
                 "k10": "K=10", "k30": "K=30", "k40": "K=40", "k60": "K=60"}


def table_title(table: int) -> str:
    """TABLE_TITLES[table], with the model's name where the table has one model (Tables 3 and 4)."""
    models = TABLES[table].models
    return TABLE_TITLES[table] + (f" ({display_name(models[0])})" if len(models) == 1 else "")


def display_name(column: str) -> str:
    """A column as the paper prints it: a model's paper name (naming.MODEL_NAMES) or a variant's;
    a variant of a model beyond the paper (Tables 3 and 4: dmamba2-rc) as both, "DMamba-2 RC"."""
    mixer = naming.mixer_of_model(column)
    if mixer is not None:
        return naming.paper_name(mixer)
    model, _, variant = column.partition("-")  # model names have no "-"; variants may (rc-2l)
    if naming.mixer_of_model(model) is not None and variant in VARIANT_NAMES:
        return f"{naming.paper_name(naming.mixer_of_model(model))} {VARIANT_NAMES[variant]}"
    return VARIANT_NAMES.get(column, column)


def variant_column(table: int, model: str, variant: str) -> str:
    """The column of a Table 3 / 4 run: its variant for the paper's model (rc, k30), the model
    and its variant for a model beyond the paper (dmamba2-rc), so the two never share a cell."""
    return variant if model in TABLES[table].models else f"{model}-{variant}"


def column_order(table: int) -> list[str]:
    """The table's columns in order: the paper's, then those of the models beyond it."""
    spec = TABLES[table]
    if table in (1, 2):
        return list(spec.all_models)
    return [variant_column(table, model, variant) for model in spec.all_models for variant in spec.variants]


# table<N>/<dataset>/<model>[-<variant>]/<protocol> (naming.run_group)
GROUP_PATTERN = re.compile(r"^table(?P<table>\d+)/(?P<dataset>[^/]+)/(?P<label>[^/]+)/(?P<protocol>[^/]+)$")
PROTOCOL_ORDER = ("release", "clean")  # then any protocol with switches changed, by name
STD_DDOF = 0  # numpy's np.std, as DT-style codebases print it


class AggregateError(UserError, ValueError):
    """Input the aggregator cannot make a table from."""


@dataclass
class RunRecord:
    """What one run directory holds, reduced to what the tables need."""

    run_dir: Path
    table: int | None  # from run.wandb_group (set by the sweep); None for hand-made runs
    dataset: str  # hopper-medium, breakout, ...
    column: str  # dmamba / default / rc / k10 ... (the key into PAPER_NUMBERS)
    seed: int
    config: dict
    summary: dict | None  # None until the run has finished
    protocol: str = "clean"  # protocols.protocol_label of the run's config
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, score) per evaluation
    iterations_done: int = 0
    time_curve: list[tuple[float, float]] = field(default_factory=list)  # (wall-clock s, score) per evaluation
    times: dict = field(default_factory=dict)  # metrics.jsonl's "time": mean update_s, sample_s, eval_step_s; elapsed_s
    info: dict = field(default_factory=dict)  # run_info.json (commit, device, ...); {} until the run writes it
    identity: dict = field(default_factory=dict)  # identity.json (data fingerprint, ...); {} until the run writes it
    recorded: bool = False  # an Atari run on data recorded from the emulator, not the DQN-replay

    @property
    def data(self) -> str:
        """Where the run's training data came from: a D4RL / DQN-replay name or a file's name."""
        if "game" in self.config:
            kind = "recorded from the emulator" if self.recorded else "DQN-replay"
            return f"{kind} ({self.config['data_dir']})"
        dataset = str(self.config["dataset"])
        if dataset.startswith("minari:"):
            return dataset
        if is_file_dataset(dataset):
            return Path(dataset).name
        return f"D4RL {self.config['env']}-{dataset}-v2"

    @property
    def complete(self) -> bool:
        return self.summary is not None and self.summary.get("last") is not None

    @property
    def wall_s(self) -> float | None:
        """The run's wall-clock so far: its last metrics record's; None before its first record."""
        return self.times.get("elapsed_s")


# Every buffer of the published DQN-replay is dopamine's full replay memory (add_count at least its
# capacity, 1,000,000 transitions); tools/record_atari.py (make run-atari, the sweep's --smoke)
# writes buffers of a few thousand random-play transitions in the same layout.
DQN_REPLAY_BUFFER_ROWS = 1_000_000
RECORDED_SUFFIX = "-recorded"  # the row of a game's runs on recorded data: breakout-recorded


def _atari_data_recorded(cfg: dict) -> bool:
    """Whether an Atari run trained on data other than the published DQN-replay: a --smoke run
    (always on a recording) or a data folder whose newest buffer is smaller than a published one.
    A folder that is gone counts as the DQN-replay its config names."""
    if cfg["run"]["wandb_project"] == naming.SMOKE_WANDB_PROJECT:
        return True
    data_dir = Path(str(cfg["data_dir"]))
    if not data_dir.is_absolute() and not data_dir.is_dir():
        data_dir = REPO_ROOT / data_dir
    try:
        newest = read_replay_buffer(data_dir, str(cfg["game"]), NUM_BUFFERS - 1, max_rows=1)
    except (ReplayFileError, OSError):
        return False
    return newest.add_count < DQN_REPLAY_BUFFER_ROWS


def _column_from_config(table: int, cfg: dict) -> str:
    """The cell's column for a run directory not made by the sweep."""
    model = naming.model_name(cfg["model"]["mixer"])
    if table == 3:
        if cfg["model"].get("channel_mlp", True):
            return variant_column(table, model, "default")
        # Table 5's gym depth is 3
        return variant_column(table, model, "rc-2l" if cfg["model"]["n_layer"] > 3 else "rc")
    if table == 4:
        return variant_column(table, model, f"k{cfg['train']['context_len']}")
    return model


def _structured(cfg: dict) -> GymConfig | AtariConfig:
    """A config.yaml as its dataclass."""
    schema = AtariConfig if "game" in cfg else GymConfig
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


def _dataset_from_config(cfg: dict) -> str:
    return naming.dataset_name(_structured(cfg))


def _protocol_from_config(cfg: dict) -> str:
    return protocol_label(_structured(cfg))


@dataclass
class MetricsFile:
    curve: list[tuple[int, float]]  # (step, score) per evaluation
    time_curve: list[tuple[float, float]]  # (wall-clock seconds since the start, score) per evaluation
    iterations: int  # the last iteration it records
    times: dict  # mean seconds per update / batch draw / evaluation step, and the last elapsed_s


def _read_metrics(path: Path) -> MetricsFile:
    """The evaluations of metrics.jsonl against steps and against wall-clock time (each record's
    "time", runlog.iteration_times), and its mean timings. No file: a run that has logged nothing yet."""
    found = MetricsFile([], [], 0, {})
    if not path.is_file():
        return found
    elapsed, per = None, {"update_s": [], "sample_s": [], "eval_step_s": []}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # A run killed mid-write can leave half a line; --resume rewrites the file.
            print(f"warning: {path}:{number} is not JSON, skipped", file=sys.stderr)
            continue
        if "time" not in record:
            raise AggregateError(f"{path}:{number} has no \"time\" entry, which decision_mamba.run writes in every "
                                 f"record: not a run of this code; move its folder out of the runs folder")
        found.iterations = max(found.iterations, int(record["iteration"]))
        elapsed = record["time"]["elapsed_s"]
        for key, values in per.items():
            if record["time"][key] is not None:  # eval_step_s is null in an iteration without an evaluation
                values.append(record["time"][key])
        if record.get("eval"):
            score = run_score(record["eval"])  # summary.json's score
            found.curve.append((int(record["step"]), score))
            found.time_curve.append((elapsed, score))
    found.times = {key: float(np.mean(values)) for key, values in per.items() if values}
    if elapsed is not None:
        found.times["elapsed_s"] = elapsed
    return found


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# What decision_mamba.run writes into a run folder before its first iteration; a finished run has all of them.
RUN_FILES = ("metrics.jsonl", IDENTITY_FILE, RUN_INFO_FILE)


def read_run(run_dir: Path, table: int) -> RunRecord:
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    match = GROUP_PATTERN.match(cfg["run"]["wandb_group"] or "")
    if match:  # made by decision_mamba.sweep: table<N>/<dataset>/<model>[-<variant>]
        run_table, dataset, label = int(match["table"]), match["dataset"], match["label"]
        model = naming.model_name(cfg["model"]["mixer"])
        column = (variant_column(run_table, model, label.removeprefix(f"{model}-")) if run_table in (3, 4)
                  else model)
    else:
        run_table, dataset, column = None, _dataset_from_config(cfg), _column_from_config(table, cfg)
    recorded = "game" in cfg and _atari_data_recorded(cfg)
    if recorded:  # never in the paper's row, as a gym run on a file is not (naming.dataset_name)
        dataset += RECORDED_SUFFIX
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if summary is not None and missing:
        raise AggregateError(f"{run_dir} has a summary.json but no {', '.join(missing)}, which decision_mamba.run "
                             f"writes before it: not a run of this code; move the folder out of the runs folder")
    metrics = _read_metrics(run_dir / "metrics.jsonl")
    return RunRecord(run_dir=run_dir, table=run_table, dataset=dataset, column=column, seed=int(cfg["seed"]),
                     config=cfg, summary=summary, curve=metrics.curve, iterations_done=metrics.iterations,
                     protocol=_protocol_from_config(cfg), time_curve=metrics.time_curve, times=metrics.times,
                     info=_read_json(run_dir / RUN_INFO_FILE), identity=_read_json(run_dir / IDENTITY_FILE),
                     recorded=recorded)


def find_runs(roots: Sequence[Path], table: int) -> list[RunRecord]:
    runs = []
    for root in roots:
        if not root.is_dir():
            raise AggregateError(f"runs directory {root} does not exist; launch the table first "
                                 f"(scripts/table{table}_*.sh) or pass the --out-dir the sweep used")
        runs += [read_run(config.parent, table) for config in sorted(root.glob("*/config.yaml"))]
    if not runs:
        raise AggregateError(f"no run directories (folders holding config.yaml) under {', '.join(map(str, roots))}")
    return runs


# --------------------------------------------------------------------- table
def _expected_cells(table: int, protocols: Sequence[str] = ("release",), suite: str = "d4rl") -> list[tuple[str, str, str]]:
    spec = TABLES[table]
    columns = spec.models if table in (1, 2) else spec.variants
    datasets = [f"mujoco-{d}-v0" for d in MINARI_DATASETS] if suite == "minari" else spec.datasets
    return [(dataset, column, protocol) for dataset in datasets for column in columns for protocol in protocols]


def _paper_rank(table: int, dataset: str, column: str) -> tuple[int, int]:
    """Where the paper's table puts a row: its dataset's place (a file or a recording named after a
    paper dataset, hopper-medium-v4-gen, sits with hopper-medium), then its column's place."""
    spec = TABLES[table]
    datasets = [*spec.datasets, *(f"mujoco-{d}-v0" for d in MINARI_DATASETS if table == 1)]
    matches = [d for d in datasets if dataset == d or dataset.startswith(f"{d}-")]
    place = datasets.index(max(matches, key=len)) if matches else len(datasets)
    columns = column_order(table)
    return place, columns.index(column) if column in columns else len(columns)


def _protocols(runs: list[RunRecord]) -> list[str]:
    found = {r.protocol for r in runs}
    return [p for p in PROTOCOL_ORDER if p in found] + sorted(found - set(PROTOCOL_ORDER))


def table_frame(runs: list[RunRecord], table: int, suite: str = "d4rl") -> pd.DataFrame:
    """One row per cell: seeds, last and best mean ± std, the paper's number."""
    finished = pd.DataFrame(
        [{"dataset": r.dataset, "column": r.column, "protocol": r.protocol, "seed": r.seed, "data": r.data,
          "last": float(r.summary["last"]["score"]), "best": float(r.summary["best"]["score"])}
         for r in runs if r.complete],
        columns=["dataset", "column", "protocol", "seed", "data", "last", "best"])
    stats = finished.groupby(["dataset", "column", "protocol"], sort=False).agg(
        seeds_done=("seed", "count"),
        seeds=("seed", lambda s: " ".join(str(v) for v in sorted(s))),
        data=("data", lambda d: ", ".join(sorted(set(d)))),
        last_mean=("last", "mean"), last_std=("last", lambda x: float(np.std(x, ddof=STD_DDOF))),
        best_mean=("best", "mean"), best_std=("best", lambda x: float(np.std(x, ddof=STD_DDOF))),
    )
    # Every cell of the paper's table, in its order, then any cell the paper does not have.
    cells = _expected_cells(table, _protocols(runs) or ["release"], suite)
    protocols = _protocols(runs)
    cells += sorted((cell for cell in stats.index if cell not in cells),
                    key=lambda c: (*_paper_rank(table, c[0], c[1]), protocols.index(c[2]), c))
    paper = PAPER_NUMBERS[table]
    rows = []
    for dataset, column, protocol in cells:
        row = {"table": table, "dataset": dataset, "column": column, "protocol": protocol,
               "name": display_name(column), "seeds_expected": len(TABLES[table].seeds)}
        if (dataset, column, protocol) in stats.index:
            row.update(stats.loc[(dataset, column, protocol)].to_dict())
        else:
            row.update(seeds_done=0, seeds="", data="", last_mean=np.nan, last_std=np.nan, best_mean=np.nan, best_std=np.nan)
        mean, std = paper.get((dataset, column), (np.nan, None))
        row.update(paper_mean=mean, paper_std=np.nan if std is None else std)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.astype({"seeds_done": int})


def seed_rows(frame: pd.DataFrame, runs: list[RunRecord]) -> pd.DataFrame:
    """The CSV: each cell's row (empty `seed`), then one row per finished seed of that cell."""
    by_cell: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in sorted((r for r in runs if r.complete), key=lambda r: r.seed):
        by_cell.setdefault((r.dataset, r.column, r.protocol), []).append(r)
    rows = []
    for cell in frame.to_dict("records"):
        rows.append({**cell, "seed": "", "run_dir": ""})
        for r in by_cell.get((cell["dataset"], cell["column"], cell["protocol"]), []):
            rows.append({**cell, "seed": r.seed, "seeds_done": 1, "seeds": str(r.seed), "data": r.data,
                         "last_mean": float(r.summary["last"]["score"]), "last_std": np.nan,
                         "best_mean": float(r.summary["best"]["score"]), "best_std": np.nan,
                         "run_dir": str(r.run_dir)})
    columns = list(frame.columns)
    columns.insert(columns.index("seeds_done"), "seed")
    return pd.DataFrame(rows, columns=[*columns, "run_dir"])


def _mean_std(mean: float, std: float, seeds: int | None = None) -> str:
    """'mean ± std'; a bare mean where the std is unknown; '(1 seed)' where there is no spread to show."""
    if np.isnan(mean):
        return "—"
    if seeds == 1:
        return f"{mean:.1f} (1 seed)"
    if np.isnan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.2f}" if std < 0.1 else f"{mean:.1f} ± {std:.1f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    # pandas' DataFrame.to_markdown needs the optional `tabulate` package; a pipe table is
    # simple enough to write directly.
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def _settings(runs: list[RunRecord]) -> str:
    """The training / evaluation budget of the runs, so a smoke table cannot pass for a full one."""
    keys = [("train", "num_iterations"), ("train", "steps_per_iteration"), ("train", "warmup_steps"),
            ("eval", "episodes"), ("data_dir", None), ("dataset", None)]
    parts = []
    for section, key in keys:
        values = sorted({str(r.config[section][key] if key else r.config.get(section))
                         for r in runs if section in r.config})
        if values:
            parts.append(f"`{section}{'.' + key if key else ''}` = {', '.join(values)}")
    return "; ".join(parts)


def unfinished_lines(incomplete: list) -> list[str]:
    """The "Unfinished runs" section: how far each run got; nothing when all finished."""
    if not incomplete:
        return []
    return ["## Unfinished runs", "",
            _markdown_table(["Run directory", "Iterations logged", "Evaluations logged"],
                            [[f"`{r.run_dir}`", f"{r.iterations_done}/{r.config['train']['num_iterations']}",
                              str(len(r.curve))] for r in incomplete]), ""]


def _reference_rows(done: list[RunRecord]) -> list[list[str]]:
    """Per dataset: the mean normalized score of its episodes, of the policy that recorded
    them (from the file's metadata, when known) and of the uniform random policy."""
    rows = []
    for dataset in dict.fromkeys(r.dataset for r in done):
        refs = [r.summary.get("reference", {}) for r in done if r.dataset == dataset]
        values = []
        for section, key in (("dataset", "score_mean"), ("behaviour_policy", "behaviour_normalized_score"),
                             ("random_policy", "score_mean")):
            found = [ref[section][key] for ref in refs if key in ref.get(section, {})]
            values.append(f"{np.mean(found):.1f}" if found else "—")
        if any(v != "—" for v in values):
            rows.append([dataset, *values])
    return rows


def _sweep_commands(roots: Sequence[Path]) -> list[str]:
    commands = []
    for root in roots:
        path = root / "sweeps.jsonl"
        if path.is_file():
            commands += [json.loads(line)["command"] for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(commands))  # unique, in order


def render_markdown(frame: pd.DataFrame, runs: list[RunRecord], other: list[RunRecord], table: int,
                    roots: Sequence[Path], curve_files: dict[str, str], *, title: str | None,
                    note: str | None, produced_by: str | None, aggregate_command: str,
                    sections: Sequence[str] = ()) -> str:
    done = [r for r in runs if r.complete]
    incomplete = [r for r in runs if not r.complete]
    lines = [f"# {title or table_title(table) + ', reproduction'}", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"- Scores: **last** = the final evaluation; **best** = the best evaluation seen during training "
        f"(what the paper's released code reports). Mean ± std over seeds (np.std, ddof={STD_DDOF}; "
        f"\"1 seed\" where one seed has no spread to show); a run's "
        f"score is the best over its return-to-go targets of the mean normalized score.",
        f"- Protocols (decision_mamba/protocols.py): **release** = every switch as in the authors' code, the "
        f"protocol the paper's numbers come from; **clean** = this project's corrections; a name such as "
        f"`clean+init=release` is that protocol with the named switches changed. Protocols are never averaged together.",
        f"- Runs: {len(done)} finished, {len(incomplete)} unfinished{' (listed below)' if incomplete else ''}, read from "
        f"{', '.join(f'`{root}`' for root in roots)}.",
        f"- Settings of the runs: {_settings(runs)}.",
    ]
    if table == 1 and any((r.dataset, r.column) in PAPER_NUMBERS[1] for r in runs):
        lines.append("- Paper: DMamba is the paper's own (5 seeds); DT, DS4 and DC are quoted by the paper "
                     "from the Decision ConvFormer paper.")
    beyond = [m for m in TABLES[table].extra_models
              if any(r.column == m or r.column.startswith(f"{m}-") for r in runs)]
    if beyond:
        lines.append(f"- Beyond the paper (after its columns, no paper number): "
                     f"{', '.join(display_name(m) for m in beyond)} (docs/architecture.md).")
    if produced_by:
        lines.append(f"- Produced by: `{produced_by}`")
    for command in _sweep_commands(roots):
        lines.append(f"- Launched with: `{command}`")
    lines += [f"- Aggregated with: `{aggregate_command}`", ""]

    # Cells with a run (finished or not) in the table; the others named in one line, so
    # that a partial sweep reads as one (the CSV has every cell).
    started = {(r.dataset, r.column, r.protocol) for r in runs}
    shown = frame[[(row.dataset, row.column, row.protocol) in started for row in frame.itertuples()]]
    header = ["Dataset" if table in (1, 3) else "Game", COLUMN_HEADERS[table], "Protocol", "Trained on", "Seeds",
              "Last", "Best", "Paper"]
    rows = [[row.dataset, row.name, row.protocol, row.data or "—", f"{row.seeds_done}/{row.seeds_expected}"
             + (f" ({row.seeds})" if row.seeds_done else ""),
             _mean_std(row.last_mean, row.last_std, row.seeds_done), _mean_std(row.best_mean, row.best_std, row.seeds_done),
             _mean_std(row.paper_mean, row.paper_std)] for row in shown.itertuples()]
    lines += [_markdown_table(header, rows), ""]
    not_run = frame[[(row.dataset, row.column, row.protocol) not in started for row in frame.itertuples()]]
    if len(not_run):
        names = {dataset: ", ".join(dict.fromkeys(group["name"]))
                 for dataset, group in not_run.groupby("dataset", sort=False)}
        lines += [f"Not run (no run directory): {'; '.join(f'{d} ({n})' for d, n in names.items())}.", ""]
    lines += sections  # protocol, cost, statistics, run index

    references = _reference_rows(done)
    if references:
        lines += ["Scores of the data and of a random policy, as measured by the runs (gym runs write them "
                  "to summary.json), for comparison:", "",
                  _markdown_table(["Dataset", "Dataset episodes", "Behaviour policy", "Uniform random policy"],
                                  references), ""]
    lines += unfinished_lines(incomplete)
    if other:
        lines += ["## Run directories of other tables (not counted)", "",
                  *[f"- `{r.run_dir}` (table {r.table})" for r in other], ""]
    if curve_files:
        lines += ["## Learning curves", ""]
        lines += [f"![{dataset}]({name}) ([SVG]({Path(name).with_suffix('.svg')}))"
                  for dataset, name in curve_files.items()]
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------- curves
def _mean_curve(curves: list[list[tuple[int, float]]]) -> pd.DataFrame:
    points = pd.DataFrame([(step, score) for curve in curves for step, score in curve], columns=["step", "score"])
    return points.groupby("step")["score"].agg(
        mean="mean", std=lambda x: float(np.std(x, ddof=STD_DDOF)), seeds="count").reset_index()


def _paper_label(column: str, mean: float, std: float | None) -> str:
    name = display_name(column)
    return f"paper {name}: {mean:.1f}" + (f" ± {std:g}" if std is not None else " (no std published)")


def _mean_time_curve(runs: list[RunRecord]) -> pd.DataFrame:
    """Per evaluation step: the seeds' mean wall-clock (minutes) and mean ± std score."""
    points = pd.DataFrame([(step, elapsed / 60, score) for r in runs
                           for (step, score), (elapsed, _) in zip(r.curve, r.time_curve)],
                          columns=["step", "minutes", "score"])
    return points.groupby("step").agg(minutes=("minutes", "mean"), mean=("score", "mean"),
                                      std=("score", lambda x: float(np.std(x, ddof=STD_DDOF)))).reset_index()


def save_figure(fig: plt.Figure, path: Path) -> None:
    """<path>.png and <path>.svg, each written atomically; closes the figure."""
    for fmt in ("png", "svg"):
        # svg.fonttype none: the SVG keeps its text as text (searchable, editable), not outlines
        with atomic_path(path.with_suffix(f".{fmt}")) as tmp, plt.rc_context({"svg.fonttype": "none"}):
            # bbox tight: the file grows to hold every title and tick label, none is cut off
            fig.savefig(tmp, dpi=120, format=fmt, bbox_inches="tight", pad_inches=0.1)  # tmp does not end in .png
    plt.close(fig)


def plot_curves(runs: list[RunRecord], table: int, out_prefix: Path, table_label: str | None = None) -> dict[str, str]:
    """One PNG and one SVG per dataset: the score against updates (left) and against the run's
    wall-clock time (right); returns {dataset: PNG file name} for the Markdown."""
    files = {}
    protocols = _protocols(runs)
    datasets = sorted({r.dataset for r in runs if r.curve}, key=lambda d: (_paper_rank(table, d, ""), d))
    for dataset in datasets:
        fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        cells = sorted({(r.column, r.protocol) for r in runs if r.dataset == dataset and r.curve},
                       key=lambda c: (_paper_rank(table, dataset, c[0]), protocols.index(c[1]), c))
        papers_drawn: set[str] = set()  # one paper line per column, whatever the protocols
        for column, protocol in cells:
            cell_runs = [r for r in runs
                         if r.dataset == dataset and r.column == column and r.protocol == protocol and r.curve]
            mean = _mean_curve([r.curve for r in cell_runs])
            label = (f"{display_name(column)}, {protocol} "
                     f"({len(cell_runs)} seed{'s' if len(cell_runs) > 1 else ''})")
            line, = ax.plot(mean["step"], mean["mean"], marker="o", markersize=3, label=label)
            ax.fill_between(mean["step"], mean["mean"] - mean["std"], mean["mean"] + mean["std"],
                            color=line.get_color(), alpha=0.2)
            timed = _mean_time_curve(cell_runs)
            ax_time.plot(timed["minutes"], timed["mean"], marker="o", markersize=3, color=line.get_color())
            ax_time.fill_between(timed["minutes"], timed["mean"] - timed["std"], timed["mean"] + timed["std"],
                                 color=line.get_color(), alpha=0.2)
            paper = PAPER_NUMBERS[table].get((dataset, column))  # only where the data is the paper's
            if paper is not None and column not in papers_drawn:
                papers_drawn.add(column)
                mean_p, std_p = paper
                ax.axhline(mean_p, color=line.get_color(), linestyle=":", linewidth=1.2,
                           label=_paper_label(column, mean_p, std_p))
                if std_p is not None:
                    ax.axhspan(mean_p - std_p, mean_p + std_p, color=line.get_color(), alpha=0.08, linewidth=0)
        data = ", ".join(sorted({r.data for r in runs if r.dataset == dataset and r.curve}))
        shown = ", ".join(dict.fromkeys(protocol for _, protocol in cells))
        paper_key = "; dotted: the paper, band ± its std" if papers_drawn else ""
        ax.set_xlabel("training step")
        ax_time.set_xlabel("wall-clock minutes of the run (training, evaluation, checkpoints)")
        ax.set_ylabel("normalized score" if table in (1, 3) else "gamer-normalized score")
        fig.suptitle(f"{table_label or TABLE_TITLES[table].split(':')[0]}, {dataset}: trained on {data}\n"
                     f"protocol {shown}; mean ± std over seeds{paper_key}", fontsize=9)
        for axis in (ax, ax_time):
            axis.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_prefix.parent / f"{out_prefix.name}-{dataset}.png"
        save_figure(fig, path)
        files[dataset] = path.name
    return files


# ---------------------------------------------------------------- statistics
# What the probability of improvement compares every other column of a table with.
REFERENCE_COLUMN = {1: "dmamba", 2: "dmamba", 3: "default", 4: "k30"}
SCORES = ("last", "best")


def _scores_by_dataset(done: list[RunRecord], column: str, protocol: str, which: str) -> dict[str, np.ndarray]:
    found: dict[str, list[float]] = {}
    for r in sorted(done, key=lambda r: r.seed):
        if r.column == column and r.protocol == protocol:
            found.setdefault(r.dataset, []).append(float(r.summary[which]["score"]))
    return {dataset: np.array(scores) for dataset, scores in found.items()}


def _columns(done: list[RunRecord], table: int, protocol: str) -> list[str]:
    order = column_order(table)
    found = {r.column for r in done if r.protocol == protocol}
    return [c for c in order if c in found] + sorted(found - set(order))


def statistics_frame(done: list[RunRecord], table: int) -> pd.DataFrame:
    """One row per (protocol, last/best, statistic, column): IQM and mean over the datasets and
    seeds, and P(reference column > column) over the datasets both ran; intervals where every
    dataset has stats.MIN_SEEDS seeds (else empty, and the note says why)."""
    rows = []
    for protocol in _protocols(done):
        columns = _columns(done, table, protocol)
        reference = REFERENCE_COLUMN[table]
        for which in SCORES:
            by_column = {c: _scores_by_dataset(done, c, protocol, which) for c in columns}
            for column in columns:
                scores = list(by_column[column].values())
                estimates = stats.aggregate_estimates(scores)
                for name, estimate in estimates.items():
                    rows.append(_statistic_row(protocol, which, name, column, "", scores, estimate))
            for column in columns:
                if column == reference or reference not in by_column:
                    continue
                common = [d for d in by_column[reference] if d in by_column[column]]
                if common:
                    x, y = [by_column[reference][d] for d in common], [by_column[column][d] for d in common]
                    rows.append(_statistic_row(protocol, which, "P(improvement)", reference, column, [*x, *y],
                                               stats.probability_of_improvement(x, y)))
    return pd.DataFrame(rows, columns=["protocol", "score", "statistic", "model", "versus", "datasets", "seeds_min",
                                       "seeds_max", "value", "low", "high", "note"])


def _statistic_row(protocol: str, which: str, name: str, column: str, versus: str, scores: list[np.ndarray],
                   estimate: stats.Estimate) -> dict:
    seeds = [len(s) for s in scores]
    note = "" if estimate.low is not None else f"no interval: fewer than {stats.MIN_SEEDS} seeds on a dataset"
    return {"protocol": protocol, "score": which, "statistic": name, "model": column, "versus": versus,
            "datasets": len(scores) // (2 if versus else 1), "seeds_min": min(seeds), "seeds_max": max(seeds),
            "value": estimate.value, "low": estimate.low, "high": estimate.high, "note": note}


def _with_interval(row: Any, digits: int = 1) -> str:
    if row.low is None or pd.isna(row.low):
        return f"{row.value:.{digits}f} (no interval: {row.seeds_min} seed{'s' if row.seeds_min > 1 else ''})"
    return f"{row.value:.{digits}f} [{row.low:.{digits}f}, {row.high:.{digits}f}]"


def statistics_markdown(frame: pd.DataFrame, table: int, files: dict[str, str]) -> list[str]:
    if frame.empty:
        return []
    lines = ["## Aggregate statistics over datasets and seeds", "",
             f"Per {COLUMN_HEADERS[table].lower()} and protocol, over every finished run on every dataset it ran "
             f"(Agarwal et al. 2021, *Deep RL at the edge of the statistical precipice*): the interquartile mean "
             f"(IQM, the mean of the middle 50% of the runs' scores) and the mean, with 95% stratified-bootstrap "
             f"intervals ({stats.BOOTSTRAP_REPS:,} replicates, each redrawing every dataset's seeds; bootstrap "
             f"seed {stats.BOOTSTRAP_SEED}, so the numbers are the same on every aggregation; "
             f"decision_mamba/stats.py with rliable's metrics). A group with fewer than {stats.MIN_SEEDS} seeds on "
             f"a dataset shows its point estimate and says so: so few seeds give no interval worth printing.", ""]
    header = ["Protocol", COLUMN_HEADERS[table], "Datasets", "Seeds per dataset", "Last: IQM", "Last: mean",
              "Best: IQM", "Best: mean"]
    rows = []
    aggregates = frame[frame.versus == ""]
    for (protocol, column), group in aggregates.groupby(["protocol", "model"], sort=False):
        cell = {(r.score, r.statistic): r for r in group.itertuples()}
        first = group.iloc[0]
        seeds = str(first.seeds_min) if first.seeds_min == first.seeds_max else f"{first.seeds_min}-{first.seeds_max}"
        rows.append([protocol, display_name(column), str(first.datasets), seeds,
                     *[_with_interval(cell[(which, name)]) for which in SCORES for name in ("iqm", "mean")]])
    lines += [_markdown_table(header, rows), ""]
    improvement = frame[frame.versus != ""]
    if len(improvement):
        reference = display_name(REFERENCE_COLUMN[table])
        lines += [f"Probability of improvement: the chance that a run of {reference} scores higher than a run of "
                  f"the other on the same dataset (ties count one half), averaged over the datasets both ran, "
                  f"with its 95% stratified-bootstrap interval; 0.5 is a tie.", ""]
        rows = []
        for (protocol, versus), group in improvement.groupby(["protocol", "versus"], sort=False):
            cell = {r.score: r for r in group.itertuples()}
            rows.append([protocol, f"P({reference} > {display_name(versus)})", str(group.iloc[0].datasets),
                         *[_with_interval(cell[which], 2) if which in cell else "—" for which in SCORES]])
        lines += [_markdown_table(["Protocol", "Comparison", "Datasets", "Last", "Best"], rows), ""]
    lines += [f"![{name}]({path}) ([SVG]({Path(path).with_suffix('.svg')}))" for name, path in files.items()]
    return [*lines, ""]


def _label(column: str, protocol: str) -> str:
    return f"{display_name(column)}, {protocol}"


def plot_statistics(frame: pd.DataFrame, done: list[RunRecord], table: int, out_prefix: Path,
                    label: str | None = None) -> dict[str, str]:
    """<out>-intervals, <out>-profiles and (with two columns or more) <out>-improvement, PNG and SVG."""
    if frame.empty:
        return {}
    files = {}
    label = label or TABLE_TITLES[table].split(":")[0]
    unit = "normalized score" if table in (1, 3) else "gamer-normalized score"
    aggregates = frame[frame.versus == ""]
    groups = list(dict.fromkeys(zip(aggregates.protocol, aggregates.model)))
    fig, axes = plt.subplots(2, 2, figsize=(9, 1.6 + 0.45 * len(groups)), squeeze=False)
    for i, which in enumerate(SCORES):
        for j, name in enumerate(("iqm", "mean")):
            ax = axes[i, j]
            for y, (protocol, column) in enumerate(groups):
                row = aggregates[(aggregates.protocol == protocol) & (aggregates.model == column)
                                 & (aggregates.score == which) & (aggregates.statistic == name)].iloc[0]
                if pd.isna(row.low):
                    ax.plot([row.value], [y], marker="x", color=f"C{y}")
                else:
                    ax.errorbar([row.value], [y], xerr=[[row.value - row.low], [row.high - row.value]],
                                fmt="o", capsize=3, color=f"C{y}")
            ax.set_yticks(range(len(groups)), [_label(c, p) for p, c in groups] if j == 0 else [""] * len(groups))
            ax.invert_yaxis()  # the first row on top, as in the paper's tables
            ax.set_title(f"{which}: {'IQM' if name == 'iqm' else 'mean'}", fontsize=9)
            ax.set_xlabel(unit, fontsize=8)
            ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{label}: 95% stratified-bootstrap intervals (x: too few seeds)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_prefix.parent / f"{out_prefix.name}-intervals.png")
    files["intervals"] = f"{out_prefix.name}-intervals.png"

    every = np.concatenate([[float(r.summary[w]["score"]) for w in SCORES] for r in done])
    taus = np.linspace(every.min() - 1, every.max() + 1, 101)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, which in zip(axes, SCORES):
        for k, (protocol, column) in enumerate(groups):
            scores = list(_scores_by_dataset(done, column, protocol, which).values())
            profile, band = stats.performance_profile(scores, taus)
            ax.plot(taus, profile, color=f"C{k}", label=_label(column, protocol))
            if band is not None:
                ax.fill_between(taus, band[0], band[1], color=f"C{k}", alpha=0.2)
        ax.set_title(f"{which} score", fontsize=9)
        ax.set_xlabel(f"{unit} tau", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of runs scoring above tau")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{label}: performance profiles over datasets and seeds "
                 f"(band: 95% stratified bootstrap, where {stats.MIN_SEEDS}+ seeds)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_prefix.parent / f"{out_prefix.name}-profiles.png")
    files["profiles"] = f"{out_prefix.name}-profiles.png"

    improvement = frame[frame.versus != ""]
    if len(improvement):
        pairs = list(dict.fromkeys(zip(improvement.protocol, improvement.versus)))
        fig, axes = plt.subplots(1, 2, figsize=(9, 1.6 + 0.45 * len(pairs)), sharey=True)
        reference = display_name(REFERENCE_COLUMN[table])
        for ax, which in zip(axes, SCORES):
            for y, (protocol, versus) in enumerate(pairs):
                found = improvement[(improvement.protocol == protocol) & (improvement.versus == versus)
                                    & (improvement.score == which)]
                if found.empty:
                    continue
                row = found.iloc[0]
                if pd.isna(row.low):
                    ax.plot([row.value], [y], marker="x", color=f"C{y}")
                else:
                    ax.errorbar([row.value], [y], xerr=[[row.value - row.low], [row.high - row.value]],
                                fmt="o", capsize=3, color=f"C{y}")
            ax.axvline(0.5, color="grey", linestyle=":")
            ax.set_xlim(0, 1)
            ax.set_yticks(range(len(pairs)), [f"{reference} > {display_name(v)}, {p}" for p, v in pairs])
            ax.invert_yaxis()
            ax.set_title(f"{which} score", fontsize=9)
            ax.set_xlabel("probability of improvement", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(f"{label}: P({reference} beats the other on a dataset), "
                     f"95% intervals (x: too few seeds)", fontsize=9)
        fig.tight_layout()
        save_figure(fig, out_prefix.parent / f"{out_prefix.name}-improvement.png")
        files["improvement"] = f"{out_prefix.name}-improvement.png"
    return files


# ------------------------------------------------------------------ run index
def _config_digest(run_dir: Path) -> str:
    """The first 16 hex digits of config.yaml's SHA-256: equal digests, equal resolved configs."""
    return hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()[:16]


def run_index(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run directory, finished or not: what it ran, on what, with which code, how
    long it took and what it scored (<out>-runs.csv)."""
    rows = []
    for r in runs:
        git = r.info.get("git") or {}
        summary = r.summary or {}
        rows.append({
            "run": r.run_dir.name, "dataset": r.dataset, "column": r.column, "protocol": r.protocol, "seed": r.seed,
            "status": "finished" if r.complete else f"unfinished ({r.iterations_done} iterations logged)",
            "data": r.data, "data_fingerprint": r.identity.get("data_fingerprint", ""),
            "config_digest": _config_digest(r.run_dir), "code_commit": git.get("commit") or "",
            "code_dirty": git.get("dirty", ""), "device": r.info.get("device", ""),
            "updates": summary.get("steps", ""), "wall_s": r.wall_s,
            "update_s": r.times.get("update_s"), "sample_s": r.times.get("sample_s"),
            "eval_step_s": r.times.get("eval_step_s"),
            "last": summary["last"]["score"] if r.complete else None,
            "best": summary["best"]["score"] if r.complete else None,
            "best_step": summary["best"]["step"] if r.complete else None,
            "wandb_url": summary.get("wandb_url") or "", "run_dir": str(r.run_dir),
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------ protocol, cost
def _values(runs: list[RunRecord], get: Callable[[RunRecord], Any]) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in map(get, runs) if v not in (None, "", [])))


def protocol_lines(runs: list[RunRecord], table: int) -> list[str]:
    """What the numbers of this table are: episodes, targets, the picking rule, the data and the hardware."""
    targets = "; ".join(f"{dataset}: {_values([r for r in runs if r.dataset == dataset], lambda r: r.config['eval']['targets'])}"
                        for dataset in dict.fromkeys(r.dataset for r in runs))
    evaluations = _values(runs, lambda r: r.config["train"]["num_iterations"] // r.config["eval"]["every"]
                          + (r.config["train"]["num_iterations"] % r.config["eval"]["every"] != 0))
    unit = "normalized score" if table in (1, 3) else "gamer-normalized score"
    fingerprints = _values(runs, lambda r: r.identity.get("data_fingerprint", "")[:12])
    return ["## Protocol", "",
            f"- Episodes per return-to-go target: {_values(runs, lambda r: r.config['eval']['episodes'])} "
            f"(`eval.episodes`), each of at most {_values(runs, lambda r: r.config['eval']['max_ep_len'])} steps.",
            f"- Targets (`eval.targets`, raw returns): {targets}.",
            f"- The reported number: an evaluation scores each target by the mean {unit} of its episodes and "
            f"keeps the best target; **last** is the run's final evaluation, **best** the highest of its "
            f"{evaluations} evaluation(s) (one every `eval.every` = {_values(runs, lambda r: r.config['eval']['every'])} "
            f"iteration(s)); a cell is the mean ± std of its seeds' numbers.",
            f"- Data: {_values(runs, lambda r: r.data)} (fingerprints {fingerprints or 'not recorded'}).",
            f"- Hardware: {_values(runs, lambda r: r.info.get('device')) or 'not recorded'}; code "
            f"{_values(runs, lambda r: ((r.info.get('git') or {}).get('commit') or '')[:12]) or 'not recorded'}, "
            f"torch {_values(runs, lambda r: (r.info.get('packages') or {}).get('torch')) or 'not recorded'}.", ""]


def cost_lines(runs: list[RunRecord], table: int) -> list[str]:
    """The wall time the table's runs took, in all and per run, per column and protocol."""
    timed = [r for r in runs if r.wall_s is not None]
    if not timed:
        return ["## Cost", "", "No run has logged an iteration yet, so there is no wall time to report.", ""]
    header = ["Protocol", COLUMN_HEADERS[table], "Runs", "Wall time (all runs)", "Per run", "Per update",
              "Per batch draw", "Per evaluation step"]
    rows = []
    protocols = _protocols(timed)
    for (protocol, column) in sorted(dict.fromkeys((r.protocol, r.column) for r in timed),
                                     key=lambda c: (protocols.index(c[0]), _paper_rank(table, "", c[1]), c)):
        group = [r for r in timed if (r.protocol, r.column) == (protocol, column)]
        mean = lambda key: np.mean([r.times[key] for r in group if key in r.times]) if any(key in r.times for r in group) else None
        rows.append([protocol, display_name(column), str(len(group)), _duration(sum(r.wall_s for r in group)),
                     _duration(np.mean([r.wall_s for r in group])),
                     *[f"{mean(key) * 1e3:.1f} ms" if mean(key) is not None else "—"
                       for key in ("update_s", "sample_s", "eval_step_s")]])
    total = sum(r.wall_s for r in timed)
    devices = _values(timed, lambda r: r.info.get("device")) or "a device not recorded"
    return ["## Cost", "",
            f"The runs' wall time in their training loops (training, evaluation and checkpoints; metrics.jsonl's "
            f"`time`; not the start-up, data loading and closing reference measurements of each process, which "
            f"weigh only in tiny runs), summed: "
            f"**{_duration(total)}** for {len(timed)} run(s) on {devices}"
            + (f" ({len(runs) - len(timed)} run(s) that have logged no iteration yet not counted)"
               if len(timed) < len(runs) else "")
            + ". Runs that ran side by side (`--slots`) shared the machine, so a run alone may be faster. "
              "The per-step times are the runs' means.", "",
            _markdown_table(header, rows), ""]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------- studies
# A study beyond the paper's tables (decision_mamba/sweep.py STUDIES), e.g. the memory study:
#     python -m decision_mamba.aggregate runs/memory-study --study memory --out results/memory-study
# Its T-Maze rows (corridor length L) by models, success rate in percent; its other rows
# (Hopper-P, one per variant) by models, D4RL normalized score. Never a paper table, and
# labelled so. The statistics (IQM, mean, P(DMamba > X)) pool the T-Maze lengths only: the
# Hopper-P rows score on another scale.
STUDY_TITLES = {"memory": "Memory study: T-Maze success rate against corridor length, and Hopper-P "
                          "(not a paper table)"}
STUDY_LABELS = {"memory": "Memory study (not a paper table)"}
STUDY_VARIANT_NAMES = {"k20": "K = 20 (DT's random windows)",
                       "episode": "whole episodes (K = 1000, windows from each episode's start)"}


def study_group_pattern(study: str) -> re.Pattern:
    """<study>/<dataset>/<model>[-<variant>]/<protocol> (sweep.study_runs)."""
    return re.compile(rf"^{re.escape(study)}/(?P<dataset>[^/]+)/(?P<label>[^/]+)/(?P<protocol>[^/]+)$")


@dataclass
class StudyRun:
    record: RunRecord  # record.dataset is the row: the dataset, plus -<variant> where the study has variants
    dataset: str  # tmaze-L10 | hopper-medium-v4-gen-P (the run's own dataset name)
    variant: str  # "" | k20 | episode


def find_study_runs(roots: Sequence[Path], study: str) -> tuple[list[StudyRun], list[Path]]:
    """The study's run directories under `roots`, and the others (run directories of a table or of another study)."""
    pattern = study_group_pattern(study)
    found, other = [], []
    for root in roots:
        if not root.is_dir():
            raise AggregateError(f"runs directory {root} does not exist; launch the study first "
                                 f"(scripts/{study}_study.sh) or pass the --out-dir the sweep used")
        for config in sorted(root.glob("*/config.yaml")):
            group = (OmegaConf.load(config).get("run") or {}).get("wandb_group") or ""
            match = pattern.match(group)
            if not match:
                other.append(config.parent)
                continue
            record = read_run(config.parent, 1)  # columns of a run outside a table: its model
            model = naming.model_name(record.config["model"]["mixer"])
            variant = match["label"].removeprefix(model).removeprefix("-")
            record.table, record.column = None, model
            record.dataset = match["dataset"] + (f"-{variant}" if variant else "")
            found.append(StudyRun(record, match["dataset"], variant))
    if not found:
        raise AggregateError(f"no run directories of the {study} study (wandb group {study}/...) under "
                             f"{', '.join(map(str, roots))}; launch it with scripts/{study}_study.sh")
    return found, other


def _study_rows(study: str, runs: list[StudyRun]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(row, dataset, variant, models) in the study's order: the T-Maze lengths ascending, then
    the other datasets' variants; the study's own rows first, then any row its runs add."""
    from decision_mamba.sweep import STUDIES

    data_name = {r.dataset for r in runs if sweep_tmaze_length(r.dataset) is None}
    rows = []
    for spec in STUDIES[study]:
        if sweep_tmaze_length(spec.dataset) is not None:
            dataset = spec.dataset
        else:  # the runs name a D4RL file's or name's dataset (hopper-medium-v4-gen-P): take theirs
            dataset = next(iter(sorted(data_name)), spec.dataset)
        for variant in spec.variants:
            rows.append((dataset + (f"-{variant}" if variant else ""), dataset, variant, spec.models))
    known = {row for row, *_ in rows}
    for r in runs:
        if r.record.dataset not in known:
            known.add(r.record.dataset)
            rows.append((r.record.dataset, r.dataset, r.variant, ()))
    tmaze = sorted((row for row in rows if sweep_tmaze_length(row[1]) is not None),
                   key=lambda row: sweep_tmaze_length(row[1]))
    return tmaze + [row for row in rows if sweep_tmaze_length(row[1]) is None]


def sweep_tmaze_length(dataset: str) -> int | None:
    from decision_mamba.sweep import tmaze_study_length

    return tmaze_study_length(dataset)


def study_frame(study: str, runs: list[StudyRun]) -> pd.DataFrame:
    """One row per cell (row, model, protocol): seeds, last and best mean ± std; every cell the
    study plans, run or not, and any other the runs hold."""
    from decision_mamba.sweep import STUDIES, STUDY_SEEDS

    models = list(dict.fromkeys(m for spec in STUDIES[study] for m in spec.models))
    models += sorted({r.record.column for r in runs} - set(models))
    protocols = _protocols([r.record for r in runs])
    rows = []
    for row, dataset, variant, planned in _study_rows(study, runs):
        for model in models:
            for protocol in protocols:
                cell = [r.record for r in runs
                        if (r.record.dataset, r.record.column, r.record.protocol) == (row, model, protocol)]
                done = sorted((r for r in cell if r.complete), key=lambda r: r.seed)
                if not cell and model not in planned:
                    continue
                last = np.array([float(r.summary["last"]["score"]) for r in done])
                best = np.array([float(r.summary["best"]["score"]) for r in done])
                rows.append({
                    "study": study, "dataset": row, "length": sweep_tmaze_length(dataset), "variant": variant,
                    "column": model, "protocol": protocol, "name": display_name(model),
                    "score": "success rate (%)" if sweep_tmaze_length(dataset) is not None else "normalized score",
                    "started": bool(cell), "seeds_expected": len(STUDY_SEEDS[study]), "seeds_done": len(done),
                    "seeds": " ".join(str(r.seed) for r in done), "data": _values(done, lambda r: r.data),
                    "last_mean": last.mean() if len(done) else np.nan,
                    "last_std": float(np.std(last, ddof=STD_DDOF)) if len(done) else np.nan,
                    "best_mean": best.mean() if len(done) else np.nan,
                    "best_std": float(np.std(best, ddof=STD_DDOF)) if len(done) else np.nan})
    return pd.DataFrame(rows).astype({"seeds_done": int})


def _study_cell(row: Any, which: str) -> str:
    if not row.started:
        return "not run"
    if row.seeds_done == 0:
        return "unfinished"
    text = _mean_std(getattr(row, f"{which}_mean"), getattr(row, f"{which}_std"), row.seeds_done)
    return text if row.seeds_done == row.seeds_expected or row.seeds_done == 1 else f"{text} ({row.seeds_done} seeds)"


def study_tables(frame: pd.DataFrame) -> list[str]:
    """Markdown: per score (last, best) one table of rows by models, T-Maze then the other rows."""
    lines = []
    for kind, part in (("T-Maze: success rate (%)", frame[frame.length.notna()]),
                       ("Hopper-P (positions only): D4RL normalized score", frame[frame.length.isna()])):
        if part.empty or not part.started.any():
            continue
        for protocol in dict.fromkeys(part.protocol):
            cells = part[part.protocol == protocol]
            models = list(dict.fromkeys(cells.column))
            names = [display_name(m) for m in models]
            for which in SCORES:
                header = ["Corridor length L" if kind.startswith("T-Maze") else "Context"] + names
                rows = []
                for row, group in cells.groupby("dataset", sort=False):
                    first = group.iloc[0]
                    label = (str(int(first.length)) if not pd.isna(first.length)
                             else STUDY_VARIANT_NAMES.get(first.variant, first.variant or row))
                    by_model = {r.column: r for r in group.itertuples()}
                    rows.append([label, *[_study_cell(by_model[m], which) if m in by_model else "—" for m in models]])
                lines += [f"### {kind}, {which} evaluation (protocol {protocol})", "", _markdown_table(header, rows), ""]
    return lines


def plot_study_lengths(frame: pd.DataFrame, out_prefix: Path, label: str) -> str | None:
    """<out>-lengths.png / .svg: T-Maze success against corridor length, one line per model, last
    and best (mean ± std over seeds); returns the PNG's name, None without finished T-Maze runs."""
    tmaze = frame[frame.length.notna() & (frame.seeds_done > 0)]
    if tmaze.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, which in zip(axes, SCORES):
        for k, ((column, protocol), group) in enumerate(tmaze.groupby(["column", "protocol"], sort=False)):
            group = group.sort_values("length")
            ax.errorbar(group.length, group[f"{which}_mean"], yerr=group[f"{which}_std"], marker="o", capsize=3,
                        color=f"C{k}", label=f"{display_name(column)}, {protocol}")
        ax.axhline(50.0, color="grey", linestyle=":", linewidth=1.0, label="chance (50%)")
        ax.set_xscale("log")
        ax.set_xlabel("corridor length L (context K = L + 2)")
        ax.set_title(f"{which} evaluation", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success rate (%)")
    axes[0].set_ylim(-5, 105)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{label}: T-Maze success against corridor length, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    path = out_prefix.parent / f"{out_prefix.name}-lengths.png"
    save_figure(fig, path)
    return path.name


def aggregate_study(roots: Sequence[Path], study: str, out_prefix: Path, *, title: str | None = None,
                    note: str | None = None, produced_by: str | None = None,
                    aggregate_command: str = "") -> pd.DataFrame:
    """The study's <out>.md, <out>.csv (cells, then their seeds), <out>-lengths.png / .svg,
    <out>-<row>.png / .svg (learning curves), the statistics over the T-Maze lengths
    (<out>-stats.csv and plots) and the run index (<out>-runs.csv); returns the cells."""
    from decision_mamba.sweep import STUDIES

    if study not in STUDIES:
        raise AggregateError(f"--study must be one of {', '.join(STUDIES)}, got {study!r}")
    found, other = find_study_runs(roots, study)
    runs = [r.record for r in found]
    frame = study_frame(study, found)
    label = STUDY_LABELS.get(study, f"{study} study (not a paper table)")
    tmaze_done = [r.record for r in found if r.record.complete and sweep_tmaze_length(r.dataset) is not None]
    statistics = statistics_frame(tmaze_done, 1)  # first: without rliable it stops before anything is written
    lengths_file = plot_study_lengths(frame, out_prefix, label)
    curve_files: dict[str, str] = {}
    for row, *_ in _study_rows(study, found):  # one call per row: the files in the study's order
        curve_files.update(plot_curves([r for r in runs if r.dataset == row], 1, out_prefix, label))
    statistics_files = plot_statistics(statistics, tmaze_done, 1, out_prefix, label)
    index_name = f"{out_prefix.name}-runs.csv"
    done, incomplete = [r for r in runs if r.complete], [r for r in runs if not r.complete]
    lines = [f"# {title or STUDY_TITLES.get(study, label)}", ""]
    if note:
        lines += [note, ""]
    lines += [
        "- Not a paper table: a study this repository adds (docs/memory.md); no published number applies.",
        "- Scores: T-Maze rows give the success rate in percent (the T-Maze suite's normalized score, 100 × "
        "return: the return is 1 for the right choice, else 0; 50% is chance); Hopper-P rows the D4RL normalized "
        "score. **last** = the final evaluation, **best** = the best evaluation seen during training. Mean ± std "
        f"over seeds (np.std, ddof={STD_DDOF}); a cell with fewer seeds than planned says how many.",
        f"- Runs: {len(done)} finished, {len(incomplete)} unfinished{' (listed below)' if incomplete else ''}, "
        f"read from {', '.join(f'`{root}`' for root in roots)}; \"not run\": no run directory.",
        f"- Settings of the runs: {_settings(runs)}.",
    ]
    if produced_by:
        lines.append(f"- Produced by: `{produced_by}`")
    lines += [f"- Launched with: `{command}`" for command in _sweep_commands(roots)]
    lines += [f"- Aggregated with: `{aggregate_command}`", ""]
    lines += study_tables(frame)
    if lengths_file:
        lines += [f"![lengths]({lengths_file}) ([SVG]({Path(lengths_file).with_suffix('.svg')}))", ""]
    lines += protocol_lines(runs, 1) + cost_lines(runs, 1)
    if not statistics.empty:
        lines += ["Over the T-Maze corridor lengths (each length a \"dataset\" below; Hopper-P, on another "
                  "scale, is left out); the unit is the success rate in percent.", ""]
    lines += statistics_markdown(statistics, 1, statistics_files)
    lines += ["## Run index", "",
              f"[{index_name}]({index_name}): one row per run directory (finished or not) with its seed, protocol, "
              f"data and its fingerprint, config digest, code commit, device, wall time, last and best score.", ""]
    lines += unfinished_lines(incomplete)
    if other:
        lines += ["## Other run directories (not this study's, not counted)", "", *[f"- `{d}`" for d in other], ""]
    if curve_files:
        lines += ["## Learning curves", "", "The score axis reads \"normalized score\": for T-Maze that is the "
                  "success rate in percent.", ""]
        lines += [f"![{row}]({name}) ([SVG]({Path(name).with_suffix('.svg')}))" for row, name in curve_files.items()]
        lines.append("")
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}.md", "\n".join(lines))
    csv = seed_rows(frame, runs).rename(columns={"column": "model"})
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}.csv", csv.to_csv(index=False))
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}-stats.csv", statistics.to_csv(index=False))
    write_text_atomic(out_prefix.parent / index_name,
                      run_index(runs).rename(columns={"column": "model"}).to_csv(index=False))
    return frame


# ----------------------------------------------------------------------- CLI
def aggregate(roots: Sequence[Path], table: int, out_prefix: Path, *, title: str | None = None,
              note: str | None = None, produced_by: str | None = None,
              aggregate_command: str = "", suite: str = "d4rl") -> pd.DataFrame:
    """Write <out>.md, <out>.csv, <out>-<dataset>.png / .svg, the statistics (<out>-stats.csv,
    <out>-intervals / -profiles / -improvement .png / .svg) and the run index (<out>-runs.csv);
    return the table (one row per cell)."""
    if table not in TABLES:
        raise AggregateError(f"--table must be one of {sorted(TABLES)}, got {table}")
    if suite not in SUITES or (suite == "minari" and table != 1):
        raise AggregateError(f"--suite {suite}: the suites are {', '.join(SUITES)}, and minari is Table 1's")
    label = None
    if suite == "minari":  # labelled everywhere: the title, a note under it, every plot
        title, note, label = title or MINARI_TITLE, MINARI_NOTE + (f"\n\n{note}" if note else ""), MINARI_LABEL
    everything = find_runs(roots, table)
    runs = [r for r in everything if r.table in (None, table)]
    other = [r for r in everything if r.table not in (None, table)]
    if not runs:
        raise AggregateError(f"the run directories under {', '.join(map(str, roots))} belong to "
                             f"table(s) {sorted({r.table for r in other})}, not table {table}")
    frame = table_frame(runs, table, suite)
    column_name = {"column": "model" if table in (1, 2) else "variant"}
    done = [r for r in runs if r.complete]
    statistics = statistics_frame(done, table)  # first: without rliable it stops before anything is written
    curve_files = plot_curves(runs, table, out_prefix, label)
    statistics_files = plot_statistics(statistics, done, table, out_prefix, label)
    index_name = f"{out_prefix.name}-runs.csv"
    sections = [*protocol_lines(runs, table), *cost_lines(runs, table),
                *statistics_markdown(statistics, table, statistics_files),
                "## Run index", "",
                f"[{index_name}]({index_name}): one row per run directory (finished or not) with its seed, protocol, "
                f"data and its fingerprint, config digest, code commit, device, wall time, last and best score "
                f"and wandb URL (when it ran online).", ""]
    markdown = render_markdown(frame, runs, other, table, roots, curve_files, title=title, note=note,
                               produced_by=produced_by, aggregate_command=aggregate_command, sections=sections)
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}.md", markdown)
    csv = seed_rows(frame, runs).rename(columns=column_name)
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}.csv", csv.to_csv(index=False))
    write_text_atomic(out_prefix.parent / f"{out_prefix.name}-stats.csv",
                      statistics.rename(columns={"model": column_name["column"]}).to_csv(index=False))
    write_text_atomic(out_prefix.parent / index_name, run_index(runs).rename(columns=column_name).to_csv(index=False))
    return frame


def _command_line(argv: list[str]) -> str:
    """This command, with the texts of --note / --produced-by (shown above it) elided."""
    shown = [("..." if previous in ("--note", "--produced-by", "--title") else word)
             for previous, word in zip([""] + argv[:-1], argv)]
    return shlex.join(["python", "-m", "decision_mamba.aggregate", *shown])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m decision_mamba.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders of run directories, e.g. runs/table1")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", type=int, choices=sorted(TABLES))
    which.add_argument("--study", help="a study beyond the paper's tables (memory: docs/memory.md)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: writes <out>.md, .csv, -<dataset>.png and .svg")
    parser.add_argument("--suite", default="d4rl", choices=list(SUITES),
                        help="minari: Table 1 on Minari's mujoco/*-v0 datasets (its cells, its labels)")
    parser.add_argument("--title", help="the Markdown title (default: the table's name)")
    parser.add_argument("--note", help="a paragraph under the title, e.g. what kind of run this is")
    parser.add_argument("--produced-by", help="the command that made the runs (the table script records it)")
    args = parser.parse_args(argv)
    if args.study is not None:
        if args.suite != "d4rl":
            raise AggregateError("--suite is the tables'; a study names its own data")
        frame = aggregate_study(args.runs, args.study, args.out, title=args.title, note=args.note,
                                produced_by=args.produced_by, aggregate_command=_command_line(argv))
        print(f"wrote {args.out}.md and {args.out}.csv ({int((frame.seeds_done > 0).sum())} of {len(frame)} "
              f"cells have finished runs)")
        return 0
    frame = aggregate(args.runs, args.table, args.out, title=args.title, note=args.note,
                      produced_by=args.produced_by, aggregate_command=_command_line(argv), suite=args.suite)
    print(f"wrote {args.out}.md and {args.out}.csv "
          f"({int((frame.seeds_done > 0).sum())} of {len(frame)} cells have runs)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
