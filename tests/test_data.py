import inspect

import numpy as np
import pytest

from core.errors import DatasetError
from core.io.data import (
    DATA_ENV_VAR,
    DEFAULT_SPLIT_SCHEME,
    SPLIT_SCHEMES,
    Dataset,
    build_windows,
    download_dataset,
    find_data_dir,
    open_dataset,
    split_description,
)


def test_manifest_and_splits(tiny_dataset):
    ds = Dataset(tiny_dataset)
    assert ds.class_names == ["aaa", "bbb", "ccc"]
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 3, 3]
    rec = ds.split("val")[0]
    assert ds.target(rec).tolist() == [1, 0, 0]
    assert ds.display_name("bbb") == "bbb bird (bbb)"


def test_windows_stay_in_their_split(tiny_dataset):
    ds = Dataset(tiny_dataset)
    seen = {}
    for split in ("train", "val", "test"):
        w = build_windows(ds, ds.split(split), sample_rate=16_000, window_s=1.0)
        assert w.waveforms.shape == (3 * len(ds.split(split)), 16_000)  # 2.5 s -> 3 windows (last padded)
        assert np.allclose(w.targets, w.recording_targets()[w.recording_index])
        ids = {w.recordings[i].recording_id for i in w.recording_index}
        for other_ids in seen.values():
            assert not ids & other_ids
        seen[split] = ids


def test_search_order(tiny_dataset, monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV_VAR, str(tiny_dataset))
    assert find_data_dir() == tiny_dataset.resolve()
    assert len(open_dataset()) == 12
    with pytest.raises(DatasetError, match="no manifest.csv"):
        find_data_dir(tmp_path / "empty")


def test_bad_manifests(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,labels\na.wav,x\n")
    with pytest.raises(DatasetError, match="split"):
        Dataset(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,labels,split\na.wav,x,holdout\n")
    with pytest.raises(DatasetError, match="split must be"):
        Dataset(tmp_path)


def test_download_with_fake_network(tiny_dataset, tmp_path):
    """The downloader fetches by xeno-canto id, writes atomically, skips existing files and reports failures."""
    src = tiny_dataset
    requested = []

    def fake_open(url):
        requested.append(url)
        rid = url.rstrip("/").split("/")[-2]
        if rid == "ccctest0":
            raise OSError("connection refused")
        rec = next(p for p in src.rglob(f"{rid}.*"))
        return rec.read_bytes()

    dest = tmp_path / "dl"
    with pytest.raises(DatasetError, match="1 of 12 downloads failed: ccctest0"):
        download_dataset(dest, manifest_dir=src, opener=fake_open)
    assert "https://xeno-canto.org/aaatrain0/download" in requested
    assert not list(dest.rglob("*.part"))
    ds = Dataset(dest)
    assert len(ds.available()) == 11
    requested.clear()
    with pytest.raises(DatasetError):
        download_dataset(dest, manifest_dir=src, opener=fake_open)
    assert len(requested) == 1  # only the missing one is fetched again


def test_split_schemes_and_their_one_default():
    """Dataset and open_dataset take their default scheme from DEFAULT_SPLIT_SCHEME (the one line to switch)."""
    assert set(SPLIT_SCHEMES) == {"recordist", "person", "manifest"} and DEFAULT_SPLIT_SCHEME in SPLIT_SCHEMES
    assert inspect.signature(Dataset).parameters["split_scheme"].default == DEFAULT_SPLIT_SCHEME
    assert inspect.signature(open_dataset).parameters["split_scheme"].default == DEFAULT_SPLIT_SCHEME
    with pytest.raises(DatasetError, match="'recordist', 'person', 'manifest'"):
        Dataset(".", "people")


@pytest.mark.parametrize("scheme", ["recordist", "person"])
def test_grouped_schemes_without_recordists_keep_the_manifest_split(tiny_dataset, scheme, caplog):
    ds = Dataset(tiny_dataset, scheme)
    assert ds.split_scheme == "manifest" and "no recordist column" in caplog.text
    assert [r.split for r in ds.recordings] == [r.meta["manifest_split"] for r in ds.recordings]
    assert "recordists may be shared" in split_description(ds)
    assert not list(tiny_dataset.glob("recordist_split*"))
