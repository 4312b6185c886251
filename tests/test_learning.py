"""DMamba learns from the bundled generated Hopper data (slow: a few minutes on 2 cores)."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gym"))

from experiment import main  # noqa: E402  (gym/experiment.py)

HIGH, LOW = 3600, -1000  # a return no episode of the data comes near, and one below them all


@pytest.mark.slow
def test_dmamba_on_bundled_medium_data_beats_random_and_follows_the_target(tmp_path):
    summary = main(["--config", str(REPO / "configs" / "gym" / "quickstart.yaml"),
                    f"dataset={REPO / 'data' / 'hopper-medium-v4-gen.hdf5'}", f"eval.targets=[{HIGH},{LOW}]",
                    "train.num_iterations=2", "eval.episodes=5",
                    # no evaluation after iteration 1: nothing below reads it, and evaluating draws on
                    # no random state that training uses, so the last evaluation is the same without it
                    "eval.every=2", f"run.out_dir={tmp_path}", "run.progress=false",
                    "train.num_threads=1"])
    last = summary["last"]["targets"]
    random_score = summary["reference"]["random_policy"]["score_mean"]
    behaviour = summary["reference"]["behaviour_policy"]["behaviour_normalized_score"]
    high, low = last[str(HIGH)], last[str(LOW)]
    # well above the random policy: at least half of the way from random to the behaviour policy
    assert high["score_mean"] > random_score + 0.5 * (behaviour - random_score), (high, random_score, behaviour)
    # return conditioning: asking for more gives more, by over two standard errors of the difference
    n = 5
    standard_error = ((high["return_std"] ** 2 + low["return_std"] ** 2) / n) ** 0.5
    assert high["return_mean"] - low["return_mean"] > 2 * max(standard_error, 1.0), (high, low)
    metrics = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train"]["loss_mean"] < metrics[0]["train"]["loss_mean"]
