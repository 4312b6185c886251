"""Typed experiment configs: one dataclass per experiment, one YAML file per dataset.

A YAML file in configs/ is merged over the dataclass defaults and then the command
line's `key=value` overrides are merged over that (OmegaConf). The dataclasses are the
schema: a misspelt or unknown key, or a value of the wrong type, is a one-line error that
names the key, where it came from (the file, the protocol or the key=value overrides) and the
nearest known key or the expected kind of value. `validate()` checks what types alone cannot.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from decision_mamba import protocols
from decision_mamba.checkpoint import parse_keep
from decision_mamba.envs import GYM_ENV_NAMES
from decision_mamba.evaluation import OVERLAP_CHOICES
from decision_mamba.errors import UserError
from decision_mamba.model import RECURRENT_GLOBAL_POSITION, ModelConfig
from decision_mamba.mixers import MIXERS, describe_mixers
from decision_mamba.compute import PRECISIONS
from decision_mamba.selective_scan import BACKENDS
from decision_mamba.suites import suite_of

class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class TrainConfig:
    batch_size: int = 64  # windows per update
    context_len: int = 20  # K timesteps, 3K tokens
    learning_rate: float = 1e-4  # peak AdamW learning rate (after warm-up)
    weight_decay: float = 1e-4  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    # "linear_warmup": DT gym (warm-up over warmup_steps, then constant);
    # "warmup_cosine_tokens": DT Atari (warm-up and cosine decay counted in tokens).
    lr_schedule: str = "linear_warmup"
    warmup_steps: int = 10_000  # linear_warmup: updates to reach the peak LR
    warmup_tokens: int = 512 * 20  # warmup_cosine_tokens: tokens to reach the peak LR
    final_tokens: int = 0  # 0 = 2 * num_transitions * K * 3, as DT's Atari code
    decay_matmul_weights_only: bool = False  # True for Atari (minGPT's optimizer groups)
    grad_clip: float = 0.25  # max global gradient norm
    num_iterations: int = 10  # training iterations, each followed by an evaluation and a checkpoint
    steps_per_iteration: int = 10_000  # updates per iteration; 0 (Atari) = one epoch over the transitions
    rtg_scale: float = 1000.0  # returns-to-go are divided by this before embedding
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # torch and numba CPU threads, 0 = their defaults
    # fp32 | bf16 | fp16: autocast for the forward and loss (fp16 with a GradScaler); the
    # selective scan's state stays float32 as in mamba_ssm. fp32 is bit-deterministic on the CPU.
    precision: str = "fp32"
    # Differences from the authors' release, one switch each (decision_mamba/protocols.py):
    padding: str = "masked"  # masked (zero pads, zeroed tokens) | release (states pad = normalised 0, actions -10, tokens unmasked)
    decay_ssm_params: bool = False  # True: weight decay on Mamba's A_log and D too (release, gym)
    lr_clamp: bool = True  # False: the cosine LR climbs back after final_tokens (release, Atari)
    first_update_full_lr: bool = False  # True: update 1 at the full LR, not warm-up's 0 (release, Atari)
    batch_order: str = "with_replacement"  # with_replacement | shuffled_epoch (release, Atari: one pass per epoch)


@dataclass
class EvalConfig:
    episodes: int = 10  # per target; the paper's release uses 100
    # returns-to-go to condition on, each evaluated separately; [] = the suite's default (suites/)
    targets: list[float] = field(default_factory=lambda: [3600.0])
    mode: str = "window"  # window (recompute the K-step window) | recurrent (O(1) step)
    # on: step half of the episodes' simulators while the model acts for the other half (the
    # model gets a worker thread, at the same thread counts) | off | auto: on for
    # mode=recurrent on the CPU, where it was measured to pay (README, "Benchmarks")
    overlap: str = "auto"
    sample_actions: bool = False  # Atari samples from the softmax, gym takes the tanh output
    every: int = 1  # evaluate after every `every` iterations (and always after the last)
    max_ep_len: int = 1000  # evaluation episodes are cut after this many steps
    atari_resize: str = "area"  # area (cv2.INTER_AREA) | linear (INTER_LINEAR, the release's and DT's)
    # window mode, steps t < K: padded (the window left-padded to K steps, as in training) |
    # unpadded (the model sees only the t + 1 steps so far, the release's and DT's Atari evaluation)
    atari_short_prefix: str = "padded"
    video_episodes: int = 0  # film the first N episodes of each target at each evaluation (MP4 in <run>/videos/)


@dataclass
class RunConfig:
    out_dir: str = "runs"  # run directories are created under this folder
    name: str = ""  # "" = derived from env, dataset, mixer and seed
    wandb: str = "disabled"  # disabled | offline | online
    wandb_project: str = "decision-mamba"  # wandb project of the run
    wandb_group: str = ""  # e.g. table1/hopper-medium/dmamba (scripts set it)
    # last_and_best | N (the newest N and the best; weights only once the run ends) | all (whole)
    keep_checkpoints: str = "last_and_best"
    progress: bool = True  # tqdm progress bars
    log_every: int = 100  # write loss, LR, grad norm and throughput every N updates (train_steps.jsonl, wandb)
    resume_allow_changes: list[str] = field(default_factory=list)  # keys --resume may find changed: [train.num_iterations]


@dataclass
class GymConfig:
    env: str = "hopper"  # hopper | halfcheetah | walker2d (unused by minari: datasets)
    dataset: str = "medium"  # medium | medium-replay | medium-expert | expert | random | a path | minari:<id or path>
    env_version: str = "v4"  # gymnasium MuJoCo version used for evaluation (minari: the dataset's own)
    data_dir: str = "data"  # folder of the D4RL hdf5 files
    allow_pickle: bool = False  # .pkl datasets run code when loaded: opt in explicitly
    # A dataset whose metadata names another environment or version is refused (data/identity.py);
    # true: only warn (e.g. -v4 data evaluated on -v5 on purpose).
    allow_env_mismatch: bool = False
    drop_unterminated_tail: bool = False  # True: drop the last episode if no flag ends it (the release's)
    protocol: str = "clean"  # clean | release: a set of the switches above (decision_mamba/protocols.py)
    seed: int = 12  # seeds weights, batches and evaluation episodes
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class AtariConfig:
    game: str = "Breakout"  # Breakout | Qbert | Pong | Seaquest (any ALE game with DQN-replay data)
    data_dir: str = "data/dqn_replay"  # holds {game}/1/replay_logs/ of the DQN-replay data
    num_buffers: int = 50  # buffers are drawn from the last num_buffers of 50
    num_steps: int = 500_000  # transitions to load (1% of the 50M)
    trajectories_per_buffer: int = 10  # whole episodes read per draw of a buffer
    # Check every replay file's gzip CRC-32 and length; this decompresses each observation
    # file used to its end (data/atari_replay.py). false: only for files verified before.
    verify_checksums: bool = True
    protocol: str = "clean"  # clean | release (decision_mamba/protocols.py)
    seed: int = 123  # seeds the data draw, weights, batches and evaluation episodes
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        d_model=128, n_layer=6, n_head=8, max_ep_len=27_000))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=256, context_len=30, learning_rate=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
        lr_schedule="warmup_cosine_tokens", decay_matmul_weights_only=True, grad_clip=1.0,
        num_iterations=10, steps_per_iteration=0, rtg_scale=1.0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        episodes=10, targets=[90.0], sample_actions=True, max_ep_len=27_000))
    run: RunConfig = field(default_factory=RunConfig)


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
    """What the types cannot say."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check(m.mixer in MIXERS, f"model.mixer must be one of {describe_mixers()}, got {m.mixer!r}")
    _check(m.scan_backend in BACKENDS, f"model.scan_backend must be one of {', '.join(BACKENDS)}, "
                                       f"got {m.scan_backend!r}")
    _check(t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    for name in ("d_model", "n_layer", "n_head", "max_ep_len", "conv_window", "d_state", "d_conv", "expand"):
        _check(getattr(m, name) > 0, f"model.{name} must be positive, got {getattr(m, name)}")
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
    _check(e.mode in ("window", "recurrent"), f"eval.mode must be window or recurrent, got {e.mode!r}")
    _check(e.mode == "window" or MIXERS[m.mixer].recurrent,
           f"eval.mode=recurrent needs a mixer with a recurrent step; {m.mixer} has none: use eval.mode=window")
    _check(e.overlap in OVERLAP_CHOICES, f"eval.overlap must be one of {', '.join(OVERLAP_CHOICES)}, "
                                         f"got {e.overlap!r}")
    _check(e.episodes > 0, f"eval.episodes (per target) must be positive, got {e.episodes}")
    _check(all(math.isfinite(x) for x in e.targets),
           f"eval.targets must be all finite ([] = the suite's default), got {e.targets}")
    _check(e.every > 0, f"eval.every must be positive, got {e.every}")
    _check(e.max_ep_len > 0, f"eval.max_ep_len must be positive, got {e.max_ep_len}")
    _check(e.video_episodes >= 0, f"eval.video_episodes must be 0 (no video) or more, got {e.video_episodes}")
    try:
        parse_keep(cfg.run.keep_checkpoints)
    except UserError as err:
        raise ConfigError(str(err)) from None
    _check(cfg.run.log_every > 0, f"run.log_every must be positive, got {cfg.run.log_every}")
    _check(m.init in ("mamba", "release"), f"model.init must be mamba or release, got {m.init!r}")
    _check(t.padding in ("masked", "release"), f"train.padding must be masked or release, got {t.padding!r}")
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
    try:
        suite_of(cfg).check_config(cfg)
    except UserError as err:
        raise ConfigError(str(err)) from None
    if isinstance(cfg, AtariConfig):
        _check(t.padding == "masked", "train.padding=release is the gym release's padding; the Atari release "
                                      "does not pad its training windows, so Atari keeps train.padding=masked")


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
