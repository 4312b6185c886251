"""Is this dataset from the environment the run evaluates in?

Sizes alone cannot say: Walker2d and HalfCheetah both have 17 observations and 6
actions, and -v4 and -v5 of an environment have the same sizes but not the same
dynamics (docs/data.md). So the environment a dataset claims in its own metadata is
compared with the run's:

  our generated hdf5 files   root attribute env_id, e.g. 'Walker2d-v4'
  Minari datasets            dataset.spec.env_spec.id, e.g. 'Hopper-v5'
  D4RL files                 no metadata: the name says the environment (the config
                             builds it from `env`), only the sizes are checked

A mismatch is refused with a one-line error; `allow_env_mismatch=true` (a config key)
turns the refusal into a warning for a user who knows better (e.g. evaluating -v4 data
on -v5 on purpose). The sizes are checked in any case, with no override: a model
cannot act in an environment whose sizes differ from its data's.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from decision_mamba.errors import DataError

OVERRIDE_KEY = "allow_env_mismatch"  # the config key that turns the refusal into a warning
_ENV_ID = re.compile(r"^(?:[\w.-]+/)?(?P<name>[A-Za-z0-9_]+)-(?P<version>v\d+)$")  # [namespace/]Name-vN


def claimed_env_id(metadata: dict[str, Any]) -> str | None:
    """The gymnasium id the dataset's own metadata names, or None if it names none."""
    env_id = metadata.get("env_id")
    return env_id if isinstance(env_id, str) and _ENV_ID.match(env_id) else None


def env_mismatch(claimed: str, expected: str) -> str | None:
    """What differs between two ids ('Walker2d-v4' vs 'HalfCheetah-v4'), None if nothing does."""
    found, wanted = _ENV_ID.match(claimed), _ENV_ID.match(expected)
    if found is None or wanted is None:
        raise ValueError(f"not a gymnasium environment id: {claimed!r} / {expected!r}")
    if found["name"].lower() != wanted["name"].lower():
        return "environment"
    if found["version"] != wanted["version"]:
        return "version"
    return None


def check_dataset_env(metadata: dict[str, Any], env_id: str, *, source: str,
                      allow_mismatch: bool = False) -> None:
    """Refuse a dataset whose metadata names another environment or version than `env_id`.

    source: the dataset as the user gave it (a path, a D4RL name, minari:<id>), for the message.
    """
    claimed = claimed_env_id(metadata)
    if claimed is None:
        return
    what = env_mismatch(claimed, env_id)
    if what is None:
        return
    fix = (f"set env_version={_ENV_ID.match(claimed)['version']} to evaluate where the data was recorded"
           if what == "version" else "set env to the environment of the data")
    problem = (f"dataset {source} was recorded on {claimed} (its metadata says env_id={claimed!r}) but this run "
               f"trains and evaluates on {env_id}")
    if not allow_mismatch:
        raise DataError(f"{problem}: {fix}, or pass {OVERRIDE_KEY}=true if you mean it")
    print(f"warning: {problem}; going on because {OVERRIDE_KEY}=true", file=sys.stderr)
