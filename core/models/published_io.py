"""Loading, saving, fetching and explaining the published BirdSet models (AudioProtoPNet, ConvNeXt) of :mod:`core.models.published`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import CheckpointError, ParameterError
from core.models.base import BirdClassifier
from core.models.frontend import mel_band_centres
from core.models.published import (
    AUDIOPROTOPNET_FRONTEND,
    CONVNEXT_FRONTEND,
    PUBLISHED_FILES,
    PUBLISHED_MODELS,
    PublishedAudioProtoPNet,
    PublishedConfig,
    PublishedConvNeXt,
)


def _class_names(config_json: dict, n_classes: int) -> tuple[str, ...]:
    id2label = config_json.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(n_classes)]
    if any(n is None for n in names) or all(str(n).startswith("LABEL_") for n in names):
        return tuple(f"class_{i}" for i in range(n_classes))
    return tuple(str(n) for n in names)


#: The published AudioProtoPNet's ``config.json`` fields that change what the model computes, with the values this
#: loader implements (AudioProtoPNet ``hf_repo`` code: ReLU on the cosine, input vectors of length 64, two 1e-4
#: channels, a non-negative class connection to a class's own prototypes only, max pooling, 2x upsampling). A field
#: absent from ``config.json`` means the published default. Training-only fields (``margin``,
#: ``correct_class_connection``, ``bias_last_layer``: the bias is read from the weights) are not checked.
IMPLEMENTED_CONFIG = {
    "relu_on_cos": (True,),
    "input_vector_length": (64,),
    "n_eps_channels": (2,),
    "epsilon_val": (1e-4,),
    "non_negative_last_layer": (True,),
    "incorrect_class_connection": (None, 0, 0.0),
    "topk_k": (1,),
    "add_on_layers_type": ("upsample",),
}


def check_published_config(config_json: dict, folder) -> None:
    """Refuse a published AudioProtoPNet whose ``config.json`` asks for something this loader does not compute.

    Raises
    ------
    CheckpointError
        Naming the first such field, its value, and the values implemented (:data:`IMPLEMENTED_CONFIG`).
    """
    def same(value, implemented) -> bool:  # JSON true is not the number 1, and 64.0 is 64
        return value is implemented if isinstance(value, bool) or isinstance(implemented, bool) else value == implemented

    for field, allowed in IMPLEMENTED_CONFIG.items():
        if field in config_json and not any(same(config_json[field], a) for a in allowed):
            raise CheckpointError(f"{folder}: config.json has {field}={config_json[field]!r}, which this loader does not "
                                  f"implement (it computes {field}={allowed[0]!r}); refusing rather than computing another model")


def load_published(path: str | os.PathLike, *, device: torch.device | str | None = None, backbone_config=None) -> BirdClassifier:
    """Load a published BirdSet checkpoint folder (``model.safetensors`` + ``config.json``) without running any of its code.

    The kind is read from the keys (``head.prototype_vectors``: AudioProtoPNet;
    ``classifier.weight``: ConvNeXt), the number of classes and of prototypes
    per class from the shapes, the eBird codes from ``config.json``'s ``id2label``.
    Loading is strict: a missing or unexpected key, or a shape that differs from
    the published configuration, is an error.

    Parameters
    ----------
    path : path-like
        The folder (as :func:`fetch_model` writes it).
    device : torch.device or str, optional
        Default :func:`core.io.device.get_device`.
    backbone_config : transformers.ConvNextConfig, optional
        Tests only (a smaller stand-in); default the published ConvNeXt-Base.

    Returns
    -------
    PublishedAudioProtoPNet or PublishedConvNeXt
        In eval mode.

    Raises
    ------
    CheckpointError
        Missing files, an unknown layout, keys/shapes that do not match, or a ``config.json`` field whose value the
        model here does not compute (:func:`check_published_config`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from core.io.device import get_device

    folder = Path(path)
    weights, cfg_path = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors (fetch one with: python -m core fetch-model NAME --dest {folder})")
    try:
        config_json = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: unreadable published checkpoint: {e}") from e
    if "head.prototype_vectors" in state:
        protos, weight = state["head.prototype_vectors"], state.get("head.last_layer.weight")
        if weight is None or weight.ndim != 2 or protos.shape[0] != weight.shape[0] * weight.shape[1]:
            raise CheckpointError(f"{folder}: head.last_layer.weight must be (n_classes, P) with n_classes x P prototypes, got "
                                  f"{None if weight is None else tuple(weight.shape)} for {tuple(protos.shape)} prototypes")
        n_classes, k = weight.shape
        check_published_config(config_json, folder)
        config = PublishedConfig("published-audioprotopnet", _class_names(config_json, n_classes), int(k), AUDIOPROTOPNET_FRONTEND,
                                 source=str(config_json.get("_name_or_path", "local")))
        model = PublishedAudioProtoPNet(config, backbone_config)
    elif "classifier.weight" in state and any(k.startswith("convnext.") for k in state):
        n_classes = state["classifier.weight"].shape[0]
        config = PublishedConfig("published-convnext", _class_names(config_json, n_classes), 0, CONVNEXT_FRONTEND,
                                 source=str(config_json.get("_name_or_path", "local")),
                                 licence="the published model card's terms; not part of this repository")
        model = PublishedConvNeXt(config, backbone_config)
    else:
        raise CheckpointError(f"{folder}: neither the AudioProtoPNet (head.prototype_vectors) nor the ConvNeXt "
                              f"(convnext.*, classifier.weight) layout; first keys: {sorted(state)[:5]}")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{folder}: does not match the published {config.arch} layout: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shapes {[(k, tuple(state[k].shape)) for k in wrong[:3]]}")
    model.load_state_dict(state, strict=True)
    model.checkpoint_path = weights
    model.card = {"name": folder.name, "source": config.source, "licence": config.licence}
    return model.to(device or get_device()).eval()


def save_published(model: BirdClassifier, path: str | os.PathLike) -> Path:
    """Write a model in the published layout (``model.safetensors`` + ``config.json`` with ``id2label``).

    For stand-ins in tests and for users who convert their own weights; the
    published repositories are read by :func:`load_published`.

    Returns
    -------
    Path
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    c = model.config
    doc = {"id2label": {str(i): n for i, n in enumerate(c.class_names)}, "num_classes": len(c.class_names),
           "prototypes_per_class": c.prototypes_per_class, "_name_or_path": c.source}
    (folder / "config.json").write_text(json.dumps(doc, indent=1))
    return folder


def fetch_model(name: str, dest: str | os.PathLike) -> Path:
    """Download a published checkpoint's weights and configuration (never its code) into ``dest``.

    The only network access of this module; run by ``python -m core fetch-model``.

    Parameters
    ----------
    name : str
        A key of :data:`PUBLISHED_MODELS`.
    dest : path-like
        Folder to write ``model.safetensors`` and ``config.json`` into.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ParameterError
        Unknown name.
    CheckpointError
        The download failed (no network, repository moved).
    """
    if name not in PUBLISHED_MODELS:
        raise ParameterError(f"unknown published model {name!r}; choose one of {', '.join(PUBLISHED_MODELS)}")
    from huggingface_hub import hf_hub_download

    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    repo = PUBLISHED_MODELS[name]["repo"]
    for filename in PUBLISHED_FILES:
        try:
            hf_hub_download(repo_id=repo, filename=filename, local_dir=str(folder))
        except Exception as e:  # noqa: BLE001 - any hub/network failure becomes one clear message
            raise CheckpointError(f"could not download {filename} of {repo}: {type(e).__name__}: {e}") from e
    return folder


def explain_clip(model: PublishedAudioProtoPNet, waveform: np.ndarray | torch.Tensor, *, top_k: int = 3) -> list[dict]:
    """"This looks like that" for one clip: the top classes and where each of their prototypes fires.

    Similarity maps are computed only for the ``top_k`` classes.

    Parameters
    ----------
    model : PublishedAudioProtoPNet
    waveform : array [shape=(n_samples,)], float, 32 kHz, full-scale amplitude
        At most the model's 5 s are used; a shorter clip is zero-padded to 5 s.
    top_k : int >= 1

    Returns
    -------
    list of dict
        One per class, best first: ``class_index``, ``class_name``, ``score``
        (sigmoid), ``logit``, and ``prototypes``: a list of dicts with ``prototype``
        (global index), ``similarity`` (max over the map), ``weight`` (ReLU'd class
        connection), ``contribution`` (similarity x weight), ``t_s`` [seconds] and
        ``f_hz`` [Hz, centre of the mel band at the peak cell], and ``map`` (the
        similarity map, ``(freq, time)`` float32 numpy, row 0 the lowest band).

    Raises
    ------
    ParameterError
        Not a prototype model, a bad waveform, or ``top_k`` < 1.
    """
    if not isinstance(model, PublishedAudioProtoPNet):
        raise ParameterError("explanations need a published AudioProtoPNet (prototype) model")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ParameterError(f"top_k must be an integer >= 1, got {top_k!r}")
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).flatten()
    if x.numel() == 0 or not torch.isfinite(x).all():
        raise ParameterError("waveform is empty or holds NaN/inf")
    n = model.config.window_samples
    x = F.pad(x[:n], (0, max(0, n - x.numel())))[None].to(next(model.parameters()).device)
    fc = model.config.frontend
    mel_hz = mel_band_centres(fc.n_mels, fc.f_min, fc.f_max, htk=True)
    with torch.no_grad():
        feats = model.forward_features(x)
        acts = model.prototype_activations(feats)
        logits = model.class_logits(acts)[0]
        weights = torch.relu(model.head.last_layer.weight)
        n_rows, n_cols = feats.shape[2:]
        out = []
        for c in torch.topk(logits, min(top_k, logits.numel())).indices.tolist():
            maps = model.class_similarity_maps(feats, c)[0].cpu().numpy()
            protos = []
            for j in range(maps.shape[0]):
                fi, ti = np.unravel_index(int(np.argmax(maps[j])), maps[j].shape)
                band = mel_hz[min(int((fi + 0.5) / n_rows * fc.n_mels), fc.n_mels - 1)]
                sim, w = float(maps[j].max()), float(weights[c, j])
                protos.append({"prototype": c * model.config.prototypes_per_class + j, "similarity": sim, "weight": w,
                               "contribution": sim * w, "t_s": float((ti + 0.5) / n_cols * fc.clip_seconds), "f_hz": float(band),
                               "map": maps[j].astype(np.float32)})
            protos.sort(key=lambda p: -p["contribution"])
            out.append({"class_index": c, "class_name": model.config.class_names[c], "logit": float(logits[c]),
                        "score": float(torch.sigmoid(logits[c])), "prototypes": protos})
    return out
