"""Dataset layer: any set of recordings described by a manifest CSV.

A dataset directory holds ``manifest.csv`` with at least the columns ``path``
(relative to the directory), ``labels`` (``;``-separated class codes) and
``split`` (``train``/``val``/``test``), and optionally ``secondary_labels``,
``recording_id``, ``duration_s``, ``recordist`` and a ``species.csv`` (``species_code``,
``scientific_name``, ``english_name``) that fixes the class list and its order.

Split schemes (:mod:`core.io.split`; the default is ``DEFAULT_SPLIT_SCHEME``):
``recordist`` re-draws train/val/test so that no recordist string appears in two
splits (:func:`recordist_split`); a test split that shares recordists with
training rewards models that learn a person's recorder, microphone and site
instead of the species. ``person`` goes further: names are repaired and
normalised, co-recordists split, and recordings sharing any person grouped, so
that no person is in two splits (:func:`person_split`; for xc9 the committed
``assets/xc9/recordist_split.csv``, for other datasets a cached file beside the
manifest). ``manifest`` keeps the manifest's ``split`` column (for xc9: split by
recording only; 21 of its 47 test recordings share a recordist with training).

Labels are weak (the species is somewhere in the recording), so every 5 s
window inherits its recording's labels; windows never cross splits because the
split is a property of the recording.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core.errors import AudioLoadError, DatasetError
from core.io.audio import frame_windows, load_audio
from core.io.fileio import atomic_path
from core.io.split import (  # noqa: F401 (RECORDIST_SPLIT_* re-exported)
    DEFAULT_SPLIT_SCHEME,
    RECORDIST_SPLIT_FOLDS,
    RECORDIST_SPLIT_SEED,
    SPLIT_SCHEMES,
    load_person_split,
    person_split,
    recordist_split,
)

__all__ = [
    "DATA_ENV_VAR",
    "DEFAULT_DATASET",
    "Recording",
    "Dataset",
    "SPLIT_SCHEMES",
    "DEFAULT_SPLIT_SCHEME",
    "recordist_split",
    "person_split",
    "candidate_data_dirs",
    "find_data_dir",
    "open_dataset",
    "download_dataset",
    "WindowSet",
    "build_windows",
    "windows_from_waveforms",
]

log = logging.getLogger(__name__)

#: Environment variable naming the dataset directory.
DATA_ENV_VAR = "BIRDSHIELD_DATA_DIR"
#: Name of the default dataset (9 European species from xeno-canto).
DEFAULT_DATASET = "xc9"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Manifest shipped with the code so that ``python -m core download`` works anywhere.
SHIPPED_MANIFEST_DIR = REPO_ROOT / "assets" / DEFAULT_DATASET
REQUIRED_COLUMNS = ("path", "labels", "split")
SPLITS = ("train", "val", "test")


def _split_labels(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(t.strip() for t in str(text).split(";") if t.strip())


@dataclass(frozen=True)
class Recording:
    """One row of a manifest: a recording, its labels, its recordist and its split.

    Attributes
    ----------
    recording_id : str
        The xeno-canto id, e.g. ``"XC123456"``.
    path : Path
        Absolute path of the audio file.
    labels : tuple of str
        Focal class codes.
    secondary_labels : tuple of str
        Other classes of the dataset heard in the background.
    split : str
    duration_s : float or None [seconds]
        When given, only the first ``duration_s`` seconds of the file are used.
    meta : dict
        All other manifest columns (recordist, licence, ...).
    """

    recording_id: str
    path: Path
    labels: tuple[str, ...]
    secondary_labels: tuple[str, ...]
    split: str
    duration_s: float | None
    meta: dict

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Focal and secondary labels (the multi-label target)."""
        return tuple(dict.fromkeys(self.labels + self.secondary_labels))


class Dataset:
    """Recordings of a manifest directory.

    Parameters
    ----------
    root : path
        Directory with ``manifest.csv``.
    split_scheme : {"recordist", "person", "manifest"}
        Default :data:`DEFAULT_SPLIT_SCHEME`. ``recordist`` re-draws the splits so
        that they share no recordist string (:func:`recordist_split`); ``person``
        so that they share no person (:func:`core.io.split.load_person_split`,
        which sets ``self.split_file`` and ``Recording.meta["person_group"]``).
        A manifest without a ``recordist`` column falls back to ``manifest`` with
        a logged warning, and ``self.split_scheme`` says which one is in force.
        The manifest's own split stays in ``Recording.meta["manifest_split"]``.

    Raises
    ------
    DatasetError
        Missing manifest, missing columns, unknown split names or scheme, empty
        label sets, or labels not in ``species.csv``.
    """

    def __init__(self, root: str | os.PathLike, split_scheme: str = DEFAULT_SPLIT_SCHEME) -> None:
        if split_scheme not in SPLIT_SCHEMES:
            raise DatasetError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")
        self.root = Path(root).resolve()
        manifest = self.root / "manifest.csv"
        if not manifest.is_file():
            raise DatasetError(f"no manifest.csv in {self.root}")
        with manifest.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise DatasetError(f"{manifest} has no rows")
        missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
        if missing:
            raise DatasetError(f"{manifest} lacks required columns {missing}")
        self.species: dict[str, dict] = {}
        species_csv = self.root / "species.csv"
        if species_csv.is_file():
            with species_csv.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    self.species[row["species_code"]] = row
        recordings = []
        for i, row in enumerate(rows):
            labels = _split_labels(row["labels"])
            if not labels:
                raise DatasetError(f"{manifest} row {i + 2}: empty labels")
            if row["split"] not in SPLITS:
                raise DatasetError(f"{manifest} row {i + 2}: split must be one of {SPLITS}, got {row['split']!r}")
            duration = row.get("duration_s") or None
            rec_id = row.get("recording_id") or Path(row["path"]).stem
            meta = {k: v for k, v in row.items() if k not in ("path", "labels", "secondary_labels", "split")}
            meta["manifest_split"] = row["split"]
            recordings.append(
                Recording(
                    recording_id=rec_id,
                    path=self.root / row["path"],
                    labels=labels,
                    secondary_labels=_split_labels(row.get("secondary_labels")),
                    split=row["split"],
                    duration_s=float(duration) if duration else None,
                    meta=meta,
                )
            )
        if self.species:
            self.class_names = list(self.species)
        else:
            self.class_names = sorted({lab for r in recordings for lab in r.labels})
        known = set(self.class_names)
        for r in recordings:
            unknown = set(r.labels) - known
            if unknown:
                raise DatasetError(f"recording {r.recording_id}: labels {sorted(unknown)} are not in species.csv")
        # secondary labels outside the class list are ignored (documented)
        if split_scheme != "manifest" and "recordist" not in rows[0]:
            log.warning("%s has no recordist column: using the manifest's split (recordists may be shared)", manifest)
            split_scheme = "manifest"
        #: The committed or cached person split file in use (``person`` scheme only; None if computed in memory).
        self.split_file: Path | None = None
        ids, primary, people = ([r.recording_id for r in recordings], [r.labels[0] for r in recordings],
                                [r.meta.get("recordist") for r in recordings])
        if split_scheme == "recordist":
            assign = recordist_split(ids, primary, people)
            recordings = [dataclasses.replace(r, split=assign[r.recording_id]) for r in recordings]
        elif split_scheme == "person":
            rows, self.split_file = load_person_split(self.root, ids, primary, people)
            recordings = [dataclasses.replace(r, split=row["split"], meta={**r.meta, "person_group": row["person_group"]})
                          for r, row in zip(recordings, rows)]
        self.split_scheme = split_scheme
        self.recordings = recordings
        self.by_id: dict[str, Recording] = {r.recording_id: r for r in recordings}

    def __len__(self) -> int:
        return len(self.recordings)

    def __repr__(self) -> str:
        return f"Dataset({self.root}, {len(self)} recordings, {len(self.class_names)} classes, {self.split_scheme} split)"

    def split(self, name: str) -> list[Recording]:
        """Recordings of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {name!r}")
        return [r for r in self.recordings if r.split == name]

    def target(self, recording: Recording, class_names: Sequence[str] | None = None) -> np.ndarray:
        """Multi-hot target ``(n_classes,)`` float32 from focal + secondary labels."""
        names = list(class_names or self.class_names)
        y = np.zeros(len(names), dtype=np.float32)
        for lab in recording.all_labels:
            if lab in names:
                y[names.index(lab)] = 1.0
        return y

    def display_name(self, code: str) -> str:
        """English name of a class code, or the code itself."""
        row = self.species.get(code)
        return f"{row['english_name']} ({code})" if row and row.get("english_name") else code

    def available(self) -> list[Recording]:
        """Recordings whose audio file exists on disk."""
        return [r for r in self.recordings if r.path.is_file()]

    def load(self, recording: Recording, sample_rate: int) -> np.ndarray:
        """Decoded mono waveform ``(n_samples,)`` float32 at ``sample_rate`` [Hz]."""
        if not recording.path.is_file():
            raise AudioLoadError(
                f"{recording.recording_id}: audio file missing ({recording.path}); run `python -m core download`"
            )
        clip = load_audio(recording.path, sample_rate=sample_rate, duration_s=recording.duration_s)
        return clip.waveform


def candidate_data_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for a dataset, in order.

    1. ``explicit`` (the ``--data-dir`` CLI flag or a dashboard setting);
    2. the environment variable ``BIRDSHIELD_DATA_DIR``;
    3. ``<repo>/data/xc9`` (where ``python -m core download`` puts it);
    4. ``<repo>/../shared/data/xc9`` and ``<cwd>/../shared/data/xc9``.
    """
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit).expanduser())
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        out.append(Path(env).expanduser())
    out += [
        REPO_ROOT / "data" / DEFAULT_DATASET,
        REPO_ROOT.parent / "shared" / "data" / DEFAULT_DATASET,
        Path.cwd().parent / "shared" / "data" / DEFAULT_DATASET,
    ]
    return list(dict.fromkeys(p.resolve() for p in out))


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """First directory of :func:`candidate_data_dirs` holding a ``manifest.csv``.

    An ``explicit`` directory without a manifest is an error, not silently skipped.

    Raises
    ------
    DatasetError
        ``explicit`` was given but has no ``manifest.csv``.
    """
    if explicit:
        p = Path(explicit).expanduser().resolve()
        if not (p / "manifest.csv").is_file():
            raise DatasetError(f"--data-dir {p} has no manifest.csv")
        return p
    for p in candidate_data_dirs():
        if (p / "manifest.csv").is_file():
            return p
    return None


def open_dataset(explicit: str | os.PathLike | None = None, split_scheme: str = DEFAULT_SPLIT_SCHEME) -> Dataset:
    """Open the dataset found by :func:`find_data_dir` (``split_scheme``: see :class:`Dataset`).

    Raises
    ------
    DatasetError
        No dataset found; the message lists where it looked and how to download.
    """
    root = find_data_dir(explicit)
    if root is None:
        looked = ", ".join(str(p) for p in candidate_data_dirs())
        raise DatasetError(
            f"no dataset found (looked in {looked}). Set {DATA_ENV_VAR}, pass --data-dir, "
            "or run `python -m core download` to fetch the recordings from xeno-canto"
        )
    return Dataset(root, split_scheme)


def download_dataset(
    dest: str | os.PathLike,
    *,
    manifest_dir: str | os.PathLike = SHIPPED_MANIFEST_DIR,
    url_template: str = "https://xeno-canto.org/{id}/download",
    opener: Callable[[str], bytes] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Download the recordings of a manifest from xeno-canto by their ids.

    Files already present are skipped, so an interrupted download resumes. Each
    file is written to a temporary name and renamed, so no half-written audio is
    left behind. Recordings whose manifest path ends in ``.flac`` are transcoded
    to FLAC (the source is a WAV); others are stored as downloaded. Only the first
    ``duration_s`` seconds are used when loading, as in the shipped dataset.

    Parameters
    ----------
    dest : path
        Target dataset directory (created; manifest and species list copied in).
    manifest_dir : path
        Directory with ``manifest.csv`` (and ``species.csv``).
    url_template : str
        Download URL with ``{id}`` for the numeric xeno-canto id.
    opener : callable, optional
        ``opener(url) -> bytes``; defaults to ``urllib``. Tests inject a fake.
    progress : callable, optional
        ``progress(done, total, recording_id)``.

    Returns
    -------
    Path
        The dataset directory ``dest``, with the audio files, ``manifest.csv`` and ``species.csv``.

    Raises
    ------
    DatasetError
        Missing manifest, or downloads that failed (listed by id).
    """
    import soundfile as sf

    manifest_dir = Path(manifest_dir)
    dest = Path(dest)
    if not (manifest_dir / "manifest.csv").is_file():
        raise DatasetError(f"no manifest.csv in {manifest_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.csv", "species.csv", "README.md"):
        if (manifest_dir / name).is_file() and not (dest / name).exists():
            shutil.copy(manifest_dir / name, dest / name)
    if opener is None:

        def opener(url: str) -> bytes:
            req = urllib.request.Request(url, headers={"User-Agent": "birdshield-download"})
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 (user-requested download)
                return resp.read()

    with (manifest_dir / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    failed = []
    for i, row in enumerate(rows):
        target = dest / row["path"]
        rec_id = row.get("recording_id") or target.stem
        if progress:
            progress(i, len(rows), rec_id)
        if target.is_file() and target.stat().st_size > 0:
            continue
        numeric = rec_id[2:] if rec_id.upper().startswith("XC") else rec_id
        try:
            data = opener(url_template.format(id=numeric))
            with atomic_path(target) as tmp:
                if target.suffix.lower() == ".flac":
                    clip = load_audio(data, sample_rate=int(row.get("sample_rate") or 32000), name=rec_id)
                    sf.write(tmp, clip.waveform, clip.sample_rate, format="FLAC")
                else:
                    tmp.write_bytes(data)
        except Exception as exc:  # network or decoding failure: report all at the end
            log.warning("download of %s failed: %s", rec_id, exc)
            failed.append(rec_id)
    if progress:
        progress(len(rows), len(rows), "")
    if failed:
        raise DatasetError(f"{len(failed)} of {len(rows)} downloads failed: {', '.join(failed[:10])}")
    return dest


@dataclass
class WindowSet:
    """Fixed windows of a split, each with its recording's labels.

    Attributes
    ----------
    waveforms : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
    targets : np.ndarray [shape=(n_windows, n_classes), dtype=float32]
    recording_index : np.ndarray [shape=(n_windows,), dtype=int64]
        Index into ``recordings``.
    starts : np.ndarray [shape=(n_windows,), dtype=int64] [samples]
    recordings : list of Recording
    valid_samples : np.ndarray [shape=(n_windows,), dtype=int64] or None [samples]
        Samples of real audio in each window (the rest is zero padding).
    """

    waveforms: np.ndarray
    targets: np.ndarray
    recording_index: np.ndarray
    starts: np.ndarray
    recordings: list[Recording]
    valid_samples: np.ndarray | None = None

    def masks(self) -> np.ndarray:
        """``(n_windows, window_samples)`` float32: 1 on real audio, 0 on padding."""
        n = self.waveforms.shape[1]
        valid = np.full(len(self.waveforms), n) if self.valid_samples is None else self.valid_samples
        return (np.arange(n)[None, :] < valid[:, None]).astype(np.float32)

    def clip_ids(self, sample_rate: int) -> list[str]:
        """``"<recording_id>@<start>s"`` per window (unique), start in seconds at ``sample_rate`` [Hz]."""
        return [f"{self.recordings[r].recording_id}@{s / sample_rate:g}s" for r, s in zip(self.recording_index, self.starts)]

    def recording_targets(self) -> np.ndarray:
        """Targets per recording ``(n_recordings, n_classes)``."""
        out = np.zeros((len(self.recordings), self.targets.shape[1]), dtype=np.float32)
        out[self.recording_index] = self.targets
        return out


def build_windows(
    dataset: Dataset,
    recordings: Iterable[Recording],
    *,
    sample_rate: int,
    window_s: float,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WindowSet:
    """Decode recordings and cut them into non-overlapping windows.

    Parameters
    ----------
    dataset : Dataset
    recordings : iterable of Recording
    sample_rate : int [Hz]
    window_s : float [seconds]
    class_names : sequence of str, optional
        Class order of the targets (a model's), default the dataset's.
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    WindowSet
    """
    recordings = list(recordings)
    waves = []
    for i, rec in enumerate(recordings):
        waves.append(dataset.load(rec, sample_rate))
        if progress:
            progress(i + 1, len(recordings))
    targets = np.stack([dataset.target(r, class_names) for r in recordings]) if recordings else None
    n_classes = len(class_names or dataset.class_names)
    return windows_from_waveforms(waves, targets, recordings, window_samples=int(round(window_s * sample_rate)), n_classes=n_classes)


def windows_from_waveforms(
    waveforms: Sequence[np.ndarray],
    targets: np.ndarray | None,
    recordings: list[Recording],
    *,
    window_samples: int,
    n_classes: int,
) -> WindowSet:
    """Cut already decoded recordings into non-overlapping, zero-padded windows.

    Parameters
    ----------
    waveforms : sequence of np.ndarray [shape=(n_samples,)]
        One mono waveform per recording.
    targets : np.ndarray [shape=(n_recordings, n_classes)] or None
        Multi-hot target of each recording, inherited by its windows.
    recordings : list of Recording
    window_samples : int > 0
    n_classes : int

    Returns
    -------
    WindowSet
    """
    wins, tgts, rec_idx, starts, valid = [], [], [], [], []
    for i, wav in enumerate(waveforms):
        w, s = frame_windows(wav, window_samples)
        wins.append(w)
        tgts.append(np.repeat(targets[i][None], len(s), axis=0))
        rec_idx += [i] * len(s)
        starts += s
        valid += [min(window_samples, len(wav) - st) for st in s]
    return WindowSet(
        waveforms=np.concatenate(wins) if wins else np.zeros((0, window_samples), np.float32),
        targets=np.concatenate(tgts) if tgts else np.zeros((0, n_classes), np.float32),
        recording_index=np.asarray(rec_idx, dtype=np.int64),
        starts=np.asarray(starts, dtype=np.int64),
        recordings=recordings,
        valid_samples=np.asarray(valid, dtype=np.int64),
    )


def ids_sha256(ids) -> str:
    """First 16 hex digits of the SHA-256 of the sorted ids joined by commas (fingerprint of a split)."""
    return hashlib.sha256(",".join(sorted(ids)).encode()).hexdigest()[:16]


def split_description(dataset: Dataset) -> str:
    """One line saying how ``dataset``'s train/val/test were drawn (for model cards and tables)."""
    if dataset.split_scheme == "person":
        source = dataset.split_file.name if dataset.split_file else "computed in memory"
        return ("train/val/test sharing no person (recordist names repaired and normalised, co-recordists split, "
                f"recordings sharing anyone grouped; core.io.split.person_split, {source}), split by recording")
    if dataset.split_scheme == "recordist":
        return "train/val/test sharing no recordist string (core.io.split.recordist_split), split by recording"
    return "train/val/test split by recording from manifest.csv (recordists may be shared)"
