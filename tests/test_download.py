"""The D4RL downloader against a real HTTP server on 127.0.0.1 that honours Range requests."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from decision_mamba.data.d4rl import load_dataset
from decision_mamba.data.download import DownloadError, check_d4rl_file, download_d4rl, download_file, main
from decision_mamba.errors import cli_main
from helpers import write_episodes_d4rl


class RangeFileHandler(BaseHTTPRequestHandler):
    """Serves server.files[path]; answers 'Range: bytes=N-' with 206 (or 416 past the end).

    Knobs on the server: cut_after (send only that many body bytes, then drop the
    connection, while Content-Length announces the whole body) and ignore_range.
    """

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not server.ignore_range:
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.cut_after is not None:
            payload = payload[: server.cut_after]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeFileHandler)
    server.files, server.requests, server.cut_after, server.ignore_range = {}, [], None, False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def hdf5_bytes(tmp_path_factory, hopper_episodes) -> bytes:
    path = write_episodes_d4rl(tmp_path_factory.mktemp("source") / "hopper_medium-v2.hdf5", hopper_episodes)
    return path.read_bytes()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_full_download_is_checked_and_renamed(tmp_path, http_server, hdf5_bytes, hopper_episodes):
    http_server.files["/mirror/hopper_medium-v2.hdf5"] = hdf5_bytes
    paths = download_d4rl("hopper-medium-v2", tmp_path, f"{http_server.url}/mirror/", progress=False)
    assert paths == [tmp_path / "hopper_medium-v2.hdf5"]
    assert paths[0].read_bytes() == hdf5_bytes
    assert files_in(tmp_path) == ["hopper_medium-v2.hdf5"]  # no .part file left
    assert http_server.requests == [("/mirror/hopper_medium-v2.hdf5", None)]
    traj, _ = load_dataset("hopper-medium-v2", tmp_path)
    assert traj.num_episodes == len(hopper_episodes)
    # A present, valid file is not downloaded again.
    download_d4rl("hopper-medium-v2", tmp_path, f"{http_server.url}/mirror", progress=False)
    assert len(http_server.requests) == 1


def test_interrupted_download_keeps_the_part_and_resumes(tmp_path, http_server, hdf5_bytes):
    http_server.files["/hopper_medium-v2.hdf5"] = hdf5_bytes
    http_server.cut_after = 3000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_d4rl("hopper-medium-v2", tmp_path, http_server.url, progress=False)
    assert files_in(tmp_path) == ["hopper_medium-v2.hdf5.part"]  # nothing under the final name
    assert (tmp_path / "hopper_medium-v2.hdf5.part").read_bytes() == hdf5_bytes[:3000]

    http_server.cut_after = None
    download_d4rl("hopper-medium-v2", tmp_path, http_server.url, progress=False)
    assert http_server.requests[-1] == ("/hopper_medium-v2.hdf5", "bytes=3000-")
    assert (tmp_path / "hopper_medium-v2.hdf5").read_bytes() == hdf5_bytes
    assert files_in(tmp_path) == ["hopper_medium-v2.hdf5"]


def test_resume_from_an_existing_partial_file(tmp_path, http_server, hdf5_bytes):
    http_server.files["/f.hdf5"] = hdf5_bytes
    half = len(hdf5_bytes) // 2
    (tmp_path / "f.hdf5.part").write_bytes(hdf5_bytes[:half])
    download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", verify=check_d4rl_file, progress=False)
    assert http_server.requests == [("/f.hdf5", f"bytes={half}-")]
    assert (tmp_path / "f.hdf5").read_bytes() == hdf5_bytes


def test_server_ignoring_range_restarts_from_zero(tmp_path, http_server, hdf5_bytes):
    http_server.files["/f.hdf5"] = hdf5_bytes
    http_server.ignore_range = True
    (tmp_path / "f.hdf5.part").write_bytes(b"x" * 100)  # a stale prefix that must not be kept
    download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", verify=check_d4rl_file, progress=False)
    assert (tmp_path / "f.hdf5").read_bytes() == hdf5_bytes


def test_part_longer_than_the_remote_file_is_discarded(tmp_path, http_server, hdf5_bytes):
    http_server.files["/f.hdf5"] = hdf5_bytes
    (tmp_path / "f.hdf5.part").write_bytes(b"y" * (len(hdf5_bytes) + 10))
    download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", verify=check_d4rl_file, progress=False)
    assert [r[1] for r in http_server.requests] == [f"bytes={len(hdf5_bytes) + 10}-", None]
    assert (tmp_path / "f.hdf5").read_bytes() == hdf5_bytes


def test_complete_part_is_verified_and_renamed(tmp_path, http_server, hdf5_bytes):
    # The previous run received every byte but stopped before the rename: 416, no new bytes.
    http_server.files["/f.hdf5"] = hdf5_bytes
    (tmp_path / "f.hdf5.part").write_bytes(hdf5_bytes)
    download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", verify=check_d4rl_file, progress=False)
    assert (tmp_path / "f.hdf5").read_bytes() == hdf5_bytes
    assert files_in(tmp_path) == ["f.hdf5"]


def test_size_mismatch_leaves_no_final_file(tmp_path, http_server, hdf5_bytes):
    http_server.files["/f.hdf5"] = hdf5_bytes
    with pytest.raises(DownloadError, match=f"{len(hdf5_bytes)} bytes on the server but 12345 were expected"):
        download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", expected_size=12345, progress=False)
    assert not (tmp_path / "f.hdf5").exists()


def test_corrupted_content_is_rejected_and_deleted(tmp_path, http_server, hdf5_bytes):
    corrupt = bytearray(hdf5_bytes)
    corrupt[:8] = b"garbage!"  # destroys the hdf5 signature
    http_server.files["/hopper_medium-v2.hdf5"] = bytes(corrupt)
    with pytest.raises(DownloadError, match="corrupt.*not a readable hdf5 file"):
        download_d4rl("hopper-medium-v2", tmp_path, http_server.url, progress=False)
    assert files_in(tmp_path) == []


def test_sha256_mismatch_is_rejected(tmp_path, http_server, hdf5_bytes):
    http_server.files["/f.hdf5"] = hdf5_bytes
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", expected_sha256="0" * 64, progress=False)
    assert files_in(tmp_path) == []
    right = hashlib.sha256(hdf5_bytes).hexdigest()
    download_file(f"{http_server.url}/f.hdf5", tmp_path / "f.hdf5", expected_sha256=right, progress=False)
    assert (tmp_path / "f.hdf5").read_bytes() == hdf5_bytes


def test_http_error_is_reported(tmp_path, http_server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{http_server.url}/missing.hdf5", tmp_path / "missing.hdf5", progress=False)
    assert files_in(tmp_path) == []


def test_cli_downloads_medium_and_expert_for_medium_expert(tmp_path, http_server, hdf5_bytes, capsys):
    http_server.files["/hopper_medium-v2.hdf5"] = hdf5_bytes
    http_server.files["/hopper_expert-v2.hdf5"] = hdf5_bytes
    code = main(["d4rl", "hopper-medium-expert-v2", "--data-dir", str(tmp_path), "--base-url", http_server.url])
    assert code == 0
    assert files_in(tmp_path) == ["hopper_expert-v2.hdf5", "hopper_medium-v2.hdf5"]
    traj, _ = load_dataset("hopper-medium-expert-v2", tmp_path)
    single, _ = load_dataset("hopper-medium-v2", tmp_path)
    assert traj.num_episodes == 2 * single.num_episodes
    np.testing.assert_array_equal(traj.rewards, np.concatenate([single.rewards, single.rewards]))


def test_cli_reports_bad_names(tmp_path, capsys):
    assert cli_main(main, ["d4rl", "hopper-mediocre-v2", "--data-dir", str(tmp_path)]) == 2
    assert "not a D4RL MuJoCo v2 dataset name" in capsys.readouterr().err
