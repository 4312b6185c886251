"""The DQN-replay downloader against a local HTTP server laid out like the public bucket."""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from decision_mamba.data.atari_replay import (
    OTHER_ARRAYS,
    STORE_ARRAYS,
    load_dqn_replay,
    replay_dir,
)
from dqn_replay_writer import add_episode_padding, write_replay_buffer
from decision_mamba.data.download import DownloadError, main
from decision_mamba.errors import cli_main
from decision_mamba.data.download_atari import download_dqn_replay, object_url
from test_download import RangeFileHandler

GAME = "Breakout"


class BucketHandler(RangeFileHandler):
    """RangeFileHandler plus HEAD with Cloud Storage's x-goog-hash (md5 of server.hashes[path])."""

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        md5 = self.server.hashes.get(self.path)
        if md5 is not None:
            self.send_header("x-goog-hash", "crc32c=AAAAAA==")
            self.send_header("x-goog-hash", f"md5={base64.b64encode(md5).decode()}")
        self.end_headers()


@pytest.fixture
def bucket(tmp_path_factory):
    """A server holding buffers 47..49 of run 1 of GAME (small, random frames) under /dqn/."""
    source = tmp_path_factory.mktemp("bucket")
    rng = np.random.default_rng(0)
    for index in (47, 48, 49):
        lengths = rng.integers(5, 12, size=6)
        n = int(lengths.sum())
        terminals = np.zeros(n, np.uint8)
        terminals[np.cumsum(lengths) - 1] = 1
        obs, act, rew, term = add_episode_padding(
            rng.integers(0, 255, size=(n, 84, 84), dtype=np.uint8), rng.integers(0, 4, size=n).astype(np.int32),
            rng.choice([0.0, 1.0], size=n).astype(np.float32), terminals)
        write_replay_buffer(source, GAME, index, obs, act, rew, term)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BucketHandler)
    server.files, server.hashes, server.requests = {}, {}, []
    server.cut_after, server.ignore_range = None, False
    for path in replay_dir(source, GAME).iterdir():
        key = urllib.parse.urlsplit(object_url("/dqn", GAME, path.name)).path
        server.files[key] = path.read_bytes()
        server.hashes[key] = hashlib.md5(server.files[key]).digest()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/dqn"
    server.source = source
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetches_only_the_buffers_the_loader_reads_and_they_load(bucket, tmp_path):
    out = download_dqn_replay(GAME, tmp_path, num_buffers=2, base_url=bucket.url, progress=False)
    assert out == replay_dir(tmp_path, GAME)
    names = sorted(p.name for p in out.iterdir())
    expected = sorted([f"$store$_{n}_ckpt.{i}.gz" for n in STORE_ARRAYS for i in (48, 49)]
                      + [f"{n}_ckpt.{i}.gz" for n in OTHER_ARRAYS for i in (48, 49)])
    assert names == expected  # buffer 47 is not read by num_buffers=2, so not fetched
    for name in names:
        assert (out / name).read_bytes() == (replay_dir(bucket.source, GAME) / name).read_bytes()
    kwargs = dict(num_buffers=2, num_steps=20, trajectories_per_buffer=2, seed=3, show_progress=False)
    got, want = load_dqn_replay(tmp_path, GAME, **kwargs), load_dqn_replay(bucket.source, GAME, **kwargs)
    every = np.arange(got.num_transitions)
    assert np.array_equal(got.observations[every], want.observations[every])
    assert np.array_equal(got.actions, want.actions)

    # a second run finds every file and asks the server nothing
    bucket.requests.clear()
    download_dqn_replay(GAME, tmp_path, num_buffers=2, base_url=bucket.url, progress=False)
    assert bucket.requests == []


def test_truncated_download_is_kept_and_resumed(bucket, tmp_path):
    bucket.cut_after = 100
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_dqn_replay(GAME, tmp_path, num_buffers=1, base_url=bucket.url, progress=False)
    parts = list(replay_dir(tmp_path, GAME).glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == 100
    assert not list(replay_dir(tmp_path, GAME).glob("*.gz"))  # nothing unchecked under a final name
    bucket.cut_after = None
    bucket.requests.clear()
    download_dqn_replay(GAME, tmp_path, num_buffers=1, base_url=bucket.url, progress=False)
    assert any(r == "bytes=100-" for _, r in bucket.requests)  # the GET resumed from byte 100
    assert not list(replay_dir(tmp_path, GAME).glob("*.part"))
    for path in replay_dir(tmp_path, GAME).iterdir():
        assert path.read_bytes() == (replay_dir(bucket.source, GAME) / path.name).read_bytes()


def corrupt(bucket, filename: str) -> str:
    key = urllib.parse.urlsplit(object_url("/dqn", GAME, filename)).path
    body = bytearray(bucket.files[key])
    body[len(body) // 2] ^= 0xFF
    bucket.files[key] = bytes(body)
    return key


def test_bytes_that_differ_from_the_md5_are_rejected(bucket, tmp_path):
    corrupt(bucket, "$store$_reward_ckpt.49.gz")  # the md5 header still has the original's hash
    with pytest.raises(DownloadError, match="md5 .* differs"):
        download_dqn_replay(GAME, tmp_path, num_buffers=1, base_url=bucket.url, progress=False)
    assert not (replay_dir(tmp_path, GAME) / "$store$_reward_ckpt.49.gz").exists()
    assert not list(replay_dir(tmp_path, GAME).glob("*.part"))


def test_without_an_md5_the_gzip_stream_is_checked(bucket, tmp_path):
    bucket.hashes.clear()  # a mirror that sends no x-goog-hash
    corrupt(bucket, "$store$_observation_ckpt.49.gz")
    with pytest.raises(DownloadError, match="corrupt"):
        download_dqn_replay(GAME, tmp_path, num_buffers=1, base_url=bucket.url, progress=False)
    assert not (replay_dir(tmp_path, GAME) / "$store$_observation_ckpt.49.gz").exists()


def test_a_wrong_array_is_rejected(bucket, tmp_path):
    # the reward file served in place of the terminal file: valid gzip, wrong dtype
    terminal = urllib.parse.urlsplit(object_url("/dqn", GAME, "$store$_terminal_ckpt.49.gz")).path
    reward = urllib.parse.urlsplit(object_url("/dqn", GAME, "$store$_reward_ckpt.49.gz")).path
    bucket.files[terminal], bucket.hashes[terminal] = bucket.files[reward], bucket.hashes[reward]
    with pytest.raises(DownloadError, match="dopamine's terminal array is uint8"):
        download_dqn_replay(GAME, tmp_path, num_buffers=1, base_url=bucket.url, progress=False)


def test_cli_and_the_object_names_of_the_bucket(bucket, tmp_path, capsys):
    assert object_url("https://storage.googleapis.com/atari-replay-datasets/dqn", "Pong", "$store$_action_ckpt.7.gz") \
        == "https://storage.googleapis.com/atari-replay-datasets/dqn/Pong/1/replay_logs/%24store%24_action_ckpt.7.gz"
    assert main(["dqn-replay", GAME, "--num-buffers", "1", "--data-dir", str(tmp_path), "--base-url", bucket.url]) == 0
    assert str(replay_dir(tmp_path, GAME)) in capsys.readouterr().out
    assert cli_main(main, ["dqn-replay", "Brekout", "--num-buffers", "1", "--data-dir", str(tmp_path),
                           "--base-url", bucket.url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_minari_has_its_default_remote():
    """minari downloads from Hugging Face by default, which needs minari's `hf` extra."""
    import tomllib

    from minari.storage.remotes import get_cloud_storage

    get_cloud_storage()  # ImportError without huggingface_hub
    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    minari = next(d for d in deps if d.startswith("minari["))
    assert "hf" in minari.split("[")[1].split("]")[0].split(",")
