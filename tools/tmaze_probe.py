"""How many updates does a model need to learn the T-Maze cue? Junction accuracy against updates.

    python tools/make_tmaze_data.py --length 30 --episodes 1000 --random-move 0 --wrong-choice 0.1 --out /tmp/L30.hdf5
    python tools/tmaze_probe.py /tmp/L30.hdf5 [--updates 1000] [--every 100] [-- model.mixer=attention ...]

Trains as the memory study does (configs/memory/tmaze-study.yaml, whole-episode windows of
16 episodes, one thread, gym/experiment.py's update and seeding, so that a probe trains the
bits a study run of the same seed trains; keys after `--` override the config) and every `--every` updates
prints the training loss and the junction accuracy: on 128 episodes of the oracle (cue side,
return 1), fed with the true history, the share in which the model's move at the junction
(the larger of its up and down outputs) is the cue's. With whole-episode windows that is the
move the recurrent step would make there (tests/test_episode_windows.py), so it is the
success rate without running the environment, and costs one forward pass. The loss is scaled
by L + 1 (the steps per episode), so that it reads per junction: 0.125 is the cue-blind
plateau (up and down predicted 0.5 each), 0 a policy that knows the cue and the return.
The design study in docs/memory.md ran this.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from decision_mamba.cpu import configure_process  # noqa: E402

configure_process()  # before torch loads, as every entry point

import numpy as np  # noqa: E402
import torch  # noqa: E402

from decision_mamba.config import GymConfig, load_config  # noqa: E402
from decision_mamba.data.d4rl import load_dataset  # noqa: E402
from decision_mamba.data.sampler import sample_batch, state_normalization  # noqa: E402
from decision_mamba.data.trajectories import Trajectories  # noqa: E402
from decision_mamba.envs_tmaze import DOWN, UP  # noqa: E402
from decision_mamba.errors import cli_main  # noqa: E402
from decision_mamba.run import seed_everything  # noqa: E402
from decision_mamba.sweep import TMAZE_STUDY_BATCH  # noqa: E402

sys.path.insert(0, str(REPO / "tools"))
from make_tmaze_data import record_tmaze  # noqa: E402

CONFIG = REPO / "configs" / "memory" / "tmaze-study.yaml"
TEST_EPISODES = 128


def _gym_experiment():
    # gym/ is a folder of scripts, not a package
    spec = importlib.util.spec_from_file_location("gym_experiment", REPO / "gym" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle_batch(length: int, state_mean: np.ndarray, state_std: np.ndarray) -> dict[str, torch.Tensor]:
    """TEST_EPISODES episodes of the oracle (seeds unlike the data's), as whole-episode windows."""
    arrays = record_tmaze(length, TEST_EPISODES, 0.0, 0.0, seed=10_000)
    ends = np.flatnonzero(arrays["terminals"] | arrays["timeouts"]) + 1
    starts = np.r_[0, ends[:-1]]
    traj = Trajectories(arrays["observations"], arrays["actions"], arrays["rewards"], starts, ends - starts)
    batch = sample_batch(traj, TEST_EPISODES, length + 2, np.random.default_rng(0), state_mean=state_mean,
                         state_std=state_std, rtg_scale=1.0, max_ep_len=length + 2, mode="episode")
    return {key: torch.as_tensor(value) for key, value in batch.items()}


def junction_accuracy(predict, batch: dict[str, torch.Tensor]) -> float:
    """The share of episodes whose predicted move at the junction (each window's last real
    step) is the data's; `predict(batch)` gives the actions (B, K, 4)."""
    with torch.no_grad():
        actions = predict(batch)
    rows = torch.arange(len(actions))
    last = batch["mask"].sum(dim=1) - 1
    predicted, taken = actions[rows, last], batch["actions"][rows, last]
    return float(((predicted[:, UP] > predicted[:, DOWN]) == (taken[:, UP] > taken[:, DOWN])).float().mean())


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a file made by tools/make_tmaze_data.py")
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]  # config keys: model.mixer=attention
    traj, metadata = load_dataset(str(args.data))
    if "corridor_length" not in metadata:
        parser.error(f"{args.data} was not made by tools/make_tmaze_data.py (no corridor_length)")
    length = int(metadata["corridor_length"])
    K = length + 2
    cfg = load_config(GymConfig, str(CONFIG), [f"dataset=tmaze:{args.data}", f"model.max_ep_len={K}",
                                               f"train.context_len={K}", f"eval.max_ep_len={K}",
                                               f"train.batch_size={TMAZE_STUDY_BATCH}", "train.num_threads=1",
                                               *overrides])
    seed_everything(cfg.seed, cfg.train.num_threads)  # as the entry point: the same seed trains the same bits
    mean, std = state_normalization(traj)
    trainer = _gym_experiment().build_trainer(cfg, traj, mean, std, torch.device("cpu"))
    test = oracle_batch(length, mean, std)
    model = trainer.model

    def predict(batch):
        model.eval()
        return model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])

    print(f"L = {length}, {metadata['episodes']} episodes (wrong choices {metadata['wrong_choice_prob']}), "
          f"{cfg.model.mixer}, batch {cfg.train.batch_size}, learning rate {cfg.train.learning_rate}", flush=True)
    rows, losses, start = [], [], time.perf_counter()
    for update in range(1, args.updates + 1):
        losses.append(trainer.train_step().loss)
        if update % args.every == 0:
            loss = float(np.mean(losses[-args.every:])) * (length + 1)
            rows.append((update, loss, junction_accuracy(predict, test)))
            print(f"update {update:6d}  loss per junction {loss:.4f}  junction accuracy {rows[-1][2]:.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(cli_main(main))  # a missing or wrong file: one line, exit status 2
