"""People-disjoint splits: name repair, co-recordists, union-find groups, the committed xc9 split and cached splits."""

import csv
import logging
import shutil
from collections import defaultdict

import pytest

import core.io.split as split_mod
from core.errors import DatasetError
from core.io.data import SHIPPED_MANIFEST_DIR, Dataset, split_description
from core.io.split import (
    PERSON_ALIASES,
    SHIPPED_PERSON_SPLIT,
    SPLIT_COLUMNS,
    normalise_person,
    person_groups,
    person_split,
    split_people,
)


def _people_in_two_splits(pairs):
    """Normalised people (aliases applied) found in more than one split, from (recordist field, split) pairs."""
    seen = defaultdict(set)
    for field, split in pairs:
        for person in split_people(field):
            seen[PERSON_ALIASES.get(person, person)].add(split)
    return {p: s for p, s in seen.items() if len(s) > 1}


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_manifest(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "recording_id", "labels", "split", "recordist"])
        w.writeheader()
        w.writerows(rows)


def _people_manifest(root, rename=None):
    """18 recordings of 3 classes by 11 name strings of 8 people: variants, mojibake and a co-recordist chain."""
    names = ["Ann Lee, Bob Ray", "bob ray and Cy Dow", "CY DOW", "Dee Fox", "dee  fox ", "Eve Gil", "Hal Ito",
             "Ivo Jay", "HÃ©lÃ¨ne Kerr", "Hélène KERR", "Lou Moe", "Nat Oz", "Nat Oz", "Pia Qu", "Pia Qu", "Rex Su",
             "Eve Gil & Hal Ito", ""]
    if rename:
        names = [rename.get(n, n) for n in names]
    rows = [{"path": f"a/r{i}.wav", "recording_id": f"r{i}", "labels": "abc"[i % 3], "split": "train", "recordist": n}
            for i, n in enumerate(names)]
    _write_manifest(root, rows)
    return root


def test_normalise_person_real_cases():
    assert normalise_person("HÃ©lÃ¨ne CARTAUD") == normalise_person("Hélène Cartaud") == "helene cartaud"
    assert normalise_person("Manuel Grosselet") == normalise_person("manuel grosselet") == "manuel grosselet"
    assert normalise_person("MichaÅ\x82 Jezierski") == "michal jezierski"  # mojibake of ł, which NFKD keeps whole
    assert normalise_person("Domagoj TomiÄ\x8diÄ\x87") == "domagoj tomicic"
    assert normalise_person("TÃ¶rÃ¶k TamÃ¡s") == "torok tamas"
    assert normalise_person("Vadim Ivushkin ") == "vadim ivushkin"
    assert normalise_person("  (Falco).  ") == "falco"
    assert normalise_person("Jose A.   Neila\tBallesteros") == "jose a. neila ballesteros"  # inner dot kept
    assert normalise_person(" ,; ") == ""
    with pytest.raises(DatasetError, match="string"):
        normalise_person(None)


def test_split_people_separators_and_names_that_contain_them():
    assert split_people("Olivier SWIFT, HÃ©lÃ¨ne CARTAUD") == ("olivier swift", "helene cartaud")
    assert split_people("Manuel Grosselet, Olivier Swift") == ("manuel grosselet", "olivier swift")
    for sep in (" and ", " AND ", " et ", " und ", " & ", "; ", "/", " / "):
        assert split_people(f"Anna Smit{sep}Jan de Vries") == ("anna smit", "jan de vries"), sep
    # "and", "et", "und" inside a word, or glued to it, never split a name
    for whole in ("Alexandre Sandra", "Uffe Damm Andersen", "Etienne Undset", "Bernadette Hetland", "Sandra Etund"):
        assert split_people(whole) == (normalise_person(whole),), whole
    assert split_people("A. B, a. b ,, ") == ("a. b",)  # repeats and empty parts dropped
    assert split_people("A &amp; B") == ("a", "b")  # HTML entity repaired by ftfy
    assert split_people(None) == split_people("") == split_people(" , ") == ()
    with pytest.raises(DatasetError):
        split_people(3)


def test_person_groups_union_find_merges_chains():
    groups = person_groups(["A, B", "b and C", "c", "D", "Dee", None, ""])
    assert groups[0] == groups[1] == groups[2] == "a"  # A-B, B-C, C: one group named by its first person
    assert len({groups[0], groups[3], groups[4]}) == 3
    assert groups[5] == groups[6] == "unknown"  # nobody named: one conservative group by default
    unnamed = person_groups([None, "", None], unnamed=["unknown:x", "unknown:y", "unknown:x"])
    assert unnamed == ["unknown:x", "unknown:y", "unknown:x"]
    assert len(set(person_groups(["Krzysiek Deoniziak", "Krzysztof Deoniziak"]))) == 1  # PERSON_ALIASES
    assert len(set(person_groups(["Krzysiek Deoniziak", "Krzysztof Deoniziak"], aliases={}))) == 2
    with pytest.raises(DatasetError, match="unnamed"):
        person_groups(["A"], unnamed=[])


def test_person_split_input_errors():
    with pytest.raises(DatasetError, match="same length"):
        person_split(["a", "b"], ["x"], ["A", "B"])
    with pytest.raises(DatasetError, match="unique"):
        person_split(["a", "a"], ["x", "x"], ["A", "B"])
    with pytest.raises(DatasetError, match="at least 5 groups"):  # 6 strings, but 3 people
        person_split(list("abcdef"), list("xyxyxy"), ["A", "a", "B", "b", "C, A", "c"])


def test_committed_xc9_split_is_people_disjoint_and_covers_the_manifest():
    rows = _read(SHIPPED_PERSON_SPLIT)
    assert tuple(rows[0]) == SPLIT_COLUMNS
    manifest = _read(SHIPPED_MANIFEST_DIR / "manifest.csv")
    assert [r["recording_id"] for r in rows] == [r["recording_id"] for r in manifest]
    assert [r["recordist"] for r in rows] == [r["recordist"] for r in manifest]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert _people_in_two_splits((r["recordist"], r["split"]) for r in rows) == {}
    by_group = defaultdict(set)
    for r in rows:
        by_group[r["person_group"]].add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())
    # the circle of the issue (Grosselet, Swift, Cartaud in 6 spellings) is one group
    circle = {r["person_group"] for r in rows if {"olivier swift", "manuel grosselet"} & set(split_people(r["recordist"]))}
    assert len(circle) == 1 and sum(r["person_group"] in circle for r in rows) == 7


def test_committed_xc9_split_equals_a_fresh_computation():
    manifest = _read(SHIPPED_MANIFEST_DIR / "manifest.csv")
    fresh = person_split([r["recording_id"] for r in manifest], [r["labels"].split(";")[0].strip() for r in manifest],
                         [r["recordist"] for r in manifest])
    assert fresh == _read(SHIPPED_PERSON_SPLIT)


def test_xc9_dataset_uses_the_committed_split_and_the_recordist_scheme_leaks():
    person = Dataset(SHIPPED_MANIFEST_DIR, "person")
    assert person.split_scheme == "person" and person.split_file == SHIPPED_PERSON_SPLIT
    assert "sharing no person" in split_description(person) and "recordist_split.csv" in split_description(person)
    committed = {r["recording_id"]: r["split"] for r in _read(SHIPPED_PERSON_SPLIT)}
    assert {r.recording_id: r.split for r in person.recordings} == committed
    assert _people_in_two_splits((r.meta["recordist"], r.split) for r in person.recordings) == {}
    assert all(r.meta["person_group"] for r in person.recordings)
    old = Dataset(SHIPPED_MANIFEST_DIR, "recordist")
    assert set(_people_in_two_splits((r.meta["recordist"], r.split) for r in old.recordings)) >= {
        "manuel grosselet", "olivier swift"}


def test_dataset_with_audio_under_the_person_scheme(data_dir):
    ds = Dataset(data_dir, "person")
    assert ds.split_file == SHIPPED_PERSON_SPLIT
    assert _people_in_two_splits((r.meta.get("recordist"), r.split) for r in ds.recordings) == {}


def test_xc9_with_other_recordings_recomputes_with_a_warning(tmp_path, caplog):
    root = tmp_path / "xc9"
    root.mkdir()
    manifest = _read(SHIPPED_MANIFEST_DIR / "manifest.csv")
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(manifest[0]))
        w.writeheader()
        w.writerows(manifest[1:])  # one recording fewer
    shutil.copy(SHIPPED_MANIFEST_DIR / "species.csv", root / "species.csv")
    with caplog.at_level(logging.WARNING, logger="core.io.split"):
        ds = Dataset(root, "person")
    assert "recording ids differ" in caplog.text
    assert ds.split_file is not None and ds.split_file.parent == root.resolve()
    assert len(ds) == len(manifest) - 1
    assert _people_in_two_splits((r.meta["recordist"], r.split) for r in ds.recordings) == {}


def test_other_dataset_gets_a_cached_split_beside_its_manifest(tmp_path, monkeypatch):
    root = _people_manifest(tmp_path / "birds")
    ds = Dataset(root, "person")
    cache = ds.split_file
    assert cache is not None and cache.parent == root.resolve() and cache.name.startswith("recordist_split.")
    rows = _read(cache)
    assert [r["recording_id"] for r in rows] == [r.recording_id for r in ds.recordings]
    assert _people_in_two_splits((r["recordist"], r["split"]) for r in rows) == {}
    groups = {r.recording_id: r.meta["person_group"] for r in ds.recordings}
    assert groups["r0"] == groups["r1"] == groups["r2"] == "ann lee"  # Ann+Bob, bob+Cy, CY
    assert groups["r3"] == groups["r4"] and groups["r8"] == groups["r9"] == "helene kerr"
    assert groups["r5"] == groups["r6"] == groups["r16"]  # Eve & Hal joins Eve's and Hal's recordings

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached split should have been reused")

    monkeypatch.setattr(split_mod, "person_split", no_recompute)
    again = Dataset(root, "person")
    assert again.split_file == cache
    assert [r.split for r in again.recordings] == [r.split for r in ds.recordings]
    monkeypatch.undo()

    _people_manifest(root, rename={"Lou Moe": "Lou Moe, Nat Oz"})  # a recordist changed: new key, recomputed
    changed = Dataset(root, "person")
    assert changed.split_file != cache and changed.split_file.is_file() and not cache.is_file()
    assert changed.by_id["r10"].meta["person_group"] == changed.by_id["r11"].meta["person_group"]


def test_a_cached_split_that_leaks_is_not_used(tmp_path, caplog):
    root = _people_manifest(tmp_path / "birds")
    cache = Dataset(root, "person").split_file
    rows = _read(cache)
    r0 = next(r for r in rows if r["recording_id"] == "r0")
    r2 = next(r for r in rows if r["recording_id"] == "r2")
    r2["split"] = next(s for s in ("train", "val", "test") if s != r0["split"])  # Cy Dow now in two splits
    with open(cache, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SPLIT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with caplog.at_level(logging.WARNING, logger="core.io.split"):
        ds = Dataset(root, "person")
    assert "'cy dow' is in both" in caplog.text
    assert ds.by_id["r2"].split == ds.by_id["r0"].split
    assert _people_in_two_splits((r["recordist"], r["split"]) for r in _read(ds.split_file)) == {}


def test_read_only_data_dir_computes_in_memory(tmp_path, monkeypatch):
    root = _people_manifest(tmp_path / "birds")

    def read_only(path):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(split_mod, "atomic_path", read_only)
    ds = Dataset(root, "person")
    assert ds.split_file is None and not list(root.glob("recordist_split*"))
    assert "computed in memory" in split_description(ds)
    assert _people_in_two_splits((r.meta["recordist"], r.split) for r in ds.recordings) == {}

