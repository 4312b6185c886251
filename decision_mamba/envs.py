"""Environment factories for evaluation: MuJoCo (gym) and Atari.

Atari follows the evaluation protocol of the Decision Transformer Atari code
(docs/protocol.md): ALE with sticky actions off and the minimal action set; each action
repeated for 4 frames, the observation being the max of the last two; grayscale, 84x84;
a stack of the last 4 observations that starts from zeros; 0 to 29 random no-ops after
each reset; the episode ends at game over (a lost life is not terminal) or after
108,000 frames. Observations are (4, 84, 84) uint8: the model divides by 255.

Two deliberate differences from DT's own environment class, both to match the frames of
the DQN-replay training data (dopamine's preprocessing) instead of DT's evaluation code:
frames are resized with cv2.INTER_AREA (DT evaluates with INTER_LINEAR), and the max of
the two last frames is taken before resizing (DT takes it after). Both come from
gymnasium's AtariPreprocessing, which does what dopamine does.

The no-op count is drawn as in DT, uniformly in 0..29 (AtariPreprocessing's own no-op
reset draws 1..30, so it is switched off and `DTNoopReset` does it instead), from the
environment's seeded generator.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from decision_mamba.config import GYM_ENV_NAMES
from decision_mamba.errors import DataError, UserError
from decision_mamba.video import MUJOCO_VIDEO_SIZE, EpisodeFrames, use_headless_gl


class UnknownGameError(UserError, ValueError):
    """The config's `game` names no Atari game of this ale-py."""

# ======================================================================================
# MuJoCo (gym) environments
# ======================================================================================
# D4RL was recorded on the mujoco-py era environments; Gymnasium's -v4 environments have
# the same models on the maintained `mujoco` bindings, -v5 fixes some bugs (and is what
# Minari's mujoco datasets were recorded on); docs/data.md.
# -v4 is chosen on purpose for D4RL data; gymnasium's advice to upgrade is noise here.
warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading", category=DeprecationWarning)


def gym_env_id(env: str, version: str = "v4") -> str:
    """'hopper', 'v4' -> 'Hopper-v4'."""
    if env not in GYM_ENV_NAMES:
        raise ValueError(f"unknown MuJoCo environment {env!r}; choose one of {', '.join(GYM_ENV_NAMES)}")
    if version not in ("v4", "v5"):
        raise ValueError(f"environment version must be v4 or v5, got {version!r}")
    return f"{GYM_ENV_NAMES[env]}-{version}"


class PositionsOnly(gym.ObservationWrapper):
    """A MuJoCo locomotion task observed without velocities (the "-P" partially observed variant).

    Gymnasium's Hopper / HalfCheetah / Walker2d observe qpos[1:] (the x position is left out)
    then qvel: the first nq - 1 entries are the positions, read here from the MuJoCo model.
    The data is masked the same way by suites/memory.py (POSITION_DIMS).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.num_positions = int(env.unwrapped.model.nq) - 1
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[:self.num_positions], space.high[:self.num_positions],
                                                dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[:self.num_positions]


def make_gym_vector_env(env_id: str | gym.envs.registration.EnvSpec, num_envs: int, max_episode_steps: int = 1000,
                        dataset_obs_dim: int | None = None, dataset_act_dim: int | None = None,
                        record: Sequence[int] = (), positions_only: bool = False,
                        **env_kwargs: Any) -> gym.vector.VectorEnv:
    """`num_envs` copies of a continuous-control environment stepped together, without auto-reset.

    env_id: a registered id ('Hopper-v4') or a full EnvSpec (a Minari dataset's, with its
    kwargs and entry point). Dict observations (mazes, kitchen) are flattened by gymnasium's
    FlattenObservation, the same order as the data's (data.d4rl.flatten_observations).
    Sub-environment i is seeded with seed + i by `reset(seed=seed)`; those in `record` can
    be filmed (decision_mamba/video.py: rendered only while a recording is asked for). When the dataset's
    observation and action sizes are given they are checked against the environment's,
    so that a dataset evaluated in the wrong environment fails here and not as a
    shape error deep inside the model. positions_only: observed through PositionsOnly.
    """
    if isinstance(env_id, str) and env_id not in gym.registry:
        raise ValueError(f"unknown gymnasium environment {env_id!r}; expected e.g. Hopper-v4, HalfCheetah-v4, "
                         f"Walker2d-v4 (or -v5)")
    name = env_id if isinstance(env_id, str) else env_id.id
    probe = _make_flat(env_id, max_episode_steps, env_kwargs, positions_only=positions_only)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    if dataset_obs_dim is not None and dataset_obs_dim != obs_dim:
        raise DataError(f"the dataset has observation size {dataset_obs_dim} but {name} has {obs_dim}: "
                         f"is the dataset from another environment? (check the config's env and dataset)")
    if dataset_act_dim is not None and dataset_act_dim != act_dim:
        raise DataError(f"the dataset has action size {dataset_act_dim} but {name} has {act_dim}: "
                         f"is the dataset from another environment? (check the config's env and dataset)")
    return gym.vector.SyncVectorEnv([functools.partial(_make_flat, env_id, max_episode_steps, env_kwargs, i in record,
                                                       positions_only)
                                     for i in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def _make_flat(env_id: str | gym.envs.registration.EnvSpec, max_episode_steps: int,
               env_kwargs: dict[str, Any], filmed: bool = False, positions_only: bool = False) -> gym.Env:
    if filmed:
        use_headless_gl()
        env_kwargs = {**env_kwargs, "render_mode": "rgb_array", "width": MUJOCO_VIDEO_SIZE, "height": MUJOCO_VIDEO_SIZE}
    try:
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **env_kwargs)
    except ModuleNotFoundError as error:  # an EnvSpec's entry point names a package that is not installed
        raise UserError(f"cannot make the environment {getattr(env_id, 'id', env_id)}: {error}; install its "
                        f"package (mazes, kitchen, Adroit: pip install -e '.[robotics]')") from None
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    if positions_only:
        env = PositionsOnly(env)
    if filmed:
        env = EpisodeFrames(env, fps=env.metadata["render_fps"])  # Hopper: 125 steps per simulated second
    return env


# ======================================================================================
# Atari
# ======================================================================================

ATARI_FRAME_STACK = 4
ATARI_FRAME_SKIP = 4
ATARI_SCREEN_SIZE = 84
DT_NOOP_MAX = 30  # DT draws random.randrange(30): 0..29 no-ops
DT_MAX_EPISODE_FRAMES = 108_000  # 30 minutes of play at 60 frames per second

# Size of the minimal action set the DQN-replay agents played with: actions in the data
# are indices into it, so the evaluation environment must have the same set.
DQN_REPLAY_NUM_ACTIONS = {"Breakout": 4, "Qbert": 6, "Pong": 6, "Seaquest": 18}


@functools.cache
def _register_ale() -> None:
    # ale_py is imported only here, so MuJoCo users never load the emulator.
    import ale_py

    # ALE prints its banner on stderr at the first emulator; errors only, so that a user
    # error stays the one line on stderr (decision_mamba/errors.py).
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gym.register_envs(ale_py)


def atari_env_id(game: str) -> str:
    """The gymnasium id ``ALE/{Game}-v5`` of a game ("Breakout", also "breakout", "ms_pacman")."""
    _register_ale()
    games = {
        env_id[len("ALE/"):-len("-v5")]
        for env_id in gym.registry
        if env_id.startswith("ALE/") and env_id.endswith("-v5")
    }
    if game in games:
        return f"ALE/{game}-v5"
    by_simple_name = {name.lower(): name for name in games}
    simple = game.replace("_", "").replace("-", "").lower()
    if simple in by_simple_name:
        return f"ALE/{by_simple_name[simple]}-v5"
    close = difflib.get_close_matches(game, sorted(games), n=5, cutoff=0.5)
    if close:
        hint = f"did you mean {', '.join(close)}?"
    else:
        hint = f"known games include {', '.join(sorted(DQN_REPLAY_NUM_ACTIONS))}"
    raise UnknownGameError(f"unknown Atari game {game!r}: no gymnasium environment ALE/{game}-v5 ({hint}); "
                           "set the config's game")


class DTNoopReset(gym.Wrapper):
    """After each reset, take 0..noop_max-1 no-op frames (uniform), as DT does.

    Sits directly on the frame-skip-1 ALE environment, so each no-op is one emulator
    frame. The count comes from the environment's own generator, which reset(seed=...)
    seeds: a seed fixes the whole sequence of no-op counts.
    """

    def __init__(self, env: gym.Env, noop_max: int = DT_NOOP_MAX):
        super().__init__(env)
        if noop_max < 1:
            raise ValueError(f"noop_max must be at least 1 (it draws 0..noop_max-1 no-ops), got {noop_max}")
        if env.unwrapped.get_action_meanings()[0] != "NOOP":
            raise ValueError("action 0 of this environment is not NOOP; no-op resets need it")
        self.noop_max = noop_max

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        num_noops = int(self.env.unwrapped.np_random.integers(0, self.noop_max))
        for _ in range(num_noops):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # a game that ends during the no-ops starts again
                obs, info = self.env.reset(options=options)
        info["noops"] = num_noops
        return obs, info


class SeedFirstReset(gym.Wrapper):
    """Use `seed` for the first reset() that is given none; later resets continue its stream.

    Lets a factory take a seed (as gymnasium vector envs expect) without resetting the
    environment itself.
    """

    def __init__(self, env: gym.Env, seed: int):
        super().__init__(env)
        self._first_seed: int | None = seed
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        return self.env.reset(seed=seed, options=options)


class _LinearResizePreprocessing(AtariPreprocessing):
    """AtariPreprocessing with cv2.INTER_LINEAR, the release's (and DT's) resize, for eval.atari_resize=linear.

    Same max-pooling of the last two frames as the parent, then the resize (the release
    resizes each frame before pooling: its pixels can still differ by the rounding).
    """

    def _get_obs(self) -> np.ndarray:
        import cv2

        if self.frame_skip > 1:
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        return np.asarray(cv2.resize(self.obs_buffer[0], self.screen_size, interpolation=cv2.INTER_LINEAR),
                          dtype=np.uint8)


RESIZE_WRAPPERS = {"area": AtariPreprocessing, "linear": _LinearResizePreprocessing}


def make_atari_env(game: str, seed: int, max_episode_frames: int = DT_MAX_EPISODE_FRAMES,
                   resize: str = "area", film: bool = False) -> gym.Env:
    """One Atari environment with the DT evaluation protocol (see the module docstring).

    obs: (4, 84, 84) uint8, oldest frame first; actions: indices into the minimal action
    set; rewards: raw game score (not clipped); terminated at game over; truncated after
    max_episode_frames emulator frames (no-ops included). The first reset() uses `seed`.
    film: wrapped in video.EpisodeFrames (the RGB screen after each agent step).
    """
    if max_episode_frames <= 0:
        raise ValueError(f"max_episode_frames must be positive, got {max_episode_frames}")
    if resize not in RESIZE_WRAPPERS:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_WRAPPERS)}, got {resize!r}")
    env = gym.make(
        atari_env_id(game),
        frameskip=1,  # the 4-frame skip with max pooling is AtariPreprocessing's
        repeat_action_probability=0.0,  # sticky actions off
        full_action_space=False,
        max_num_frames_per_episode=max_episode_frames,
        obs_type="grayscale",  # AtariPreprocessing reads the screen itself; skip the RGB copy
        render_mode="rgb_array" if film else None,  # render() reads the RGB screen, nothing else changes
    )
    env = DTNoopReset(env, DT_NOOP_MAX)
    env = RESIZE_WRAPPERS[resize](
        env,
        noop_max=0,  # done by DTNoopReset (0..29 as DT, instead of 1..30)
        frame_skip=ATARI_FRAME_SKIP,
        screen_size=ATARI_SCREEN_SIZE,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    env = FrameStackObservation(env, ATARI_FRAME_STACK, padding_type="zero")
    env = SeedFirstReset(env, seed)
    _check_action_set(game, env)
    if film:  # one frame per agent step: 60 emulator frames a second / frame skip
        env = EpisodeFrames(env, fps=60 / ATARI_FRAME_SKIP)
    return env


def _check_action_set(game: str, env: gym.Env) -> None:
    name = atari_env_id(game)[len("ALE/"):-len("-v5")]
    expected = DQN_REPLAY_NUM_ACTIONS.get(name)
    if expected is not None and env.action_space.n != expected:
        raise RuntimeError(
            f"{name}: this ALE has a minimal action set of {env.action_space.n} actions but the DQN-replay "
            f"data uses {expected}; the actions would mean different buttons (check the ale-py version)"
        )


@functools.cache
def num_actions(game: str) -> int:
    """Size of the game's minimal action set (Breakout 4, Qbert 6, Pong 6, Seaquest 18)."""
    env = gym.make(atari_env_id(game), full_action_space=False)
    try:
        _check_action_set(game, env)
        return int(env.action_space.n)
    finally:
        env.close()


def make_atari_vector_env(
    game: str, num_envs: int, seed: int, max_episode_frames: int = DT_MAX_EPISODE_FRAMES, resize: str = "area",
    record: Sequence[int] = (),
) -> gym.vector.SyncVectorEnv:
    """num_envs copies of make_atari_env, sub-environment i seeded with seed + i (filmed if i in `record`).

    Autoreset is off: a finished sub-environment must be reset by the caller with
    ``reset(options={"reset_mask": done})`` before the next step (evaluation counts
    episodes, so it decides when a new one starts). Sub-environment i behaves exactly as
    make_atari_env(game, seed + i), which is also what ``reset(seed=seed)`` gives.

    Why not ale_py's AtariVectorEnv: with noop_max=0, reward_clipping=False and
    use_fire_reset=False its observations equal ours step for step (checked on
    Breakout), but its no-op count and seeding live in C++ with their own generator, so
    it cannot reproduce DT's 0..29 no-ops or match make_atari_env for a seed, and its
    defaults (clipped rewards, FIRE at reset) would silently change the protocol.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    atari_env_id(game)  # fail here, with a clear message, rather than inside a sub-environment
    env_fns = [functools.partial(make_atari_env, game, seed + i, max_episode_frames, resize, i in record)
               for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)

