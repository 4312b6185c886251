"""Download D4RL v2 hdf5 files (HTTP, resumable) and Minari datasets.

    python -m decision_mamba.data.download d4rl hopper-medium-v2 [--data-dir data] [--base-url URL]
    python -m decision_mamba.data.download minari mujoco/hopper/medium-v0 [--minari-dir DIR]
    python -m decision_mamba.data.download dqn-replay Breakout [--num-buffers 50] [--data-dir data/dqn_replay]
      (the Atari DQN-replay buffers over HTTPS, no gsutil: see download_atari.py)

A D4RL file is downloaded by fetch.download_file (resumable, checked before it gets its
final name); the check here is that h5py opens it and finds the D4RL keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from decision_mamba.data.d4rl import DEFAULT_DATA_DIR, REQUIRED_KEYS, d4rl_source_files
from decision_mamba.data.download_atari import DQN_REPLAY_URL, download_dqn_replay
from decision_mamba.data.fetch import DownloadError, download_file
from decision_mamba.errors import cli_main

DEFAULT_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"

# sha256 of D4RL files, by file name. Empty until someone verifies the hashes of the
# published files; until then a download is checked by size and by opening it with h5py.
KNOWN_SHA256: dict[str, str] = {}

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
            print(download_dqn_replay(name, args.data_dir, num_buffers=args.num_buffers,
                                      base_url=args.base_url or DQN_REPLAY_URL, force=args.force))
        else:
            print(download_minari(name, args.minari_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
