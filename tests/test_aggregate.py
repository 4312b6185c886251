"""The aggregator on run directories made by real short runs of gym/experiment.py.

The table's numbers are checked against mean / std computed here, with the statistics
module, from the summary.json files themselves."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from omegaconf import OmegaConf

from decision_mamba import aggregate, stats, sweep
from decision_mamba.errors import cli_main
from helpers import RUN_FOLDER_ITERATION_S, write_episodes_d4rl, write_run_folder

REPO = Path(__file__).resolve().parents[1]

TINY = ["model.d_model=16", "model.n_layer=1", "train.batch_size=4", "train.context_len=4",
        "train.steps_per_iteration=3", "train.num_iterations=3", "train.warmup_steps=2", "eval.episodes=1",
        "eval.max_ep_len=15", "train.num_threads=1"]


def load_gym_experiment():
    # gym/ is a folder of scripts, not a package (and `gym` would shadow the old gym package)
    spec = importlib.util.spec_from_file_location("gym_experiment", REPO / "gym" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table1_runs(tmp_path_factory, hopper_episodes) -> Path:
    """Table 1's runs for DT and DC on hopper-medium, seeds 12 and 23, tiny settings, on real
    Hopper-v4 data; plus DC seed 34, stopped after its last checkpoint (no summary.json)."""
    root = tmp_path_factory.mktemp("aggregate")
    # the behaviour policy's score in the file's metadata, as the project's generator writes it
    data = write_episodes_d4rl(root / "hopper-random-test.hdf5", hopper_episodes,
                               metadata={"behaviour_return_mean": 28.4, "behaviour_normalized_score": 1.5})
    out = root / "runs" / "table1"
    experiment = load_gym_experiment()
    runs = sweep.table_runs(1, out_dir=str(out), models=["dt", "dc"], datasets=["hopper-medium"],
                            seeds=[12, 23, 34], overrides=[f"dataset={data}", *TINY])
    assert len(runs) == 6
    for run in runs:
        # the same argv the sweep launches, minus the interpreter and the script
        experiment.main(run.command()[2:])
    # A run killed between its last checkpoint and its summary.
    (out / "hopper-random-test-dc-release-s34" / "summary.json").unlink()
    return out


FINISHED_SEEDS = {"dt": (12, 23, 34), "dc": (12, 23)}


def summaries(out: Path, model: str, seeds: tuple[int, ...] | None = None) -> list[dict]:
    seeds = seeds or FINISHED_SEEDS[model]
    return [json.loads((out / f"hopper-random-test-{model}-release-s{seed}" / "summary.json").read_text()) for seed in seeds]


def test_mean_and_std_over_seeds_match_the_summary_files(table1_runs, tmp_path):
    prefix = tmp_path / "results" / "table1"
    assert aggregate.main([str(table1_runs), "--table", "1", "--out", str(prefix)]) == 0
    rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(open(f"{prefix}.csv")) if r["seed"] == ""}
    # every cell of the paper's Table 1, run or not, and the cells of the test file's runs: named
    # by their data (naming.py), never counted as D4RL's hopper-medium
    assert len(rows) == 36 + 2 and {r["protocol"] for r in rows.values()} == {"release"}

    for model in ("dt", "dc"):
        row = rows[("hopper-random-test", model)]
        found = summaries(table1_runs, model)
        seeds = FINISHED_SEEDS[model]
        assert int(row["seeds_done"]) == len(seeds) and int(row["seeds_expected"]) == 5
        assert row["seeds"] == " ".join(map(str, seeds))
        for which in ("last", "best"):
            scores = [s[which]["score"] for s in found]
            assert float(row[f"{which}_mean"]) == pytest.approx(statistics.fmean(scores), abs=1e-9)
            assert float(row[f"{which}_std"]) == pytest.approx(statistics.pstdev(scores), abs=1e-9)
    # best is the best evaluation of the run, so never below the last one
    assert float(rows[("hopper-random-test", "dc")]["best_mean"]) >= float(rows[("hopper-random-test", "dc")]["last_mean"])
    # the paper's numbers sit in the D4RL cells, not beside runs on other data; cells without runs are empty, not zero
    assert float(rows[("hopper-medium", "dt")]["paper_mean"]) == 68.4
    assert rows[("hopper-random-test", "dt")]["paper_mean"] == ""
    assert rows[("hopper-random-test", "dt")]["data"] == "hopper-random-test.hdf5"
    assert float(rows[("hopper-medium", "dmamba")]["paper_std"]) == 12.5
    assert rows[("hopper-medium", "dmamba")]["seeds_done"] == "0" and rows[("hopper-medium", "dmamba")]["last_mean"] == ""

    markdown = Path(f"{prefix}.md").read_text()
    dt = summaries(table1_runs, "dt")
    last = [s["last"]["score"] for s in dt]
    expected_cell = f"{statistics.fmean(last):.1f} ± "
    dt_line = next(line for line in markdown.splitlines() if line.startswith("| hopper-random-test | DT |"))
    # the table says the runs were trained on the test file under the release protocol, not on D4RL's hopper-medium
    assert "| release | hopper-random-test.hdf5 | 3/5 (12 23 34) |" in dt_line and expected_cell in dt_line
    assert dt_line.endswith("| — |")
    assert "Not run (no run directory): halfcheetah-medium (DMamba, DT, DC, DS4); hopper-medium (DMamba, DT, DC, DS4);" in markdown
    assert "`train.num_iterations` = 3" in markdown  # a smoke table says it is one
    # the data's and a random policy's scores, as the finished runs measured them
    references = [s["reference"] for model in ("dt", "dc") for s in summaries(table1_runs, model)]
    data_score = statistics.fmean(r["dataset"]["score_mean"] for r in references)
    random_score = statistics.fmean(r["random_policy"]["score_mean"] for r in references)
    assert f"| hopper-random-test | {data_score:.1f} | 1.5 | {random_score:.1f} |" in markdown


def test_unfinished_runs_are_listed_not_dropped(table1_runs, tmp_path):
    prefix = tmp_path / "table1"
    aggregate.main([str(table1_runs), "--table", "1", "--out", str(prefix)])
    markdown = Path(f"{prefix}.md").read_text()
    assert "5 finished, 1 unfinished" in markdown
    unfinished = markdown.split("## Unfinished runs")[1]
    assert "hopper-random-test-dc-release-s34` | 3/3 | 3 |" in unfinished  # 3 iterations and 3 evaluations logged
    row = next(r for r in csv.DictReader(open(f"{prefix}.csv"))
               if r["model"] == "dc" and r["dataset"] == "hopper-random-test" and r["seed"] == "")
    assert row["seeds"] == "12 23"  # seed 34 is not averaged in


def test_learning_curves_are_the_seed_mean_of_the_logged_evaluations(table1_runs, tmp_path):
    prefix = tmp_path / "table1"
    aggregate.main([str(table1_runs), "--table", "1", "--out", str(prefix)])
    image = matplotlib.image.imread(tmp_path / "table1-hopper-random-test.png")
    assert image.ndim == 3 and image.shape[0] > 100  # a real raster image
    assert "![hopper-random-test](table1-hopper-random-test.png)" in Path(f"{prefix}.md").read_text()

    # The curve points: steps 3, 6, 9; the score of each evaluation as run.py defines it.
    records = [aggregate.read_run(table1_runs / f"hopper-random-test-dt-release-s{seed}", 1) for seed in (12, 23)]
    curve = aggregate._mean_curve([r.curve for r in records])
    assert list(curve["step"]) == [3, 6, 9]
    for seed, record in zip((12, 23), records):
        lines = (table1_runs / f"hopper-random-test-dt-release-s{seed}" / "metrics.jsonl").read_text().splitlines()
        logged = [max(t["score_mean"] for t in json.loads(line)["eval"].values()) for line in lines]
        assert [score for _, score in record.curve] == pytest.approx(logged)
        assert record.curve[-1][1] == pytest.approx(summaries(table1_runs, "dt", (seed,))[0]["last"]["score"])
    by_seed = [[score for _, score in r.curve] for r in records]
    assert list(curve["mean"]) == pytest.approx([statistics.fmean(pair) for pair in zip(*by_seed)])
    assert list(curve["std"]) == pytest.approx([statistics.pstdev(pair) for pair in zip(*by_seed)])


def test_runs_of_another_table_are_not_counted(table1_runs, tmp_path, capsys):
    # Table 1's run directories asked for as Table 3: nothing to count, and the error says why.
    assert cli_main(aggregate.main, [str(table1_runs), "--table", "3", "--out", str(tmp_path / "t3")]) == 2
    assert "belong to table(s) [1], not table 3" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    shutil.copytree(table1_runs / "hopper-random-test-dt-release-s12", mixed / "hopper-random-test-dt-release-s12")
    for name, group in (("by-hand", "''"), ("ablation", "table3/hopper-medium/dmamba-rc/release")):
        shutil.copytree(table1_runs / "hopper-random-test-dc-release-s12", mixed / name)
        config = mixed / name / "config.yaml"
        config.write_text(config.read_text().replace("wandb_group: table1/hopper-random-test/dc/release", f"wandb_group: {group}"))
    assert aggregate.main([str(mixed), "--table", "1", "--out", str(tmp_path / "t1")]) == 0
    markdown = (tmp_path / "t1.md").read_text()
    assert "`" + str(mixed / "ablation") + "` (table 3)" in markdown  # listed, not averaged
    rows = list(csv.DictReader(open(tmp_path / "t1.csv")))
    assert [r["seeds_done"] for r in rows if r["dataset"] == "hopper-medium" and r["model"] == "dc"] == ["0"]
    # a run made by hand (no sweep group) counts under what its config says: DC on the test file
    by_hand = [r for r in rows if r["seeds_done"] != "0" and r["model"] == "dc" and r["seed"] == ""]
    assert [(r["dataset"], r["seeds"]) for r in by_hand] == [("hopper-random-test", "12")]


def _run_without_time(root: Path) -> Path:
    _hand_made_run(root, "mamba", 12, [10.0, 20.0])
    metrics = root / "hopper-medium-dmamba-release-s12" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    del records[1]["time"]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _finished_run_without_run_info(root: Path) -> Path:
    _hand_made_run(root, "mamba", 12, [10.0, 20.0])
    (root / "hopper-medium-dmamba-release-s12" / "run_info.json").unlink()
    return root


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no run directories"),
    (_run_without_time, 'metrics.jsonl:2 has no "time" entry'),
    (_finished_run_without_run_info, "has a summary.json but no run_info.json"),
])
def test_bad_run_folders_are_errors_that_say_why(tmp_path, capsys, make, message):
    assert cli_main(aggregate.main, [str(make(tmp_path)), "--table", "1", "--out", str(tmp_path / "t")]) == 2
    assert message in capsys.readouterr().err


def test_a_run_stopped_before_its_first_iteration_is_listed_as_unfinished(tmp_path):
    from decision_mamba import naming
    from decision_mamba.config import GymConfig, load_config, to_yaml

    runs = tmp_path / "runs"
    _hand_made_run(runs, "mamba", 12, [10.0, 20.0])
    cfg = load_config(GymConfig, REPO / "configs/gym/hopper-medium.yaml", ["protocol=release", "seed=23"])
    cfg.run.wandb_group = naming.run_group(cfg, table=1)
    stopped = runs / naming.run_name(cfg)
    write_run_folder(stopped, to_yaml(cfg), [], finished=False)
    for name in ("metrics.jsonl", "run_info.json"):  # stopped before it wrote them
        (stopped / name).unlink()
    prefix = tmp_path / "out" / "t1"
    assert aggregate.main([str(runs), "--table", "1", "--out", str(prefix)]) == 0
    index = {r["run"]: r for r in csv.DictReader(open(f"{prefix}-runs.csv"))}
    assert index[stopped.name]["status"] == "unfinished (0 iterations logged)" and index[stopped.name]["wall_s"] == ""
    markdown = Path(f"{prefix}.md").read_text()
    assert "Runs: 1 finished, 1 unfinished" in markdown
    assert (f"**{aggregate._duration(2 * RUN_FOLDER_ITERATION_S)}** for 1 run(s) on cpu (1 threads) "
            f"(1 run(s) that have logged no iteration yet not counted)") in markdown


def test_paper_numbers_cover_every_cell_of_the_paper_tables():
    for table, spec in sweep.TABLES.items():
        cells = {(dataset, column) for dataset, column, _ in aggregate._expected_cells(table)}
        assert cells == set(aggregate.PAPER_NUMBERS[table]), f"table {table}"
    # spot checks against the paper's Tables 2-4
    assert aggregate.PAPER_NUMBERS[2][("pong", "dmamba")] == (63.2, 102.1)
    assert aggregate.PAPER_NUMBERS[3][("hopper-medium", "rc-2l")] == (85.2, 14.9)
    assert aggregate.PAPER_NUMBERS[4][("qbert", "k60")] == (15.7, 5.5)


def _hand_made_run(root: Path, mixer: str, seed: int, curve: list[float], dataset: str = "hopper-medium",
                   config: str = "configs/gym/{dataset}.yaml", protocol: str = "release",
                   overrides: tuple[str, ...] = (), table: int = 1, variant: str = "") -> None:
    """A finished Table 1 (or `table`, `variant`) run on a D4RL dataset whose evaluations scored
    `curve` (steps 10, 20, ...), grouped as the sweep groups it."""
    from decision_mamba import naming
    from decision_mamba.config import GymConfig, load_config, to_yaml

    cfg = load_config(GymConfig, REPO / config.format(dataset=dataset),
                      [f"protocol={protocol}", f"seed={seed}", f"model.mixer={mixer}", *overrides])
    cfg.run.wandb_group = naming.run_group(cfg, table=table, variant=variant)
    write_run_folder(root / naming.run_name(cfg, variant), to_yaml(cfg),
                     [{"3600": {"score_mean": score}} for score in curve])


def test_per_seed_csv_rows_one_seed_cells_and_the_paper_in_the_plot(tmp_path):
    runs = tmp_path / "runs"
    _hand_made_run(runs, "mamba", 12, [10.0, 60.0, 40.0])  # last 40, best 60
    _hand_made_run(runs, "mamba", 23, [20.0, 30.0, 50.0])  # last 50, best 50
    _hand_made_run(runs, "attention", 12, [5.0, 25.0])  # DT, one seed: last 25, best 25
    prefix = tmp_path / "out" / "t1"
    assert aggregate.main([str(runs), "--table", "1", "--out", str(prefix)]) == 0

    rows = [r for r in csv.DictReader(open(f"{prefix}.csv")) if r["dataset"] == "hopper-medium"]
    dmamba = [r for r in rows if r["model"] == "dmamba"]
    # the cell's row first, then its seeds in order; by hand: last 40, 50 -> 45 ± 5; best 60, 50 -> 55 ± 5
    assert [r["seed"] for r in dmamba] == ["", "12", "23"]
    assert [(float(r["last_mean"]), float(r["best_mean"])) for r in dmamba] == [(45.0, 55.0), (40.0, 60.0), (50.0, 50.0)]
    assert float(dmamba[0]["last_std"]) == 5.0 and float(dmamba[0]["best_std"]) == 5.0
    assert dmamba[1]["last_std"] == "" and dmamba[1]["run_dir"] == str(runs / "hopper-medium-dmamba-release-s12")
    assert [r["seeds_done"] for r in dmamba] == ["2", "1", "1"] and dmamba[0]["paper_mean"] == "83.5"

    markdown = Path(f"{prefix}.md").read_text()
    dmamba_line = next(line for line in markdown.splitlines() if line.startswith("| hopper-medium | DMamba |"))
    dt_line = next(line for line in markdown.splitlines() if line.startswith("| hopper-medium | DT |"))
    assert dmamba_line.endswith("| 2/5 (12 23) | 45.0 ± 5.0 | 55.0 ± 5.0 | 83.5 ± 12.5 |")
    assert dt_line.endswith("| 1/5 (12) | 25.0 (1 seed) | 25.0 (1 seed) | 68.4 |")  # not "± 0.00"
    assert "± 0.00" not in markdown

    png, svg = tmp_path / "out" / "t1-hopper-medium.png", tmp_path / "out" / "t1-hopper-medium.svg"
    assert matplotlib.image.imread(png).ndim == 3
    text = svg.read_text()
    # the legend names the paper's value (and its std where the paper gives one); the title the data and protocol
    assert "paper DMamba: 83.5 ± 12.5" in text and "paper DT: 68.4 (no std published)" in text
    assert "DMamba, release (2 seeds)" in text and "trained on D4RL hopper-medium-v2" in text
    assert "protocol release" in text
    assert "([SVG](t1-hopper-medium.svg))" in markdown


def test_rows_plots_and_legends_follow_the_papers_order_and_say_paper_only_where_drawn(tmp_path):
    """The paper's Table 1 reads halfcheetah, hopper, walker2d per level (medium, then medium-replay) and
    DMamba, DT, DC, DS4; run folders sort otherwise (alphabetically: dc before dmamba, hopper-medium-replay
    before walker2d-medium). A generated file's row has no paper line, so its plot must not mention one."""
    runs = tmp_path / "runs"
    generated = tmp_path / "hopper-medium-v4-gen.hdf5"
    generated.touch()
    for mixer in ("s4", "conv", "attention", "mamba"):
        _hand_made_run(runs, mixer, 12, [1.0, 2.0], overrides=(f"dataset={generated}",))
    _hand_made_run(runs, "mamba", 12, [70.0, 75.0], dataset="walker2d-medium")
    _hand_made_run(runs, "mamba", 12, [80.0, 85.0], dataset="hopper-medium-replay")
    prefix = tmp_path / "out" / "t1"
    assert aggregate.main([str(runs), "--table", "1", "--out", str(prefix)]) == 0

    markdown = Path(f"{prefix}.md").read_text().splitlines()
    generated_rows = [line.split(" | ")[1] for line in markdown if line.startswith("| hopper-medium-v4-gen |")]
    assert generated_rows == ["DMamba", "DT", "DC", "DS4"]
    plots = [line for line in markdown if line.startswith("![") and "-intervals" not in line
             and "-profiles" not in line and "-improvement" not in line]
    assert [line.split("]")[0][2:] for line in plots] == ["hopper-medium-v4-gen", "walker2d-medium",
                                                          "hopper-medium-replay"]

    generated_svg = (tmp_path / "out" / "t1-hopper-medium-v4-gen.svg").read_text()
    assert "dotted" not in generated_svg and "paper DMamba" not in generated_svg
    legend = [generated_svg.index(f"{name}, release (1 seed)") for name in ("DMamba", "DT", "DC", "DS4")]
    assert legend == sorted(legend)
    walker_svg = (tmp_path / "out" / "t1-walker2d-medium.svg").read_text()
    assert "dotted: the paper" in walker_svg and "paper DMamba: 78.2" in walker_svg


def test_interval_statistics_of_hand_made_runs(tmp_path):
    """Two datasets, DMamba with 3 seeds on each, DT with 3 on one and 2 on the other: the
    statistics file against stats.py's functions and a hand-computed IQM and P(improvement)."""
    from rliable import metrics

    runs = tmp_path / "runs"
    last = {("mamba", "hopper-medium"): [40.0, 50.0, 45.0], ("mamba", "walker2d-medium"): [70.0, 72.0, 90.0],
            ("attention", "hopper-medium"): [25.0, 45.0, 30.0], ("attention", "walker2d-medium"): [72.0, 60.0]}
    for (mixer, dataset), scores in last.items():
        for seed, score in zip((12, 23, 34), scores):
            _hand_made_run(runs, mixer, seed, [score - 5, score], dataset)  # best = last: a rising curve
    prefix = tmp_path / "out" / "t1"
    assert aggregate.main([str(runs), "--table", "1", "--out", str(prefix)]) == 0
    rows = {(r["score"], r["statistic"], r["model"], r["versus"]): r for r in csv.DictReader(open(f"{prefix}-stats.csv"))}

    dmamba = rows[("last", "iqm", "dmamba", "")]
    # pooled and sorted: 40 45 50 70 72 90; the middle half (trim_mean's 25%: one from each end)
    assert float(dmamba["value"]) == pytest.approx((45 + 50 + 70 + 72) / 4)
    assert float(rows[("last", "mean", "dmamba", "")]["value"]) == pytest.approx(367 / 6)
    assert float(dmamba["low"]) < float(dmamba["value"]) < float(dmamba["high"]) and dmamba["note"] == ""
    found = stats.aggregate_estimates([np.array(last[("mamba", d)]) for d in ("hopper-medium", "walker2d-medium")])
    assert (float(dmamba["low"]), float(dmamba["high"])) == (found["iqm"].low, found["iqm"].high)
    # DT has 2 seeds on walker2d: a point estimate, no interval, and the note says why
    dt = rows[("last", "mean", "dt", "")]
    assert dt["low"] == "" and "fewer than 3 seeds" in dt["note"] and (dt["seeds_min"], dt["seeds_max"]) == ("2", "3")
    # P(DMamba > DT): hopper 40 45 50 vs 25 45 30 -> (2 + 2.5 + 3) / 9; walker2d 70 72 90 vs 72 60 -> (1 + 1.5 + 2) / 6
    improvement = rows[("last", "P(improvement)", "dmamba", "dt")]
    assert float(improvement["value"]) == pytest.approx((7.5 / 9 + 4.5 / 6) / 2)
    x = np.array([last[("mamba", "hopper-medium")]]).T
    assert metrics.probability_of_improvement(x, np.array([last[("attention", "hopper-medium")]]).T) == pytest.approx(7.5 / 9)
    assert improvement["low"] == ""  # DT's 2 walker2d seeds

    markdown = Path(f"{prefix}.md").read_text()
    assert f"| release | DMamba | 2 | 3 | {(45 + 50 + 70 + 72) / 4:.1f} [" in markdown
    assert "| release | DT | 2 | 2-3 | " in markdown and "(no interval: 2 seeds)" in markdown
    assert "| release | P(DMamba > DT) | 2 | 0.79 (no interval: 2 seeds) |" in markdown
    for name in ("intervals", "profiles", "improvement"):
        assert matplotlib.image.imread(tmp_path / "out" / f"t1-{name}.png").ndim == 3
        assert f"![{name}](t1-{name}.png)" in markdown
    # eleven runs of two iterations, a minute each
    assert f"**{aggregate._duration(11 * 2 * RUN_FOLDER_ITERATION_S)}** for 11 run(s)" in markdown


def test_dmamba2_sits_after_the_papers_models_in_the_table_statistics_plots_and_index(tmp_path):
    """DMamba-2, beyond the paper: its own cell after the paper's columns (DMamba, DT, ..., DS4), no
    paper number, P(DMamba > DMamba-2) beside P(DMamba > DT), in the plots and the run index."""
    runs = tmp_path / "runs"
    last = {"mamba": [40.0, 50.0, 45.0], "mamba2": [30.0, 50.0, 35.0], "attention": [20.0, 60.0, 10.0],
            "s4": [5.0, 6.0, 7.0]}
    for mixer, scores in last.items():
        for seed, score in zip((12, 23, 34), scores):
            _hand_made_run(runs, mixer, seed, [score - 5, score])
    prefix = tmp_path / "out" / "t1"
    assert aggregate.main([str(runs), "--table", "1", "--out", str(prefix)]) == 0

    markdown = Path(f"{prefix}.md").read_text()
    rows = [line.split(" | ")[1] for line in markdown.splitlines() if line.startswith("| hopper-medium |")]
    assert rows == ["DMamba", "DT", "DS4", "DMamba-2"]
    dmamba2 = next(line for line in markdown.splitlines() if line.startswith("| hopper-medium | DMamba-2 |"))
    assert dmamba2.endswith("| 3/5 (12 23 34) | 38.3 ± 8.5 | 38.3 ± 8.5 | — |")  # 30 50 35, np.std: 8.50
    assert "Beyond the paper (after its columns, no paper number): DMamba-2" in markdown
    stats_rows = {(r["score"], r["statistic"], r["model"], r["versus"]): r
                  for r in csv.DictReader(open(f"{prefix}-stats.csv"))}
    # P(DMamba > DMamba-2) by hand: 40 50 45 vs 30 50 35: 40 beats 30 and 35 (2), 50 beats both and ties 50
    # (2.5), 45 beats 30 and 35 (2) -> 6.5 / 9
    improvement = stats_rows[("last", "P(improvement)", "dmamba", "dmamba2")]
    assert float(improvement["value"]) == pytest.approx(6.5 / 9) and improvement["low"] != ""
    assert ("last", "P(improvement)", "dmamba", "dt") in stats_rows
    versus = [line for line in markdown.splitlines() if line.startswith("| release | P(DMamba > ")]
    assert [line.split(" | ")[1] for line in versus] == ["P(DMamba > DT)", "P(DMamba > DS4)", "P(DMamba > DMamba-2)"]
    for name in ("intervals", "profiles"):
        assert "DMamba-2, release" in (tmp_path / "out" / f"t1-{name}.svg").read_text()
    assert "DMamba &gt; DMamba-2, release" in (tmp_path / "out" / "t1-improvement.svg").read_text()
    index = [r for r in csv.DictReader(open(f"{prefix}-runs.csv")) if r["model"] == "dmamba2"]
    assert sorted(r["run"] for r in index) == [f"hopper-medium-dmamba2-release-s{s}" for s in (12, 23, 34)]


def test_dmamba2_variants_have_their_own_cells_in_the_ablation_table(tmp_path):
    """Table 3 run on DMamba and DMamba-2: the same variant of the two models is two cells (DMamba's
    carries the paper's number, DMamba-2's none), the paper's first; by group or by config alone."""
    runs = tmp_path / "runs"
    for seed in (12, 23):
        _hand_made_run(runs, "mamba", seed, [50.0 + seed], table=3, variant="rc", overrides=("model.channel_mlp=false",))
        _hand_made_run(runs, "mamba2", seed, [10.0 + seed], table=3, variant="rc", overrides=("model.channel_mlp=false",))
        _hand_made_run(runs, "mamba2", seed, [20.0 + seed], table=3, variant="default")
    by_hand = tmp_path / "by-hand"  # no sweep group: the column comes from the config
    _hand_made_run(by_hand, "mamba2", 34, [7.0], overrides=("model.channel_mlp=false", "model.n_layer=6"))
    run_dir = next(by_hand.iterdir())
    config = OmegaConf.load(run_dir / "config.yaml")
    config.run.wandb_group = ""
    OmegaConf.save(config, run_dir / "config.yaml")
    prefix = tmp_path / "out" / "t3"
    assert aggregate.main([str(runs), str(by_hand), "--table", "3", "--out", str(prefix)]) == 0

    cells = {(r["variant"], r["name"]): r for r in csv.DictReader(open(f"{prefix}.csv"))
             if r["seed"] == "" and r["dataset"] == "hopper-medium" and r["seeds_done"] != "0"}
    assert list(cells) == [("rc", "RC"), ("dmamba2-default", "DMamba-2 default"), ("dmamba2-rc", "DMamba-2 RC"),
                           ("dmamba2-rc-2l", "DMamba-2 RC & 2L")]
    assert (cells[("rc", "RC")]["last_mean"], cells[("rc", "RC")]["paper_mean"]) == ("67.5", "82.9")
    assert (cells[("dmamba2-rc", "DMamba-2 RC")]["last_mean"], cells[("dmamba2-rc", "DMamba-2 RC")]["paper_mean"]) \
        == ("27.5", "")
    assert cells[("dmamba2-rc-2l", "DMamba-2 RC & 2L")]["seeds"] == "34"


def test_run_index_protocol_and_cost_of_real_runs(table1_runs, tmp_path):
    prefix = tmp_path / "table1"
    aggregate.main([str(table1_runs), "--table", "1", "--out", str(prefix)])
    index = {r["run"]: r for r in csv.DictReader(open(f"{prefix}-runs.csv"))}
    assert len(index) == 6  # finished and unfinished
    walls = []
    for name, row in index.items():
        run_dir = table1_runs / name
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        identity = json.loads((run_dir / "identity.json").read_text())
        info = json.loads((run_dir / "run_info.json").read_text())
        assert float(row["wall_s"]) == pytest.approx(metrics[-1]["time"]["elapsed_s"])
        assert float(row["update_s"]) == pytest.approx(statistics.fmean(m["time"]["update_s"] for m in metrics))
        assert row["data_fingerprint"] == identity["data_fingerprint"] and row["code_commit"] == (info["git"]["commit"] or "")
        assert row["config_digest"] == hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()[:16]
        assert row["seed"] == name.rsplit("-s", 1)[1] and row["data"] == "hopper-random-test.hdf5"
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            assert float(row["last"]) == summary["last"]["score"] and float(row["best"]) == summary["best"]["score"]
            assert row["status"] == "finished"
        else:
            assert row["status"].startswith("unfinished") and row["last"] == ""
        walls.append(float(row["wall_s"]))

    markdown = Path(f"{prefix}.md").read_text()
    protocol = markdown.split("## Protocol")[1].split("##")[0]
    assert "Episodes per return-to-go target: 1 (`eval.episodes`), each of at most 15 steps." in protocol
    targets = OmegaConf.load(table1_runs / "hopper-random-test-dt-release-s12" / "config.yaml").eval.targets
    assert f"Targets (`eval.targets`, raw returns): hopper-random-test: {list(targets)}." in protocol
    assert "**best** the highest of its 3 evaluation(s)" in protocol and "Hardware: cpu (1 threads)" in protocol
    cost = markdown.split("## Cost")[1].split("##")[0]
    assert f"**{aggregate._duration(sum(walls))}** for 6 run(s)" in cost
    assert "| release | DT | 3 |" in cost and "ms |" in cost


def test_table1_on_minari_has_its_own_cells_and_says_it_is_not_d4rls(tmp_path):
    runs = tmp_path / "runs"
    for seed, score in zip((12, 23, 34), (101.0, 99.0, 104.0)):
        _hand_made_run(runs, "mamba", seed, [score - 3, score], "hopper-medium",
                       config="configs/minari/mujoco-{dataset}.yaml", protocol="clean")
    prefix = tmp_path / "out" / "t1-minari"
    assert aggregate.main([str(runs), "--table", "1", "--suite", "minari", "--out", str(prefix)]) == 0
    rows = [r for r in csv.DictReader(open(f"{prefix}.csv")) if r["seed"] == ""]
    # the nine Minari datasets x four models, no D4RL cell, no paper number
    assert {r["dataset"] for r in rows} == {f"mujoco-{d}-v0" for d in sweep.MINARI_DATASETS} and len(rows) == 36
    assert all(r["paper_mean"] == "" for r in rows) and {r["protocol"] for r in rows} == {"clean"}
    markdown = Path(f"{prefix}.md").read_text()
    assert markdown.startswith("# Table 1 on Minari's MuJoCo datasets") and "not comparable with D4RL's Table 1" in markdown
    assert "**Not comparable with D4RL's Table 1, nor with the paper's numbers.**" in markdown
    assert "| mujoco-hopper-medium-v0 | DMamba | clean | minari:mujoco/hopper/medium-v0 | 3/5 (12 23 34) |" in markdown
    assert "Paper: DMamba is the paper's own" not in markdown
    assert "Table 1 on Minari (not comparable with D4RL's)" in (tmp_path / "out" / "t1-minari-intervals.svg").read_text()
    assert "Table 1 on Minari (not comparable with D4RL's)" in (tmp_path / "out" / "t1-minari-mujoco-hopper-medium-v0.svg").read_text()


def _replay_buffer(root: Path, add_count: int) -> None:
    """Breakout's newest buffer (49) in the DQN-replay layout: a few rows, claiming add_count."""
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from dqn_replay_writer import write_replay_buffer

    rows = 8
    write_replay_buffer(root, "Breakout", 49, np.zeros((rows, 84, 84), np.uint8), np.zeros(rows, np.int32),
                        np.zeros(rows, np.float32), np.eye(1, rows, rows - 1, dtype=np.uint8)[0], add_count=add_count)


def test_atari_runs_on_recorded_data_get_their_own_row_not_the_papers(tmp_path):
    """A published DQN-replay buffer holds 1,000,000 transitions; a recording (tools/record_atari.py,
    the sweep's --smoke) a few thousand. Runs on a recording are kept out of the paper's breakout row,
    as gym runs on a generated file are kept out of hopper-medium."""
    from decision_mamba import naming
    from decision_mamba.config import AtariConfig, load_config, to_yaml

    published, recorded = tmp_path / "dqn_replay", tmp_path / "somewhere"
    _replay_buffer(published, add_count=1_000_000)
    _replay_buffer(recorded, add_count=3_000)
    runs = tmp_path / "runs"
    # a --smoke run always trains on a recording, also once its folder is gone
    smoke = [f"data_dir={tmp_path / 'gone'}", f"run.wandb_project={naming.SMOKE_WANDB_PROJECT}"]
    for overrides, seed in (([f"data_dir={published}"], 12), ([f"data_dir={recorded}"], 23), (smoke, 34)):
        cfg = load_config(AtariConfig, REPO / "configs/atari/breakout.yaml", [*overrides, f"seed={seed}"])
        cfg.run.wandb_group = naming.run_group(cfg, table=2)
        write_run_folder(runs / naming.run_name(cfg), to_yaml(cfg), [{"90": {"score_mean": float(seed)}}])
    prefix = tmp_path / "out" / "t2"
    assert aggregate.main([str(runs), "--table", "2", "--out", str(prefix)]) == 0

    rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(open(f"{prefix}.csv")) if r["seed"] == ""}
    paper_row, own_row = rows[("breakout", "dmamba")], rows[("breakout-recorded", "dmamba")]
    assert (paper_row["seeds"], paper_row["paper_mean"]) == ("12", "239.2")
    assert (own_row["seeds"], own_row["paper_mean"]) == ("23 34", "")
    assert f"recorded from the emulator ({recorded})" in own_row["data"]
    assert paper_row["data"] == f"DQN-replay ({published})"
