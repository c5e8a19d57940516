"""Which BirdNET layer should a head read? Layer and fine-tuning studies on the validation split.

:func:`layer_study` trains a prototype head and a linear head on each candidate
layer; :func:`finetune_study` compares a head on a frozen layer with one whose last
stage is fine-tuned; :func:`choose_layer` picks a layer by validation metrics only
(the test split is reported, never used to choose).
"""

from __future__ import annotations

import logging
import time

from torch import nn

from core.errors import ParameterError
from core.io.data import Dataset
from core.metrics import focal_targets, metrics_from_scores
from core.models.birdnet import BIRDNET_WINDOW_S, BirdNETSpectrogram, birdnet_files
from core.models.birdnet_heads import CANDIDATE_LAYERS, BirdNETStage, HeadConfig, head_scores
from core.models.tflite_graph import TFLiteFile
from core.training.heads import extract_features, fit_head, push_head, split_windows, train_head, train_last_layer

log = logging.getLogger(__name__)


def layer_study(dataset: Dataset, layers=CANDIDATE_LAYERS, *, configs: dict[str, HeadConfig] | None = None,
                progress=None) -> list[dict]:
    """Train a prototype head and a linear head on each candidate layer; validation and test metrics.

    Parameters
    ----------
    dataset : Dataset
        Its split scheme decides train/val/test (recordist-disjoint by default).
    layers : sequence of str
    configs : dict of name -> HeadConfig, optional
        Default ``{"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}``.

    Returns
    -------
    list of dict
        One row per (layer, head): map shape, cell size (s, mel rows), window and
        recording metrics on val and test, training seconds. Choose on ``val_*``.
    """
    configs = configs or {"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}
    wins = {s: split_windows(dataset, s) for s in ("train", "val", "test")}
    names = dataset.class_names
    focal_tr = focal_targets(wins["train"], names)[wins["train"].recording_index]
    rows = []
    file = TFLiteFile(birdnet_files()["model"])
    frontend = BirdNETSpectrogram(file)
    by_split = {s: extract_features(layers, w, file=file, progress=progress) for s, w in wins.items()}
    for layer in layers:
        feats = {s: by_split[s][layer] for s in wins}
        _, c, fh, tw = feats["train"].shape
        for name, cfg in configs.items():
            t0 = time.time()
            head, _ = train_head(cfg, feats["train"], wins["train"].targets, focal_tr)
            if cfg.kind == "prototype":
                push_head(head, feats["train"], focal_tr)
                train_last_layer(head, cfg, feats["train"], wins["train"].targets)
            row = {"layer": layer, "head": name, "channels": c, "map": f"{fh} x {tw}", "cell_s": BIRDNET_WINDOW_S / tw,
                   "cell_mel_rows": frontend.n_mels / fh, "train_seconds": time.time() - t0}
            rows.append(_study_row(row, head, feats, wins, names))
    return rows


def _study_row(row: dict, head: nn.Module, feats: dict, wins: dict, names) -> dict:
    """Add window and recording metrics on val and test to ``row``."""
    for s in ("val", "test"):
        m = metrics_from_scores(head_scores(head, feats[s]), wins[s], names)
        for level in ("window", "recording"):
            for k in ("cmap", "roc_auc", "top1"):
                row[f"{s}_{level}_{k}"] = m[level][k]
    log.info("%s: val window cmAP %.3f, recording top-1 %.3f", {k: v for k, v in row.items() if isinstance(v, str)},
             row["val_window_cmap"], row["val_recording_top1"])
    return row


def finetune_study(dataset: Dataset, *, layer: str = "BLOCK_3-5_ADD", from_layer: str = "BLOCK_3-4_ADD",
                   configs: dict[str, HeadConfig] | None = None, lr_stage: float = 1e-4, progress=None) -> list[dict]:
    """Frozen vs partly fine-tuned backbone: each head trained on ``layer`` with BirdNET frozen, and again with
    the layers from ``from_layer`` to ``layer`` trained jointly with the head.

    The push and the last-layer epochs of prototype heads run on the fine-tuned
    stage's features, as AudioProtoPNet does after its joint phase.

    Parameters
    ----------
    dataset : Dataset
    layer, from_layer : str
        The head's layer and the input of the fine-tuned stage (:class:`BirdNETStage`).
    configs : dict of name -> HeadConfig, optional
        As :func:`layer_study`.
    lr_stage : float
        Adam learning rate of the fine-tuned stage.

    Returns
    -------
    list of dict
        One row per (backbone, head): ``backbone`` is ``"frozen"`` or ``"<from_layer> -> <layer> fine-tuned"``,
        then the metrics of :func:`layer_study`, ``train_seconds`` and ``stage_parameters``.
    """
    configs = configs or {"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}
    wins = {s: split_windows(dataset, s) for s in ("train", "val", "test")}
    names = dataset.class_names
    focal_tr = focal_targets(wins["train"], names)[wins["train"].recording_index]
    file = TFLiteFile(birdnet_files()["model"])
    by_split = {s: extract_features((from_layer, layer), w, file=file, progress=progress) for s, w in wins.items()}
    rows = []
    for name, cfg in configs.items():
        for tuned in (False, True):
            t0 = time.time()
            stage = BirdNETStage(from_layer, layer, file) if tuned else None
            head, feats, _, _ = fit_head(cfg, {s: by_split[s][from_layer if tuned else layer] for s in wins},
                                          wins["train"].targets, focal_tr, stage=stage, lr_stage=lr_stage)
            row = {"layer": layer, "head": name, "backbone": f"{from_layer} -> {layer} fine-tuned" if tuned else "frozen",
                   "lr_stage": lr_stage if tuned else 0.0,
                   "stage_parameters": int(sum(q.numel() for q in stage.parameters())) if tuned else 0,
                   "train_seconds": time.time() - t0}
            rows.append(_study_row(row, head, feats, wins, names))
    return rows


def choose_layer(study, *, tolerance: float = 0.01) -> str:
    """The layer for the shipped prototype head, by the rule fixed before looking at test figures.

    Among prototype heads whose map has at least 2 frequency rows (so a prototype
    says *where in frequency* it fires), take the best validation window cmAP; any
    layer within ``tolerance`` of it counts as tied, and the tie goes to the finest
    map (most cells).

    Parameters
    ----------
    study : pandas.DataFrame
        :func:`layer_study` rows (``assets/birdnet_heads/layers.csv``).

    Returns
    -------
    str
    """
    p = study[study["head"] == "prototype"].copy()
    p["rows"] = p["map"].str.split(" x ").str[0].astype(int)
    p["cells"] = p["map"].str.split(" x ").apply(lambda v: int(v[0]) * int(v[1]))
    p = p[p["rows"] >= 2]
    if p.empty:
        raise ParameterError("no prototype layer with frequency resolution in the study")
    tied = p[p["val_window_cmap"] >= p["val_window_cmap"].max() - tolerance]
    return str(tied.sort_values("cells", ascending=False)["layer"].iloc[0])
