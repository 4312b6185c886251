"""Videos of evaluation episodes, rendered headless on this machine (MuJoCo offscreen through
EGL, the Atari emulator's screen) and decoded back: the filmed episodes are the scored ones,
and filming changes no number of the evaluation."""

import gc

import gymnasium as gym
import numpy as np
import pytest
import torch

from decision_mamba.config import AtariConfig, GymConfig, load_config
from decision_mamba.envs import make_atari_vector_env, make_gym_vector_env
from decision_mamba.evaluation import evaluate_policy
from decision_mamba.model import DecisionModel
from decision_mamba.video import MUJOCO_VIDEO_SIZE, EpisodeFrames, read_mp4, recorded_indices, write_mp4


def test_recorded_indices_are_the_first_episodes_of_each_target():
    # 3 targets x 4 episodes: target j's episodes are sub-environments 4j .. 4j+3
    assert recorded_indices(3, 4, 2) == [0, 1, 4, 5, 8, 9]
    assert recorded_indices(2, 2, 5) == [0, 1, 2, 3]  # never more than there are
    assert recorded_indices(2, 3, 0) == []


def test_write_mp4_round_trip_keeps_frames_and_size(tmp_path):
    rng = np.random.default_rng(0)
    # smooth content (a moving gradient), which H.264 keeps close to the original
    frames = [np.broadcast_to(((np.arange(64)[:, None] + 4 * t) % 256).astype(np.uint8)[..., None], (64, 48, 3))
              for t in range(10)]
    frames = [np.ascontiguousarray(f) for f in frames]
    write_mp4(tmp_path / "a.mp4", frames, fps=15)
    decoded, fps = read_mp4(tmp_path / "a.mp4")
    assert decoded.shape == (10, 64, 48, 3) and fps == 15
    assert np.abs(decoded.astype(int) - np.stack(frames)).mean() < 8
    odd = [rng.integers(0, 255, (5, 7, 3), dtype=np.uint8) for _ in range(3)]  # odd sizes are padded to even
    write_mp4(tmp_path / "odd.mp4", odd, fps=10)
    assert read_mp4(tmp_path / "odd.mp4")[0].shape == (3, 6, 8, 3)
    assert not list(tmp_path.glob("*partial*"))


def _model(obs_shape, act_dim, discrete, cfg):
    torch.manual_seed(0)
    return DecisionModel(cfg.model, obs_shape, act_dim, discrete=discrete)


def _nonconstant(frames: np.ndarray) -> bool:
    return frames.std() > 1.0 and np.abs(np.diff(frames.astype(np.int16), axis=0)).max() > 0


def test_hopper_video_is_the_scored_episode_and_changes_no_number(tmp_path):
    cfg = load_config(GymConfig, None, ["model.d_model=16", "model.n_layer=1", "train.context_len=4",
                                        "eval.episodes=1", "eval.targets=[3600,1800]", "eval.max_ep_len=12",
                                        "eval.video_episodes=1"])
    model = _model((11,), 3, False, cfg)
    mean, std = np.zeros(11, np.float32), np.ones(11, np.float32)

    def evaluate(record, video_dir=None, videos=None):
        envs = make_gym_vector_env("Hopper-v4", num_envs=2, max_episode_steps=cfg.eval.max_ep_len, record=record)
        try:
            return evaluate_policy(cfg, model, envs, 5, mean, std, video_dir=video_dir, videos=videos)
        finally:
            envs.close()

    plain = evaluate(record=())
    videos = []
    filmed = evaluate(record=recorded_indices(2, 1, 1), video_dir=tmp_path / "v", videos=videos)
    assert filmed == plain  # every float
    assert sorted(p.name for p in videos) == ["target1800_episode0.mp4", "target3600_episode0.mp4"]
    for path in videos:
        frames, fps = read_mp4(path)
        target = path.name.removeprefix("target").split("_")[0]
        # one frame after the reset and one after each step of the scored episode
        assert len(frames) == plain[target]["length_mean"] + 1
        assert frames.shape[1:] == (MUJOCO_VIDEO_SIZE, MUJOCO_VIDEO_SIZE, 3) and fps == 125
        assert _nonconstant(frames)


def test_atari_video_films_only_the_chosen_episode_and_changes_no_number(tmp_path):
    cfg = load_config(AtariConfig, None, ["model.d_model=16", "model.n_layer=1", "model.n_head=1",
                                          "train.context_len=2", "eval.episodes=2", "eval.targets=[90]",
                                          "eval.max_ep_len=30", "eval.video_episodes=1"])
    model = _model((4, 84, 84), 4, True, cfg)

    def evaluate(record, video_dir=None, videos=None):
        envs = make_atari_vector_env("Breakout", num_envs=2, seed=3, record=record)
        try:
            assert [isinstance(env, EpisodeFrames) for env in envs.envs] == [i in record for i in range(2)]
            return evaluate_policy(cfg, model, envs, 11, video_dir=video_dir, videos=videos)
        finally:
            envs.close()

    plain = evaluate(record=())
    videos = []
    filmed = evaluate(record=recorded_indices(1, 2, 1), video_dir=tmp_path / "v", videos=videos)
    assert filmed == plain
    assert [p.name for p in videos] == ["target90_episode0.mp4"]  # episode 1 is played, not filmed
    frames, fps = read_mp4(videos[0])
    assert len(frames) == 31 and frames.shape[1:] == (210, 160, 3) and fps == 15  # reset + 30 steps, not ended
    assert _nonconstant(frames)


# gymnasium's viewer, whose context never opened, fails again in its __del__
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::glfw.GLFWError")
def test_an_unusable_opengl_is_one_user_error_naming_the_fix(monkeypatch):
    from decision_mamba.video import VideoError

    # GLFW needs a display, and this machine has none: the context cannot be made, as when
    # the EGL library is missing (a missing OSMesa fails earlier, when mujoco is imported)
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    envs = make_gym_vector_env("Hopper-v4", num_envs=1, max_episode_steps=5, record=[0])
    try:
        envs.envs[0].arm()
        with pytest.raises(VideoError) as err:
            envs.reset(seed=0)
    finally:
        envs.close()
    message = str(err.value)
    del err, envs
    gc.collect()  # now, while the filter above applies
    assert "\n" not in message and "MUJOCO_GL=glfw" in message
    assert "apt-get install libegl1" in message and "eval.video_episodes=0" in message


class _HalfMadeRenderer:
    """A renderer whose context never opened, as gymnasium's OffScreenViewer without EGL: its
    __init__ fails, and its __del__ fails again when the half-made object is freed."""

    def __init__(self):
        raise RuntimeError("cannot initialize EGL")

    def __del__(self):
        raise AttributeError("'OffScreenViewer' object has no attribute 'con'")


class _RendersThenFails(gym.Env):
    """Draws `frames` frames, then its renderer fails (a later episode, not the first frame)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    render_mode = "rgb_array"

    def __init__(self, frames: int):
        self.frames = frames

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}

    def render(self):
        if self.frames == 0:
            _HalfMadeRenderer()
        self.frames -= 1
        return np.zeros((2, 2, 3), np.uint8)


def test_a_renderer_failing_mid_episode_is_one_error_without_a_stray_traceback(monkeypatch):
    import sys

    from decision_mamba.video import VideoError

    stray = []  # what Python would print as "Exception ignored in: <function ...__del__>" and a traceback
    monkeypatch.setattr(sys, "unraisablehook", stray.append)
    filmed = EpisodeFrames(_RendersThenFails(frames=2), fps=30)
    filmed.arm()
    filmed.reset(seed=0)
    filmed.step(np.zeros(1, np.float32))
    with pytest.raises(VideoError) as err:
        filmed.step(np.zeros(1, np.float32))
    message = str(err.value)
    del err
    gc.collect()  # whatever the error kept alive is freed by now
    assert "cannot initialize EGL" in message and "\n" not in message
    assert stray == []
