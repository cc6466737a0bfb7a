"""Fault injection on the data layer (issue 10): malicious and malformed files, a local HTTP
server that cuts, stalls and lies, a read-only folder and a full disk. Each case gets the
library's own error naming the file or URL and what to do, or simply works."""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import pickle
import resource
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_data import make_cifar, make_imdb_folder, make_mnist, replace_files, tar_gz, write_idx

import tutorial_lib.data as data
from tutorial_lib.data import (
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    DownloadError,
    load_cifar10,
    load_imdb,
    load_mnist,
)

NOBODY = 65534
CANNOT_DROP_ROOT = "cannot drop root"


def run_in_child(
    function: Callable[[], object], *, as_nobody: bool = False, max_file_bytes: int | None = None
) -> tuple[str, object]:
    """Run ``function`` in a forked process and return ``("ok", result)`` or
    ``(exception type name, message)``.

    ``as_nobody`` drops root's rights (root ignores file permissions, so a read-only folder
    is only read-only to another user); ``max_file_bytes`` makes every write past that size
    fail as a full disk would (``RLIMIT_FSIZE``: ``EFBIG`` instead of ``ENOSPC``).
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def target() -> None:
        try:
            if max_file_bytes is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
            if as_nobody and os.geteuid() == 0:
                try:
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                except PermissionError as error:  # root without CAP_SETUID (some containers)
                    sender.send((CANNOT_DROP_ROOT, str(error)))
                    return
            sender.send(("ok", function()))
        except BaseException as error:  # everything goes back to the test
            sender.send((type(error).__name__, str(error)))

    process = context.Process(target=target)
    process.start()
    try:
        assert receiver.poll(60), "the child process did not answer within 60 s"
        outcome = receiver.recv()
        if outcome[0] == CANNOT_DROP_ROOT:
            pytest.skip(f"running as root and cannot switch to another user: {outcome[1]}")
        return outcome
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


# ----------------------------------------------------------------------------- security


class _RunsCommand:
    def __init__(self, function, argument) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize(
    "make_payload",
    [
        lambda marker: _RunsCommand(os.system, f"touch {marker}"),
        lambda marker: _RunsCommand(eval, f"open({str(marker)!r}, 'w').close()"),
    ],
    ids=["os.system", "eval"],
)
def test_a_cifar_batch_that_runs_code_is_refused_before_it_runs(tmp_path, make_payload):
    folder = make_cifar(tmp_path / "data")
    marker = tmp_path / "the-payload-ran"
    batch = {"data": make_payload(marker), "labels": [0]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptDataError, match=r"data_batch_2 was refused: .*(system|eval)"):
        load_cifar10(tmp_path / "data")
    assert not marker.exists(), "the pickle's command ran"


def python2_batch(pixels: np.ndarray, labels: list[int]) -> bytes:
    """A batch in the exact form of the official files: written by Python 2's cPickle at
    protocol 2, byte strings as SHORT_BINSTRING, the array rebuilt through
    ``numpy.core.multiarray._reconstruct`` with its pixels as one BINSTRING."""

    def text(raw: bytes) -> bytes:
        return b"U" + bytes([len(raw)]) + raw

    out = b"\x80\x02}(" + text(b"data")
    out += (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b") + b"\x87R"
    )
    out += (
        b"(K\x01M" + struct.pack("<H", pixels.shape[0]) + b"M" + struct.pack("<H", 3072) + b"\x86"
    )
    out += b"cnumpy\ndtype\n" + text(b"u1") + b"K\x00K\x01\x87R(K\x03" + text(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", pixels.size) + pixels.tobytes() + b"tb"
    return out + text(b"labels") + b"](" + b"".join(b"K" + bytes([k]) for k in labels) + b"eu."


def test_the_restricted_unpickler_reads_batches_in_the_official_python2_form(tmp_path):
    pixels = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    folder = make_cifar(tmp_path)
    (folder / "test_batch").write_bytes(python2_batch(pixels, [3, 7]))
    loaded = load_cifar10(tmp_path, verbose=False)
    assert loaded.test.labels.tolist() == [3, 7]
    assert np.array_equal(loaded.test.images.numpy().reshape(2, 3072), pixels)


# ----------------------------------------------------------------------------- wrong data


def _cifar_with(tmp_path: Path, data_array, labels) -> Path:
    folder = make_cifar(tmp_path)
    (folder / "data_batch_4").write_bytes(
        pickle.dumps({"data": data_array, "labels": labels}, protocol=3)
    )
    return folder


@pytest.mark.parametrize(
    "pixels, labels, message",
    [
        (np.full((2, 3072), 0.5), [0, 1], "float64 pixels"),
        (np.full((2, 3072), 300, dtype=np.int64), [0, 1], r"int64 pixels ranging 300\.\.300"),
        (np.full((2, 3072), np.nan, dtype=np.float32), [0, 1], "float32 pixels, some NaN"),
        (np.zeros((2, 3072), dtype=np.uint8), [0.0, 1.5], "float64 labels"),
        (np.zeros((2, 3072), dtype=np.uint8), ["cat", "dog"], "<U3 labels"),
    ],
    ids=["float", "over-255", "nan", "float-labels", "text-labels"],
)
def test_cifar_values_that_are_not_the_official_format_are_refused(
    tmp_path, pixels, labels, message
):
    _cifar_with(tmp_path, pixels, labels)
    with pytest.raises(CorruptDataError, match=rf"data_batch_4 holds {message}"):
        load_cifar10(tmp_path)


def test_mnist_labels_outside_0_to_9_are_refused(tmp_path):
    raw = make_mnist(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12), 2049)
    with pytest.raises(CorruptDataError, match=r"t10k-labels-idx1-ubyte holds the label 12"):
        load_mnist(tmp_path)


def test_mnist_images_that_are_not_28_by_28_are_refused(tmp_path):
    raw = make_mnist(tmp_path)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((20, 32, 32)), 2051)
    with pytest.raises(
        CorruptDataError, match=r"train-images-idx3-ubyte holds images of shape \(32, 32\)"
    ):
        load_mnist(tmp_path)


def test_mnist_images_and_labels_of_different_counts_name_both_files(tmp_path):
    raw = make_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(19) % 10, 2049)
    with pytest.raises(
        CorruptDataError,
        match=r"train-images-idx3-ubyte holds 20 images but .*"
        r"train-labels-idx1-ubyte holds labels of shape \(19,\)",
    ):
        load_mnist(tmp_path)


def test_mnist_with_three_of_four_files_says_which_is_missing_and_does_not_fall_back(tmp_path):
    raw = make_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(CorruptDataError, match=r"lacks t10k-labels-idx1-ubyte \(or its \.gz\)"):
        load_mnist(tmp_path)


def test_imdb_class_folders_without_reviews_are_refused(tmp_path):
    folder = make_imdb_folder(tmp_path)
    for review in (folder / "test" / "neg").iterdir():
        review.unlink()
    with pytest.raises(CorruptDataError, match=r"holds no review in aclImdb/test/neg/"):
        load_imdb(tmp_path)


def test_imdb_reviews_with_other_names_are_refused(tmp_path):
    folder = make_imdb_folder(tmp_path)
    (folder / "train" / "pos" / "0_9.txt").rename(folder / "train" / "pos" / "great-review.txt")
    with pytest.raises(
        CorruptDataError, match=r"great-review\.txt is not named <id>_<rating>\.txt"
    ):
        load_imdb(tmp_path)


def test_a_non_utf8_review_names_the_file_in_a_folder_and_in_an_archive(tmp_path):
    folder = make_imdb_folder(tmp_path / "folder")
    (folder / "train" / "neg" / "5_1.txt").write_bytes("Awful, na\u00efve.".encode("latin-1"))
    with pytest.raises(CorruptDataError, match=r"5_1\.txt is not UTF-8 text .*re-save the file"):
        load_imdb(tmp_path / "folder")
    members = {
        f"aclImdb/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*.txt")
    }
    tar_gz(tmp_path / "aclImdb_v1.tar.gz", members)
    with pytest.raises(
        CorruptDataError, match=r"aclImdb/train/neg/5_1\.txt in .*aclImdb_v1\.tar\.gz is not UTF-8"
    ):
        load_imdb(tmp_path)


def test_imdb_hidden_files_in_class_folders_are_ignored(tmp_path):
    folder = make_imdb_folder(tmp_path)
    (folder / "train" / "pos" / ".DS_Store").write_bytes(b"\x00\x01")
    assert load_imdb(tmp_path, verbose=False).source.split_sizes == {"train": 4, "test": 2}


# ----------------------------------------------------------------------------- downloads


def _cut_after_one_chunk(handler) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b"400\r\n" + b"x" * 0x400 + b"\r\n")
    handler.wfile.flush()
    handler.close_connection = True  # no terminating chunk: the transfer is cut


def test_a_chunked_download_cut_mid_transfer_is_a_download_error_naming_the_url(
    tmp_path, local_server
):
    local_server.routes["/cut.tar.gz"] = _cut_after_one_chunk
    url = local_server.url("/cut.tar.gz")
    with pytest.raises(
        DownloadError, match=rf"download of {url} failed after 1,024 bytes .*IncompleteRead"
    ):
        data.download_file(url, tmp_path / "cut.tar.gz", "0" * 32, timeout=5)
    assert list(tmp_path.iterdir()) == [], "no partial file is kept"


def test_a_stalled_download_times_out_as_a_download_error(tmp_path, local_server):
    def stall(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b"y" * 10)
        handler.wfile.flush()
        local_server.release.wait(10)

    local_server.routes["/stall"] = stall
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"/stall failed after 10 bytes .*timed out"):
        data.download_file(local_server.url("/stall"), tmp_path / "stall", "0" * 32, timeout=0.5)
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []


def test_a_cut_download_falls_back_to_the_sample_with_the_url_in_the_notice(
    tmp_path, local_server, monkeypatch, capsys
):
    local_server.routes["/cifar-10-python.tar.gz"] = _cut_after_one_chunk
    replace_files(
        monkeypatch,
        "cifar10",
        [data.RemoteFile("cifar-10-python.tar.gz", data.CIFAR10_MD5, (local_server.url("/"),))],
    )
    assert load_cifar10(tmp_path).source.is_sample
    assert (
        f"download of {local_server.url('/cifar-10-python.tar.gz')} failed"
        in capsys.readouterr().out
    )
    with pytest.raises(DataNotFoundError, match="IncompleteRead"):
        load_cifar10(tmp_path, allow_sample=False)


def _serve_mnist(
    tmp_path: Path, local_server, monkeypatch, first_mirror_lies: bool
) -> dict[str, bytes]:
    source = make_mnist(tmp_path / "official")
    blobs = {path.name + ".gz": gzip.compress(path.read_bytes()) for path in source.iterdir()}
    for name, blob in blobs.items():
        local_server.routes[f"/good/{name}"] = blob
        local_server.routes[f"/bad/{name}"] = blob[:-8] + b"tampered" if first_mirror_lies else blob
    mirrors = (local_server.url("/bad/"), local_server.url("/good/"))
    replace_files(
        monkeypatch,
        "mnist",
        [
            data.RemoteFile(name, hashlib.md5(blob).hexdigest(), mirrors)
            for name, blob in blobs.items()
        ],
    )
    return blobs


def test_a_checksum_failure_on_the_first_mirror_tries_the_next_one(
    tmp_path, local_server, monkeypatch
):
    blobs = _serve_mnist(tmp_path, local_server, monkeypatch, first_mirror_lies=True)
    loaded = load_mnist(tmp_path / "fresh", verbose=False)
    assert loaded.source.kind == "official download" and len(loaded.train) == 20
    for name in blobs:
        assert local_server.requests.index(f"/bad/{name}") < local_server.requests.index(
            f"/good/{name}"
        )
    raw = tmp_path / "fresh" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(blobs), "no staging or .part left"


def test_every_mirror_lying_is_a_checksum_error_not_a_fallback(tmp_path, local_server, monkeypatch):
    _serve_mnist(tmp_path, local_server, monkeypatch, first_mirror_lies=True)
    for path in [path for path in local_server.routes if path.startswith("/good/")]:
        local_server.routes[path] = b"lies too"
    with pytest.raises(
        ChecksumError, match=r"no mirror served a verified \S+-ubyte\.gz: .*/bad/.* \| .*/good/"
    ):
        load_mnist(tmp_path / "fresh")
    assert list((tmp_path / "fresh").rglob("*")) == [], "nothing half-downloaded is kept"


def test_a_lying_mirror_beside_one_that_fails_is_a_checksum_error_not_a_fallback(
    tmp_path, local_server, monkeypatch
):
    """Wrong bytes from one mirror and no answer from the other: what matters is that someone
    served the wrong file, which must stop the chapter, not end as a plain download failure
    that falls back to the bundled sample without a word about the bad bytes."""
    _serve_mnist(tmp_path, local_server, monkeypatch, first_mirror_lies=True)
    for path in [path for path in local_server.routes if path.startswith("/good/")]:
        del local_server.routes[path]  # this mirror now answers 404
    with pytest.raises(ChecksumError, match=r"no mirror served a verified .*/bad/.* \| .*/good/"):
        load_mnist(tmp_path / "fresh")
    assert list((tmp_path / "fresh").rglob("*")) == [], "nothing half-downloaded is kept"


@pytest.fixture
def world_readable_folder():
    """A folder outside pytest's private tmp tree, so another user can read it; made writable
    again and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="tutorial-readonly-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)


def test_a_read_only_folder_with_only_the_official_gz_files_loads_and_stays_untouched(
    world_readable_folder,
):
    raw = make_mnist(world_readable_folder)
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    before = sorted(p.relative_to(world_readable_folder) for p in world_readable_folder.rglob("*"))
    for path in [world_readable_folder, *world_readable_folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)

    def load() -> tuple[str, dict[str, int]]:
        loaded = load_mnist(
            world_readable_folder, download=False, allow_sample=False, verbose=False
        )
        return loaded.source.kind, loaded.source.split_sizes

    assert run_in_child(load, as_nobody=True) == ("ok", ("local copy", {"train": 20, "test": 10}))
    assert (
        sorted(p.relative_to(world_readable_folder) for p in world_readable_folder.rglob("*"))
        == before
    )


def test_a_download_onto_a_full_disk_blames_the_disk_not_the_download(tmp_path, local_server):
    blob = os.urandom(200_000)
    local_server.routes["/big.gz"] = blob
    target = tmp_path / "big.gz"

    def download() -> str:
        return str(
            data.download_file(local_server.url("/big.gz"), target, hashlib.md5(blob).hexdigest())
        )

    kind, message = run_in_child(download, max_file_bytes=50_000)
    assert kind == "DownloadError", message
    assert f"could not write {tmp_path}" in message and "disk may be full" in message
    assert "checksum" not in message.lower() and "gzip" not in message.lower()
    assert list(tmp_path.iterdir()) == [], "the partial temporary file was removed"
    assert run_in_child(download) == ("ok", str(target)), "with room, the same download works"


def test_a_read_only_data_folder_is_a_clear_error_when_a_download_must_write(
    world_readable_folder, local_server
):
    local_server.routes["/file"] = b"payload"
    world_readable_folder.chmod(0o555)

    def download() -> str:
        target = world_readable_folder / "file"
        return str(
            data.download_file(
                local_server.url("/file"), target, hashlib.md5(b"payload").hexdigest()
            )
        )

    kind, message = run_in_child(download, as_nobody=True)
    assert kind == "DownloadError" and f"could not write {world_readable_folder}" in message
    assert "TUTORIAL_DATA_DIR" in message


def test_a_full_disk_while_extracting_is_not_blamed_on_the_archive(tmp_path):
    archive = tmp_path / "a.tar.gz"
    tar_gz(archive, {"folder/big.bin": os.urandom(200_000)})

    def extract() -> list[str]:
        return [str(p) for p in data.safe_extract(archive, tmp_path / "out")]

    kind, message = run_in_child(extract, max_file_bytes=50_000)
    assert (
        kind == "DownloadError" and "could not write" in message and "not a complete" not in message
    )
    assert list((tmp_path / "out").iterdir()) == [], "the staging folder was removed"


def test_an_imdb_review_linked_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("not a review: a file outside the data folder")
    folder = make_imdb_folder(tmp_path / "data")
    (folder / "train" / "pos" / "0_9.txt").unlink()
    (folder / "train" / "pos" / "0_9.txt").symlink_to(outside)
    with pytest.raises(CorruptDataError, match=r"0_9\.txt leads to .*secret\.txt, outside"):
        load_imdb(tmp_path / "data")
    # a whole class folder linked elsewhere leads outside as well
    shutil.rmtree(folder / "test" / "neg")
    (tmp_path / "elsewhere" / "7_2.txt").write_text("a review kept elsewhere")
    (folder / "test" / "neg").symlink_to(tmp_path / "elsewhere")
    (folder / "train" / "pos" / "0_9.txt").unlink()
    (folder / "train" / "pos" / "0_9.txt").write_text("Great.")
    with pytest.raises(CorruptDataError, match="outside"):
        load_imdb(tmp_path / "data")


def test_a_link_between_reviews_inside_the_folder_still_reads(tmp_path):
    """Links that stay inside the folder (a deduplicated copy) are plain reviews."""
    folder = make_imdb_folder(tmp_path)
    (folder / "train" / "pos" / "8_10.txt").symlink_to(folder / "train" / "pos" / "0_9.txt")
    assert load_imdb(tmp_path, verbose=False).source.split_sizes == {"train": 5, "test": 2}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_imdb_review_that_is_a_named_pipe_is_refused_not_read_forever(tmp_path):
    folder = make_imdb_folder(tmp_path)
    pipe = folder / "test" / "pos" / "9_9.txt"
    os.mkfifo(pipe)
    done = threading.Event()

    def end_a_blocked_read() -> None:
        # A reader that opens the pipe blocks until a writer comes; this one comes and leaves
        # at once, so a regression fails the test instead of hanging it.
        while not done.wait(0.1):
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                continue

    writer = threading.Thread(target=end_a_blocked_read, daemon=True)
    writer.start()
    try:
        with pytest.raises(CorruptDataError, match=r"9_9\.txt is not a regular file"):
            load_imdb(tmp_path)
    finally:
        done.set()
        writer.join(timeout=5)


def test_an_idx_header_whose_shape_overflows_is_corrupt_not_a_crash(tmp_path):
    """2^31 x 2^31 x 4 is 2^64 elements, which int64 arithmetic wraps to 0: a header-only file
    would pass the size check and fail in reshape with a raw error."""
    from tutorial_lib.data.mnist import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    dims = (2**31, 2**31, 4)
    path.write_bytes((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(CorruptDataError, match="should hold"):
        read_idx(path, 2051)
