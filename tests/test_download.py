"""A first run without the Debian package: ``data.download=true`` fetches Fashion-MNIST with torchvision's
downloader into ``data_dir``, and a missing set or a failed download is one line saying what to do.

No network here: the "mirror" is a local HTTP server handing out Debian's files (torchvision's
checksums are of the upstream archives, which Debian re-compresses, so the test gives it Debian's),
or a port where nothing listens.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd

from tscnet.cli import main
from tscnet.data import DataError, DataNotFoundError, build_dataset

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not DEBIAN.is_dir(), reason="apt-get install dataset-fashion-mnist (the mirror's files)")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # torchvision's redirect probe closes its GET early: the reset is no error


@pytest.fixture
def mirror(monkeypatch):
    """torchvision's FashionMNIST pointed at a local server of Debian's .gz files; yields the request count."""
    requests = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = _Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(DEBIAN)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(tvd.FashionMNIST, "resources", [
        (f"{stem}.gz", hashlib.md5((DEBIAN / f"{stem}.gz").read_bytes()).hexdigest()) for stem in FILES])
    yield requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def unreachable(monkeypatch):
    """torchvision's FashionMNIST pointed at a local port where nothing listens (refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [f"http://127.0.0.1:{port}/"])


@needs_debian
def test_download_fetches_fashion_mnist_into_the_data_dir(tmp_path, mirror):
    data = build_dataset("fashion-mnist", tmp_path / "data", "test", download=True)
    assert len(data) == 10000 and set(mirror) == {f"/{stem}.gz" for stem in FILES}  # all four
    assert all((tmp_path / "data" / "FashionMNIST" / "raw" / stem).is_file() for stem in FILES)
    np.testing.assert_array_equal(data.images.numpy(), build_dataset("fashion-mnist", DEBIAN, "test").images.numpy())
    fetched = len(mirror)
    build_dataset("fashion-mnist", tmp_path / "data", "train", download=True)  # there now: nothing fetched
    assert len(mirror) == fetched


@needs_debian
def test_files_already_in_torchvisions_layout_are_not_fetched(tmp_path, unreachable):
    raw = tmp_path / "FashionMNIST" / "raw"  # what torchvision leaves: the decompressed files
    raw.mkdir(parents=True)
    for stem in FILES:
        with gzip.open(DEBIAN / f"{stem}.gz") as source, open(raw / stem, "wb") as target:
            shutil.copyfileobj(source, target)
    assert len(build_dataset("fashion-mnist", tmp_path, "train", download=True)) == 60000
    assert len(tvd.FashionMNIST(str(tmp_path), train=False, download=True)) == 10000  # torchvision: found, not fetched


def test_missing_fashion_mnist_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        build_dataset("fashion-mnist", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "pass --data-dir with its four IDX files" in message
    assert "--set data.download=true --data-dir (a folder to download into)" in message


def test_a_failed_download_is_one_line(tmp_path, unreachable):
    with pytest.raises(DataError) as error:
        build_dataset("fashion-mnist", tmp_path / "data", download=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"could not download fashion-mnist into {tmp_path / 'data'}")
    assert "Connection refused" in message and "copy its four IDX files into" in message


def test_demo_passes_download_and_data_dir_to_the_data(tmp_path, unreachable, capsys):
    """The download is tried once, before any run folder exists, and fails in one line."""
    assert main(["demo", "--data-dir", str(tmp_path / "data"), "--set", "data.download=true",
                 "--out", str(tmp_path / "demo"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tscnet demo: error: could not download fashion-mnist into") and "\n" not in err
    assert not (tmp_path / "demo").exists()


@needs_debian  # (not slow: ~6 s on one core, a 256-image epoch after fetching and extracting 30 MB)
def test_demo_from_a_download_end_to_end(tmp_path, mirror, capsys):
    """The pip-only first run: ``tscnet demo --data-dir DIR --set data.download=true``."""
    assert main(["demo", "--data-dir", str(tmp_path / "data"), "--set", "data.download=true",
                 "--out", str(tmp_path / "demo"), "--model", "cifar_resnet8", "--policies", "none", "--jobs", "1",
                 "--epochs", "1", "--train-subset", "256", "--test-subset", "256", "--no-progress"]) == 0
    assert set(mirror) == {f"/{stem}.gz" for stem in FILES}
    assert (tmp_path / "demo" / "cifar_resnet8-none" / "model_card.json").exists()
