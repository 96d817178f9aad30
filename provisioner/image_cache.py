"""The disk images the deploy agent writes, fetched, verified and made ready once.

An image with ``deploy: image`` names a file (``image_url``: http(s), ``file:///path``
or a path in the images directory), its SHA-256 (``checksum``) and its ``format``.
:func:`prepare` fetches it, refuses it unless the SHA-256 matches, and leaves in
``<data_dir>/image-cache/<sha256>.<format>/`` what agents download: a raw image (raw as
it came, qcow2 converted by ``qemu-img``) or the gzip file as it came (raw.gz: the agent
decompresses while it writes), beside ``meta.json`` with the raw image's size and
SHA-256, which the agent verifies the disk against.

An entry appears only whole: it is built in a temporary directory beside it and renamed
into place, so two threads or processes preparing the same image at once both end up
with the one that was renamed first, and a failure leaves nothing behind. Blocking:
callers in the event loop run it in a thread.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from provisioner.models import OsImage
from provisioner.settings import Settings

_CHUNK = 1 << 20
# Connecting and each read: a mirror that stops sending fails the fetch instead of
# holding a reconciler thread for ever; a large image may take as long as it needs.
_TIMEOUT = httpx.Timeout(30.0)
_META = "meta.json"
_SERVED = {"raw": "disk.raw", "raw.gz": "disk.raw.gz", "qcow2": "disk.raw"}


class ImageCacheError(Exception):
    """Says what failed and what to do."""


@dataclass(frozen=True)
class Prepared:
    path: Path  # the file agents download
    format: str  # "raw" or "raw.gz" (what the agent streams)
    raw_bytes: int  # size of the raw disk image
    raw_sha256: str  # hex SHA-256 of the raw image


def cache_dir(settings: Settings) -> Path:
    # Absolute: Prepared.path must not change meaning with the working directory.
    return (settings.data_dir / "image-cache").absolute()


def prepare(image: OsImage, settings: Settings) -> Prepared:
    """The ready entry of ``image``, fetched and built first unless it is cached."""
    if image.deploy != "image":
        raise ImageCacheError(
            f"image {image.name!r} is installed by its installer, not written as a disk image"
        )
    if image.format not in _SERVED:
        raise ImageCacheError(
            f"format {image.format!r} is not one of raw, raw.gz, qcow2; correct the image"
        )
    expected = _expected_sha256(image.checksum)
    entry = cache_dir(settings) / f"{expected}.{image.format}"
    cached = _read(entry, image.format)
    if cached is not None:
        return cached
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        # The leading dot: a partial entry is never taken for an entry, even by a person.
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            built = _build(image, settings, expected, work)
            try:
                work.rename(entry)
            except OSError:
                # Another thread or process renamed its entry first: use that one.
                winner = _read(entry, image.format)
                if winner is None:
                    raise
                return winner
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        # A full disk, say: the caller reports ImageCacheError, not a crash.
        raise ImageCacheError(
            f"writing the image cache {entry.parent} failed ({exc}); check its free space "
            "and that the service may write there"
        ) from None
    return Prepared(entry / built.path.name, built.format, built.raw_bytes, built.raw_sha256)


def _expected_sha256(checksum: str) -> str:
    digest = checksum.removeprefix("sha256:").lower()
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ImageCacheError(
            f"checksum {checksum!r} is not sha256:<64 hex digits>; correct the image"
        )
    return digest


def _read(entry: Path, fmt: str) -> Prepared | None:
    """The entry as it was built, or None when there is none."""
    try:
        meta = json.loads((entry / _META).read_text())
        path = entry / _SERVED[fmt]
        if path.stat().st_size != meta["file_bytes"]:
            raise ValueError(f"{path} is not the size it was built with")
        return Prepared(path, meta["format"], int(meta["raw_bytes"]), str(meta["raw_sha256"]))
    except FileNotFoundError:
        if entry.exists():
            raise ImageCacheError(
                f"the cache entry {entry} is incomplete (a file was removed); delete the "
                "directory and the image is fetched again"
            ) from None
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageCacheError(
            f"the cache entry {entry} is damaged ({exc}); delete the directory and the "
            "image is fetched again"
        ) from None


def _build(image: OsImage, settings: Settings, expected: str, work: Path) -> Prepared:
    """Fetch, verify and convert ``image`` into ``work``; what it holds."""
    fetched = work / "fetched"
    with fetched.open("wb") as out:
        actual = _copy(_source(image.image_url, settings), out)
    if actual != expected:
        raise ImageCacheError(
            f"{image.image_url} has SHA-256 {actual} but the image's checksum is "
            f"sha256:{expected}; correct the checksum or the file (nothing was cached)"
        )
    served = work / _SERVED[image.format]
    if image.format == "raw":
        fetched.rename(served)
        raw_bytes, raw_sha256 = served.stat().st_size, actual
    elif image.format == "raw.gz":
        fetched.rename(served)
        raw_bytes, raw_sha256 = _gunzipped(served, image.image_url)
    else:
        _convert_qcow2(fetched, served, image.image_url)
        fetched.unlink()
        with served.open("rb") as raw:
            raw_bytes, raw_sha256 = _digest(iter(lambda: raw.read(_CHUNK), b""))
    served_format = "raw.gz" if image.format == "raw.gz" else "raw"
    _write_meta(
        work / _META,
        {
            "format": served_format,
            "raw_bytes": raw_bytes,
            "raw_sha256": raw_sha256,
            "file_bytes": served.stat().st_size,
            "source": image.image_url,
            "checksum": f"sha256:{expected}",
        },
    )
    return Prepared(served, served_format, raw_bytes, raw_sha256)


def _source(url: str, settings: Settings) -> Iterator[bytes]:
    """The bytes at ``url``: fetched over http(s), or read from a local file."""
    if url.startswith(("http://", "https://")):
        return _download(url)
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        if not path.is_absolute() or ".." in path.parts:
            raise ImageCacheError(f"{url} is not file:///absolute/path; correct image_url")
        return _read_file(path, url)
    if url.startswith("/") or ".." in url.split("/") or "://" in url:
        raise ImageCacheError(
            f"{url!r} is neither a URL nor a path inside the images directory; correct image_url"
        )
    root = settings.resolved_images_dir.resolve()
    path = (root / url).resolve()
    # A symlink may lead only to somewhere inside the images directory.
    if not path.is_relative_to(root):
        raise ImageCacheError(f"{url} leads out of the images directory {root}; refused")
    return _read_file(path, url)


def _read_file(path: Path, url: str) -> Iterator[bytes]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ImageCacheError(
            f"{url}: there is no file {path}; put the image there or correct image_url"
        ) from None
    except OSError as exc:
        raise ImageCacheError(f"{url}: cannot read {path} ({exc.strerror})") from None
    with handle:
        yield from iter(lambda: handle.read(_CHUNK), b"")


def _download(url: str) -> Iterator[bytes]:
    try:
        with httpx.stream("GET", url, timeout=_TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise ImageCacheError(
                    f"{url} answered HTTP {response.status_code}; check that the image "
                    "is published there"
                )
            yield from response.iter_bytes(_CHUNK)
    except httpx.HTTPError as exc:
        raise ImageCacheError(
            f"fetching {url} failed ({type(exc).__name__}: {exc}); check the URL and that "
            "the service can reach it"
        ) from None


def _copy(chunks: Iterable[bytes], out: BinaryIO) -> str:
    """Write ``chunks`` to ``out``, durably; their SHA-256 (hex)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest()


def _digest(chunks: Iterable[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _gunzipped(path: Path, url: str) -> tuple[int, str]:
    """The size and SHA-256 of the raw image inside a gzip file, without writing it."""
    try:
        with gzip.open(path, "rb") as raw:
            return _digest(iter(lambda: raw.read(_CHUNK), b""))
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageCacheError(
            f"{url} is not a whole gzip file ({exc}); correct the format or the file"
        ) from None


def _convert_qcow2(source: Path, target: Path, url: str) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise ImageCacheError(
            "converting a qcow2 image needs qemu-img on the service's machine: install "
            "Debian's qemu-utils, or publish the image as raw or raw.gz"
        )
    # -f qcow2 always: a probed format could be a raw image posing as something else.
    info = _qemu_img(qemu_img, ["info", "--output=json", "-f", "qcow2", str(source)], url)
    details = json.loads(info)
    data_file = details.get("format-specific", {}).get("data", {}).get("data-file")
    if "backing-filename" in details or data_file:
        # It would read other files of this machine into the image.
        raise ImageCacheError(
            f"{url} refers to another file (a backing or data file); publish it "
            "self-contained (qemu-img convert -O qcow2)"
        )
    _qemu_img(qemu_img, ["convert", "-f", "qcow2", "-O", "raw", str(source), str(target)], url)
    with target.open("rb+") as out:
        os.fsync(out.fileno())


def _qemu_img(program: str, args: list[str], url: str) -> str:
    run = subprocess.run([program, *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        detail = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise ImageCacheError(f"qemu-img {args[0]} of {url} failed: {detail}")
    return run.stdout


def _write_meta(path: Path, meta: dict[str, object]) -> None:
    with path.open("w") as out:
        json.dump(meta, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
