"""DQN-replay (Atari) data: the dopamine checkpoint layout and the Decision Transformer
training set built from it (docs/data.md).

Layout
------
``{root}/{Game}/1/replay_logs/`` holds, for each buffer index n in 0..49, six gzip files
``$store$_{observation,action,reward,terminal}_ckpt.{n}.gz``, ``add_count_ckpt.{n}.gz``
and ``invalid_range_ckpt.{n}.gz``; each is one ``.npy`` array inside gzip:

    observation   (C, 84, 84) uint8   single grayscale frames (no stacking)
    action        (C,) int32          index into the game's minimal action set
    reward        (C,) float32        clipped to [-1, 1] by the collecting agent
    terminal      (C,) uint8          1 at an episode's last step
    add_count     () int64            rows ever added, padding included
    invalid_range (5,) int64          rows next to the write cursor (not used here)

Two conventions of dopamine's circular replay buffer matter when reading it:

* It is circular with capacity C (1,000,000 in the published data): ``cursor = add_count
  % C`` is the next row to be written, so once ``add_count >= C`` the rows [cursor, C)
  are *older* than the rows [0, cursor).
* Before each episode it adds ``stack_size - 1 = 3`` zero transitions (zero frame,
  action 0, reward 0, terminal 0) so that a state, the stack of the last 4 frames, is
  zero-padded at the episode start. These padding rows are not agent steps.

The Decision Transformer procedure and how this loader differs
---------------------------------------------------------------
DT (followed by DC and DMamba) draws a buffer at random among the last ``num_buffers``,
reads consecutive rows of its first 100,000 from where the previous read of that buffer
stopped (row 0 at first) until ``trajectories_per_buffer`` episodes have ended, and
repeats while fewer than ``num_steps`` transitions are loaded. We keep that procedure
and fix its flaws:

1. Off-by-one: DT counts the episodes down to 0 and stops at the *next* terminal, so it
   takes ``trajectories_per_buffer + 1`` episodes per read. Here a read takes exactly
   ``trajectories_per_buffer`` episodes.
2. Partial reads: when a read reaches the end of the window, DT drops its transitions
   but keeps the episode ends it recorded, so later episode boundaries point into the
   wrong data. Here such a read is dropped as a whole (episodes and all) and the buffer
   is not drawn again (DT would draw it again and fail again; with every buffer used up
   it loops forever, where we raise an error).
3. Frame stacks: DT's stacks at rows 0..2 wrap around to the end of the buffer, and the
   stacks of the padding rows mix the previous episode's last frames with zeros. Here
   `FrameStackStore` zero-pads every stack before its episode's first frame.
4. Complete episodes only: DT starts at row 0, usually in the middle of an episode whose
   beginning was overwritten, and counts that fragment as an episode; it also reads
   across the cursor, splicing the newest and the oldest data into one "episode". Here a
   window is cut at the cursor, and the rows before the first terminal of each part are
   skipped (unless the part starts at the very first row the buffer ever held,
   ``add_count <= C``), so every episode loaded is whole.
5. Padding rows: DT keeps dopamine's 3 padding transitions as the first steps of each
   episode (action 0, reward 0), which shifts every timestep by 3 with respect to
   evaluation. Here they are dropped: timestep 0 is the first real frame.
6. ``num_steps``: as in DT, reads continue while fewer than ``num_steps`` transitions are
   loaded, so the total is at least ``num_steps`` and exceeds it by less than one read
   (``trajectories_per_buffer`` episodes).

Memory: DT keeps a (4, 84, 84) stack per transition, four copies of every frame (about
14 GB for 500,000 transitions). `FrameStackStore` keeps each frame once (3.5 GB) and
builds the stacks at sample time. The loader plans every read from the small action /
reward / terminal arrays first, then decompresses each buffer's observation file once,
only up to the last row it needs, straight into the final frame array.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from decision_mamba.data.trajectories import Trajectories
from decision_mamba.errors import DataError, UserError

FRAME_SHAPE = (84, 84)
STACK_SIZE = 4  # frames per state
PADDING_ROWS = STACK_SIZE - 1  # zero transitions dopamine adds before every episode
UPDATE_HORIZON = 1  # of the collecting DQN agent; only used to write invalid_range

STORE_ARRAYS = ("observation", "action", "reward", "terminal")
OTHER_ARRAYS = ("add_count", "invalid_range")
# dtype and per-row shape of each $store$ array, as dopamine writes them.
STORE_SPECS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "observation": (np.dtype(np.uint8), FRAME_SHAPE),
    "action": (np.dtype(np.int32), ()),
    "reward": (np.dtype(np.float32), ()),
    "terminal": (np.dtype(np.uint8), ()),
}

_LAYOUT_HINT = (
    "expected the DQN-replay layout {root}/{game}/1/replay_logs/$store$_<name>_ckpt.<n>.gz "
    "(name in observation, action, reward, terminal) plus add_count_ckpt.<n>.gz and "
    "invalid_range_ckpt.<n>.gz; download a game with "
    "`python -m decision_mamba.data.download dqn-replay {game} --data-dir {root}`"
)
_READ_CHUNK_ROWS = 1024  # frames decompressed per read when skipping rows (7 MB)


class ReplayFileError(UserError, ValueError):
    """A DQN-replay file is missing, truncated or holds an unexpected array."""


# ----- paths ---------------------------------------------------------------------------


def replay_dir(root: str | os.PathLike, game: str) -> Path:
    """``{root}/{game}/1/replay_logs``: where the checkpoints of run 1 of a game live."""
    return Path(root) / game / "1" / "replay_logs"


def replay_file(root: str | os.PathLike, game: str, name: str, index: int) -> Path:
    """Path of one checkpoint file; name is a $store$ array or add_count / invalid_range."""
    if name in STORE_ARRAYS:
        filename = f"$store$_{name}_ckpt.{index}.gz"
    elif name in OTHER_ARRAYS:
        filename = f"{name}_ckpt.{index}.gz"
    else:
        raise ValueError(f"unknown replay array {name!r}; expected one of {STORE_ARRAYS + OTHER_ARRAYS}")
    return replay_dir(root, game) / filename


def _check_files_exist(root: str | os.PathLike, game: str, indices: Iterable[int]) -> None:
    missing = [
        replay_file(root, game, name, index)
        for index in indices
        for name in STORE_ARRAYS + OTHER_ARRAYS
        if not replay_file(root, game, name, index).is_file()
    ]
    if missing:
        indices = list(indices)
        shown = ", ".join(str(path) for path in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        # The loader reads the last num_buffers buffers: those complete at the top end could do.
        incomplete = {index for index in indices for name in STORE_ARRAYS + OTHER_ARRAYS
                      if not replay_file(root, game, name, index).is_file()}
        complete_at_top = 0
        for index in sorted(indices, reverse=True):
            if index in incomplete:
                break
            complete_at_top += 1
        fewer = (f"; or set num_buffers={complete_at_top} to read only buffers "
                 f"{indices[-complete_at_top]}..{indices[-1]}, which are complete" if complete_at_top else "")
        raise ReplayFileError(
            f"{len(missing)} DQN-replay file(s) missing: {shown}{more}; "
            + _LAYOUT_HINT.format(root=root, game=game) + fewer
        )


# ----- reading one .npy inside gzip, row by row -----------------------------------------


class _GzipNpyReader:
    """Reads the .npy array of a gzip file row by row, decompressing only what is asked.

    np.load on a GzipFile would decompress the whole array; an observation file holds
    1,000,000 frames (7 GB) of which DT uses at most the first 100,000. The .npy header
    is parsed with numpy's own format reader; pickled (object) arrays are refused.
    """

    def __init__(
        self,
        path: Path,
        expected_dtype: np.dtype | None = None,
        expected_row_shape: tuple[int, ...] | None = None,
        *,
        verify: bool = True,
    ):
        self.path = path
        self.verify = verify  # leaving a `with` block reads the rest and checks the CRC (verify_to_end)
        self._file: BinaryIO = gzip.open(path, "rb")
        try:
            with _named_read_errors(self.path):
                version = np.lib.format.read_magic(self._file)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(self._file)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(self._file)
                else:
                    raise ReplayFileError(f"{path}: unsupported .npy format version {version}")
            if dtype.hasobject:
                raise ReplayFileError(f"{path}: holds a pickled object array ({dtype}), which is never loaded")
            if fortran_order and len(shape) > 1:
                raise ReplayFileError(f"{path}: the array is stored in Fortran order; dopamine writes C order")
            self.shape: tuple[int, ...] = tuple(shape)
            self.dtype: np.dtype = dtype
            if expected_dtype is not None and dtype.newbyteorder("=") != expected_dtype:
                raise ReplayFileError(f"{path}: expected dtype {expected_dtype}, found {dtype}")
            if expected_row_shape is not None and (
                len(self.shape) != 1 + len(expected_row_shape) or self.shape[1:] != expected_row_shape
            ):
                expected = ", ".join(map(str, ("C",) + expected_row_shape))
                raise ReplayFileError(f"{path}: expected an array of shape ({expected}), found {self.shape}")
        except BaseException:
            self._file.close()
            raise
        self.rows_read = 0

    @property
    def num_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def read_into(self, out: np.ndarray) -> None:
        """Fill out (rows, *row_shape), a C-contiguous array of this file's dtype, with the next rows."""
        if len(out) > self.num_rows - self.rows_read:
            raise ValueError(f"{self.path}: asked for rows up to {self.rows_read + len(out)} of {self.num_rows}")
        target = memoryview(out.view(np.uint8).reshape(-1))  # (rows * row_bytes,)
        filled = 0
        with _named_read_errors(self.path):
            while filled < len(target):
                count = self._file.readinto(target[filled:])
                if not count:
                    raise ReplayFileError(
                        f"{self.path}: the file ends after {self.rows_read} complete rows of the "
                        f"{self.num_rows} its header announces (truncated download?); delete it and download it again"
                    )
                filled += count
        self.rows_read += len(out)

    def read(self, rows: int | None = None) -> np.ndarray:
        """The next `rows` rows (all remaining rows if None), in the native byte order."""
        rows = self.num_rows - self.rows_read if rows is None else rows
        out = np.empty((rows,) + self.shape[1:], dtype=self.dtype)
        self.read_into(out)
        if not self.shape:
            out = out.reshape(())
        return out.astype(self.dtype.newbyteorder("="), copy=False)

    def skip(self, rows: int) -> None:
        """Decompress and drop the next `rows` rows (gzip cannot seek without decompressing)."""
        scratch = np.empty((min(rows, _READ_CHUNK_ROWS),) + self.shape[1:], dtype=self.dtype)
        while rows > 0:
            step = min(rows, len(scratch))
            self.read_into(scratch[:step])
            rows -= step

    def verify_to_end(self) -> None:
        """Decompress the rest of the file and check gzip's CRC-32 and length of the whole stream.

        gzip checks both only when the stream is read to its end; a reader that stops at
        the rows it needs would never see a flipped byte (it changes frames silently) or
        a cut-off end. Nothing may follow the array.
        """
        self.skip(self.num_rows - self.rows_read)
        with _named_read_errors(self.path):
            trailing = self._file.read(1)  # b"" at the end, after gzip's CRC and length checks
        if trailing:
            raise ReplayFileError(f"{self.path}: data follows the .npy array its header announces; "
                                  "the file is corrupt: delete it and download it again")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "_GzipNpyReader":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is None and self.verify:
                self.verify_to_end()
        finally:
            self.close()


@contextlib.contextmanager
def _named_read_errors(path: Path) -> Iterator[None]:
    """Turns the errors of a damaged gzip / .npy stream into a ReplayFileError naming the file."""
    try:
        yield
    except ReplayFileError:
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ReplayFileError(
            f"{path}: the gzip stream is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "delete the file and download it again"
        ) from exc
    except ValueError as exc:  # numpy's .npy header parser
        raise ReplayFileError(f"{path}: not a .npy array inside gzip ({exc})") from exc


def _read_scalar_count(path: Path) -> int:
    with _GzipNpyReader(path) as reader:
        if reader.dtype.kind not in "iu" or reader.num_rows != 1 or len(reader.shape) > 1:
            raise ReplayFileError(
                f"{path}: expected a single integer (dopamine's add_count), found {reader.dtype} {reader.shape}"
            )
        value = int(reader.read().reshape(()))
    if value < 0:
        raise ReplayFileError(f"{path}: add_count is negative ({value})")
    return value


# ----- one whole buffer: reader and writer ----------------------------------------------


@dataclass(frozen=True, eq=False)
class ReplayBuffer:
    """The six arrays of one DQN-replay checkpoint, as stored."""

    observations: np.ndarray  # (C, 84, 84) uint8
    actions: np.ndarray  # (C,) int32
    rewards: np.ndarray  # (C,) float32
    terminals: np.ndarray  # (C,) uint8
    add_count: int
    invalid_range: np.ndarray  # (STACK_SIZE + UPDATE_HORIZON,) int64


def read_replay_buffer(root: str | os.PathLike, game: str, index: int, *, max_rows: int | None = None) -> ReplayBuffer:
    """Read one checkpoint (its first max_rows rows of each $store$ array, all if None)."""
    _check_files_exist(root, game, [index])
    arrays: dict[str, np.ndarray] = {}
    num_rows = None
    for name in STORE_ARRAYS:
        path = replay_file(root, game, name, index)
        dtype, row_shape = STORE_SPECS[name]
        with _GzipNpyReader(path, dtype, row_shape) as reader:
            if num_rows is not None and reader.num_rows != num_rows:
                raise ReplayFileError(f"{path}: has {reader.num_rows} rows but the observation file has {num_rows}")
            num_rows = reader.num_rows
            arrays[name] = reader.read(reader.num_rows if max_rows is None else min(max_rows, reader.num_rows))
    invalid_path = replay_file(root, game, "invalid_range", index)
    with _GzipNpyReader(invalid_path) as reader:
        if reader.dtype.kind not in "iuf" or len(reader.shape) != 1:
            raise ReplayFileError(f"{invalid_path}: expected a 1-D integer array, found {reader.dtype} {reader.shape}")
        invalid_range = reader.read().astype(np.int64)
    return ReplayBuffer(
        observations=arrays["observation"],
        actions=arrays["action"],
        rewards=arrays["reward"],
        terminals=arrays["terminal"],
        add_count=_read_scalar_count(replay_file(root, game, "add_count", index)),
        invalid_range=invalid_range,
    )


# ----- the frame-stacking store ---------------------------------------------------------


class FrameStackStore:
    """States as stacks of the last 4 frames, each frame stored once.

    ``store[idx]`` for an integer index array of any shape returns idx.shape + (4, 84,
    84) uint8 stacks, oldest frame first, newest last (as gymnasium's
    FrameStackObservation). For transition i the newest frame is frames[newest_frame[i]]
    and the stack holds the num_previous[i] <= 3 frames before it; the earlier positions
    are zeros (episode start), so a stack never reaches into another episode.
    """

    def __init__(self, frames: np.ndarray, newest_frame: np.ndarray, num_previous: np.ndarray):
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 3:
            raise ValueError(f"frames must be a uint8 array (F, H, W), got {frames.dtype} {frames.shape}")
        newest_frame = np.asarray(newest_frame, dtype=np.int64)
        num_previous = np.asarray(num_previous, dtype=np.int64)
        if newest_frame.ndim != 1 or num_previous.shape != newest_frame.shape:
            raise ValueError(
                "newest_frame and num_previous must be 1-D of the same length, "
                f"got {newest_frame.shape} and {num_previous.shape}"
            )
        if len(newest_frame) and ((newest_frame < 0).any() or (newest_frame >= len(frames)).any()):
            raise ValueError(f"newest_frame must index frames (0 <= i < {len(frames)})")
        if ((num_previous < 0) | (num_previous > STACK_SIZE - 1) | (num_previous > newest_frame)).any():
            raise ValueError(f"num_previous must be in [0, {STACK_SIZE - 1}] and not reach before frame 0")
        self.frames = frames  # (F, H, W)
        self.newest_frame = newest_frame  # (N,)
        self.num_previous = num_previous.astype(np.uint8)  # (N,)

    @classmethod
    def from_episodes(cls, frames: np.ndarray, lengths: np.ndarray) -> "FrameStackStore":
        """Frames of consecutive episodes stored back to back, one frame per transition."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.sum() != len(frames):
            raise ValueError(f"episode lengths sum to {lengths.sum()} but there are {len(frames)} frames")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        timestep = np.arange(len(frames), dtype=np.int64) - np.repeat(starts, lengths)  # (N,)
        return cls(frames, np.arange(len(frames), dtype=np.int64), np.minimum(timestep, STACK_SIZE - 1))

    def __len__(self) -> int:
        return len(self.newest_frame)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), STACK_SIZE) + self.frames.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        return self.frames.dtype

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes + self.newest_frame.nbytes + self.num_previous.nbytes

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "a FrameStackStore is not converted to one array (4 copies of every frame, ~14 GB "
            "for 500k transitions); index it with an array of transition indices instead"
        )

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise IndexError(f"FrameStackStore takes integer indices or a slice, got dtype {index.dtype}")
        index = index.astype(np.int64, copy=False)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} transitions")
        index = np.where(index < 0, index + len(self), index)
        newest = self.newest_frame[index]  # (...)
        num_previous = self.num_previous[index]  # (...)
        out = np.empty(index.shape + (STACK_SIZE,) + self.frames.shape[1:], dtype=np.uint8)  # (..., 4, H, W)
        for position in range(STACK_SIZE):
            back = STACK_SIZE - 1 - position  # frames before the newest one
            present = num_previous >= back  # (...)
            source = np.where(present, newest - back, newest)  # a valid row everywhere
            out[..., position, :, :] = self.frames[source]
            out[..., position, :, :][~present] = 0
        return out

    def __repr__(self) -> str:
        return f"FrameStackStore(transitions={len(self)}, frames={len(self.frames)}, {self.nbytes / 1e9:.2f} GB)"


# ----- planning the DT reads ------------------------------------------------------------


def complete_episodes(
    terminals: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    segments: list[tuple[int, int, bool]],
    *,
    source: str = "buffer",
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the whole episodes inside the given segments of a buffer.

    segments: (begin, end, starts_episode) row ranges of consecutively added rows;
    starts_episode says that row `begin` is the first row the buffer ever held (so it
    opens with dopamine's padding). Elsewhere an episode is known to be whole only when
    the terminal before its padding is in the same segment. Returns (first_row,
    last_row) arrays; last_row is the terminal row, padding rows are excluded.
    """
    firsts, lasts = [], []
    for begin, end, starts_episode in segments:
        term_rows = np.flatnonzero(terminals[begin:end]) + begin  # (T,)
        padding_rows = term_rows + 1
        if starts_episode:
            padding_rows = np.concatenate([[begin], padding_rows])
        first_rows = padding_rows + PADDING_ROWS
        # The episode ends at the first terminal at or after its padding.
        next_term = np.searchsorted(term_rows, padding_rows)  # (P,)
        has_end = next_term < len(term_rows)
        padding_rows, first_rows, next_term = padding_rows[has_end], first_rows[has_end], next_term[has_end]
        last_rows = term_rows[next_term]
        broken = last_rows < first_rows  # a terminal inside the padding
        for offset in range(PADDING_ROWS):
            rows = np.minimum(padding_rows + offset, len(actions) - 1)
            broken |= (actions[rows] != 0) | (rewards[rows] != 0)
        if broken.any():
            row = int(padding_rows[np.flatnonzero(broken)[0]])
            raise ReplayFileError(
                f"{source}: rows {row}..{row + PADDING_ROWS - 1} follow a terminal but are not dopamine's "
                f"{PADDING_ROWS} zero padding transitions (action 0, reward 0, terminal 0); the files do not "
                "follow the DQN-replay layout (use dqn_replay_writer.add_episode_padding when writing your own)"
            )
        firsts.append(first_rows)
        lasts.append(last_rows)
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(lasts).astype(np.int64)


@dataclass
class _BufferPlan:
    """What the loader knows about one buffer before touching its observation file."""

    index: int
    actions: np.ndarray  # (W,) int32, the first W rows
    rewards: np.ndarray  # (W,) float32
    first_rows: np.ndarray  # (E,) int64, complete episodes in row order
    last_rows: np.ndarray  # (E,) int64
    next_episode: int = 0  # where the next read of this buffer starts


def _plan_buffer(root: str | os.PathLike, game: str, index: int, window_rows: int) -> _BufferPlan:
    columns: dict[str, np.ndarray] = {}
    path = replay_file(root, game, "observation", index)
    # The header is enough here: the frames (and the file's CRC) are read later, if the
    # buffer is used; its row count must match the three small files, which are verified.
    with _GzipNpyReader(path, *STORE_SPECS["observation"], verify=False) as reader:
        num_rows = reader.num_rows
    for name in ("action", "reward", "terminal"):
        path = replay_file(root, game, name, index)
        with _GzipNpyReader(path, *STORE_SPECS[name]) as reader:
            if reader.num_rows != num_rows:
                raise ReplayFileError(f"{path}: has {reader.num_rows} rows but the observation file has {num_rows}")
            columns[name] = reader.read(min(window_rows, num_rows))
    add_count = _read_scalar_count(replay_file(root, game, "add_count", index))
    # Rows that hold data: all of them once the buffer is full, else the first add_count.
    window = min(window_rows, num_rows, add_count)
    if add_count <= num_rows:
        segments = [(0, window, True)] if window > 0 else []
    else:
        cursor = add_count % num_rows
        cuts = [0, cursor, window] if 0 < cursor < window else [0, window]
        segments = [(begin, end, False) for begin, end in zip(cuts[:-1], cuts[1:]) if end > begin]
    first_rows, last_rows = complete_episodes(
        columns["terminal"], columns["action"], columns["reward"], segments,
        source=str(replay_dir(root, game) / f"$store$_{{action,reward,terminal}}_ckpt.{index}.gz"),
    )
    return _BufferPlan(index, columns["action"], columns["reward"], first_rows, last_rows)


# ----- the loader -----------------------------------------------------------------------


def load_dqn_replay(
    root: str | os.PathLike,
    game: str,
    *,
    num_buffers: int = 50,
    num_steps: int = 500_000,
    trajectories_per_buffer: int = 10,
    seed: int,
    buffer_capacity: int = 100_000,
    max_buffer_index: int = 49,
    show_progress: bool = True,
    verify_checksums: bool = True,
) -> Trajectories:
    """The DT Atari training set (see the module docstring for the procedure and fixes).

    Buffers are drawn uniformly from max_buffer_index - num_buffers + 1 .. max_buffer_index;
    only the first buffer_capacity rows of each are read. Each draw takes the next
    trajectories_per_buffer whole episodes of that buffer; draws go on while fewer than
    num_steps transitions are loaded. Deterministic for a given seed.

    Every file read is checked against its gzip CRC-32 and length, which means
    decompressing each observation file used to its end, not only to the rows needed
    (for the published 1M-row files about ten times the work of the rows DT reads).
    verify_checksums=False checks only the action, reward and terminal files (small),
    for data already verified once.

    Returns Trajectories with observations a FrameStackStore ((N, 4, 84, 84) uint8 on
    indexing), actions (N,) int64, rewards (N,) float32 as stored (clipped), and the
    episodes in the order they were drawn.
    """
    for name, value in (("num_buffers", num_buffers), ("num_steps", num_steps),
                        ("trajectories_per_buffer", trajectories_per_buffer), ("buffer_capacity", buffer_capacity)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    if max_buffer_index < 0 or num_buffers > max_buffer_index + 1:
        raise DataError(
            f"num_buffers={num_buffers} buffers cannot end at max_buffer_index={max_buffer_index} "
            f"(buffer indices start at 0): set num_buffers to at most {max_buffer_index + 1}"
        )
    candidates = range(max_buffer_index - num_buffers + 1, max_buffer_index + 1)
    _check_files_exist(root, game, candidates)
    rng = np.random.default_rng(seed)

    # 1. Plan every read from the small arrays (one pass over the terminals of each buffer drawn).
    plans: dict[int, _BufferPlan] = {}
    reads: list[tuple[_BufferPlan, int, int]] = []  # (buffer, first episode, end episode)
    available = list(candidates)
    total = 0
    while total < num_steps:
        if not available:
            raise DataError(
                f"only {total} transitions in whole episodes fit in the first {buffer_capacity} rows of "
                f"buffers {candidates.start}..{candidates.stop - 1} of {replay_dir(root, game)} "
                f"(reads of {trajectories_per_buffer} episodes); lower num_steps or trajectories_per_buffer, "
                "or raise num_buffers or buffer_capacity"
            )
        index = available[int(rng.integers(len(available)))]
        if index not in plans:
            plans[index] = _plan_buffer(root, game, index, buffer_capacity)
        plan = plans[index]
        begin, end = plan.next_episode, plan.next_episode + trajectories_per_buffer
        if end > len(plan.first_rows):
            # Not enough whole episodes left: the read is dropped as a whole, and the
            # buffer is not drawn again.
            available.remove(index)
            continue
        plan.next_episode = end
        reads.append((plan, begin, end))
        total += int((plan.last_rows[begin:end] - plan.first_rows[begin:end] + 1).sum())

    # 2. Lay the episodes out in draw order.
    lengths = np.concatenate([plan.last_rows[b:e] - plan.first_rows[b:e] + 1 for plan, b, e in reads])  # (E,)
    num_transitions = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    actions = np.empty(num_transitions, dtype=np.int64)
    rewards = np.empty(num_transitions, dtype=np.float32)
    frames = np.empty((num_transitions,) + FRAME_SHAPE, dtype=np.uint8)  # the only big allocation
    # (first row, end row, output position) of every episode, grouped by buffer.
    copies: dict[int, list[tuple[int, int, int]]] = {}
    episode = 0
    for plan, begin, end in reads:
        for first, last in zip(plan.first_rows[begin:end], plan.last_rows[begin:end]):
            out = int(starts[episode])
            rows = slice(int(first), int(last) + 1)
            actions[out:out + rows.stop - rows.start] = plan.actions[rows]
            rewards[out:out + rows.stop - rows.start] = plan.rewards[rows]
            copies.setdefault(plan.index, []).append((rows.start, rows.stop, out))
            episode += 1

    # 3. Read each buffer's observation file once, up to the last row needed, straight into `frames`.
    rows_to_decompress = sum(max(stop for _, stop, _ in segs) for segs in copies.values())
    with tqdm(total=rows_to_decompress, unit="frame", unit_scale=True, desc=f"{game} DQN-replay",
              disable=not show_progress) as progress:
        for index in sorted(copies):
            path = replay_file(root, game, "observation", index)
            with _GzipNpyReader(path, *STORE_SPECS["observation"], verify=verify_checksums) as reader:
                for first, stop, out in sorted(copies[index]):
                    skipped = first - reader.rows_read
                    reader.skip(skipped)
                    reader.read_into(frames[out:out + stop - first])
                    progress.update(skipped + stop - first)

    return Trajectories(
        observations=FrameStackStore.from_episodes(frames, lengths),
        actions=actions,
        rewards=rewards,
        starts=starts,
        lengths=lengths,
    )
