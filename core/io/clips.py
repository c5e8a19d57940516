"""Fixed sets of clips drawn from a dataset split, spread over recordings, for sweeps and studies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from core.errors import ParameterError


@dataclass
class ClipSet:
    """Fixed-length clips to sweep over.

    Attributes
    ----------
    waveforms : np.ndarray [shape=(n_clips, n_samples), dtype=float32]
    clip_ids : list of str
    labels : np.ndarray [shape=(n_clips, n_classes), dtype=float32] or None
    masks : np.ndarray [shape=(n_clips, n_samples), dtype=float32]
        0 on zero padding.
    species : list of str
        Focal species code of each clip ("" when unknown).
    """

    waveforms: np.ndarray
    clip_ids: list[str]
    labels: np.ndarray | None
    masks: np.ndarray
    species: list[str]

    def __len__(self) -> int:
        return len(self.clip_ids)


def _spread(n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def dataset_clips(
    dataset,
    *,
    split: str,
    class_names: Sequence[str],
    sample_rate: int,
    window_samples: int,
    species: str | None = None,
    max_clips: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """Windows of a dataset split (optionally one species, at most ``max_clips``) as a :class:`ClipSet`.

    With ``max_clips`` the recordings are taken evenly spaced over the split's
    (species-sorted) list first and the windows evenly spaced over them, so a small
    subset still covers the species. Samples are clipped to [-1, 1] (resampling can
    overshoot full scale slightly), as the attacks require.

    Raises
    ------
    ParameterError
        Unknown split or species, ``max_clips < 1``, or no recording available.
    """
    from core.io.data import build_windows

    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ParameterError(f"max_clips must be an integer >= 1, got {max_clips!r}")
    recs = [r for r in dataset.split(split) if r.path.is_file()]
    if species is not None:
        if species not in class_names:
            raise ParameterError(f"species must be one of {list(class_names)}, got {species!r}")
        recs = [r for r in recs if species in r.labels]
    if not recs:
        raise ParameterError(f"no recordings available in split {split!r}" + (f" for species {species!r}" if species else ""))
    recs = sorted(recs, key=lambda r: (r.labels, r.recording_id))
    recs = [recs[i] for i in _spread(len(recs), max_clips)]
    windows = build_windows(dataset, recs, sample_rate=sample_rate, window_s=window_samples / sample_rate, class_names=class_names, progress=progress)
    keep = _spread(len(windows.waveforms), max_clips)
    ids = windows.clip_ids(sample_rate)
    return ClipSet(
        # resampling can overshoot full scale by a little; attacks need samples inside [-1, 1]
        waveforms=np.clip(windows.waveforms[keep], -1.0, 1.0),
        clip_ids=[ids[i] for i in keep],
        labels=windows.targets[keep],
        masks=windows.masks()[keep],
        species=[";".join(windows.recordings[windows.recording_index[i]].labels) for i in keep],
    )


def recording_of(clip_id: str) -> str:
    """Recording id of a window id ``"<recording>@<start>s"``."""
    return str(clip_id).split("@", 1)[0]
