"""The home page's parts: its three first actions, the page guide in plain words and the table of shipped models."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAGES = Path(__file__).resolve().parent.parent / "pages"
#: The home page's picture, drawn by ``python bench/home_figure.py`` (see its docstring).
PICTURE = Path(__file__).resolve().parent.parent / "assets" / "home" / "home.png"

#: The three first actions: (page file, label, icon, what the user gets there in a line or two).
ACTIONS = (
    ("pages/0_Field_recording.py", "Analyse my recording", ":material/graphic_eq:",
     "Which birds the model hears when, in a recording of any length."),
    ("pages/1_Clip.py", "See one clip explained", ":material/search:",
     "Scores, and the sound patterns that made the model decide."),
    ("pages/8_Guided_demo.py", "Hear an attack", ":material/hearing:",
     "Five steps from a Sedge Warbler to a fooled model."),
)

#: What each page does, in plain words (page file stem without its number -> sentence).
PAGE_GUIDE = {
    "Field_recording": "A recording of any length, an AudioMoth night included: which birds the model hears when, and "
                       "\"no bird detected\" where it hears none; listen to any window; tables for Raven and BirdNET-Analyzer.",
    "Clip": "A few seconds of song (from the recordings here, uploaded or recorded): listen, see the species scores and "
            "the sound patterns from training recordings that made the model decide.",
    "Attack": "Change a clip by a tiny amount chosen to fool the model; hear the original, the changed clip and the "
              "change alone; see what the model says now, and whether the change still works after a room, a "
              "loudspeaker or MP3.",
    "Sweep": "Attack many clips with changes of growing size and watch how often each model is fooled; hear a clip at "
             "each size and find the smallest change that fools the model.",
    "Embeddings": "A map of how the model arranges clips inside: clips of one species should sit together. See how "
                  "far attacks move them.",
    "Compare_models": "The eight small models trained here, with and without training on attacked recordings, side by "
                      "side: how well they name species in clean and noisy recordings, and how hard each is to fool.",
    "Paper_check": "Do the main claims of a 2025 paper on training with attacked recordings (Heinrich et al.) hold on "
                   "our data? What held and what did not, in plain words, with every number.",
    "Transfer": "Does a change made to fool one model also fool another? Compared with random noise of the same size.",
    "Guided_demo": "Five steps for an audience: a Sedge Warbler, what the model looks at, a quiet change computed from "
                   "the model itself, hear it, and what the model says then.",
    "Glossary": "Every term on these pages in plain words, and when to distrust the number it names.",
    "Published_model": "The published AudioProtoPNet for 9,736 species (you download it yourself; never shipped) "
                       "explains a clip: its top species and where their sound patterns fire.",
}


def page_guide() -> list[tuple[str, str]]:
    """``[(page title, sentence)]`` for every page in ``pages/``, in sidebar order; a page without a sentence gets ""."""
    rows = []
    for path in sorted(PAGES.glob("*.py"), key=lambda p: (int(p.stem.split("_", 1)[0]) if p.stem[0].isdigit() else 10**6, p.stem)):
        stem = path.stem.split("_", 1)[1] if path.stem.split("_", 1)[0].isdigit() else path.stem
        rows.append((stem.replace("_", " "), PAGE_GUIDE.get(stem, "")))
    return rows


#: Columns of :func:`model_table`, numbers first so that they stay in view on a narrow screen.
MODEL_COLUMNS = ("model", "cmAP (windows)", "top-1 (windows)", "cmAP (recordings)", "ROC-AUC (windows)",
                 "training minutes", "architecture", "training")


def model_table(cards: dict[str, dict], recipes: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Held-out test figures of the shipped models, one row each, and the reference model last.

    Parameters
    ----------
    cards : dict of str -> dict
        Model cards by checkpoint name (``metrics.test.window`` / ``.recording`` with ``cmap``, ``top1``,
        ``roc_auc``; ``train_seconds``; the small models' cards carry the logistic-regression ``reference``).
        Cards without test metrics are left out.
    recipes : dict of str -> (str, str)
        ``(architecture, training recipe)`` by checkpoint name (:func:`core.studies.compare.model_recipe`).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MODEL_COLUMNS`; figures rounded to 3 decimals, training time in minutes (NaN when unknown).
    """
    rows, ref = [], None

    def figures(m: dict) -> dict:
        w, r = m["window"], m["recording"]
        return {"cmAP (windows)": w["cmap"], "top-1 (windows)": w["top1"], "cmAP (recordings)": r["cmap"],
                "ROC-AUC (windows)": w["roc_auc"]}

    for name, card in cards.items():
        m = card.get("metrics", {}).get("test", {})
        if not m:
            continue
        arch, recipe = recipes[name]
        rows.append({"model": name, **figures(m), "training minutes": card.get("train_seconds", float("nan")) / 60,
                     "architecture": arch, "training": recipe})
        ref = ref or card.get("reference")  # the reference lives in the small models' cards
    if rows and ref:
        rows.append({"model": "reference", **figures(ref["metrics"]["test"]), "training minutes": float("nan"),
                     "architecture": "logistic regression on mean log-mel", "training": ""})
    return pd.DataFrame(rows, columns=list(MODEL_COLUMNS)).round(3)
