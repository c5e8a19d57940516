"""Explanations of a recording, window by window: the Clip page's spectrogram, scores, prototype maps and input attribution.

:func:`explain` is the public :func:`core.explain`. Its maps are ``model.forward_all(window).similarity_maps``
(AudioProtoPNet, Heinrich et al. 2025, after Chen et al. 2019, "This looks like that"), placed on the spectrogram's
frequency [Hz] and time [s] axes the way the Clip page draws them. That placement stretches the feature map over the
spectrogram: for BirdNET's heads a feature row draws most of its evidence from outside its nominal band (the input
gradient of a row's activation lies 24-47 % inside it on birdnet_protopnet), so where the evidence lies in the input
is measured separately, on request, by occlusion or gradient x input (:mod:`core.field.attribution`), in Hz and s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError
from core.field.attribution import AttributionMap, grad_x_input, occlusion
from core.models.frontend import FrontendConfig, LogMel, mel_band_centres
from core.models.registry import require_loaded

__all__ = ["Explanation", "cell_centres", "explain"]


@dataclass(frozen=True)
class Explanation:
    """The Clip page's view of each window: log-mel spectrogram, scores and, for prototype models, similarity maps.

    Attributes
    ----------
    class_names : tuple of str
    starts_s : np.ndarray [shape=(n_windows,)] [s]
    scores : np.ndarray [shape=(n_windows, n_classes)], sigmoid scores
    spectrogram_db : np.ndarray [shape=(n_windows, n_mels, n_frames)] [dB re full scale]
        Log-mel power of ``model.config.frontend`` (for BirdNET models its display front end), row 0 the lowest band.
    frequency_hz : np.ndarray [shape=(n_mels,)] [Hz], centre of each mel band
    time_s : np.ndarray [shape=(n_frames,)] [s], centre of each frame from the window's start
    similarity_maps : np.ndarray or None [shape=(n_windows, n_prototypes, map_freq, map_time)]
        Similarity of every prototype at every cell of the feature map (Chen et al. 2019); None without prototypes.
    map_frequency_hz : np.ndarray or None [shape=(map_freq,)] [Hz]
    map_time_s : np.ndarray or None [shape=(map_time,)] [s]
        Centre of each map cell on the spectrogram's axes, the map stretched over the spectrogram as the Clip
        page draws it (for BirdNET heads a row also sees the low band, 0-3 kHz, of the same row).
    prototype_activations : np.ndarray or None [shape=(n_windows, n_prototypes)], max of each map
    class_connection : np.ndarray or None [shape=(n_classes, n_prototypes)], prototype weights per class
    prototype_class : np.ndarray or None [shape=(n_prototypes,)], the class each prototype belongs to
    attribution : tuple of AttributionMap or None
        One per window when :func:`explain` was asked for it: where in the input (Hz x s) the evidence for the
        window's class logits lies (:mod:`core.field.attribution`).
    """

    class_names: tuple
    starts_s: np.ndarray
    scores: np.ndarray
    spectrogram_db: np.ndarray
    frequency_hz: np.ndarray
    time_s: np.ndarray
    similarity_maps: np.ndarray | None = None
    map_frequency_hz: np.ndarray | None = None
    map_time_s: np.ndarray | None = None
    prototype_activations: np.ndarray | None = None
    class_connection: np.ndarray | None = None
    prototype_class: np.ndarray | None = None
    attribution: tuple[AttributionMap, ...] | None = None

    def similarity_on_spectrogram(self, window: int, prototype: int) -> np.ndarray:
        """One similarity map stretched bilinearly onto the spectrogram's grid, ``(n_mels, n_frames)``, as the Clip page overlays it.

        Raises
        ------
        ParameterError
            No maps (a model without prototypes), or an index out of range.
        """
        if self.similarity_maps is None:
            raise ParameterError("this model has no prototypes: there are no similarity maps")
        if not (0 <= window < len(self.scores) and 0 <= prototype < self.similarity_maps.shape[1]):
            raise ParameterError(f"window must be in [0, {len(self.scores)}) and prototype in [0, {self.similarity_maps.shape[1]}), "
                                 f"got {window}, {prototype}")
        sim = torch.as_tensor(self.similarity_maps[window, prototype])[None, None]
        return torch.nn.functional.interpolate(sim, size=self.spectrogram_db.shape[1:], mode="bilinear", align_corners=False)[0, 0].numpy()

    def prototypes(self, window: int, class_index: int) -> pd.DataFrame:
        """A class's prototypes in a window by contribution (similarity x weight), as the Clip page ranks them.

        Returns
        -------
        pandas.DataFrame
            ``prototype``, ``similarity`` (max over the map), ``weight``, ``contribution``; largest contribution first.
        """
        if self.similarity_maps is None:
            raise ParameterError("this model has no prototypes")
        if not (0 <= window < len(self.scores) and 0 <= class_index < len(self.class_names)):
            raise ParameterError(f"window must be in [0, {len(self.scores)}) and class_index in [0, {len(self.class_names)}), "
                                 f"got {window}, {class_index}")
        protos = np.flatnonzero(self.prototype_class == class_index)
        acts, weights = self.prototype_activations[window, protos], self.class_connection[class_index, protos]
        df = pd.DataFrame({"prototype": protos, "similarity": acts, "weight": weights, "contribution": acts * weights})
        return df.sort_values("contribution", ascending=False, kind="stable").reset_index(drop=True)


def cell_centres(axis: np.ndarray, n_cells: int) -> np.ndarray:
    """Centre of each of ``n_cells`` equal cells stretched over ``axis`` (bilinear, align_corners=False).

    Parameters
    ----------
    axis : np.ndarray [shape=(n,)]
        Centres of the spectrogram's rows [Hz] or frames [s].
    n_cells : int
        Rows (or columns) of a similarity map stretched over that axis.

    Returns
    -------
    np.ndarray [shape=(n_cells,)], in ``axis``'s unit: where the Clip page draws each map cell.
    """
    pos = (np.arange(n_cells) + 0.5) * len(axis) / n_cells - 0.5
    return np.interp(pos, np.arange(len(axis)), axis)


def _class_indices(names: list[str], classes) -> list[int]:
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ParameterError(f"unknown class {c!r}; the model's classes are {names[:12]}{' ...' if len(names) > 12 else ''}")
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
            out.append(int(c))
        else:
            raise ParameterError(f"classes must be class names or indices in [0, {len(names)}), got {c!r}")
    if not out:
        raise ParameterError("classes must name at least one class")
    return out


def explain(model, waveform, *, attribution: str | None = None, classes=None, bands_per_octave: int = 3,
            cell_s: float = 0.25) -> Explanation:
    """What the model sees, which prototypes it matched where and, on request, where in the input its evidence lies.

    Parameters
    ----------
    model : BirdClassifier
    waveform : torch.Tensor or np.ndarray [shape=(n_samples,) or (batch, n_samples)]
        At the model's rate (see the module docstring for windows).
    attribution : {None, "occlusion", "grad_x_input"}
        Also attribute the class logits of every window to Hz x s cells of the model's input spectrogram
        (:func:`core.field.attribution.occlusion`: one forward pass per cell, about 48 cells per 3 s window in
        octaves x 0.5 s, 250 in third-octaves x 0.25 s; :func:`core.field.attribution.grad_x_input`: one forward and
        one backward pass per class). Default None: not computed.
    classes : str, int or sequence of them, optional
        Classes to attribute (names or indices); default each window's top-scoring class.
    bands_per_octave : int
        Frequency cells of the attribution (3: third-octaves).
    cell_s : float [s]
        Time cells of the attribution.

    Returns
    -------
    Explanation

    Raises
    ------
    ParameterError
        Not a float waveform, non-finite samples, a 2-D row longer than one window, an unknown attribution method or
        class, or a model name where a loaded model is wanted. The maps are
        ``model.forward_all(window).similarity_maps`` (AudioProtoPNet, Heinrich et al. 2025).
    """
    methods = {"occlusion": occlusion, "grad_x_input": grad_x_input}
    if attribution is not None and attribution not in methods:
        raise ParameterError(f"attribution must be None, 'occlusion' or 'grad_x_input', got {attribution!r}")
    require_loaded(model, "core.explain")
    chosen = None if classes is None else _class_indices(list(model.class_names), classes)

    from core.attacks.windows import cut_windows
    from core.field.inference import analyze_waveform

    w = cut_windows(waveform, model.config.window_samples)
    res = [analyze_waveform(model, w.windows[i, : w.valid[i]]) for i in range(len(w.windows))] if w.x.ndim == 2 else [
        analyze_waveform(model, w.x.detach().cpu().float().numpy())]

    def cat(name):
        return None if getattr(res[0], name) is None else np.concatenate([getattr(r, name) for r in res])

    fe = model.config.frontend
    windows = np.concatenate([r.windows for r in res])
    with torch.no_grad():  # the log-mel of the model's (display) config; a published model's own HTK front end
        if isinstance(fe, FrontendConfig):
            spec = LogMel(fe).db(torch.as_tensor(windows)).numpy()
        else:
            spec = model.frontend.db(torch.as_tensor(windows, device=next(model.parameters()).device)).cpu().numpy()
    freq = mel_band_centres(fe.n_mels, fe.f_min, fe.f_max, htk=bool(getattr(fe, "htk", False)))
    times = np.arange(spec.shape[-1]) * fe.hop_length / fe.sample_rate
    maps = cat("similarity_maps")
    extra = {}
    if maps is not None:
        weights = model.class_connection().detach().float().cpu().numpy() if hasattr(model, "class_connection") else None
        per_class = getattr(model.config, "prototypes_per_class", 0) or maps.shape[1] // len(model.config.class_names)
        extra = dict(similarity_maps=maps, map_frequency_hz=cell_centres(freq, maps.shape[2]), map_time_s=cell_centres(times, maps.shape[3]),
                     prototype_activations=cat("prototype_activations"), class_connection=weights,
                     prototype_class=np.arange(maps.shape[1]) // per_class)
    scores = cat("scores")
    if attribution is not None:
        extra["attribution"] = tuple(
            methods[attribution](model, windows[i], indices=chosen if chosen is not None else [int(np.argmax(scores[i]))],
                                 bands_per_octave=bands_per_octave, cell_s=cell_s) for i in range(len(windows)))
    return Explanation(class_names=tuple(model.config.class_names), starts_s=w.start / fe.sample_rate, scores=scores,
                       spectrogram_db=spec, frequency_hz=freq, time_s=times, **extra)
