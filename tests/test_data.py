"""The data layer: formats, the resolution rule, downloads, archives, subsets, samples."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import full_data_dir

import tutorial_lib.data as data
from tutorial_lib.data import (
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    UnsafeArchiveError,
    channel_stats,
    load_cifar10,
    load_imdb,
    load_mnist,
    safe_extract,
    stratified_indices,
    subset,
    train_val_split,
)

# ----------------------------------------------------------------------------- fixtures


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return raw


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": "fixture",
        "labels": [i % 10 for i in range(n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"{i}.png" for i in range(n)],
    }
    # Protocol 3: Python 3's protocol 2 stores bytes through _codecs.encode, a global that the
    # official (Python 2) batches never contain and the loader's restricted unpickler refuses.
    return pickle.dumps(batch, protocol=3)


def make_cifar(root: Path, per_batch: int = 7) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(cifar_batch(per_batch, k))
    (folder / "test_batch").write_bytes(cifar_batch(13, 99))
    return folder


IMDB_FILES = {
    "train/pos/0_9.txt": "Bromwell High is a cartoon comedy.",
    "train/pos/1_7.txt": "Great fun.<br /><br />Loved it.",
    "train/neg/0_3.txt": "Dull.",
    "train/neg/5_1.txt": "Awful, just awful.",
    "test/pos/0_10.txt": "I went and saw this movie last night.",
    "test/neg/0_2.txt": "Once again Mr. Costner has dragged out a movie.",
}


def make_imdb_folder(root: Path) -> Path:
    for relative, text in IMDB_FILES.items():
        path = root / "aclImdb" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "aclImdb" / "README").write_text("readme")
    return root / "aclImdb"


def tar_gz(path: Path, members: dict[str, bytes], extra=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if extra:
            extra(tar)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def make_imdb_archive(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    members = {f"aclImdb/{name}": text.encode() for name, text in IMDB_FILES.items()}
    tar_gz(root / "aclImdb_v1.tar.gz", members)
    return root / "aclImdb_v1.tar.gz"


def fake_url(monkeypatch, payloads: dict[str, bytes]) -> list[str]:
    """Serve ``payloads`` by URL in place of the network; return the list of URLs asked for."""
    asked: list[str] = []

    def open_url(url: str, timeout: float):
        asked.append(url)
        if url not in payloads:
            raise OSError(f"404 {url}")
        return io.BytesIO(payloads[url])

    monkeypatch.setattr(data.download, "_open_url", open_url)
    return asked


def replace_files(monkeypatch, key: str, files) -> None:
    """Make ``DATA_HUB[key]`` download ``files`` (``RemoteFile``s) instead of the official ones."""
    spec = dataclasses.replace(data.DATA_HUB[key], files=tuple(files))
    monkeypatch.setitem(data.DATA_HUB, key, spec)


def expect_md5_of(monkeypatch, key: str, blob: bytes) -> None:
    """Keep the official URL of a one-file data set but expect the checksum of ``blob``."""
    (remote,) = data.DATA_HUB[key].files
    replace_files(
        monkeypatch, key, [dataclasses.replace(remote, md5=hashlib.md5(blob).hexdigest())]
    )


# ----------------------------------------------------------------------------- MNIST


def test_mnist_reads_the_official_idx_layout(tmp_path, capsys):
    make_mnist(tmp_path)
    loaded = load_mnist(tmp_path)
    assert loaded.source.kind == "local copy"
    assert loaded.source.split_sizes == {"train": 20, "test": 10}
    image, label = loaded.train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == 3
    assert "MNIST: local copy" in capsys.readouterr().out


def test_mnist_reads_the_official_gz_files(tmp_path):
    raw = make_mnist(tmp_path)
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert len(load_mnist(tmp_path, verbose=False).test) == 10


def test_truncated_mnist_file_is_a_clear_error(tmp_path):
    raw = make_mnist(tmp_path)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="truncated"):
        load_mnist(tmp_path)


def test_mnist_download_is_verified_and_kept_as_the_official_gz_files(tmp_path, monkeypatch):
    source = make_mnist(tmp_path / "official")
    payloads, checksums = {}, {}
    mirrors = ("https://first.example/mnist/", "https://second.example/mnist/")
    for path in source.iterdir():
        blob = gzip.compress(path.read_bytes())
        payloads[mirrors[-1] + path.name + ".gz"] = blob
        checksums[path.name + ".gz"] = hashlib.md5(blob).hexdigest()
    replace_files(
        monkeypatch,
        "mnist",
        [data.RemoteFile(name, md5, mirrors) for name, md5 in checksums.items()],
    )
    asked = fake_url(monkeypatch, payloads)
    loaded = load_mnist(tmp_path / "fresh", verbose=False)
    assert loaded.source.kind == "official download"
    assert len(loaded.train) == 20
    assert sorted(p.name for p in (tmp_path / "fresh" / "MNIST" / "raw").iterdir()) == sorted(
        checksums
    )
    assert any(url.startswith(mirrors[0]) for url in asked), "the first mirror is tried first"


def test_no_local_copy_and_no_network_falls_back_to_the_sample_loudly(tmp_path, capsys):
    loaded = load_mnist(tmp_path)
    output = capsys.readouterr().out
    assert loaded.source.is_sample
    assert "NOTICE" in output and "NOT representative" in output and "network disabled" in output
    assert loaded.source.split_sizes == {"train": 1000, "test": 500}


def test_sample_refused_is_a_clear_error_naming_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_imdb(tmp_path, allow_sample=False)


def test_offline_switch_skips_the_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUTORIAL_OFFLINE", "1")
    asked = fake_url(monkeypatch, {})
    assert load_cifar10(tmp_path).source.is_sample
    assert asked == [] and "downloads are switched off" in capsys.readouterr().out


def test_local_copy_wins_over_download(tmp_path, monkeypatch):
    make_cifar(tmp_path)
    asked = fake_url(monkeypatch, {})
    assert load_cifar10(tmp_path, verbose=False).source.kind == "local copy"
    assert asked == []


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar_reads_batches_of_any_size(tmp_path):
    make_cifar(tmp_path, per_batch=7)
    loaded = load_cifar10(tmp_path, verbose=False)
    assert loaded.source.split_sizes == {"train": 35, "test": 13}
    assert loaded.train.images.shape == (35, 3, 32, 32)
    assert loaded.train.classes[0] == "airplane"
    # the first row of a batch is the red plane, then green, then blue
    raw = pickle.loads(cifar_batch(7, 1))["data"][0]
    assert torch.equal(loaded.train.images[0, 1].flatten(), torch.from_numpy(raw[1024:2048]))


def test_incomplete_cifar_folder_is_an_error_not_a_fallback(tmp_path):
    (make_cifar(tmp_path) / "data_batch_3").unlink()
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        load_cifar10(tmp_path)


def test_truncated_cifar_batch_is_a_clear_error(tmp_path):
    batch = make_cifar(tmp_path) / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(CorruptDataError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar_download_verifies_md5_then_extracts_safely(tmp_path, monkeypatch):
    folder = make_cifar(tmp_path / "official")
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()}
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    blob = tar_gz(tmp_path / "official.tar.gz", members)
    expect_md5_of(monkeypatch, "cifar10", blob)
    fake_url(monkeypatch, {data.CIFAR10_URL: blob})
    target = tmp_path / "fresh"
    loaded = load_cifar10(target, verbose=False)
    assert loaded.source.kind == "official download" and len(loaded.test) == 13
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"], (
        "archive and temp files are gone"
    )


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    fake_url(monkeypatch, {"https://example.org/file": b"not what was promised"})
    with pytest.raises(ChecksumError, match="expected 0123"):
        data.download_file("https://example.org/file", tmp_path / "file.tar.gz", "0123")
    assert list(tmp_path.iterdir()) == []


def test_download_with_a_wrong_checksum_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    fake_url(monkeypatch, {data.CIFAR10_URL: b"corrupted bytes"})
    with pytest.raises(ChecksumError, match=data.CIFAR10_MD5):
        load_cifar10(tmp_path)
    assert list(tmp_path.rglob("*")) == []


def test_cifar_transforms_give_normalised_float_images():
    train_transform = data.cifar10_transforms(train=True, color_jitter=True)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = train_transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    upsampled = data.cifar10_transforms(train=False, size=64)(image)
    assert upsampled.shape == (3, 64, 64)
    expected = (image.float() / 255 - torch.tensor(data.CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(
        data.CIFAR10_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(data.cifar10_transforms(train=False)(image), expected)


# ----------------------------------------------------------------------------- IMDB


def test_imdb_from_folder_keeps_label_rating_and_id(tmp_path):
    make_imdb_folder(tmp_path)
    loaded = load_imdb(tmp_path, verbose=False)
    train = loaded.train
    assert loaded.source.split_sizes == {"train": 4, "test": 2}
    assert (
        train.labels == [0, 0, 1, 1] and train.ratings == [3, 1, 9, 7] and train.ids == [0, 5, 0, 1]
    )
    assert train[3] == ("Great fun.<br /><br />Loved it.", 1)


def test_imdb_from_archive_equals_imdb_from_folder(tmp_path):
    make_imdb_folder(tmp_path / "folder")
    make_imdb_archive(tmp_path / "archive")
    from_folder = load_imdb(tmp_path / "folder", verbose=False)
    from_archive = load_imdb(tmp_path / "archive", verbose=False)
    assert from_folder.train == from_archive.train and from_folder.test == from_archive.test


def test_truncated_imdb_archive_is_a_clear_error(tmp_path):
    archive = make_imdb_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-60])
    with pytest.raises(CorruptDataError, match="not a complete"):
        load_imdb(tmp_path)


def test_imdb_archive_with_a_symlink_is_refused(tmp_path):
    def add_link(tar):
        link = tarfile.TarInfo("aclImdb/train/pos/9_9.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    tar_gz(tmp_path / "aclImdb_v1.tar.gz", {"aclImdb/train/pos/0_9.txt": b"ok"}, extra=add_link)
    with pytest.raises(UnsafeArchiveError, match="link"):
        load_imdb(tmp_path)


def test_imdb_download_goes_through_the_official_md5(tmp_path, monkeypatch):
    blob = make_imdb_archive(tmp_path / "official").read_bytes()
    expect_md5_of(monkeypatch, "imdb", blob)
    fake_url(monkeypatch, {data.IMDB_URL: blob})
    loaded = load_imdb(tmp_path / "fresh", verbose=False)
    assert loaded.source.kind == "official download" and len(loaded.train) == 4


# ----------------------------------------------------------------------------- archives


def test_safe_extract_refuses_parent_paths_and_writes_nothing(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    tar_gz(archive, {"good/file.txt": b"fine", "../evil": b"gotcha"})
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil"):
        safe_extract(archive, target)
    assert not (tmp_path / "evil").exists()
    assert list(target.iterdir()) == []


def test_safe_extract_refuses_absolute_paths_and_symlinks(tmp_path):
    tar_gz(tmp_path / "absolute.tar.gz", {"/tmp/evil": b"x"})
    with pytest.raises(UnsafeArchiveError):
        safe_extract(tmp_path / "absolute.tar.gz", tmp_path / "a")

    def add_link(tar):
        link = tarfile.TarInfo("good/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)

    tar_gz(tmp_path / "link.tar.gz", {"good/file.txt": b"fine"}, extra=add_link)
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(tmp_path / "link.tar.gz", tmp_path / "b")
    assert list((tmp_path / "b").iterdir()) == []


def test_safe_extract_keeps_only_the_selected_members(tmp_path):
    tar_gz(tmp_path / "a.tar.gz", {"keep/x.txt": b"1", "drop/y.txt": b"2"})
    created = safe_extract(
        tmp_path / "a.tar.gz", tmp_path / "out", keep=lambda name: name.parts[0] == "keep"
    )
    assert [p.name for p in created] == ["keep"] and (
        tmp_path / "out" / "keep" / "x.txt"
    ).read_bytes() == b"1"


# ----------------------------------------------------------------------------- subsets


def test_stratified_indices_keep_class_shares_and_repeat_with_the_seed():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    picked = stratified_indices(labels, 20, seed=3)
    assert np.bincount(labels[picked]).tolist() == [12, 6, 2]
    assert np.array_equal(picked, stratified_indices(labels, 20, seed=3))
    assert not np.array_equal(picked, stratified_indices(labels, 20, seed=4))
    assert len(np.unique(picked)) == 20


def test_stratified_indices_distribute_remainders_to_reach_the_size():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5)
    assert len(stratified_indices(labels, 7)) == 7
    # 4 of 7/2/1 examples: exact shares 2.8/0.8/0.4, floors 2/0/0, the two places left go to
    # the largest remainders (0.8 and 0.8), never to the class whose remainder is 0.4
    uneven = np.array([0] * 7 + [1] * 2 + [2])
    assert np.bincount(uneven[stratified_indices(uneven, 4)], minlength=3).tolist() == [3, 1, 0]
    # equal remainders: the first classes get the extra places
    assert np.bincount(labels[stratified_indices(labels, 7)]).tolist() == [3, 2, 2]
    with pytest.raises(ValueError, match="between 1 and 15"):
        stratified_indices(labels, 16)


def test_train_val_split_is_disjoint_stratified_and_complete(tmp_path):
    make_cifar(tmp_path, per_batch=20)
    train = load_cifar10(tmp_path, verbose=False).train
    fit_part, val_part = train_val_split(train, 20, seed=0)
    assert len(fit_part) + len(val_part) == len(train)
    assert torch.bincount(val_part.labels).tolist() == [2] * 10
    seen = {tuple(img.flatten()[:16].tolist()) for img in fit_part.images}
    assert not any(tuple(img.flatten()[:16].tolist()) in seen for img in val_part.images)
    # the seed chooses the split: the same seed gives the same one, another seed another
    again = train_val_split(train, 20, seed=0)[1]
    other = train_val_split(train, 20, seed=1)[1]
    assert torch.equal(again.images, val_part.images)
    assert not torch.equal(other.images, val_part.images)
    assert not torch.equal(subset(train, 30, seed=0).images, subset(train, 30, seed=1).images)


def test_subset_of_text_keeps_every_field_aligned(tmp_path):
    make_imdb_folder(tmp_path)
    train = load_imdb(tmp_path, verbose=False).train
    small = subset(train, 2, seed=0)
    assert sorted(small.labels) == [0, 1]
    for text, label, rating in zip(small.texts, small.labels, small.ratings, strict=True):
        assert (rating >= 7) == (label == 1) and text in IMDB_FILES.values()
    assert subset(train, None) is train


def test_channel_stats_of_known_images():
    images = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    images[1] = 255
    mean, std = channel_stats(images)
    assert mean == (0.5,) and std == (0.5,)


# ----------------------------------------------------------------------------- bundled samples


@pytest.mark.parametrize(
    "loader, sizes, classes",
    [
        (load_mnist, {"train": 1000, "test": 500}, 10),
        (load_cifar10, {"train": 500, "test": 200}, 10),
        (load_imdb, {"train": 400, "test": 200}, 2),
    ],
)
def test_bundled_samples_are_balanced_and_real_sized(loader, sizes, classes, tmp_path):
    loaded = loader(tmp_path, download=False, verbose=False)
    assert loaded.source.is_sample and loaded.source.split_sizes == sizes
    for split in ("train", "test"):
        labels = np.asarray(getattr(loaded, split).labels)
        assert np.bincount(labels).tolist() == [sizes[split] // classes] * classes


def test_bundled_samples_stay_small():
    total = sum(p.stat().st_size for p in data.SAMPLES_DIR.glob("*_sample*"))
    assert total < 4_000_000


# ----------------------------------------------------------------------------- full copies


requires_full_data = pytest.mark.skipif(
    full_data_dir() is None, reason="TUTORIAL_DATA_DIR does not point at full copies"
)


@requires_full_data
def test_full_mnist_has_the_official_counts_and_statistics():
    loaded = load_mnist(full_data_dir(), download=False, allow_sample=False, verbose=False)
    assert loaded.source.split_sizes == {"train": 60_000, "test": 10_000}
    assert np.bincount(loaded.test.labels.numpy()).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert channel_stats(loaded.train.images) == (data.MNIST_MEAN, data.MNIST_STD)


@requires_full_data
def test_full_imdb_has_25000_balanced_reviews_per_split():
    loaded = load_imdb(full_data_dir(), download=False, allow_sample=False, verbose=False)
    assert loaded.source.split_sizes == {"train": 25_000, "test": 25_000}
    for split in (loaded.train, loaded.test):
        assert np.bincount(split.labels).tolist() == [12_500, 12_500]
        assert all(
            (rating >= 7) == (label == 1)
            for rating, label in zip(split.ratings, split.labels, strict=True)
        )
    assert loaded.train.texts[loaded.train.labels.index(1)].startswith(
        "Bromwell High is a cartoon comedy"
    )


@requires_full_data
def test_full_cifar_copy_matches_its_source_card():
    loaded = load_cifar10(full_data_dir(), download=False, allow_sample=False, verbose=False)
    train_counts = np.bincount(loaded.train.labels.numpy()).tolist()
    test_counts = np.bincount(loaded.test.labels.numpy()).tolist()
    if loaded.source.split_sizes["train"] == 50_000:  # the official release
        assert train_counts == [5_000] * 10
    else:  # the partial copy described in shared/data/cifar-10-batches-py/SOURCE.md
        assert train_counts == [1_200] * 10
    assert test_counts == [1_000] * 10
    assert [loaded.test.classes[i] for i in loaded.test.labels[:4]] == [
        "cat",
        "ship",
        "ship",
        "airplane",
    ]
    mean, _ = channel_stats(loaded.train.images)
    assert np.allclose(mean, data.CIFAR10_MEAN, atol=0.01)


def test_balanced_indices_take_the_same_number_of_every_class():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 20)
    picked = data.balanced_indices(labels, 5, seed=1)
    assert np.bincount(labels[picked]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="class 1 has 7"):
        data.balanced_indices(labels, 8)


def _loaded_images(train_per_class: int, test_per_class: int) -> data.LoadedData:
    def split(per_class: int) -> data.ImageDataset:
        labels = torch.arange(10).repeat_interleave(per_class)
        return data.ImageDataset(
            torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, data.MNIST_CLASSES
        )

    source = data.DataSource(
        "MNIST",
        data.SOURCE_SAMPLE,
        "sample",
        {"train": 10 * train_per_class, "test": 10 * test_per_class},
    )
    return data.LoadedData(split(train_per_class), split(test_per_class), source)


def test_budget_splits_keep_the_budget_when_the_data_is_large_enough(capsys):
    splits = data.budget_splits(
        _loaded_images(100, 50), train_size=300, val_size=200, test_size=100
    )
    assert splits.sizes() == {"train": 300, "validation": 200, "test": 100}
    assert splits.adjustments == () and "NOTICE" not in capsys.readouterr().out


def test_budget_splits_shrink_to_the_bundled_sample_and_say_so(capsys):
    loaded = _loaded_images(100, 50)  # 1,000 / 500, the size of the MNIST sample
    splits = data.budget_splits(loaded, train_size=None, val_size=5_000, test_size=10_000)
    assert splits.sizes() == {"train": 800, "validation": 200, "test": 500}
    assert len(splits.adjustments) == 2
    printed = capsys.readouterr().out
    assert "validation 200 instead of 5,000" in printed and "test 500 instead of 10,000" in printed
    # validation stays class-balanced and disjoint from training
    assert torch.bincount(splits.val.labels).tolist() == [20] * 10
    assert len(splits.train) + len(splits.val) == len(loaded.train)


def test_budget_splits_reject_nonsense_sizes():
    with pytest.raises(ValueError, match="val_size must be a positive"):
        data.budget_splits(_loaded_images(10, 5), train_size=None, val_size=0, test_size=None)
    with pytest.raises(ValueError, match="too few to split"):
        data.budget_splits(_loaded_images(1, 5), train_size=None, val_size=5, test_size=None)
