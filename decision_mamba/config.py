"""Typed experiment configs: one dataclass per experiment, one YAML file per dataset.

A YAML file in configs/ is merged over the dataclass defaults and then the command
line's `key=value` overrides are merged over that (OmegaConf). The dataclasses are the
schema: a misspelt or unknown key, or a value of the wrong type, is a one-line error that
names the key, where it came from (the file, the protocol or the key=value overrides) and the
nearest known key or the expected kind of value. `validate()` checks what types alone cannot.

This module is a leaf: it imports no torch, numba or gymnasium, so reading a YAML file is
quick and cheap. The choices of the string settings live here, and the modules that
implement them import them from here. What only an implementation can check (a mixer
name, a suite's own rule) is checked where the run is built: mixers.build_mixer,
suites.suite_of. Each field's `help` is its line in `--help` and `--show-config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from decision_mamba import protocols
from decision_mamba.errors import UserError

# ------------------------------------------------------------------ the choices
ScanBackend = Literal["auto", "cuda", "parallel", "fused", "reference"]  # selective_scan.py
Precision = Literal["fp32", "bf16", "fp16"]  # compute.py
EvalMode = Literal["window", "recurrent"]  # evaluation.py
Overlap = Literal["auto", "on", "off"]  # evaluation.py
SCAN_BACKENDS: tuple[str, ...] = get_args(ScanBackend)
PRECISIONS: tuple[str, ...] = get_args(Precision)
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
OVERLAP_CHOICES: tuple[str, ...] = get_args(Overlap)
# The D4RL MuJoCo environments: config name -> gymnasium's (envs.py makes `{name}-{version}`).
GYM_ENV_NAMES = {"hopper": "Hopper", "halfcheetah": "HalfCheetah", "walker2d": "Walker2d"}

# The recurrent step cannot run the release's Atari timestep embedding: every step gives
# the whole window a new global embedding (the current step's), so no state carries over.
RECURRENT_GLOBAL_POSITION = ("eval.mode=recurrent cannot run model.timestep_embedding=global_position (each step "
                             "re-embeds the whole window with the current step); use eval.mode=window")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema."""


def parse_keep(policy: str) -> int | None:
    """run.keep_checkpoints: 'all' -> None (keep every checkpoint); 'last_and_best' -> 1;
    'N' -> N (the newest N, and the best)."""
    policy = str(policy).strip()
    if policy == "all":
        return None
    if policy == "last_and_best":
        return 1
    if policy.isdigit() and int(policy) > 0:
        return int(policy)
    raise ConfigError(f"run.keep_checkpoints must be all, last_and_best or a positive number N "
                      f"(the newest N and the best), got {policy!r}")


def setting(default: Any, help: str) -> Any:
    """A config field and its one-line description (its `--help` text); a list or a dataclass
    default is copied for every instance."""
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _one_of(choices: tuple[str, ...]) -> str:
    return " | ".join(choices)


@dataclass
class ModelConfig:
    """Architecture. Defaults are the paper's gym setting (Table 5)."""

    mixer: str = setting("mamba", "the token mixer (mixers.MIXERS): mamba (DMamba), attention (DT), conv (DC), "
                                  "s4 (DS4), mamba2 (DMamba-2), or one added to that table")
    d_model: int = setting(128, "embedding width")
    n_layer: int = setting(3, "residual blocks")
    dropout: float = setting(0.1, "dropout of embeddings and blocks")
    channel_mlp: bool = setting(True, 'False = the paper\'s "RC" ablation (Table 3)')
    max_ep_len: int = setting(1000, "size of the timestep embedding table")
    n_head: int = setting(1, "attention (DT): heads, 1 for gym, 8 for Atari")
    conv_window: int = setting(6, "conv (DC): kernel size over tokens")
    d_state: int = setting(16, "mamba (DMamba): SSM state size N (the defaults are the original implementation's)")
    d_conv: int = setting(4, "mamba (DMamba): width of the causal depthwise convolution")
    expand: int = setting(2, "mamba (DMamba): inner width ED = expand * d_model")
    scan_backend: str = setting("auto", f"{_one_of(SCAN_BACKENDS)} (selective_scan.resolve_scan_backend says "
                                        f"which runs and why). On the CPU, auto and fused also run inference steps "
                                        f"through the fused kernel (fused_step.py); reference keeps every step in "
                                        f"PyTorch.")
    headdim: int = setting(16, "mamba2 (DMamba-2; also d_state, d_conv, expand): channels per SSD head, ED / headdim "
                               "heads with one A each (mamba_ssm's default 64)")
    ngroups: int = setting(1, "mamba2: groups of heads sharing one B and C (like multi-query attention's shared keys)")
    chunk_size: int = setting(256, "mamba2: SSD block length (mamba_ssm's default); a shorter sequence is one block")
    s4_d_state: int = setting(64, "s4 (DS4): state size of the S4 kernel")
    init: str = setting("mamba", 'Switches that reproduce the authors\' release (decision_mamba/protocols.py '
                                 'names them): init: "mamba" = GPT-2 init (normal 0.02) outside the mixers, '
                                 'mamba_ssm\'s / S4D\'s inside; "release" = what the release\'s HF '
                                 'GPT2Model.init_weights() leaves: normal 0.02 on every Linear and Embedding inside '
                                 'the layers (Mamba\'s projections too, dt_proj.bias = 0), PyTorch\'s defaults on the '
                                 'embeddings and the gym action head.')
    atari_embed_ln: bool = setting(True, "False: no LayerNorm on Atari tokens (the release's, DT's Atari model)")
    timestep_embedding: str = setting("per_step", "per_step: one learned embedding per timestep, added to its three "
                                                  "tokens (DT's gym model); global_position: the Atari release's "
                                                  "(DT's Atari model): one global-table embedding per window, of the "
                                                  "window's first step in training and of the current step at "
                                                  "evaluation, plus a learned embedding of each token's position in "
                                                  "the window (3K rows).")


@dataclass
class TrainConfig:
    batch_size: int = setting(64, "windows per update")
    context_len: int = setting(20, "K timesteps, 3K tokens")
    learning_rate: float = setting(1e-4, "peak AdamW learning rate (after warm-up)")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas")
    lr_schedule: str = setting("linear_warmup", '"linear_warmup": DT gym (warm-up over warmup_steps, then constant); '
                                                '"warmup_cosine_tokens": DT Atari (warm-up and cosine decay counted '
                                                'in tokens).')
    warmup_steps: int = setting(10_000, "linear_warmup: updates to reach the peak LR")
    warmup_tokens: int = setting(512 * 20, "warmup_cosine_tokens: tokens to reach the peak LR")
    final_tokens: int = setting(0, "0 = 2 * num_transitions * K * 3, as DT's Atari code")
    decay_matmul_weights_only: bool = setting(False, "True for Atari (minGPT's optimizer groups)")
    grad_clip: float = setting(0.25, "max global gradient norm")
    num_iterations: int = setting(10, "training iterations, each followed by an evaluation and a checkpoint")
    steps_per_iteration: int = setting(10_000, "updates per iteration; 0 (Atari) = one epoch over the transitions")
    rtg_scale: float = setting(1000.0, "returns-to-go are divided by this before embedding")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    num_threads: int = setting(0, "torch and numba CPU threads, 0 = their defaults")
    precision: str = setting("fp32", f"{_one_of(PRECISIONS)}: autocast for the forward and loss (fp16 with a "
                                     f"GradScaler); the selective scan's state stays float32 as in mamba_ssm. fp32 is "
                                     f"bit-deterministic on the CPU.")
    # Differences from the authors' release, one switch each (decision_mamba/protocols.py):
    padding: str = setting("masked", "masked (zero pads, zeroed tokens) | release (states pad = normalised 0, "
                                     "actions -10, tokens unmasked)")
    decay_ssm_params: bool = setting(False, "True: weight decay on Mamba's A_log and D too (release, gym)")
    lr_clamp: bool = setting(True, "False: the cosine LR climbs back after final_tokens (release, Atari)")
    first_update_full_lr: bool = setting(False, "True: update 1 at the full LR, not warm-up's 0 (release, Atari)")
    batch_order: str = setting("with_replacement", "with_replacement | shuffled_epoch (release, Atari: one pass per "
                                                   "epoch)")
    window_start: str = setting("random", "random: windows start at any step (DT's) | episode: at an episode's first "
                                          "step, padding after it, so that eval.mode=recurrent acts as trained "
                                          "(docs/memory.md); gym only")


@dataclass
class EvalConfig:
    episodes: int = setting(10, "per target; the paper's release uses 100")
    targets: list[float] = setting([3600.0], "returns-to-go to condition on, each evaluated separately; [] = the "
                                             "suite's default (suites/)")
    mode: str = setting("window", "window (recompute the K-step window) | recurrent (O(1) step)")
    overlap: str = setting("auto", "on: step half of the episodes' simulators while the model acts for the other "
                                   "half (the model gets a worker thread, at the same thread counts) | off | auto: on "
                                   "for mode=recurrent on the CPU, where it was measured to pay (docs/benchmarks.md)")
    sample_actions: bool = setting(False, "Atari samples from the softmax, gym takes the tanh output")
    every: int = setting(1, "evaluate after every `every` iterations (and always after the last)")
    max_ep_len: int = setting(1000, "evaluation episodes are cut after this many steps")
    atari_resize: str = setting("area", "area (cv2.INTER_AREA) | linear (INTER_LINEAR, the release's and DT's)")
    atari_short_prefix: str = setting("padded", "window mode, steps t < K: padded (the window left-padded to K steps, "
                                                "as in training) | unpadded (the model sees only the t + 1 steps so "
                                                "far, the release's and DT's Atari evaluation)")
    video_episodes: int = setting(0, "film the first N episodes of each target at each evaluation (MP4 in "
                                     "<run>/videos/)")


@dataclass
class RunConfig:
    out_dir: str = setting("runs", "run directories are created under this folder")
    name: str = setting("", '"" = derived from env, dataset, mixer and seed')
    wandb: str = setting("disabled", "disabled | offline | online")
    wandb_project: str = setting("decision-mamba", "wandb project of the run")
    wandb_group: str = setting("", "e.g. table1/hopper-medium/dmamba (scripts set it)")
    keep_checkpoints: str = setting("last_and_best", "last_and_best | N (the newest N and the best; weights only once "
                                                     "the run ends) | all (whole)")
    progress: bool = setting(True, "tqdm progress bars")
    log_every: int = setting(100, "write loss, LR, grad norm and throughput every N updates (train_steps.jsonl, "
                                  "wandb)")
    resume_allow_changes: list[str] = setting([], "keys --resume may find changed: [train.num_iterations]")


@dataclass
class GymConfig:
    env: str = setting("hopper", f"{_one_of(tuple(GYM_ENV_NAMES))} (unused by minari: datasets)")
    dataset: str = setting("medium", "medium | medium-replay | medium-expert | expert | random | a path | "
                                     "minari:<id or path>")
    env_version: str = setting("v4", "gymnasium MuJoCo version used for evaluation (minari: the dataset's own)")
    data_dir: str = setting("data", "folder of the D4RL hdf5 files")
    allow_pickle: bool = setting(False, ".pkl datasets run code when loaded: opt in explicitly")
    allow_env_mismatch: bool = setting(False, "A dataset whose metadata names another environment or version is "
                                              "refused (data/identity.py); true: only warn (e.g. -v4 data evaluated "
                                              "on -v5 on purpose).")
    drop_unterminated_tail: bool = setting(False, "True: drop the last episode if no flag ends it (the release's)")
    protocol: str = setting("clean", "clean | release: a set of the switches above (decision_mamba/protocols.py)")
    seed: int = setting(12, "seeds weights, batches and evaluation episodes")
    model: ModelConfig = setting(ModelConfig(), "the architecture")
    train: TrainConfig = setting(TrainConfig(), "the optimisation")
    eval: EvalConfig = setting(EvalConfig(), "the evaluation")
    run: RunConfig = setting(RunConfig(), "the run directory and its logs")


@dataclass
class AtariConfig:
    game: str = setting("Breakout", "Breakout | Qbert | Pong | Seaquest (any ALE game with DQN-replay data)")
    data_dir: str = setting("data/dqn_replay", "holds {game}/1/replay_logs/ of the DQN-replay data")
    num_buffers: int = setting(50, "buffers are drawn from the last num_buffers of 50")
    num_steps: int = setting(500_000, "transitions to load (1% of the 50M)")
    trajectories_per_buffer: int = setting(10, "whole episodes read per draw of a buffer")
    verify_checksums: bool = setting(True, "Check every replay file's gzip CRC-32 and length; this decompresses each "
                                           "observation file used to its end (data/atari_replay.py). false: only for "
                                           "files verified before.")
    protocol: str = setting("clean", "clean | release (decision_mamba/protocols.py)")
    seed: int = setting(123, "seeds the data draw, weights, batches and evaluation episodes")
    model: ModelConfig = setting(ModelConfig(d_model=128, n_layer=6, n_head=8, max_ep_len=27_000), "the architecture")
    train: TrainConfig = setting(TrainConfig(
        batch_size=256, context_len=30, learning_rate=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
        lr_schedule="warmup_cosine_tokens", decay_matmul_weights_only=True, grad_clip=1.0,
        num_iterations=10, steps_per_iteration=0, rtg_scale=1.0), "the optimisation")
    eval: EvalConfig = setting(EvalConfig(episodes=10, targets=[90.0], sample_actions=True, max_ep_len=27_000),
                               "the evaluation")
    run: RunConfig = setting(RunConfig(), "the run directory and its logs")


Config = TypeVar("Config", GymConfig, AtariConfig)


def load_config(schema: type[Config], path: str | Path | None = None,
                overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- protocol (protocols.py) <- `key=value` overrides, checked against the dataclass."""
    defaults = OmegaConf.structured(schema)
    from_file, from_overrides = [], []  # (where the values came from, the values)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        from_file.append((str(path), _parsed(lambda: OmegaConf.load(path), str(path), defaults)))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value (e.g. train.batch_size=32), got {bad}")
        where = "key=value overrides"
        from_overrides.append((where, _parsed(lambda: OmegaConf.from_dotlist(list(overrides)), where, defaults)))
    merged = _merged(defaults, from_file + from_overrides)  # to read the env and the protocol
    # The protocol's switch values go over the file and under the key=value overrides, which win.
    kind = "atari" if schema is AtariConfig else "gym"
    env = str(merged.game).lower() if kind == "atari" else str(merged.env)
    protocol = str(merged.protocol)
    try:
        protocol_values = protocols.overlay(protocol, kind, env)
    except ValueError as err:  # blame the layer that set the protocol: the overrides win over the file
        where = ("key=value overrides" if any(o.strip().startswith("protocol=") for o in overrides or [])
                 else path or "defaults")
        raise ConfigError(f"invalid config ({where}): {err}") from None
    merged = _merged(defaults, [*from_file, (f"protocol={protocol}", protocol_values), *from_overrides])
    cfg = _parsed(lambda: OmegaConf.to_object(merged), str(path or "defaults"), defaults)
    validate(cfg)
    return cfg


def _merged(defaults: DictConfig, layers: list[tuple[str, Any]]) -> DictConfig:
    merged = defaults
    for where, values in layers:
        merged = _parsed(lambda: OmegaConf.merge(merged, values), where, defaults)
    return merged


def _parsed(step, where: str, defaults: DictConfig):
    """step(), with OmegaConf's error as one line that names the key, where it came from and the fix."""
    try:
        return step()
    except OmegaConfBaseException as err:
        raise _config_error(err, where, defaults) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # a file that is not YAML
        raise ConfigError(f"invalid config ({where}): {type(err).__name__}: {' '.join(str(err).split())}") from None


def _config_error(err: OmegaConfBaseException, where: str, defaults: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    # OmegaConf's message is its first line; the rest repeats the key and its own type names.
    message = str(getattr(err, "msg", None) or err).splitlines()[0].strip().rstrip(".")
    if not key:
        return ConfigError(f"invalid config ({where}): {message}")
    if isinstance(err, ConfigKeyError):
        parent, _, name = str(key).rpartition(".")
        section = OmegaConf.select(defaults, parent) if parent else defaults
        known = list(section.keys()) if isinstance(section, DictConfig) else []
        prefix = f"{parent}." if parent else ""
        close = difflib.get_close_matches(name, known, n=1)
        hint = (f"did you mean {prefix}{close[0]}?" if close else
                f"the keys of {parent or 'the config'} are: {', '.join(known)}" if known else "")
        return ConfigError(f"invalid config ({where}): unknown key {key}" + (f"; {hint}" if hint else ""))
    default = OmegaConf.select(defaults, str(key), default=None)
    if isinstance(default, ListConfig):  # OmegaConf's "AnyNode is not a ListConfig": a list needs brackets
        example = ",".join(str(x) for x in default) if len(default) else "..."
        return ConfigError(f"invalid config ({where}): {key} takes a list, in brackets: {key}=[{example}]")
    like = f"; expected a value like its default, {default}" if default is not None else ""
    return ConfigError(f"invalid config ({where}): {key}: {message}{like}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: GymConfig | AtariConfig) -> None:
    """What the types cannot say (and the implementations need not: the mixer name and a
    suite's own rules are checked where the run is built, see the module's docstring)."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check(m.scan_backend in SCAN_BACKENDS, f"model.scan_backend must be one of {', '.join(SCAN_BACKENDS)}, "
                                            f"got {m.scan_backend!r}")
    _check(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    for name in ("d_model", "n_layer", "n_head", "max_ep_len", "conv_window", "d_state", "d_conv", "expand",
                 "headdim", "ngroups", "chunk_size"):
        _check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}")
    inner, per_group = m.expand * m.d_model, m.headdim * m.ngroups  # mamba2: heads of headdim, in ngroups groups
    _check(m.mixer != "mamba2" or inner % per_group == 0,
           f"model.mixer=mamba2 needs expand * d_model ({inner}) to be a multiple of headdim * ngroups "
           f"({m.headdim} * {m.ngroups}); change model.headdim or model.ngroups")
    _check(m.d_model % m.n_head == 0, f"model.d_model ({m.d_model}) must be divisible by model.n_head ({m.n_head})")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    for name in ("batch_size", "context_len", "num_iterations"):
        _check(getattr(t, name) > 0, f"train.{name} must be positive, got {getattr(t, name)}")
    _check(t.steps_per_iteration >= 0, "train.steps_per_iteration must be >= 0")
    _check(t.num_threads >= 0, f"train.num_threads must be 0 (torch's and numba's defaults) or a positive "
                               f"number of threads, got {t.num_threads}")
    _check(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
    _check(t.lr_schedule in ("linear_warmup", "warmup_cosine_tokens"),
           f"train.lr_schedule must be linear_warmup or warmup_cosine_tokens, got {t.lr_schedule!r}")
    _check(t.rtg_scale > 0, "train.rtg_scale must be positive")
    _check(e.mode in EVAL_MODES, f"eval.mode must be {' or '.join(EVAL_MODES)}, got {e.mode!r}")
    _check(e.overlap in OVERLAP_CHOICES, f"eval.overlap must be one of {', '.join(OVERLAP_CHOICES)}, "
                                         f"got {e.overlap!r}")
    _check(e.episodes > 0, f"eval.episodes (per target) must be positive, got {e.episodes}")
    _check(all(math.isfinite(x) for x in e.targets),
           f"eval.targets must be all finite ([] = the suite's default), got {e.targets}")
    _check(e.every > 0, f"eval.every must be positive, got {e.every}")
    _check(e.max_ep_len > 0, f"eval.max_ep_len must be positive, got {e.max_ep_len}")
    _check(e.video_episodes >= 0, f"eval.video_episodes must be 0 (no video) or more, got {e.video_episodes}")
    parse_keep(cfg.run.keep_checkpoints)
    _check(cfg.run.log_every > 0, f"run.log_every must be positive, got {cfg.run.log_every}")
    _check(m.init in ("mamba", "release"), f"model.init must be mamba or release, got {m.init!r}")
    _check(t.padding in ("masked", "release"), f"train.padding must be masked or release, got {t.padding!r}")
    _check(t.window_start in ("random", "episode"), f"train.window_start must be random or episode, "
                                                    f"got {t.window_start!r}")
    _check(t.batch_order in ("with_replacement", "shuffled_epoch"),
           f"train.batch_order must be with_replacement or shuffled_epoch, got {t.batch_order!r}")
    _check(e.atari_resize in ("area", "linear"), f"eval.atari_resize must be area or linear, got {e.atari_resize!r}")
    _check(m.timestep_embedding in ("per_step", "global_position"),
           f"model.timestep_embedding must be per_step or global_position, got {m.timestep_embedding!r}")
    _check(e.atari_short_prefix in ("padded", "unpadded"),
           f"eval.atari_short_prefix must be padded or unpadded, got {e.atari_short_prefix!r}")
    _check(not (e.mode == "recurrent" and m.timestep_embedding == "global_position"), RECURRENT_GLOBAL_POSITION)
    _check(cfg.protocol in protocols.PROTOCOLS,
           f"protocol must be one of {', '.join(protocols.PROTOCOLS)}, got {cfg.protocol!r}")
    _check(cfg.run.wandb in ("disabled", "offline", "online"),
           f"run.wandb must be disabled, offline or online, got {cfg.run.wandb!r}")
    if isinstance(cfg, GymConfig):
        _check(cfg.env in GYM_ENV_NAMES, f"env must be {', '.join(GYM_ENV_NAMES)}, got {cfg.env!r}")
        _check(cfg.env_version in ("v4", "v5"), f"env_version must be v4 or v5, got {cfg.env_version!r}")
        _check(t.batch_order == "with_replacement",
               "train.batch_order=shuffled_epoch is the Atari release's; gym samples windows with replacement")
        _check(m.timestep_embedding == "per_step", "model.timestep_embedding=global_position is the Atari "
                                                   "release's; the gym release embeds each timestep, keep per_step")
        _check(e.atari_short_prefix == "padded", "eval.atari_short_prefix=unpadded is the Atari release's; the gym "
                                                 "release pads its evaluation windows, keep padded")
    if isinstance(cfg, AtariConfig):
        _check(t.window_start == "random", "train.window_start=episode is for gym/experiment.py; Atari keeps random")
        _check(t.padding == "masked", "train.padding=release is the gym release's padding; the Atari release "
                                      "does not pad its training windows, so Atari keeps train.padding=masked")


def flatten(tree: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts under their joined keys ({"train.betas": [0.9, 0.999], ...});
    a tuple becomes a list, as YAML and JSON read it back."""
    if not isinstance(tree, dict):
        return {prefix: list(tree) if isinstance(tree, tuple) else tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, sep, f"{prefix}{sep}{key}" if prefix else str(key)))
    return flat


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
