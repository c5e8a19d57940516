"""birdshield's core: explain and attack bird-sound classifiers, from Python or the command line.

Wings by duty, bottom to top; a wing imports only from the wings below it:
``core.errors`` and ``core.metrics``; ``core.io`` (audio, datasets, splits, file writes); ``core.models``
(every architecture and the one registry); ``core.attacks``; ``core.training``; ``core.studies`` and
``core.field``; ``core.api`` and ``core.cli`` on top (they may import any wing); the dashboard (``pages``,
``ui``) sits above all of core.

The public Python API (:mod:`core.api`) is re-exported here::

    import core
    model = core.load_model()                       # core.DEFAULT_MODEL
    waveform = core.load_audio("recording.flac", model.config.frontend.sample_rate)
    core.predict(model, waveform)                   # birdnetlib-style detections per window
    core.attack(model, waveform, eps=1e-3)          # AttackResult: .adversarial, .snr_db, .success
    core.worst_case(model, waveform, eps=1e-3)      # WorstCaseResult: .success, .attack, .adversarial
    core.certify(model, waveform, n=1000)           # per window, Certificate: .class_name, .p_lower, .radius, .snr_db
    core.explain(model, waveform)                   # Explanation: spectrogram, similarity maps, axes
    core.analyze("recording.flac")                  # the Field page's detection table

The names load on first use, so ``import core.io.audio`` (or the CLI) does not import the whole API.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.api import (  # noqa: F401
        DEFAULT_MODEL,
        AttackResult,
        Certificate,
        Explanation,
        WorstCaseResult,
        analyze,
        attack,
        certify,
        explain,
        load_audio,
        load_model,
        predict,
        worst_case,
    )

__all__ = ["DEFAULT_MODEL", "AttackResult", "Certificate", "Explanation", "WorstCaseResult", "analyze", "attack", "certify", "explain",
           "load_audio", "load_model", "predict", "worst_case"]


def __getattr__(name: str):
    """The public API's names (:data:`__all__`), imported from :mod:`core.api` on first use (PEP 562)."""
    if name in __all__:
        from core import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
