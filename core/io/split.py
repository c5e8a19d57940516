"""Train/val/test splits that keep people apart: recordist names, person groups, grouped stratified folds.

A test split that shares a recordist with training rewards a model for learning that person's recorder,
microphone, gain habits and sites instead of the species. Two schemes draw splits by groups of recordings:

``recordist``
    Groups are the exact recordist strings (:func:`recordist_split`). Spelling variants of one person
    ("Manuel Grosselet" / "manuel grosselet"), mojibake ("HÃ©lÃ¨ne") and co-recorded entries
    ("Manuel Grosselet, Olivier Swift") are different groups, so people can still cross splits.
``person``
    Recordist fields are repaired and normalised (:func:`normalise_person`), split into their people
    (:func:`split_people`), and recordings that share any person are joined into one group by union-find
    (:func:`person_groups`); no person is in two splits (:func:`person_split`). For xc9 the assignment is
    committed as ``assets/xc9/recordist_split.csv``; other datasets get it computed and cached beside their
    manifest (:func:`load_person_split`).

Both assign folds with ``sklearn.model_selection.StratifiedGroupKFold`` (strata = primary label), keeping
the shuffle whose per-species val/test shares deviate least from ``1 / n_folds``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.errors import DatasetError
from core.io.fileio import atomic_path

__all__ = [
    "SPLIT_SCHEMES",
    "DEFAULT_SPLIT_SCHEME",
    "RECORDIST_SPLIT_SEED",
    "RECORDIST_SPLIT_FOLDS",
    "PERSON_ALIASES",
    "SHIPPED_PERSON_SPLIT",
    "SPLIT_COLUMNS",
    "normalise_person",
    "split_people",
    "person_groups",
    "recordist_split",
    "person_split",
    "load_person_split",
]

log = logging.getLogger(__name__)

#: How train/val/test are assigned: see the module docstring, and ``manifest`` = the manifest's own column.
SPLIT_SCHEMES = ("recordist", "person", "manifest")
#: The scheme used by :class:`core.io.data.Dataset`, :func:`core.io.data.open_dataset` and every caller that
#: does not choose one: the split the shipped checkpoints were trained on (their cards' ``data.split_scheme``).
#: ``python bench/rebuild_person_split.py --promote`` switches it to "person" as it ships the retrained models.
DEFAULT_SPLIT_SCHEME = "recordist"
#: Seed and fold count of the grouped splits (fold 0 = test, fold 1 = val, the rest train).
RECORDIST_SPLIT_SEED = 0
RECORDIST_SPLIT_FOLDS = 5
#: Normalised names known to be one person under another spelling (judged by hand, merged conservatively:
#: a false merge only coarsens the groups, a missed one leaks a person across splits).
PERSON_ALIASES: dict[str, str] = {
    # Krzysiek is the Polish diminutive of Krzysztof; xc9 has XC123082/83 (Krzysztof) and XC123088 (Krzysiek), one upload
    "krzysiek deoniziak": "krzysztof deoniziak",
    "sonnenburg": "bodo sonnenburg",  # surname alone; xc9 has one Blackcap from each form
}
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: The committed person split of the shipped dataset xc9.
SHIPPED_PERSON_SPLIT = _REPO_ROOT / "assets" / "xc9" / "recordist_split.csv"
#: Columns of a person split file (committed or cached).
SPLIT_COLUMNS = ("recording_id", "recordist", "person_group", "split")
#: Bumped when the person grouping or the fold rule changes, so that cached split files are recomputed.
_PERSON_SPLIT_VERSION = 1
_CACHE_PREFIX = "recordist_split."

# Latin letters that Unicode NFKD does not decompose into a base letter and a mark.
_UNDECOMPOSED = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D",
                               "þ": "th", "Þ": "Th", "æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe", "ı": "i"})
# Co-recordist separators: , ; & / anywhere, and/et/und only as whole words between spaces.
_SEPARATORS = re.compile(r"\s*[,;&/]\s*|\s+(?:and|et|und)\s+", flags=re.IGNORECASE)


def normalise_person(name: str) -> str:
    """One person's name in a form that compares equal across spellings.

    Steps: repair mojibake (UTF-8 read as Latin-1/Windows-1252, HTML entities) with ``ftfy.fix_text``
    (Speer 2019, ftfy, doi:10.5281/zenodo.2591652); Unicode NFKD and drop combining marks (accents), and map
    the few Latin letters NFKD leaves whole (ł, ø, đ, ð, þ, æ, œ, ı); ``str.casefold``; collapse runs of
    whitespace to one space; strip punctuation, symbols and spaces at both ends.

    Parameters
    ----------
    name : str
        One person's name as written, e.g. ``"HÃ©lÃ¨ne CARTAUD"``.

    Returns
    -------
    str
        E.g. ``"helene cartaud"``; ``""`` when nothing but punctuation and spaces is left.

    Raises
    ------
    DatasetError
        ``name`` is not a string.

    Examples
    --------
    >>> normalise_person("  Olivier SWIFT, ")
    'olivier swift'
    >>> normalise_person("HÃ©lÃ¨ne CARTAUD")
    'helene cartaud'
    """
    import ftfy

    if not isinstance(name, str):
        raise DatasetError(f"a recordist name must be a string, got {type(name).__name__} {name!r}")
    text = unicodedata.normalize("NFKD", ftfy.fix_text(name))
    text = "".join(c for c in text if not unicodedata.combining(c)).translate(_UNDECOMPOSED).casefold()
    text = " ".join(text.split())
    edge = lambda c: c.isspace() or unicodedata.category(c)[0] in "PSZ"  # noqa: E731
    start, end = 0, len(text)
    while start < end and edge(text[start]):
        start += 1
    while end > start and edge(text[end - 1]):
        end -= 1
    return text[start:end]


def split_people(recordist_field: str | None) -> tuple[str, ...]:
    """The people of one recordist field, each normalised (:func:`normalise_person`).

    Co-recordists are separated by ``,``, ``;``, ``&`` or ``/``, or by the words ``and``, ``et`` or ``und``
    (case-insensitive, only with spaces on both sides, so "Alexandre", "Sandra" or "Uffe Damm Andersen" stay
    whole). Mojibake is repaired before splitting. Empty parts and repeats are dropped, order is kept.

    Parameters
    ----------
    recordist_field : str or None
        E.g. ``"Manuel Grosselet, Olivier Swift"``.

    Returns
    -------
    tuple of str
        E.g. ``("manuel grosselet", "olivier swift")``; ``()`` for ``None``, ``""`` or punctuation only.

    Raises
    ------
    DatasetError
        ``recordist_field`` is neither a string nor None.

    Examples
    --------
    >>> split_people("Jan de Vries & Anna Smit und Jürgen Weiß")
    ('jan de vries', 'anna smit', 'jurgen weiss')
    """
    import ftfy

    if recordist_field is None:
        return ()
    if not isinstance(recordist_field, str):
        raise DatasetError(f"a recordist field must be a string or None, got {type(recordist_field).__name__}")
    parts = (normalise_person(p) for p in _SEPARATORS.split(ftfy.fix_text(recordist_field)))
    return tuple(dict.fromkeys(p for p in parts if p))


def person_groups(
    recordists: Sequence[str | None],
    *,
    unnamed: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> list[str]:
    """Group recordings that share any person (union-find), one readable group id per recording.

    Each recording's people (:func:`split_people`, then ``aliases``) are joined with each other; two
    recordings fall into one group when a chain of shared people links them ("A, B" + "B, C" + "C" -> one
    group). Union-find with ``scipy.cluster.hierarchy.DisjointSet`` (Tarjan 1975, J. ACM 22(2) 215-225).

    Parameters
    ----------
    recordists : sequence of str or None, length n
        Raw recordist fields, one per recording.
    unnamed : sequence of str, length n, optional
        Stand-in person of each recording whose field names nobody (e.g. ``"unknown:<primary label>"``);
        default ``"unknown"`` for all of them (one group: conservative).
    aliases : mapping of str to str, optional
        Normalised name -> normalised name of the same person under another spelling; default
        :data:`PERSON_ALIASES`. Pass ``{}`` for none.

    Returns
    -------
    list of str, length n
        Group id per recording: the alphabetically first person of its group.

    Raises
    ------
    DatasetError
        ``unnamed`` differs in length from ``recordists``.
    """
    from scipy.cluster.hierarchy import DisjointSet

    aliases = PERSON_ALIASES if aliases is None else aliases
    if unnamed is not None and len(unnamed) != len(recordists):
        raise DatasetError(f"unnamed has {len(unnamed)} entries for {len(recordists)} recordists")
    people = []
    for i, field in enumerate(recordists):
        names = tuple(dict.fromkeys(aliases.get(p, p) for p in split_people(field)))
        people.append(names or ("unknown" if unnamed is None else unnamed[i],))
    sets = DisjointSet(p for names in people for p in names)
    for names in people:
        for other in names[1:]:
            sets.merge(names[0], other)
    group_id = {member: min(subset) for subset in sets.subsets() for member in subset}
    return [group_id[names[0]] for names in people]


def _grouped_folds(labels: np.ndarray, groups: Sequence[str], n_folds: int, seed: int, n_tries: int) -> np.ndarray:
    """Split name per recording from StratifiedGroupKFold, the least-deviating of ``n_tries`` shuffles."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(labels)
    classes = np.unique(labels)

    def assign(fold_seed: int) -> np.ndarray:
        folds = list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=fold_seed).split(
            np.zeros(n), labels, np.asarray(groups)))
        split = np.full(n, "train", dtype=object)
        split[folds[0][1]] = "test"
        split[folds[1][1]] = "val"
        return split

    def deviation(split: np.ndarray) -> float:
        # summed |share - 1/n_folds| of val and test over classes: how far from stratified
        return sum(abs(np.mean(split[labels == c] == name) - 1 / n_folds) for c in classes for name in ("val", "test"))

    candidates = [seed] if n_tries <= 1 else [seed + k for k in range(n_tries)]
    return min((assign(s) for s in candidates), key=deviation)


def _check_lengths(recording_ids, primary_labels, recordists) -> None:
    n = len(recording_ids)
    if not (len(primary_labels) == len(recordists) == n):
        raise DatasetError("recording_ids, primary_labels and recordists must have the same length")
    if len(set(recording_ids)) != n:
        raise DatasetError("recording_ids must be unique")


def recordist_split(
    recording_ids: Sequence[str],
    primary_labels: Sequence[str],
    recordists: Sequence[str | None],
    *,
    n_folds: int = RECORDIST_SPLIT_FOLDS,
    seed: int = RECORDIST_SPLIT_SEED,
    n_tries: int = 20,
) -> dict[str, str]:
    """Train/val/test assignment in which no recordist string appears in two splits.

    ``sklearn.model_selection.StratifiedGroupKFold`` (groups = recordist, strata =
    primary label, shuffled): fold 0 is the test split, fold 1 the validation
    split, the rest train (about 60/20/20). Whole recordists cannot always be
    balanced per species, so the shuffles ``seed .. seed + n_tries - 1`` are
    drawn and the one whose per-species val and test shares deviate least from
    ``1 / n_folds`` is kept (a rule on label counts only, chosen before any
    model was evaluated on it). Recordings without a
    recordist are grouped by primary label (conservative: if they are one
    unnamed person's, they stay together; on xc9 these are 6 Stone-curlews,
    2 Blackcaps and 1 Little Owl). Groups are the exact strings (stripped), so
    spelling variants and co-recordists of one person are different groups:
    :func:`person_split` closes that gap.

    Parameters
    ----------
    recording_ids, primary_labels, recordists : sequences of equal length n
    n_folds : int
    seed, n_tries : int
        First shuffle seed and number of shuffles tried.

    Returns
    -------
    dict recording_id -> split name

    Raises
    ------
    DatasetError
        Lengths differ, repeated recording ids, or fewer than ``n_folds`` distinct recordists.
    """
    _check_lengths(recording_ids, primary_labels, recordists)
    groups = [r.strip() if isinstance(r, str) and r.strip() else f"unknown:{lab}"
              for lab, r in zip(primary_labels, recordists)]
    if len(set(groups)) < n_folds:
        raise DatasetError(f"a recordist-disjoint split needs at least {n_folds} recordists, got {len(set(groups))}")
    best = _grouped_folds(np.asarray(primary_labels), groups, n_folds, seed, n_tries)
    return dict(zip(recording_ids, (str(v) for v in best)))


def person_split(
    recording_ids: Sequence[str],
    primary_labels: Sequence[str],
    recordists: Sequence[str | None],
    *,
    aliases: Mapping[str, str] | None = None,
    n_folds: int = RECORDIST_SPLIT_FOLDS,
    seed: int = RECORDIST_SPLIT_SEED,
    n_tries: int = 20,
) -> list[dict[str, str]]:
    """Train/val/test assignment in which no person appears in two splits.

    The procedure of :func:`recordist_split` (StratifiedGroupKFold, fold 0 = test, fold 1 = val, the
    least-deviating of ``n_tries`` shuffles) with groups = :func:`person_groups`: recordist fields repaired,
    normalised and split into people, recordings sharing anyone joined. Recordings naming nobody stand in
    for one unnamed person per primary label, as in :func:`recordist_split`.

    Parameters
    ----------
    recording_ids, primary_labels, recordists : sequences of equal length n
        Unique ids, the first focal label of each recording, and its raw recordist field (or None).
    aliases : mapping of str to str, optional
        Passed to :func:`person_groups` (default :data:`PERSON_ALIASES`).
    n_folds, seed, n_tries : int
        As in :func:`recordist_split`.

    Returns
    -------
    list of dict, length n, in input order
        Rows with the keys of :data:`SPLIT_COLUMNS`: ``recording_id``, ``recordist`` (raw, ``""`` for
        None), ``person_group`` (group id) and ``split`` (``train``/``val``/``test``).

    Raises
    ------
    DatasetError
        Lengths differ, repeated recording ids, or fewer than ``n_folds`` person groups.
    """
    _check_lengths(recording_ids, primary_labels, recordists)
    groups = person_groups(recordists, unnamed=[f"unknown:{lab}" for lab in primary_labels], aliases=aliases)
    if len(set(groups)) < n_folds:
        raise DatasetError(f"a person-disjoint split needs at least {n_folds} groups of people, got {len(set(groups))}")
    best = _grouped_folds(np.asarray(primary_labels), groups, n_folds, seed, n_tries)
    return [{"recording_id": rid, "recordist": rec if isinstance(rec, str) else "", "person_group": g, "split": str(s)}
            for rid, rec, g, s in zip(recording_ids, recordists, groups, best)]


def _read_split_file(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in SPLIT_COLUMNS):
        raise DatasetError(f"{path} is not a person split file (columns {SPLIT_COLUMNS})")
    return rows


def _write_split_file(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SPLIT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r[c] for c in SPLIT_COLUMNS} for r in rows)


def _mismatch(rows: Sequence[Mapping[str, str]], recording_ids, recordists) -> str | None:
    """Why a split file does not describe these recordings (None when it does), people-disjointness included."""
    have = {r["recording_id"]: r["recordist"] for r in rows}
    want = {rid: rec if isinstance(rec, str) else "" for rid, rec in zip(recording_ids, recordists)}
    if len(have) != len(rows) or set(have) != set(want):
        return f"its {len(have)} recording ids differ from the manifest's {len(want)} ({len(set(have) ^ set(want))} not in both)"
    changed = sorted(k for k in want if have[k] != want[k])
    if changed:
        return f"the recordist of {len(changed)} recordings differs from the manifest's (e.g. {changed[0]})"
    if any(r["split"] not in ("train", "val", "test") for r in rows):
        return "it has split names other than train/val/test"
    seen: dict[str, str] = {}
    for r in rows:
        for person in split_people(r["recordist"]):
            if seen.setdefault(person, r["split"]) != r["split"]:
                return f"{person!r} is in both {seen[person]} and {r['split']}"
    return None


def _cache_key(recording_ids, primary_labels, recordists, aliases) -> str:
    data = [_PERSON_SPLIT_VERSION, RECORDIST_SPLIT_FOLDS, RECORDIST_SPLIT_SEED, sorted((aliases or {}).items()),
            [[rid, lab, rec if isinstance(rec, str) else ""] for rid, lab, rec in zip(recording_ids, primary_labels, recordists)]]
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()[:16]


def load_person_split(
    root: str | os.PathLike,
    recording_ids: Sequence[str],
    primary_labels: Sequence[str],
    recordists: Sequence[str | None],
    *,
    shipped: str | os.PathLike | None = SHIPPED_PERSON_SPLIT,
) -> tuple[list[dict[str, str]], Path | None]:
    """The person split of a dataset: the committed file for xc9, else a cache beside the manifest.

    1. ``shipped`` (``assets/xc9/recordist_split.csv``) is used when its recording ids and recordists are
       exactly the dataset's. If they differ and the dataset directory is named ``xc9``, a warning is logged
       and the split is computed as below.
    2. Otherwise ``<root>/recordist_split.<key>.csv`` is read, where ``key`` is a hash of the recording ids,
       primary labels, recordists, aliases and split settings (so any change to them recomputes it).
    3. Otherwise :func:`person_split` computes it and writes that file (older ``recordist_split.*.csv`` files
       are removed); a read-only directory gets it computed in memory (logged at INFO).

    A file that names other recordings or puts one person in two splits is never used.

    Parameters
    ----------
    root : path
        The dataset directory (holding ``manifest.csv``).
    recording_ids, primary_labels, recordists : sequences of equal length n
        As in :func:`person_split`.
    shipped : path or None
        The committed split to try first; None skips it.

    Returns
    -------
    rows : list of dict
        As returned by :func:`person_split`, in the order of ``recording_ids``.
    path : Path or None
        The file the split was read from or written to; None when computed in memory only.

    Raises
    ------
    DatasetError
        As :func:`person_split`, or a committed/cached file that is not a split file.
    """
    root = Path(root)
    order = {rid: i for i, rid in enumerate(recording_ids)}

    def ordered(rows):
        return sorted(({c: r[c] for c in SPLIT_COLUMNS} for r in rows), key=lambda r: order[r["recording_id"]])

    if shipped is not None and Path(shipped).is_file():
        rows = _read_split_file(Path(shipped))
        why = _mismatch(rows, recording_ids, recordists)
        if why is None:
            return ordered(rows), Path(shipped)
        if root.name == SHIPPED_PERSON_SPLIT.parent.name:
            log.warning("%s not used for %s: %s; computing the person split instead", shipped, root, why)
    cache = root / f"{_CACHE_PREFIX}{_cache_key(recording_ids, primary_labels, recordists, PERSON_ALIASES)}.csv"
    if cache.is_file():
        rows = _read_split_file(cache)
        why = _mismatch(rows, recording_ids, recordists)
        if why is None:
            return ordered(rows), cache
        log.warning("cached person split %s not used: %s; recomputing", cache, why)
    rows = person_split(recording_ids, primary_labels, recordists)
    try:
        _write_split_file(cache, rows)
    except OSError as exc:
        log.info("person split of %s computed in memory (cannot write %s: %s)", root, cache, exc)
        return rows, None
    for stale in root.glob(f"{_CACHE_PREFIX}*.csv"):
        if stale != cache:
            try:
                stale.unlink()
            except OSError:
                pass
    return rows, cache
