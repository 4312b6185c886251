"""Download D4RL v2 hdf5 files (HTTP, resumable) and Minari datasets.

    python -m decision_mamba.data.download d4rl hopper-medium-v2 [--data-dir data] [--base-url URL]
    python -m decision_mamba.data.download minari mujoco/hopper/medium-v0 [--minari-dir DIR]
    python -m decision_mamba.data.download dqn-replay Breakout [--num-buffers 50] [--data-dir data/dqn_replay]
      (the Atari DQN-replay buffers over HTTPS, no gsutil: see download_atari.py)

A D4RL file is streamed into "<file>.part" next to its destination. An interrupted
download leaves the .part file behind and the next run resumes it with an HTTP Range
request. When all bytes are there, the file is checked (its size against the server's,
its sha256 if one is known, and that h5py opens it and finds the D4RL keys) and only then
renamed to its final name, so a file under its final name is always complete.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from decision_mamba.errors import UserError, cli_main
from decision_mamba.data.d4rl import (
    DEFAULT_DATA_DIR,
    REQUIRED_KEYS,
    d4rl_source_files,
)

DEFAULT_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"

# sha256 of D4RL files, by file name. Empty until someone verifies the hashes of the
# published files; until then a download is checked by size and by opening it with h5py.
KNOWN_SHA256: dict[str, str] = {}

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "decision-mamba-downloader/0.1"


class DownloadError(UserError, RuntimeError):
    """A download failed; the message says whether rerunning resumes it."""


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def check_d4rl_file(path: Path) -> None:
    """Raise ValueError unless h5py opens `path` and it holds the D4RL keys with equal lengths."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in REQUIRED_KEYS if key not in f]
            if missing:
                raise ValueError(f"missing the D4RL keys {missing}")
            lengths = {key: f[key].shape[0] for key in REQUIRED_KEYS}
    except OSError as error:
        raise ValueError(f"not a readable hdf5 file ({error})") from error
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays of different lengths {lengths}")


def _parse_content_range(header: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); unknown -> (None, None)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start = int(match[1]) if match[1] is not None else None
    total = int(match[2]) if match[2] != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(
    url: str,
    destination: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    verify: Callable[[Path], None] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download `url` to `destination` through a resumable `.part` file; returns destination.

    verify(path) may raise ValueError to reject the complete file (e.g. check_d4rl_file).
    A rejected or oversized file is deleted; an interrupted one is kept for resuming.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or offset == 0:
            raise DownloadError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from error
        # 416 Range Not Satisfiable: the .part file is already as long as the remote file (it
        # is complete) or longer (it belongs to another file): check which.
        _, total = _parse_content_range(error.headers.get("Content-Range"))
        error.close()
        if total != offset:
            part.unlink()
            return download_file(
                url, destination, expected_sha256=expected_sha256, expected_size=expected_size,
                verify=verify, timeout=timeout, progress=progress,
            )
        response, total = None, offset
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"cannot reach {url}: {error}") from error

    if response is not None:
        with response:
            if response.status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    raise DownloadError(
                        f"{url}: the server answered the range request from byte {offset} "
                        f"with bytes from {start}; delete {part} and retry"
                    )
            else:
                # 200: the server ignored the Range header (or there was none): start over.
                offset = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
            if expected_size is not None and total is not None and total != expected_size:
                raise DownloadError(
                    f"{url} is {total} bytes on the server but {expected_size} were expected; "
                    "the mirror serves a different file (check --base-url)"
                )
            _stream(response, part, offset, total, url, progress)

    size = part.stat().st_size
    expected_total = expected_size if expected_size is not None else total
    if expected_total is not None and size != expected_total:
        if size < expected_total:
            raise DownloadError(
                f"download of {url} stopped at {size} of {expected_total} bytes; "
                f"the partial file {part} is kept: run the same command again to resume"
            )
        part.unlink()
        raise DownloadError(
            f"{url}: received {size} bytes but the file has {expected_total}; "
            "the partial file was deleted, run the command again"
        )
    if expected_sha256 is not None:
        actual = _sha256_of(part)
        if actual != expected_sha256.lower():
            part.unlink()
            raise DownloadError(
                f"{url}: sha256 {actual} differs from the expected {expected_sha256}; "
                "the corrupt download was deleted, run the command again (or try another mirror)"
            )
    if verify is not None:
        try:
            verify(part)
        except ValueError as error:
            part.unlink()
            raise DownloadError(
                f"{url}: the downloaded file is corrupt ({error}); it was deleted, run the command again"
            ) from error
    os.replace(part, destination)  # atomic: the final name only ever holds a checked file
    return destination


def _stream(response, part: Path, offset: int, total: int | None, url: str, progress: bool) -> None:
    mode = "ab" if offset > 0 else "wb"
    with open(part, mode) as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
    ) as bar:
        try:
            while block := response.read(_CHUNK_BYTES):
                f.write(block)
                bar.update(len(block))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as error:
            f.flush()
            raise DownloadError(
                f"download of {url} was interrupted ({error!r}) after {f.tell()} bytes; "
                f"the partial file {part} is kept: run the same command again to resume"
            ) from error


def download_d4rl(
    name: str,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    base_url: str = DEFAULT_BASE_URL,
    *,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Download the hdf5 file(s) of a D4RL dataset ("hopper-medium-v2"; medium-expert needs
    the medium and the expert file) into data_dir; files already present and valid are kept."""
    paths = []
    for file_name in d4rl_source_files(name):
        destination = Path(data_dir) / file_name
        if destination.exists() and not force:
            try:
                check_d4rl_file(destination)
                paths.append(destination)
                continue
            except ValueError as error:
                print(f"{destination} is corrupt ({error}); downloading it again", file=sys.stderr)
        paths.append(
            download_file(
                f"{base_url.rstrip('/')}/{file_name}",
                destination,
                expected_sha256=KNOWN_SHA256.get(file_name),
                verify=check_d4rl_file,
                progress=progress,
            )
        )
    return paths


def download_minari(dataset_id: str, minari_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download a Minari dataset with the minari library; returns its local directory.

    minari_dir, if given, becomes MINARI_DATASETS_PATH (where minari stores and finds datasets);
    load it later with the same MINARI_DATASETS_PATH, or pass the returned path to load_minari.
    """
    if minari_dir is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(minari_dir).resolve())
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        minari.download_dataset(dataset_id, force_download=force)
    except ModuleNotFoundError as error:  # its default remote (Hugging Face) needs minari's `hf` extra
        raise DownloadError(f"minari could not download {dataset_id!r}: {error}; install minari's remote "
                            "support with `pip install 'minari[hf]'` (make install does it)") from error
    except Exception as error:  # minari raises many types (network, unknown id, version): report them as one
        raise DownloadError(f"minari could not download {dataset_id!r}: {error}") from error
    return Path(get_dataset_path(dataset_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decision_mamba.data.download", description=__doc__.split("\n\n")[0])
    sources = parser.add_subparsers(dest="source", required=True)
    d4rl = sources.add_parser("d4rl", help="D4RL MuJoCo v2 hdf5 files over HTTP")
    d4rl.add_argument("names", nargs="+", help="dataset names, e.g. hopper-medium-v2 walker2d-medium-expert-v2")
    d4rl.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where to store the files (default %(default)s)")
    d4rl.add_argument("--base-url", default=DEFAULT_BASE_URL, help="server or mirror holding the files")
    d4rl.add_argument("--force", action="store_true", help="download again even if the file is present")
    minari_parser = sources.add_parser("minari", help="Minari datasets through the minari library")
    minari_parser.add_argument("names", nargs="+", help="dataset ids, e.g. mujoco/hopper/medium-v0")
    minari_parser.add_argument("--minari-dir", default=None, help="MINARI_DATASETS_PATH (default: minari's own)")
    minari_parser.add_argument("--force", action="store_true", help="download again even if present")
    atari = sources.add_parser("dqn-replay", help="Atari DQN-replay buffers (run 1) over HTTPS from the public bucket")
    atari.add_argument("names", nargs="+", help="games as the bucket spells them, e.g. Breakout Qbert Pong Seaquest")
    atari.add_argument("--num-buffers", type=int, default=50,
                       help="fetch the last N of the 50 buffers (the config's num_buffers; default %(default)s)")
    atari.add_argument("--data-dir", default="data/dqn_replay", help="the config's data_dir (default %(default)s)")
    atari.add_argument("--base-url", default=None, help="bucket or mirror (default: the public bucket over HTTPS)")
    atari.add_argument("--force", action="store_true", help="download again even if the files are present")
    args = parser.parse_args(argv)

    for name in args.names:
        if args.source == "d4rl":
            for path in download_d4rl(name, args.data_dir, args.base_url, force=args.force):
                print(path)
        elif args.source == "dqn-replay":
            from decision_mamba.data.download_atari import DQN_REPLAY_URL, download_dqn_replay

            print(download_dqn_replay(name, args.data_dir, num_buffers=args.num_buffers,
                                      base_url=args.base_url or DQN_REPLAY_URL, force=args.force))
        else:
            print(download_minari(name, args.minari_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
