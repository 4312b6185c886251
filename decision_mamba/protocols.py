"""Named protocols: which of the authors' release's behaviours a run reproduces.

Every difference between this project and the code behind the paper's numbers (the
authors' release, github.com/Toshihiro-Ota/decision-mamba) is a config switch; a
protocol names one value for each:

    protocol=clean    this project's corrected behaviour (the dataclass defaults)
    protocol=release  the release's behaviour, switch by switch, as verified in its code

`load_config` merges the protocol's values over the YAML file and under the command
line, so `protocol=release train.lr_clamp=true` is the release with one switch changed;
`protocol_label` then calls that run "release+lr_clamp=true", so that run names, wandb
groups and the aggregator's cells never pass such a run off as either protocol.

A mixer the release never had (DMamba-2, model.mixer=mamba2) gets each switch as the release's
code would apply it to that block (docs/protocol.md, "Release and clean"): nothing here is
per mixer.

docs/protocol.md, "The switches", has one row per switch (a test keeps the two lists
equal), and each table YAML lists the keys a protocol sets over it (tested too).
"""

from __future__ import annotations

from typing import Any

PROTOCOLS = ("clean", "release")

# The release's evaluation targets per environment (gym/util/trainer.py, get_env_info);
# it evaluates every one of them at every evaluation and reports the best.
RELEASE_GYM_TARGETS: dict[str, list[float]] = {
    "hopper": [1800.0, 3600.0, 7200.0, 36000.0, 72000.0],
    "halfcheetah": [6000.0, 12000.0, 24000.0, 120000.0, 240000.0],
    "walker2d": [2500.0, 5000.0, 10000.0, 50000.0, 100000.0],
}

# switch -> (clean value, release value, what it is). Gym and Atari have their own lists:
# a switch is listed where the two codes differ. eval.targets has no clean value: clean
# runs evaluate the targets of their config file.
GYM_SWITCHES: dict[str, tuple[Any, Any, str]] = {
    "model.init": ("mamba", "release", "initialisation (release: HF GPT2 init_weights over the Mamba blocks)"),
    "train.padding": ("masked", "release", "training pads (release: actions -10, states normalised 0, no mask)"),
    "train.decay_ssm_params": (False, True, "weight decay on A_log and D"),
    "drop_unterminated_tail": (False, True, "the D4RL file's last, unflagged episode"),
    "eval.targets": (None, "per env", "evaluation targets (release: five per env, best reported)"),
}
ATARI_SWITCHES: dict[str, tuple[Any, Any, str]] = {
    "model.init": ("mamba", "release", "initialisation (release: minGPT's over the Mamba blocks)"),
    "model.atari_embed_ln": (True, False, "LayerNorm on the token embeddings"),
    "train.lr_clamp": (True, False, "cosine LR held at its floor after final_tokens"),
    "train.first_update_full_lr": (False, True, "LR of the first update (release: full LR)"),
    "train.batch_order": ("with_replacement", "shuffled_epoch", "batch order within an epoch"),
    "eval.atari_resize": ("area", "linear", "frame resize interpolation (cv2.INTER_AREA / INTER_LINEAR)"),
    "model.timestep_embedding": ("per_step", "global_position",
                                 "timestep embedding (release: global table of one step per window + token position)"),
    "eval.atari_short_prefix": ("padded", "unpadded", "evaluation windows for t < K (release: the unpadded prefix)"),
}


def switches(kind: str) -> dict[str, tuple[Any, Any, str]]:
    """The switch table of 'gym' or 'atari'."""
    if kind not in ("gym", "atari"):
        raise ValueError(f"kind must be gym or atari, got {kind!r}")
    return GYM_SWITCHES if kind == "gym" else ATARI_SWITCHES


def values(protocol: str, kind: str, env: str = "") -> dict[str, Any]:
    """{dotted key: value} that `protocol` sets for a gym env or an Atari game."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    result = {}
    for key, (clean, release, _) in switches(kind).items():
        value = clean if protocol == "clean" else release
        if key == "eval.targets":
            if protocol == "clean":
                continue  # the config file's targets
            if env not in RELEASE_GYM_TARGETS:
                raise ValueError(f"the release has no evaluation targets for env {env!r}")
            value = list(RELEASE_GYM_TARGETS[env])
        result[key] = value
    return result


def overlay(protocol: str, kind: str, env: str = "") -> dict:
    """`values` as a nested dict, to merge over a config (OmegaConf.merge)."""
    nested: dict = {}
    for key, value in values(protocol, kind, env).items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _lookup(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def protocol_label(cfg: Any) -> str:
    """cfg.protocol, plus every switch set otherwise than that protocol says: 'clean+init=release'."""
    kind = "atari" if hasattr(cfg, "game") else "gym"
    env = getattr(cfg, "game", "").lower() if kind == "atari" else cfg.env
    deviations = [f"{key.rsplit('.', 1)[-1]}={_shown(_lookup(cfg, key))}"
                  for key, value in values(cfg.protocol, kind, env).items()
                  if _lookup(cfg, key) != value and not (isinstance(value, list) and list(_lookup(cfg, key)) == value)]
    return "+".join([cfg.protocol, *deviations])
