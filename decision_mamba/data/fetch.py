"""Resumable HTTP download of one file, shared by the D4RL and the DQN-replay downloaders.

A file is streamed into "<file>.part" next to its destination. An interrupted download
leaves the .part file behind and the next call resumes it with an HTTP Range request.
When all bytes are there, the file is checked (its size against the server's, its sha256
if one is known, and the caller's `verify`) and only then renamed to its final name, so a
file under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from decision_mamba.errors import UserError

_CHUNK_BYTES = 1 << 20
USER_AGENT = "decision-mamba-downloader/0.1"


class DownloadError(UserError, RuntimeError):
    """A download failed; the message says whether rerunning resumes it."""


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _parse_content_range(header: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); unknown -> (None, None)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start = int(match[1]) if match[1] is not None else None
    total = int(match[2]) if match[2] != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
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
