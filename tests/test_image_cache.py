"""provisioner/image_cache.py with real files: raw, raw.gz and qcow2 images built here,
fetched from the images directory, file:// and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import random
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provisioner import image_cache
from provisioner.image_cache import ImageCacheError, Prepared, prepare
from provisioner.models import OsImage
from provisioner.settings import Settings
from tests.agent.fixtures import need

# Big enough for several read chunks, with a run of zeros as a disk image has, and whole
# 512-byte sectors (qcow2 holds no part of one).
RAW = random.Random(7).randbytes(3 << 20) + bytes(1 << 20) + b"\xff" * 512
RAW_SHA256 = hashlib.sha256(RAW).hexdigest()
GZ = gzip.compress(RAW, mtime=0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def disk_image(url: str, checksum: str, fmt: str) -> OsImage:
    return OsImage(
        name="lab-disk",
        os_family="other",
        version="1",
        kernel_url="",
        initrd_url="",
        answer_template="",
        deploy="image",
        image_url=url,
        checksum=checksum,
        format=fmt,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    images = tmp_path / "images"
    images.mkdir()
    return Settings(data_dir=tmp_path / "data", images_dir=images)


def cached(settings: Settings) -> list[str]:
    """Everything in the cache directory, temporary directories included."""
    root = image_cache.cache_dir(settings)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_raw_image_is_verified_cached_and_served_from_the_cache(settings: Settings) -> None:
    source = settings.resolved_images_dir / "lab" / "disk.raw"
    source.parent.mkdir()
    source.write_bytes(RAW)
    image = disk_image("lab/disk.raw", f"sha256:{RAW_SHA256}", "raw")

    prepared = prepare(image, settings)
    entry = image_cache.cache_dir(settings) / f"{RAW_SHA256}.raw"
    assert prepared == Prepared(entry / "disk.raw", "raw", len(RAW), RAW_SHA256)
    assert prepared.path.read_bytes() == RAW
    assert cached(settings) == [entry.name]

    # A cache hit neither fetches (the source is gone) nor rebuilds the file.
    source.unlink()
    built = prepared.path.stat()
    assert prepare(image, settings) == prepared
    assert (prepared.path.stat().st_ino, prepared.path.stat().st_mtime_ns) == (
        built.st_ino,
        built.st_mtime_ns,
    )


def test_a_gzip_image_is_served_as_it_came_with_the_raw_images_size_and_sum(
    settings: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "disk.raw.gz"
    source.write_bytes(GZ)
    image = disk_image(f"file://{source}", sha256(source), "raw.gz")

    prepared = prepare(image, settings)
    assert (prepared.format, prepared.raw_bytes, prepared.raw_sha256) == (
        "raw.gz",
        len(RAW),
        RAW_SHA256,
    )
    assert prepared.path.name == "disk.raw.gz"
    assert prepared.path.read_bytes() == source.read_bytes()


def test_a_qcow2_image_is_converted_once_to_raw(settings: Settings, tmp_path: Path) -> None:
    need("qemu-img")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(RAW)
    source = settings.resolved_images_dir / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(source)], check=True
    )
    image = disk_image("disk.qcow2", sha256(source), "qcow2")

    prepared = prepare(image, settings)
    assert (prepared.format, prepared.raw_bytes, prepared.raw_sha256) == (
        "raw",
        len(RAW),
        RAW_SHA256,
    )
    assert prepared.path.read_bytes() == RAW
    # Only what agents download is kept, not the qcow2 it came from.
    assert sorted(p.name for p in prepared.path.parent.iterdir()) == ["disk.raw", "meta.json"]
    source.unlink()
    assert prepare(image, settings) == prepared


def test_a_qcow2_image_that_reads_another_file_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    need("qemu-img")
    secret = tmp_path / "host-file.raw"
    secret.write_bytes(b"not for the disk" * 4096)
    source = settings.resolved_images_dir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(source)],
        check=True,
    )
    image = disk_image("overlay.qcow2", sha256(source), "qcow2")
    with pytest.raises(ImageCacheError, match="backing or data file"):
        prepare(image, settings)
    assert cached(settings) == []


def test_without_qemu_img_a_qcow2_image_says_what_to_install(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = settings.resolved_images_dir / "disk.qcow2"
    source.write_bytes(RAW)
    monkeypatch.setenv("PATH", str(settings.resolved_images_dir))
    with pytest.raises(ImageCacheError, match="qemu-utils"):
        prepare(disk_image("disk.qcow2", RAW_SHA256, "qcow2"), settings)
    assert cached(settings) == []


def test_a_checksum_mismatch_names_both_sums_and_caches_nothing(settings: Settings) -> None:
    (settings.resolved_images_dir / "disk.raw").write_bytes(RAW)
    wrong = "0" * 64
    with pytest.raises(ImageCacheError) as failed:
        prepare(disk_image("disk.raw", f"sha256:{wrong}", "raw"), settings)
    assert RAW_SHA256 in str(failed.value)
    assert f"sha256:{wrong}" in str(failed.value)
    assert cached(settings) == []


def test_a_missing_file_says_where_it_was_looked_for(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ImageCacheError, match=r"no file .*lab/disk\.raw"):
        prepare(disk_image("lab/disk.raw", RAW_SHA256, "raw"), settings)
    with pytest.raises(ImageCacheError, match="no file"):
        prepare(disk_image(f"file://{tmp_path}/nope.raw", RAW_SHA256, "raw"), settings)
    assert cached(settings) == []


def test_nothing_outside_the_images_directory_is_read(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "secret.raw"
    outside.write_bytes(RAW)
    (settings.resolved_images_dir / "link.raw").symlink_to(outside)
    for url in ("../secret.raw", "lab/../../secret.raw", "link.raw", f"file://{tmp_path}/x/.."):
        with pytest.raises(ImageCacheError):
            prepare(disk_image(url, RAW_SHA256, "raw"), settings)
    assert cached(settings) == []


def test_a_file_that_is_not_gzip_is_refused_as_raw_gz(settings: Settings) -> None:
    (settings.resolved_images_dir / "disk.raw.gz").write_bytes(RAW)
    with pytest.raises(ImageCacheError, match="not a whole gzip file"):
        prepare(disk_image("disk.raw.gz", RAW_SHA256, "raw.gz"), settings)
    assert cached(settings) == []


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    # When set, every request waits here for the others before it is answered.
    together: threading.Barrier | None = None

    def do_GET(self) -> None:
        if self.together is not None:
            self.together.wait(timeout=30)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        # A ".cut" file's connection ends early: a mirror that went away mid-image.
        cut = self.path.endswith(".cut")
        self.send_header("Content-Length", str(len(body) * (2 if cut else 1)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = cut

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _serve(files: dict[str, bytes], together: threading.Barrier | None = None) -> Iterator[str]:
    handler = type("Handler", (_Files,), {"files": files, "together": together})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def http_url() -> Iterator[str]:
    with _serve({"/images/disk.raw.gz": GZ, "/images/disk.raw.cut": RAW}) as url:
        yield url


def test_an_image_is_fetched_over_http(settings: Settings, http_url: str) -> None:
    checksum = hashlib.sha256(GZ).hexdigest()
    prepared = prepare(disk_image(f"{http_url}/images/disk.raw.gz", checksum, "raw.gz"), settings)
    assert (prepared.raw_bytes, prepared.raw_sha256) == (len(RAW), RAW_SHA256)

    with pytest.raises(ImageCacheError, match="HTTP 404"):
        prepare(disk_image(f"{http_url}/images/gone.raw", RAW_SHA256, "raw"), settings)
    with pytest.raises(ImageCacheError, match=r"fetching .* failed"):
        prepare(disk_image(f"{http_url}/images/disk.raw.cut", RAW_SHA256, "raw"), settings)
    # Neither left anything behind: only the first image is there.
    assert cached(settings) == [f"{checksum}.raw.gz"]


def test_two_prepares_at_once_end_with_one_entry(settings: Settings) -> None:
    # The server answers only when both have asked: both build, one entry wins.
    with _serve({"/disk.raw": RAW}, threading.Barrier(2)) as url:
        image = disk_image(f"{url}/disk.raw", RAW_SHA256, "raw")
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: prepare(image, settings), range(2)))
    assert results[0] == results[1]
    assert results[0].path.read_bytes() == RAW
    assert cached(settings) == [f"{RAW_SHA256}.raw"]


def test_the_prepared_path_is_absolute_with_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "disk.raw").write_bytes(RAW)
    settings = Settings(data_dir=Path("data"), images_dir=Path("images"))
    prepared = prepare(disk_image("disk.raw", RAW_SHA256, "raw"), settings)
    assert prepared.path.is_absolute()
    monkeypatch.chdir("/")
    assert prepared.path.read_bytes() == RAW
