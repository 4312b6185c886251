"""Videos of evaluation episodes: MP4 files of the very episodes that were scored.

    eval.video_episodes=N     (training) the first N episodes of every target, at every evaluation,
                              in <run dir>/videos/iter_NNN/, and in wandb when it is on
    python -m decision_mamba.evaluate RUN_DIR --video DIR [--video-episodes N]

A recorded sub-environment is the same environment as the others, made with
`render_mode="rgb_array"` and wrapped in `EpisodeFrames`, which renders only while a
recording is asked for: rendering reads the simulator's state and draws no random
number, so the scores are those of an evaluation without video (tests/test_video.py
checks it number for number). MuJoCo draws offscreen through OpenGL: `MUJOCO_GL=egl`
(the default set here when it is unset) needs the EGL library (Debian/Ubuntu: libegl1),
`MUJOCO_GL=osmesa` the OSMesa one (libosmesa6). Atari frames are the emulator's RGB
screen (210 x 160) after each agent step, that is every 4th frame. The files are H.264
MP4 written by imageio-ffmpeg, whose wheel ships an ffmpeg binary.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from decision_mamba.errors import UserError

VIDEO_DIR = "videos"  # under the run directory
MUJOCO_VIDEO_SIZE = 240  # pixels, square: MuJoCo's software rendering costs the same at 480


class VideoError(UserError, RuntimeError):
    """A video cannot be rendered or written on this machine; the message names the fix."""


def iteration_video_dir(run_dir: Path, iteration: int) -> Path:
    """Where training writes the videos of the evaluation after `iteration`."""
    return Path(run_dir) / VIDEO_DIR / f"iter_{iteration:03d}"


def recorded_indices(num_targets: int, episodes: int, video_episodes: int) -> list[int]:
    """The sub-environments to film: the first `video_episodes` episodes of every target.

    Episode k of target j runs in sub-environment j * episodes + k (evaluate_policy
    repeats each target `episodes` times)."""
    per_target = min(video_episodes, episodes)
    return [j * episodes + k for j in range(num_targets) for k in range(per_target)]


def use_headless_gl() -> None:
    """MuJoCo renders offscreen with EGL unless MUJOCO_GL says otherwise (gymnasium reads it
    when the first frame is drawn; unset, it would try a GLFW window first)."""
    os.environ.setdefault("MUJOCO_GL", "egl")


class EpisodeFrames(gym.Wrapper):
    """Renders the first episode that starts after `arm()`, one frame per reset and step.

    The evaluation resets a finished sub-environment and steps it on to keep the batch
    rectangular (evaluation._step_lockstep); those steps belong to no scored episode and
    are not filmed.
    """

    def __init__(self, env: gym.Env, fps: float):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"EpisodeFrames needs an environment made with render_mode='rgb_array', "
                             f"got {env.render_mode!r}")
        self.fps = float(fps)
        self.state = "off"  # off | armed (waits for a reset) | recording | done
        self.frames: list[np.ndarray] = []

    def arm(self) -> None:
        self.state, self.frames = "armed", []

    def disarm(self) -> list[np.ndarray]:
        frames, self.state, self.frames = self.frames, "off", []
        return frames

    def _capture(self) -> None:
        frame, error = _draw(self.env, self.env.render)
        if error is not None:
            raise error
        self.frames.append(np.asarray(frame, dtype=np.uint8))

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if self.state == "armed":
            self.state = "recording"
            self._capture()
        elif self.state == "recording":
            self.state = "done"
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.state == "recording":
            self._capture()
            if terminated or truncated:
                self.state = "done"
        return obs, reward, terminated, truncated, info


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """H.264 MP4 (yuv420p, which every player reads) of (H, W, 3) uint8 frames."""
    import imageio_ffmpeg

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    height, width = frames[0].shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.mp4")  # ffmpeg picks the container by the suffix
    try:
        # macro_block_size=2: yuv420p needs even sizes; keep Atari's 210 x 160 rather than pad it to 224 x 160.
        writer = imageio_ffmpeg.write_frames(str(partial), (width + width % 2, height + height % 2), fps=fps,
                                             codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2,
                                             ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            if frame.shape[0] % 2 or frame.shape[1] % 2:  # pad odd sizes by one black row / column
                frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    except (RuntimeError, OSError) as err:  # no ffmpeg binary, or ffmpeg refused
        partial.unlink(missing_ok=True)
        raise VideoError(f"could not write {path} with imageio-ffmpeg: {err}; reinstall imageio-ffmpeg "
                         f"(pip install imageio-ffmpeg) or set IMAGEIO_FFMPEG_EXE to an ffmpeg binary") from None
    os.replace(partial, path)
    return path


@contextmanager
def record_episodes(envs: gym.vector.VectorEnv, directory: Path | None,
                    name_of: Callable[[int], str]) -> Iterator[list[Path]]:
    """Film, during the block, the first episode of every sub-environment wrapped in
    EpisodeFrames; afterwards write `directory/name_of(i).mp4` for each. The list it yields
    is filled with the files' paths when the block ends. `directory=None`: nothing."""
    written: list[Path] = []
    recorders = {i: env for i, env in enumerate(getattr(envs, "envs", ())) if isinstance(env, EpisodeFrames)}
    if directory is None or not recorders:
        yield written
        return
    for recorder in recorders.values():
        recorder.arm()
    try:
        yield written
    except BaseException:
        for recorder in recorders.values():
            recorder.disarm()
        raise
    for i, recorder in recorders.items():
        frames = recorder.disarm()
        if frames:
            written.append(write_mp4(Path(directory) / f"{name_of(i)}.mp4", frames, recorder.fps))


def read_mp4(path: Path) -> tuple[np.ndarray, float]:
    """All frames of an MP4 as (T, H, W, 3) uint8, and its frame rate (for tests and checks)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8), float(meta["fps"])


def check_rendering(envs: gym.vector.VectorEnv) -> None:
    """Draw one frame of the first filmed sub-environment (if any), so that a machine that
    cannot render (no usable EGL or OSMesa) is found before training, not after its first
    iteration. Drawn by the unwrapped environment (the wrappers refuse a frame before the
    first reset); rendering reads the simulator's state and changes nothing."""
    for env in getattr(envs, "envs", ()):
        if isinstance(env, EpisodeFrames):
            error = _first_frame_error(env)
            if error is not None:
                raise error
            return


def _first_frame_error(env: gym.Env) -> VideoError | None:
    return _draw(env, env.unwrapped.render)[1]


def _draw(env: gym.Env, render: Callable[[], Any]) -> tuple[Any, VideoError | None]:
    """(render(), None), or (None, the one-line error) where OpenGL (EGL / OSMesa / GLFW) is
    missing or unusable, at the first frame or any later one. A renderer half-made by the
    failure (gymnasium's OffScreenViewer without its GL context) fails again when it is freed,
    printing a traceback nobody can act on: it is freed here, silenced, before the error is
    raised (raised inside the except block, the error would keep it alive as its context)."""
    try:
        return render(), None
    except Exception as err:
        hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None
        error = _render_error(env, err)
    try:
        gc.collect()  # err and its traceback are gone; what they held is freed now
    finally:
        sys.unraisablehook = hook
    return None, error


def _render_error(env: gym.Env, err: Exception) -> VideoError:
    return VideoError(
        f"could not render {env.spec.id if env.spec else 'the environment'} offscreen "
        f"(MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}): {type(err).__name__}: {err}; install the EGL "
        f"library (Debian/Ubuntu: apt-get install libegl1) or OSMesa (libosmesa6, then MUJOCO_GL=osmesa), "
        f"or turn videos off (eval.video_episodes=0)")
