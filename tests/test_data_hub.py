"""The data hub: a new data set is one DataSpec plus a reader, resolved by the one rule."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import expect_md5_of, fake_url, make_cifar, tar_gz

import tutorial_lib.data as data
from tutorial_lib.data import (
    SOURCE_SAMPLE,
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    DataSpec,
    ImageDataset,
    RemoteFile,
    load_dataset,
)
from tutorial_lib.data.containers import loaded_data
from tutorial_lib.data.download import place_in

CLASSES = ("dark", "light")


def _npz_bytes(per_class: int) -> bytes:
    images = np.concatenate(
        [np.full((per_class, 1, 4, 4), 10, np.uint8), np.full((per_class, 1, 4, 4), 240, np.uint8)]
    )
    labels = np.repeat(np.arange(2), per_class)
    buffer = io.BytesIO()
    np.savez(
        buffer, train_images=images, train_labels=labels, test_images=images, test_labels=labels
    )
    return buffer.getvalue()


def read_toy(root: Path, kind: str):
    """The whole reader of the toy data set: ``Toy/toy.npz`` or nothing."""
    path = root / "Toy" / "toy.npz"
    if not path.is_file():
        return None
    sample = data.hub.read_image_sample("Toy", CLASSES)(path)
    return loaded_data("Toy", kind, path, sample.train, sample.test)


@pytest.fixture
def toy_spec(tmp_path, monkeypatch) -> DataSpec:
    """A data set registered the way a maintainer would add one; removed after the test."""
    blob = _npz_bytes(per_class=3)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "toy_sample.npz").write_bytes(_npz_bytes(per_class=1))
    monkeypatch.setattr(data.hub, "SAMPLES_DIR", samples)
    spec = DataSpec(
        key="toy",
        name="Toy",
        layout="Toy/toy.npz",
        read=read_toy,
        files=(
            RemoteFile(
                "toy.npz",
                hashlib.md5(blob).hexdigest(),
                ("https://mirror-a.example/", "https://mirror-b.example/"),
            ),
        ),
        place=place_in("Toy"),
        sample="toy_sample.npz",
        read_sample=data.hub.read_image_sample("Toy", CLASSES),
    )
    monkeypatch.setitem(data.DATA_HUB, "toy", spec)
    fake_url(monkeypatch, {"https://mirror-b.example/toy.npz": blob})
    return spec


def test_a_registered_spec_is_downloaded_placed_and_then_read_locally(tmp_path, toy_spec, capsys):
    loaded = load_dataset("toy", tmp_path / "root")
    assert loaded.source.kind == "official download" and loaded.source.split_sizes["train"] == 6
    assert isinstance(loaded.train, ImageDataset) and loaded.train.classes == CLASSES
    assert sorted(p.name for p in (tmp_path / "root").rglob("*")) == ["Toy", "toy.npz"]
    again = load_dataset("toy", tmp_path / "root", verbose=False)
    assert again.source.kind == "local copy"
    assert torch.equal(again.train.images, loaded.train.images)
    assert "Toy: official download" in capsys.readouterr().out


def test_a_registered_spec_falls_back_to_its_sample_offline(
    tmp_path, toy_spec, monkeypatch, capsys
):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    loaded = load_dataset("toy", tmp_path)
    assert loaded.source.kind == SOURCE_SAMPLE and loaded.source.split_sizes == {
        "train": 2,
        "test": 2,
    }
    assert "no local Toy copy" in capsys.readouterr().out
    with pytest.raises(DataNotFoundError, match="expected Toy/toy.npz"):
        load_dataset("toy", tmp_path, allow_sample=False)


def test_an_unknown_data_set_names_the_known_ones():
    with pytest.raises(KeyError, match="cifar10, imdb, mnist"):
        load_dataset("fashion_mnist")


def test_every_registered_spec_has_its_sample_and_https_or_http_mirrors():
    for key, spec in data.DATA_HUB.items():
        assert spec.key == key and (data.SAMPLES_DIR / spec.sample).is_file()
        assert spec.read_sample(data.SAMPLES_DIR / spec.sample).source.is_sample
        for remote in spec.files:
            assert len(remote.md5) == 32 and remote.mirrors
            assert all(
                m.startswith(("https://", "http://")) and m.endswith("/") for m in remote.mirrors
            )


def test_a_verified_archive_left_in_the_data_directory_is_used_without_downloading(
    tmp_path, monkeypatch
):
    folder = make_cifar(tmp_path / "official")
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()}
    (tmp_path / "fresh").mkdir()
    blob = tar_gz(tmp_path / "fresh" / "cifar-10-python.tar.gz", members)
    expect_md5_of(monkeypatch, "cifar10", blob)
    asked = fake_url(monkeypatch, {})
    loaded = data.load_cifar10(tmp_path / "fresh", verbose=False)
    assert loaded.source.kind == "official download" and asked == []
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["cifar-10-batches-py"]


def test_an_archive_with_the_wrong_checksum_in_the_data_directory_is_not_trusted(
    tmp_path, monkeypatch
):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    fake_url(monkeypatch, {data.CIFAR10_URL: b"not it either"})
    with pytest.raises(ChecksumError):
        data.load_cifar10(tmp_path)


def test_a_reader_error_after_download_is_not_turned_into_a_fallback(tmp_path, monkeypatch):
    # the official archive verifies but holds a malformed batch: an error, not the sample
    folder = make_cifar(tmp_path / "official")
    (folder / "test_batch").write_bytes(b"\x80\x03garbage")
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()}
    blob = tar_gz(tmp_path / "official.tar.gz", members)
    spec = data.DATA_HUB["cifar10"]
    monkeypatch.setitem(
        data.DATA_HUB,
        "cifar10",
        dataclasses.replace(
            spec, files=(dataclasses.replace(spec.files[0], md5=hashlib.md5(blob).hexdigest()),)
        ),
    )
    fake_url(monkeypatch, {data.CIFAR10_URL: blob})
    with pytest.raises(CorruptDataError, match="test_batch"):
        data.load_cifar10(tmp_path / "fresh")


def test_a_spec_whose_place_step_misses_its_own_layout_is_an_error(tmp_path, toy_spec, monkeypatch):
    monkeypatch.setitem(
        data.DATA_HUB, "toy", dataclasses.replace(toy_spec, place=place_in("Elsewhere"))
    )
    with pytest.raises(CorruptDataError, match="no copy in the layout Toy/toy.npz"):
        load_dataset("toy", tmp_path)


def test_a_failed_download_keeps_a_verified_file_from_an_earlier_attempt(
    tmp_path, toy_spec, monkeypatch
):
    earlier, root = _npz_bytes(per_class=3), tmp_path / "root"
    root.mkdir()
    (root / "toy.npz").write_bytes(earlier)
    second = RemoteFile("second.bin", "0" * 32, ("https://mirror-a.example/",))
    monkeypatch.setitem(
        data.DATA_HUB, "toy", dataclasses.replace(toy_spec, files=(toy_spec.files[0], second))
    )
    with pytest.raises(DataNotFoundError, match="second.bin"):
        load_dataset("toy", root, allow_sample=False)
    assert sorted(p.name for p in root.iterdir()) == ["toy.npz"]
    assert (root / "toy.npz").read_bytes() == earlier
