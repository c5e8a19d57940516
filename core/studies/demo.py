"""The guided demonstration as one computation, and its recorded outcome: the one source of what the demo shows.

The story (the Guided demo page, the home page's picture, the README): a held-out xeno-canto recording of a Sedge
Warbler (*Acrocephalus schoenobaenus*), the window where the model is surest of it; a perturbation a few tens of dB
below the song, computed from the model itself to push it towards Marsh Warbler (*A. palustris*), a reed warbler
people do confuse with it; and what the model says afterwards.

:func:`run_demo` computes the whole story for one model: it picks the clip (:func:`find_demo_clip`) and attacks it
at every change size of :data:`SNR_CHOICES_DB`, quietest first, until the model names Marsh Warbler. Its
:class:`DemoRecord` is stored in :data:`RECORD_PATH` by ``python bench/home_figure.py`` (which also draws the home
page's picture). The home page and the README state that record (:func:`demo_sentence`), the demo page starts at
its change size, and the tests recompute it from the shipped model and the data (``tests/test_demo.py``), so the
three cannot promise different birds.

The attack is PGD (Madry et al. 2018) in the waveform domain, L-inf, 20 steps, random start, on the targeted
margin ``logit[target] - max_other logit`` (Carlini & Wagner 2017, their f6); its budget ``eps`` comes from the
requested SNR by :func:`core.metrics.eps_for_snr`. How audible the change is, is measured against the clip's own
masking threshold (MPEG-1 psychoacoustic model 1, as in Qin et al. 2019; :mod:`core.attacks.psychoacoustic`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ParameterError
from core.field.analyze import species_names
from core.field.inference import analyze_waveform, attack_waveform, confident_window
from core.metrics import eps_for_snr, snr_db

__all__ = ["SOURCE_SPECIES", "TARGET_SPECIES", "SNR_CHOICES_DB", "STEPS", "SEED", "OBJECTIVE", "RECORD_PATH", "DemoClip",
           "DemoAttack", "DemoRecord", "find_demo_clip", "demo_window", "demo_attack", "measure_demo_attack", "strongest_prototype", "run_demo",
           "read_demo_record", "write_demo_record", "demo_sentence", "demo_markdown"]

#: Dataset codes of the bird the demo starts from (Sedge Warbler) and the bird the attack pushes towards (Marsh Warbler).
SOURCE_SPECIES, TARGET_SPECIES = "acrsch", "acrpal"
#: The change sizes the demo offers [dB below the song, i.e. the SNR of the perturbation], loudest change first.
SNR_CHOICES_DB = (30, 35, 40, 45, 50)
#: PGD steps, random-start seed and objective of the demo's attack.
STEPS, SEED, OBJECTIVE = 20, 0, "output-targeted-margin"
#: The stored outcome of :func:`run_demo` for the default model (written by ``python bench/home_figure.py``).
RECORD_PATH = Path(__file__).resolve().parents[2] / "assets" / "home" / "demo.json"
#: The command that regenerates :data:`RECORD_PATH` and the home page's picture.
RECORD_COMMAND = "python bench/home_figure.py"


@dataclass(frozen=True)
class DemoClip:
    """The demo's window: where the model is surest it hears the source species in a test recording.

    Attributes
    ----------
    recording_id : str
        xeno-canto id, e.g. ``"XC269810"``.
    path : str
        The audio file.
    duration_s : float or None [s]
        Duration from the manifest (what to decode).
    start : int [samples at the model's rate]
        First sample of the window.
    margin : float
        The source species' logit minus the best other logit in that window (> 0).
    """

    recording_id: str
    path: str
    duration_s: float | None
    start: int
    margin: float


@dataclass(frozen=True)
class DemoAttack:
    """What the model says after the demo's attack at one change size.

    Attributes
    ----------
    snr_db : float [dB]
        Requested SNR (how far below the song the change is at most as loud).
    eps : float [full-scale amplitude]
        L-inf budget for that SNR (:func:`core.metrics.eps_for_snr`).
    measured_snr_db : float [dB]
        SNR of the change actually made (>= ``snr_db``: PGD rarely uses the full budget in every sample).
    top : str
        Dataset code of the model's top-1 after the change.
    top_score, source_score, target_score : float in [0, 1]
        Sigmoid scores after the change: of the top-1, of the source and of the target species.
    share_above_masking : float in [0, 1]
        Share of time-frequency cells where the change is louder than the clip's masking threshold (0: hidden by
        the song everywhere, by that model of hearing).
    """

    snr_db: float
    eps: float
    measured_snr_db: float
    top: str
    top_score: float
    source_score: float
    target_score: float
    share_above_masking: float

    @property
    def flipped(self) -> bool:
        """True when the model names the target species top-1 after the change."""
        return self.top == TARGET_SPECIES


@dataclass(frozen=True)
class DemoRecord:
    """The demo's outcome for one model: its clip, its clean answer and its answer after each change size tried.

    Attributes
    ----------
    model : str
        Checkpoint name.
    fingerprint : str
        :func:`core.studies.embeddings.model_fingerprint` of its weights (a retrained model makes the record stale).
    recording_id, start_s : str, float [s]
        The window: recording and start in it.
    window_s : float [s]
        Window length of the model.
    clean_top, clean_score : str, float in [0, 1]
        Top-1 (dataset code) and its score on the untouched window.
    attacks : list of DemoAttack
        Quietest change first; the list stops at the first change that makes the model name the target.
    steps, seed : int
        PGD steps and random-start seed.
    """

    model: str
    fingerprint: str
    recording_id: str
    start_s: float
    window_s: float
    clean_top: str
    clean_score: float
    attacks: list[DemoAttack] = field(default_factory=list)
    steps: int = STEPS
    seed: int = SEED

    @property
    def default_snr_db(self) -> float:
        """The demo's starting change size [dB]: the quietest that made the model name the target, else the loudest tried."""
        flipped = [a.snr_db for a in self.attacks if a.flipped]
        return max(flipped) if flipped else min(a.snr_db for a in self.attacks)

    @property
    def outcome(self) -> DemoAttack:
        """The attack at :attr:`default_snr_db`."""
        return next(a for a in self.attacks if a.snr_db == self.default_snr_db)

    def to_dict(self) -> dict:
        return {**asdict(self), "default_snr_db": self.default_snr_db, "command": RECORD_COMMAND}

    @classmethod
    def from_dict(cls, d: dict) -> DemoRecord:
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "attacks"}
        return cls(**keep, attacks=[DemoAttack(**a) for a in d.get("attacks", [])])


def _load(path: str, sample_rate: int, duration_s: float | None) -> np.ndarray:
    from core.io.audio import load_audio

    return load_audio(path, sample_rate=sample_rate, duration_s=duration_s).waveform


def find_demo_clip(model, recordings: Iterable, *, load: Callable[[str, int, float | None], np.ndarray] = _load,
                   source: str = SOURCE_SPECIES) -> DemoClip | None:
    """The window where ``model`` names ``source`` top-1 with the widest logit margin, over ``recordings``.

    Parameters
    ----------
    model : BirdClassifier
        Must have ``source`` among its classes.
    recordings : iterable of core.io.data.Recording
        Typically ``dataset.split("test")``; only those whose first label is ``source`` and whose file exists count.
    load : callable, optional
        ``load(path, sample_rate, duration_s) -> waveform`` (the dashboard passes its cached decoder).
    source : str
        Dataset code of the species.

    Returns
    -------
    DemoClip or None
        None when the model names ``source`` top-1 in no window of those recordings.

    Raises
    ------
    ParameterError
        When ``source`` is not one of the model's classes.
    """
    classes = list(model.config.class_names)
    if source not in classes:
        raise ParameterError(f"the demo needs species {source!r} among the model's classes, got {classes}")
    sr = model.config.frontend.sample_rate
    best = None
    for rec in recordings:
        if not rec.labels or rec.labels[0] != source or not Path(rec.path).is_file():
            continue
        found = confident_window(model, load(str(rec.path), sr, rec.duration_s), classes.index(source))
        if found and (best is None or found[1] > best.margin):
            best = DemoClip(rec.recording_id, str(rec.path), rec.duration_s, int(found[0]), float(found[1]))
    return best


def demo_window(waveform: np.ndarray, start: int, window_samples: int) -> np.ndarray:
    """``waveform[start : start + window_samples]``, zero-padded to ``window_samples`` (float32)."""
    clip = np.asarray(waveform, np.float32)[start : start + window_samples]
    return np.pad(clip, (0, window_samples - len(clip)))


def demo_attack(model, window: np.ndarray, snr: float, *, steps: int = STEPS, seed: int = SEED,
                target: str = TARGET_SPECIES) -> tuple[np.ndarray, float]:
    """The demo's attack: PGD-``steps`` towards ``target`` with the L-inf budget of a change ``snr`` dB below the window.

    Parameters
    ----------
    model : BirdClassifier
    window : np.ndarray [shape=(window_samples,), dtype=float32], full-scale amplitude, at the model's rate
    snr : float [dB]
        The change is at most this many dB quieter than the window (``eps = rms(window) 10^(-snr/20)``).
    steps, seed : int
        PGD steps (random start) and the seed of the start.
    target : str
        Dataset code of the species the attack pushes towards.

    Returns
    -------
    (np.ndarray [shape=(window_samples,)], float)
        The attacked window and ``eps`` [full-scale amplitude].

    Raises
    ------
    ParameterError
        When the window is silent (no SNR defined) or ``target`` is not one of the model's classes.
    """
    classes = list(model.config.class_names)
    if target not in classes:
        raise ParameterError(f"target must be one of the model's classes {classes}, got {target!r}")
    eps = float(eps_for_snr(window, float(snr)))
    if not eps > 0:
        raise ParameterError("the demo's window is silent: a change relative to it has no SNR")
    adv = attack_waveform(model, window, eps=eps, steps=steps, seed=seed, objective=OBJECTIVE,
                          target_class=classes.index(target))
    return adv, eps


def strongest_prototype(model, prototype_activations: np.ndarray, class_index: int) -> int:
    """The prototype of ``class_index`` that adds most to its logit: argmax of activation x class connection.

    Parameters
    ----------
    model : prototype model (``class_connection()`` and ``config.prototypes_per_class``)
    prototype_activations : np.ndarray [shape=(n_prototypes,)]
        Max similarity of each prototype in one window.
    class_index : int

    Returns
    -------
    int
        Index of the prototype among all ``n_prototypes``.
    """
    k = model.config.prototypes_per_class
    weights = model.class_connection().detach().cpu().numpy()[class_index]
    own = np.arange(class_index * k, (class_index + 1) * k)
    return int(own[np.argmax(np.asarray(prototype_activations)[own] * weights[own])])


def measure_demo_attack(model, window: np.ndarray, adv: np.ndarray, snr: float, eps: float) -> DemoAttack:
    """What the model says about ``adv`` and how loud the change ``adv - window`` is.

    Parameters
    ----------
    model : BirdClassifier
        With the source and target species among its classes.
    window, adv : np.ndarray [shape=(window_samples,), dtype=float32], full-scale amplitude, at the model's rate
        The clean window and the attacked one.
    snr, eps : float
        The requested SNR [dB] and its budget [full-scale amplitude], stored as given.

    Returns
    -------
    DemoAttack
        Scores rounded to 4 decimals, the measured SNR to 2.
    """
    from core.attacks.psychoacoustic import masking_excess, masking_threshold

    classes = list(model.config.class_names)
    scores = analyze_waveform(model, adv).scores[0]
    top = int(scores.argmax())
    sr = model.config.frontend.sample_rate
    above = float(masking_excess(adv - window, masking_threshold(window, sr))["share_above"][0])
    return DemoAttack(snr_db=float(snr), eps=eps, measured_snr_db=round(float(snr_db(window, adv)), 2), top=classes[top],
                      top_score=round(float(scores[top]), 4), source_score=round(float(scores[classes.index(SOURCE_SPECIES)]), 4),
                      target_score=round(float(scores[classes.index(TARGET_SPECIES)]), 4), share_above_masking=round(above, 4))


def run_demo(model, dataset, *, model_name: str, snr_choices: Iterable[float] = SNR_CHOICES_DB,
             clip: DemoClip | None = None,
             progress: Callable[[str], None] | None = None) -> tuple[DemoRecord, np.ndarray, np.ndarray]:
    """The whole demonstration for one model: pick the clip, attack it quietest change first until the target wins.

    Parameters
    ----------
    model : BirdClassifier
        With the source and target species among its classes.
    dataset : core.io.data.Dataset
        Its test split is searched for the clip.
    model_name : str
        Checkpoint name, stored in the record.
    snr_choices : iterable of float [dB]
        Change sizes to try; tried from the quietest (highest SNR) down.
    clip : DemoClip, optional
        Skip the search and use this window.
    progress : callable, optional
        ``progress(message)`` before each step.

    Returns
    -------
    (DemoRecord, np.ndarray [shape=(window_samples,)], np.ndarray [shape=(window_samples,)])
        The record, the clean window and the window after the attack of :attr:`DemoRecord.outcome`.

    Raises
    ------
    ParameterError
        When the model names the source species in no test window, or ``snr_choices`` is empty.
    """
    from core.studies.embeddings import model_fingerprint

    choices = sorted({float(s) for s in snr_choices}, reverse=True)
    if not choices:
        raise ParameterError("snr_choices must hold at least one SNR in dB, got none")
    say = progress or (lambda message: None)
    cfg = model.config
    sr = cfg.frontend.sample_rate
    if clip is None:
        say("finding the clip")
        clip = find_demo_clip(model, dataset.split("test"))
    if clip is None:
        raise ParameterError(f"{model_name} names {SOURCE_SPECIES} top-1 in no window of the test split: no demo clip")
    window = demo_window(_load(clip.path, sr, clip.duration_s), clip.start, cfg.window_samples)
    clean = analyze_waveform(model, window).scores[0]
    classes = list(cfg.class_names)
    attacks, advs = [], {}
    for snr in choices:
        say(f"attacking at {snr:g} dB")
        advs[snr], eps = demo_attack(model, window, snr)
        attacks.append(measure_demo_attack(model, window, advs[snr], snr, eps))
        if attacks[-1].flipped:
            break
    record = DemoRecord(model=model_name, fingerprint=model_fingerprint(model), recording_id=clip.recording_id,
                        start_s=round(clip.start / sr, 4), window_s=float(cfg.clip_seconds),
                        clean_top=classes[int(clean.argmax())], clean_score=round(float(clean.max()), 4), attacks=attacks)
    return record, window, advs[record.default_snr_db]


def read_demo_record(path: str | os.PathLike = RECORD_PATH) -> DemoRecord:
    """The stored :class:`DemoRecord` (default: the shipped one, :data:`RECORD_PATH`).

    Raises
    ------
    ParameterError
        When the file is missing or not a demo record.
    """
    try:
        return DemoRecord.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise ParameterError(f"no demo record at {path}; write it with `{RECORD_COMMAND}`") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ParameterError(f"{path} is not a demo record ({exc}); rewrite it with `{RECORD_COMMAND}`") from None


def write_demo_record(record: DemoRecord, path: str | os.PathLike = RECORD_PATH) -> Path:
    """Write ``record`` as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return path


def demo_sentence(record: DemoRecord) -> str:
    """The demo's outcome in one plain sentence (Markdown), as the home page and the README say it.

    >>> r = DemoRecord("m", "f", "XC1", 0.0, 3.0, "acrsch", 0.97, [DemoAttack(35, 3e-4, 37.7, "acrpal", 0.96, 0.65, 0.96, 0.4)])
    >>> demo_sentence(r)  # doctest: +ELLIPSIS
    'The model hears a **Sedge Warbler** (score 0.97); after a change 35 dB quieter than the song, ... says **Marsh Warbler** (0.96).'
    """
    names = species_names([record.clean_top, SOURCE_SPECIES, TARGET_SPECIES])
    a = record.outcome
    now = species_names([a.top])[a.top][1]
    change = f"after a change {a.snr_db:g} dB quieter than the song, computed from the model itself,"
    if a.flipped:
        return (f"The model hears a **{names[record.clean_top][1]}** (score {record.clean_score:.2f}); {change} it says "
                f"**{now}** ({a.top_score:.2f}).")
    return (f"The model hears a **{names[record.clean_top][1]}** (score {record.clean_score:.2f}); even {change} it still "
            f"says **{now}** ({a.top_score:.2f}): it resisted every change the demo offers.")


def demo_markdown(record: DemoRecord) -> str:
    """The record as a Markdown table (docs/results.md's ``guided-demo`` block, regenerated by ``tests/test_docs.py``).

    One row per change size tried, quietest first: the requested and the measured SNR [dB], what the model names
    after it, the source and target species' scores, and the share of time-frequency cells above the clip's masking
    threshold [%].
    """
    names = {c: e for c, (_, e) in species_names([record.clean_top, SOURCE_SPECIES, TARGET_SPECIES,
                                                   *(a.top for a in record.attacks)]).items()}
    lines = [f"`{record.model}` (weights `{record.fingerprint}`) on {record.recording_id} at {record.start_s:g}-"
             f"{record.start_s + record.window_s:g} s: {names[record.clean_top]} {record.clean_score:.2f} before the change; "
             f"PGD-{record.steps}, seed {record.seed}; the demo starts at {record.default_snr_db:g} dB.",
             "",
             f"| change (dB below the song) | measured SNR (dB) | model says | {names[SOURCE_SPECIES]} | {names[TARGET_SPECIES]} "
             "| cells above the masking threshold |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {a.snr_db:g} | {a.measured_snr_db:.1f} | {names[a.top]} ({a.top_score:.2f}) | {a.source_score:.2f} | "
              f"{a.target_score:.2f} | {100 * a.share_above_masking:.1f} % |" for a in record.attacks]
    return "\n".join(lines) + "\n"
