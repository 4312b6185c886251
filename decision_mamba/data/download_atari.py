"""Download the DQN-replay buffers the Atari loader reads, over HTTPS from the public bucket.

    python -m decision_mamba.data.download dqn-replay Breakout Qbert [--num-buffers 50] [--data-dir data/dqn_replay]

No gsutil: the bucket gs://atari-replay-datasets is public, so every object is a plain
HTTPS GET on storage.googleapis.com. Only what load_dqn_replay reads is fetched: run 1
of the game (of the 5 published), and the last `num_buffers` of its 50 buffers (the
loader draws from those), six files each (docs/data.md). Each file goes through
download.download_file: resumable (.part + Range), renamed only once it is checked:
  - its size against the server's,
  - its md5 against the x-goog-hash header that Cloud Storage sends (when the server sends one),
  - the .npy header inside the gzip (dtype and row shape as dopamine writes them), and,
    when there is no md5 to compare with, the whole gzip stream (its CRC and length).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from decision_mamba.data.atari_replay import OTHER_ARRAYS, STORE_ARRAYS, STORE_SPECS, replay_dir, replay_file
from decision_mamba.data.fetch import USER_AGENT, DownloadError, download_file

DQN_REPLAY_URL = "https://storage.googleapis.com/atari-replay-datasets/dqn"
DEFAULT_ATARI_DIR = "data/dqn_replay"
NUM_BUFFERS = 50  # buffers per run in the published data (indices 0..49)
_CHUNK = 1 << 20


def buffer_indices(num_buffers: int, max_buffer_index: int = NUM_BUFFERS - 1) -> range:
    """The buffers load_dqn_replay draws from: the last num_buffers ending at max_buffer_index."""
    if not 0 < num_buffers <= max_buffer_index + 1:
        raise ValueError(f"num_buffers must be in 1..{max_buffer_index + 1}, got {num_buffers}")
    return range(max_buffer_index - num_buffers + 1, max_buffer_index + 1)


def object_url(base_url: str, game: str, filename: str) -> str:
    # "$store$_..." must be percent-encoded ($ is reserved in URLs).
    return f"{base_url.rstrip('/')}/{game}/1/replay_logs/{urllib.parse.quote(filename)}"


def remote_md5(url: str, timeout: float = 60.0) -> str | None:
    """The object's md5 (hex) from Cloud Storage's `x-goog-hash: crc32c=..,md5=..` header; None if absent."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            header = ",".join(response.headers.get_all("x-goog-hash") or [])
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason} (is the game name spelt as "
                            f"the bucket spells it, e.g. Breakout, Qbert, Pong, Seaquest?)") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"cannot reach {url}: {error}") from error
    match = re.search(r"md5=([A-Za-z0-9+/=]+)", header)
    return base64.b64decode(match[1]).hex() if match else None


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _read_header(path: Path, *, whole_stream: bool) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the .npy header inside the gzip; with whole_stream the rest is
    decompressed too, which checks the gzip CRC and length."""
    try:
        with gzip.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(f)
            if whole_stream:
                while f.read(_CHUNK):
                    pass
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError(f"not a complete gzip'd .npy file ({error})") from error
    return shape, dtype


def _check_array(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if name in STORE_ARRAYS:
        want_dtype, row_shape = STORE_SPECS[name]
        if dtype != want_dtype or len(shape) != 1 + len(row_shape) or tuple(shape[1:]) != row_shape:
            raise ValueError(f"holds {dtype} {shape}, but dopamine's {name} array is {want_dtype} (C, *{row_shape})")
    elif name == "add_count" and shape != ():
        raise ValueError(f"add_count must be a scalar, got shape {shape}")
    elif name == "invalid_range" and len(shape) != 1:
        raise ValueError(f"invalid_range must be 1-D, got shape {shape}")


def check_replay_file(path: Path, name: str, *, md5: str | None = None, header_only: bool = False) -> None:
    """Raise ValueError unless `path` is the gzip'd .npy that dopamine writes for array `name`.

    With `md5` the bytes are compared with it; without, the whole gzip stream is decompressed
    (which checks its CRC and length) since nothing else could tell a corrupt file apart.
    header_only checks the .npy header alone (a file that was checked before it got its name).
    """
    path = Path(path)
    if md5 is not None and (actual := _md5_of(path)) != md5:
        raise ValueError(f"md5 {actual} differs from the server's {md5}")
    shape, dtype = _read_header(path, whole_stream=md5 is None and not header_only)
    _check_array(name, shape, dtype)


def download_dqn_replay(game: str, data_dir: str | os.PathLike = DEFAULT_ATARI_DIR, *, num_buffers: int = NUM_BUFFERS,
                        base_url: str = DQN_REPLAY_URL, force: bool = False, progress: bool = True) -> Path:
    """Fetch run 1's last `num_buffers` buffers of `game` into data_dir/{game}/1/replay_logs;
    files already there and valid are kept. Returns that directory."""
    for index in buffer_indices(num_buffers):
        for name in STORE_ARRAYS + OTHER_ARRAYS:
            destination = replay_file(data_dir, game, name, index)
            if destination.exists() and not force:
                try:
                    check_replay_file(destination, name, header_only=True)
                    continue
                except ValueError as error:
                    print(f"{destination} is not a valid replay file ({error}); downloading it again", file=sys.stderr)
            url = object_url(base_url, game, destination.name)
            md5 = remote_md5(url)
            download_file(url, destination, progress=progress,
                          verify=lambda path, name=name, md5=md5: check_replay_file(path, name, md5=md5))
    return replay_dir(data_dir, game)
