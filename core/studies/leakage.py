"""BirdNET V2.4's training cut-off on xeno-canto, and the figures of BirdNET and its heads on either side of it.

BirdNET V2.4 was trained on xeno-canto recordings numbered up to XC694204: "the highest XC number we used for
training in V2.4 is 694204 and for Macaulay Library it is 399952111" (Stefan Kahl for the BirdNET-Analyzer
maintainers, 2023-07-31, https://github.com/birdnet-team/BirdNET-Analyzer/issues/152). A recording numbered at or
below the cut-off *may* have been among BirdNET's training data (not all were: the statement gives only the
highest number), so a figure measured on it may be flattered; one numbered above it was not, unless the same
audio reached BirdNET by another route (e.g. an upload of it to the Macaulay Library).

Every model built on BirdNET's backbone inherits this: its features were learned from those recordings, whatever
split of ours it was trained on. :func:`cutoff_table` therefore measures each model on the recordings after the
cut-off and on the complement, through the model's own forward pass (:func:`core.models.scoring.predict_scores`,
the scoring path of ``python -m core evaluate``, on each model's own windows), so that a row with all of a
split's recordings equals the model card's ``metrics`` of that split.

Which recordings a model did not see in *our* training (the "scopes" of a row):

- ``test``: the test split, for every model.
- ``val+test``: for a head trained on the train split, every recording not used to train it. The validation
  split gave its weights no gradient but chose its settings: the BirdNET layer, fine-tuning, the no-bird
  negatives, the decision threshold and, for the gated head, the gate.
- ``all``: for BirdNET itself (``birdnet``), whose weights saw none of our splits.

Recording ids that are not ``XC<digits>`` (files from other sources) are on neither side: they count in a row's
``all`` side only, never in ``pre`` or ``post``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from core.errors import DatasetError, ParameterError
from core.io.data import Dataset, Recording, WindowSet, build_windows, ids_sha256
from core.metrics import metrics_from_scores
from core.models.registry import BUILTIN_MODELS
from core.models.scoring import predict_scores

__all__ = [
    "BIRDNET_TRAINING_CUTOFF_XC",
    "CUTOFF_SOURCE",
    "SCOPES",
    "SIDES",
    "xc_number",
    "after_cutoff",
    "cutoff_side",
    "model_scopes",
    "check_trained_on",
    "cutoff_rows",
    "cutoff_table",
    "merge_cutoff_tables",
    "card_post_cutoff",
    "cutoff_markdown",
    "cutoff_counts",
    "cutoff_counts_markdown",
    "post_cutoff_sentence",
]

#: The highest xeno-canto number among BirdNET V2.4's training recordings, as its makers stated it
#: (https://github.com/birdnet-team/BirdNET-Analyzer/issues/152, 2023-07-31). Recordings numbered above it are
#: "after the cut-off": BirdNET V2.4 cannot have trained on them through xeno-canto.
BIRDNET_TRAINING_CUTOFF_XC = 694204
CUTOFF_SOURCE = "https://github.com/birdnet-team/BirdNET-Analyzer/issues/152"

#: Which splits each scope holds (see the module docstring for who may be measured on which).
SCOPES = {"test": ("test",), "val+test": ("val", "test"), "all": ("train", "val", "test")}
#: ``all``: every recording of the scope; ``pre``: numbered at or below the cut-off; ``post``: above it.
SIDES = ("all", "pre", "post")
SIDE_LABELS = {"all": "all", "pre": f"up to XC{BIRDNET_TRAINING_CUTOFF_XC}", "post": f"after XC{BIRDNET_TRAINING_CUTOFF_XC}"}
COLUMNS = ["model", "recordings", "side", "n_recordings", "n_windows", "recording_top1", "recording_correct", "recording_cmap",
           "window_cmap", "window_top1", "window_roc_auc", "species", "cutoff_xc"]

_XC_ID = re.compile(r"XC(\d+)", re.IGNORECASE)


def xc_number(recording_id: str) -> int | None:
    """The xeno-canto catalogue number of a recording id: ``"XC136005"`` -> 136005; None for other ids.

    Parameters
    ----------
    recording_id : str
        ``XC`` (any case) followed by digits, e.g. a ``recording_id`` of ``manifest.csv``; surrounding blanks are ignored.

    Returns
    -------
    int or None
        None when the id is not a xeno-canto id (e.g. ``"XC"``, ``"XC12a"``, ``"ML123"``, a file stem): its side of
        the cut-off is unknown.

    Raises
    ------
    ParameterError
        ``recording_id`` is not a string.
    """
    if not isinstance(recording_id, str):
        raise ParameterError(f"a recording id must be a string such as 'XC136005', got {recording_id!r}")
    m = _XC_ID.fullmatch(recording_id.strip())
    return int(m.group(1)) if m else None


def after_cutoff(recording_id: str, cutoff: int = BIRDNET_TRAINING_CUTOFF_XC) -> bool | None:
    """Whether a recording is numbered after BirdNET V2.4's xeno-canto training cut-off.

    Parameters
    ----------
    recording_id : str
        A xeno-canto id such as ``"XC694205"``.
    cutoff : int
        The highest number BirdNET trained on (default :data:`BIRDNET_TRAINING_CUTOFF_XC`).

    Returns
    -------
    bool or None
        True above ``cutoff``, False at or below it, None for an id that is not ``XC<digits>`` (unknown).

    Raises
    ------
    ParameterError
        ``recording_id`` is not a string.
    """
    n = xc_number(recording_id)
    return None if n is None else n > cutoff


def cutoff_side(recording_id: str, cutoff: int = BIRDNET_TRAINING_CUTOFF_XC) -> str:
    """``"post"`` after the cut-off, ``"pre"`` at or before it, ``"unknown"`` for a non-xeno-canto id."""
    after = after_cutoff(recording_id, cutoff)
    return "unknown" if after is None else ("post" if after else "pre")


def model_scopes(name: str) -> tuple[str, ...]:
    """The scopes of :data:`SCOPES` a model is measured on: all three for BirdNET itself, ``test`` and
    ``val+test`` for a model trained on our train split."""
    return tuple(SCOPES) if name in BUILTIN_MODELS else ("test", "val+test")


def check_trained_on(name: str, card: dict, dataset: Dataset) -> None:
    """Refuse a model whose card says it was trained on another split than ``dataset``'s.

    Its ``val+test`` rows would then hold recordings it trained on.

    Raises
    ------
    DatasetError
        The card's ``data.split_scheme`` or ``data.test_recordings_sha256`` differs from the dataset's, or is absent.
    """
    if name in BUILTIN_MODELS:
        return
    data = card.get("data") or {}
    test_hash = ids_sha256(r.recording_id for r in dataset.split("test"))
    if data.get("split_scheme") != dataset.split_scheme or data.get("test_recordings_sha256") != test_hash:
        raise DatasetError(f"{name} was trained on another split (card: scheme {data.get('split_scheme')!r}, test "
                           f"{data.get('test_recordings_sha256')!r}) than this dataset's ({dataset.split_scheme!r}, {test_hash!r}): "
                           "its held-out recordings are not these")


def _labels_only(windows: WindowSet) -> WindowSet:
    """``windows`` without audio (what the metrics read: targets, recording index, recordings)."""
    return dataclasses.replace(windows, waveforms=np.zeros((len(windows.targets), 0), np.float32))


def _subset(windows: WindowSet, keep: np.ndarray) -> tuple[WindowSet, np.ndarray]:
    """The windows of the recordings where ``keep`` (per recording) is True, and their mask over ``windows``."""
    new_index = np.cumsum(keep) - 1
    mask = keep[windows.recording_index]
    sub = WindowSet(waveforms=windows.waveforms[mask], targets=windows.targets[mask],
                    recording_index=new_index[windows.recording_index[mask]], starts=windows.starts[mask],
                    recordings=[r for r, k in zip(windows.recordings, keep) if k],
                    valid_samples=None if windows.valid_samples is None else windows.valid_samples[mask])
    return sub, mask


def _species(recordings: Sequence[Recording]) -> str:
    """Focal species and their recordings, most first: ``"sylatr 8, parmaj 2, anapla 1"``."""
    counts = Counter(r.labels[0] for r in recordings)
    return ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def cutoff_rows(model, windows: WindowSet, scopes: Sequence[str], *, name: str, scores: np.ndarray | None = None,
                batch_size: int = 32, cutoff: int = BIRDNET_TRAINING_CUTOFF_XC) -> list[dict]:
    """One model's metrics on each scope, on all its recordings and on either side of the cut-off.

    Parameters
    ----------
    model : BirdClassifier
        Scored with :func:`core.models.scoring.predict_scores` (``model(x)``, sigmoid), only on the windows of
        recordings some scope holds.
    windows : WindowSet
        The model's own windows (its sample rate, window length and class order) of at least every recording of
        ``scopes``' splits (``Recording.split``).
    scopes : sequence of str
        Keys of :data:`SCOPES`.
    name : str
        The model's name in the rows.
    scores : np.ndarray [shape=(n_windows, n_classes)], optional
        Already computed scores of ``windows`` (then ``model`` is not run).
    batch_size : int
    cutoff : int
        Default :data:`BIRDNET_TRAINING_CUTOFF_XC`.

    Returns
    -------
    list of dict
        Per scope and side (:data:`SIDES`): ``n_recordings``, ``n_windows``, ``recording_top1`` (the best window per
        recording; top-1 = a focal species), ``recording_correct`` (recordings with a right top-1), ``recording_cmap``,
        ``window_cmap``, ``window_top1``, ``window_roc_auc`` (:func:`core.metrics.metrics_from_scores`; classes
        without a positive in the subset are left out of cmAP), ``species`` (focal species counts). Metrics of an
        empty subset are NaN.

    Raises
    ------
    ParameterError
        An unknown scope, or ``scores`` of another shape than the windows'.
    """
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ParameterError(f"unknown scope(s) {unknown}; choose from {', '.join(SCOPES)}")
    class_names = list(model.config.class_names)
    splits = np.array([r.split for r in windows.recordings])
    sides = np.array([cutoff_side(r.recording_id, cutoff) for r in windows.recordings])
    needed = np.isin(splits, [s for scope in scopes for s in SCOPES[scope]])
    if scores is None:
        scores = np.full((len(windows.targets), len(class_names)), np.nan, np.float32)
        todo = np.flatnonzero(needed[windows.recording_index])
        for i in range(0, len(todo), 8 * batch_size):  # bounded copies of the audio
            part = todo[i : i + 8 * batch_size]
            scores[part] = predict_scores(model, windows.waveforms[part], batch_size=batch_size)
    elif scores.shape != (len(windows.targets), len(class_names)):
        raise ParameterError(f"scores must be {(len(windows.targets), len(class_names))}, got {scores.shape}")
    labels = _labels_only(windows)
    rows = []
    for scope in scopes:
        in_scope = np.isin(splits, SCOPES[scope])
        for side in SIDES:
            keep = in_scope if side == "all" else in_scope & (sides == side)
            sub, mask = _subset(labels, keep)
            row = {"model": name, "recordings": scope, "side": side, "n_recordings": len(sub.recordings),
                   "n_windows": int(mask.sum()), "species": _species(sub.recordings), "cutoff_xc": cutoff}
            if sub.recordings:
                m = metrics_from_scores(scores[mask], sub, class_names)
                row |= {"recording_top1": m["recording"]["top1"], "recording_correct": int(round(m["recording"]["top1"] * len(sub.recordings))),
                        "recording_cmap": m["recording"]["cmap"], "window_cmap": m["window"]["cmap"],
                        "window_top1": m["window"]["top1"], "window_roc_auc": m["window"]["roc_auc"]}
            rows.append({c: row.get(c, math.nan) for c in COLUMNS})
    return rows


def cutoff_table(models: dict, dataset: Dataset, *, progress: Callable | None = None, batch_size: int = 32) -> pd.DataFrame:
    """:func:`cutoff_rows` of every model on ``dataset``, each on its own windows.

    Parameters
    ----------
    models : dict of str -> BirdClassifier
        By name; BirdNET itself (``birdnet``) gets the ``all`` scope too (:func:`model_scopes`). A model's card
        (``model.card``) must name ``dataset``'s split (:func:`check_trained_on`).
    dataset : Dataset
        Splits as in force (``Recording.split``).
    progress : callable, optional
        ``progress(stage, done, total)`` per model.
    batch_size : int

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`COLUMNS`, one row per model, scope and side.

    Raises
    ------
    DatasetError
        A model trained on another split (:func:`check_trained_on`).
    """
    for name, model in models.items():
        check_trained_on(name, getattr(model, "card", {}) or {}, dataset)

    def kind(model) -> tuple:
        c = model.config
        return c.frontend.sample_rate, c.clip_seconds, tuple(c.class_names)

    splits: dict[tuple, set] = {}  # per window kind, the splits some model of that kind is measured on
    for name, model in models.items():
        splits.setdefault(kind(model), set()).update(s for scope in model_scopes(name) for s in SCOPES[scope])
    built: dict[tuple, WindowSet] = {}
    rows = []
    for i, (name, model) in enumerate(models.items()):
        key = kind(model)
        if key not in built:  # decoded once per window kind; each model scores the recordings its scopes hold
            if progress:
                progress(f"decoding at {key[0]} Hz", i, len(models))
            built[key] = build_windows(dataset, [r for r in dataset.recordings if r.split in splits[key]], sample_rate=key[0],
                                       window_s=key[1], class_names=key[2])
        if progress:
            progress(name, i, len(models))
        rows += cutoff_rows(model, built[key], model_scopes(name), name=name, batch_size=batch_size)
    if progress:
        progress("done", len(models), len(models))
    return pd.DataFrame(rows, columns=COLUMNS)


def merge_cutoff_tables(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``new``'s rows replace those of the same models in ``old`` (a stored table); other models' rows stay, in place."""
    if old is None or old.empty:
        return new.reset_index(drop=True)
    kept = old[~old["model"].isin(set(new["model"]))]
    order = list(dict.fromkeys([*old["model"], *new["model"]]))
    out = pd.concat([kept, new], ignore_index=True)
    out["_order"] = out["model"].map(order.index)
    return out.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)[COLUMNS]


def card_post_cutoff(table: pd.DataFrame, name: str, command: str | None = None) -> dict:
    """The ``post_cutoff`` field of a model card: ``{scope: {side: figures}}`` from ``table``'s rows of ``name``.

    Raises
    ------
    ParameterError
        ``table`` has no row of ``name``.
    """
    own = table[table["model"] == name]
    if own.empty:
        raise ParameterError(f"the cut-off table has no row of {name}")

    def clean(key, v):
        if isinstance(v, (np.integer, np.floating)):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            return None
        return int(v) if key in ("n_recordings", "n_windows", "recording_correct") else v

    keys = [c for c in COLUMNS if c not in ("model", "recordings", "side", "cutoff_xc")]
    out: dict = {"cutoff_xc": int(own["cutoff_xc"].iloc[0]), "source": CUTOFF_SOURCE,
                 "rule": "pre: xeno-canto number at or below cutoff_xc (BirdNET V2.4 may have trained on it); post: above it",
                 "scopes": {s: "+".join(SCOPES[s]) for s in own["recordings"].unique()}}
    if name not in BUILTIN_MODELS:
        out["note"] = ("trained on the train split; val gave no gradient but chose the head's settings, threshold and gate; "
                       "every model on BirdNET's backbone inherits BirdNET's training data")
    for r in own.itertuples(index=False):
        out.setdefault(r.recordings, {})[r.side] = {k: clean(k, getattr(r, k)) for k in keys}
    if command:
        out["command"] = command
    return out


def _cell(v, digits: int = 3) -> str:
    return "-" if pd.isna(v) else f"{v:.{digits}f}"


def cutoff_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """The cut-off table as docs/results.md shows it: per model its test rows, then its wider scopes either side.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`cutoff_table`'s rows (e.g. ``assets/birdnet_heads/cutoff.csv``).
    labels : dict, optional
        Display name per model (default the name in backticks).
    """
    labels = labels or {}
    lines = ["| model | recordings | xeno-canto number | recordings (n) | windows (n) | top-1 (recording) | cmAP (window) |",
             "|---|---|---|---:|---:|---|---|"]
    for r in table.itertuples(index=False):
        if r.recordings != "test" and r.side == "all":
            continue
        top1 = "-" if pd.isna(r.recording_top1) else f"{r.recording_top1:.3f} ({int(r.recording_correct)}/{r.n_recordings})"
        lines.append(f"| {labels.get(r.model, f'`{r.model}`')} | {' + '.join(SCOPES[r.recordings])} | {SIDE_LABELS[r.side]} "
                     f"| {r.n_recordings} | {r.n_windows} "
                     f"| {top1} | {_cell(r.window_cmap)} |")
    return "\n".join(lines) + "\n"


def cutoff_counts(dataset: Dataset, cutoff: int = BIRDNET_TRAINING_CUTOFF_XC) -> pd.DataFrame:
    """Recordings of each split (and all) at or before and after the cut-off, with the species after it.

    Returns
    -------
    pandas.DataFrame
        Columns ``split`` (train, val, test, all), ``pre``, ``post``, ``unknown`` (recording counts) and
        ``post_species`` (focal species counts after the cut-off, most first).
    """
    rows = []
    for split in ("train", "val", "test", "all"):
        recs = dataset.recordings if split == "all" else dataset.split(split)
        sides = [cutoff_side(r.recording_id, cutoff) for r in recs]
        rows.append({"split": split, **{s: sides.count(s) for s in ("pre", "post", "unknown")},
                     "post_species": _species([r for r, s in zip(recs, sides) if s == "post"])})
    return pd.DataFrame(rows)


def cutoff_counts_markdown(counts: pd.DataFrame, names: dict[str, str] | None = None) -> str:
    """:func:`cutoff_counts` as a Markdown table; ``names`` maps species codes to display names."""
    names = names or {}

    def species(text: str) -> str:
        return ", ".join(f"{names.get(c, c)} {n}" for c, n in (p.rsplit(" ", 1) for p in text.split(", ") if p)) or "-"

    lines = [f"| split | up to XC{BIRDNET_TRAINING_CUTOFF_XC} | after it | after it, by focal species |", "|---|---:|---:|---|"]
    lines += [f"| {r.split} | {r.pre} | {r.post} | {species(r.post_species)} |" for r in counts.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def post_cutoff_sentence(name: str, card: dict | None) -> str:
    """One plain sentence on BirdNET's training cut-off, with ``name``'s figure after it when its card has one.

    Parameters
    ----------
    name : str
        The model (e.g. :data:`core.models.defaults.DEFAULT_MODEL`).
    card : dict or None
        Its model card; the figure is its ``post_cutoff.test.post`` (recording top-1 and n), left out when absent.
    """
    text = (f"BirdNET V2.4 was trained on xeno-canto recordings up to XC{BIRDNET_TRAINING_CUTOFF_XC} (its makers' statement), "
            "so figures of BirdNET and of the models built on it may be flattered on recordings up to that number")
    test = ((card or {}).get("post_cutoff") or {}).get("test") or {}
    post, every = test.get("post") or {}, test.get("all") or {}
    if post.get("n_recordings") and post.get("recording_top1") is not None:
        text += (f"; on the {post['n_recordings']} test recordings after it, {name} names the right species in "
                 f"{post['recording_correct']} (recording top-1 {post['recording_top1']:.3f}")
        if every.get("recording_top1") is not None:
            text += f"; {every['recording_top1']:.3f} on all {every['n_recordings']} test recordings"
        text += ")"
    return text + "."
