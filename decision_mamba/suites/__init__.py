"""Benchmark suites: what a suite is, and the registry of those this project serves.

A suite is everything that differs between benchmarks once the model and the training
loop are shared: where its data comes from, which environment a policy is evaluated in,
how a return becomes its normalised score, and which returns-to-go to condition on when
the config gives none. One file per suite in this folder, one entry in SUITES:

    d4rl_mujoco.py  "d4rl"    D4RL MuJoCo v2 files and our generated hdf5 / pkl files
                              (the default; `env` + `env_version` name the environment)
    minari.py       "minari"  any Minari dataset, `dataset: minari:<id or path>`: evaluated
                              in the dataset's own environment, scored by its reference scores
    atari.py        "atari"   DQN-replay Atari (AtariConfig, atari/train_atari.py)
    memory.py       "tmaze"   `dataset: tmaze:<file>`, the passive T-Maze (envs_tmaze.py);
                    "positions" `dataset: positions:<D4RL name or file>`, MuJoCo without velocities

A gym config picks its suite by the prefix of its dataset (`minari:` -> minari, no
prefix -> d4rl); gym/experiment.py serves every continuous-control suite, the Atari one
has its own entry point. What a suite returns about its environment (`SuiteData.env`)
is plain JSON: it goes into every checkpoint's identity, so that
`python -m decision_mamba.evaluate` rebuilds the same environment and score without the data.

Adding a suite: one file here with a `Suite` subclass (and its test), one line in `_registry()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decision_mamba.data.trajectories import Trajectories
from decision_mamba.errors import UserError


@dataclass
class SuiteData:
    trajectories: Trajectories
    env: dict[str, Any]  # JSON: what make_envs and score need ("env_id" always), kept in the checkpoint
    description: str  # one line for the banner and run_info.json: where the data came from
    metadata: dict[str, Any]  # the dataset's own metadata (behaviour policy, ...), for the summary


class Suite:
    """The interface; one subclass per suite file."""

    name: str = ""
    prefix: str | None = None  # the dataset prefix that selects this suite ("minari" for "minari:<id>")

    def check_config(self, cfg: Any) -> None:
        """Refuse, with a UserError, what this suite cannot run (suite_of calls it)."""

    def load(self, cfg: Any) -> SuiteData:
        raise NotImplementedError

    def make_envs(self, cfg: Any, env: dict[str, Any], num_envs: int, obs_dim: int | None = None,
                  act_dim: int | None = None, record: Sequence[int] = ()):
        """The vector environment (no auto-reset) that evaluation steps, for `env` (SuiteData.env);
        the sub-environments in `record` can be filmed (decision_mamba/video.py)."""
        raise NotImplementedError

    def score(self, cfg: Any, env: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        """returns -> the suite's normalised score (100 = its reference 'expert')."""
        raise NotImplementedError

    def default_targets(self, cfg: Any, trajectories: Trajectories) -> list[float]:
        """The returns-to-go evaluated when the config's eval.targets is []."""
        raise NotImplementedError

    def dataset_name(self, cfg: Any) -> str:
        """The dataset's short name in run names, wandb groups and tables."""
        raise NotImplementedError


def _registry() -> dict[str, Suite]:
    from decision_mamba.suites.atari import Atari
    from decision_mamba.suites.d4rl_mujoco import D4RLMuJoCo
    from decision_mamba.suites.memory import PositionsOnlyMuJoCo, TMazeSuite
    from decision_mamba.suites.minari import Minari

    return {suite.name: suite for suite in (D4RLMuJoCo(), Minari(), Atari(), TMazeSuite(), PositionsOnlyMuJoCo())}


SUITES: dict[str, Suite] = {}


def suites() -> dict[str, Suite]:
    """name -> suite (built on first use: the suite files import the environment libraries)."""
    if not SUITES:
        SUITES.update(_registry())
    return SUITES


def suite_name(cfg: Any) -> str:
    """Which suite serves a config: AtariConfig -> atari; a gym dataset's prefix; else d4rl."""
    if hasattr(cfg, "game"):
        return "atari"
    return suite_name_of_dataset(str(cfg.dataset))


def suite_name_of_dataset(dataset: str) -> str:
    prefix, sep, _ = dataset.partition(":")
    if sep and prefix.isidentifier():
        for suite in suites().values():
            if suite.prefix == prefix:
                return suite.name
        known = [s.prefix for s in suites().values() if s.prefix]
        raise UserError(f"dataset {dataset!r} starts with {prefix}:, which names no suite; "
                        f"the prefixes are {', '.join(p + ':' for p in known)} (or none, for D4RL names and files)")
    return "d4rl"


def suite_of(cfg: Any) -> Suite:
    """The suite that serves cfg, once it has checked cfg (Suite.check_config): the entry points
    and the checkpoint command ask for it before they write anything."""
    suite = suites()[suite_name(cfg)]
    suite.check_config(cfg)
    return suite
