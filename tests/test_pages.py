"""Every page runs under Streamlit's AppTest: dataset clip, upload of a real file, an attack."""

import io

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from core.models.registry import list_checkpoints, read_model_card
from tests.conftest import ROOT, tone

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
TIMEOUT = 120


def no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


def top_species(at) -> dict[str, str]:
    """The Attack page's top species as written (label -> species now), e.g. ``{"Top species": "Marsh Warbler (acrpal)"}``."""
    import re

    found = {}
    for m in at.markdown:
        hit = re.match(r"(Top species[^\n]*?)  \n\*\*(?::\w+\[)?(.+?)\]?\*\*", m.value)
        if hit:
            found[hit.group(1)] = hit.group(2)
    return found


def finish_job(at, key: str, timeout: float = 600):
    """Wait for the page's background job (ui.jobs) and rerun the page so it collects the result."""
    job = at.session_state[f"job:{key}"]
    job.thread.join(timeout)
    assert not job.running, f"job {key} still running after {timeout} s"
    return at.run()


def test_home():
    from core.studies.demo import demo_sentence, read_demo_record
    from ui.home import ACTIONS, page_guide

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.title[0].value == "birdshield"
    # the first screen: the picture with the recorded demo outcome, then the three first actions, in plain words
    first = []
    for el in at.main.children.values():
        if el.type == "subheader":
            break
        first.append(el)
    assert [el.type for el in first][:3] == ["title", "markdown", "image"]
    assert first[2].proto.imgs[0].caption == demo_sentence(read_demo_record()).replace("**", "")
    assert [b.label for b in at.button] == ["Analyse my recording", "See one clip explained", "Hear an attack"]
    assert all((ROOT / page).is_file() for page, *_ in ACTIONS)
    words = " ".join(getattr(el, "value", "") or "" for el in first if isinstance(getattr(el, "value", None), str))
    for jargon in ("L-inf", "eps", "PRS", "DRS", "TARS"):
        assert jargon not in words.split(), f"{jargon} on the first screen"
    # the rest one click away: every page described, the model table, the data
    assert at.subheader[0].value == "More"
    guide = at.expander[0].markdown[0].value
    assert all(f"**{title}**: {what}" in guide and what for title, what in page_guide())
    table = at.table[0].value
    assert "reference" in set(table["model"])  # kept whatever model is listed last
    assert list(table.columns[:4]) == ["model", "cmAP (windows)", "top-1 (windows)", "cmAP (recordings)"]  # numbers first
    heads = table.set_index("model").loc[["birdnet_protopnet", "birdnet_linear"], "training"]
    assert heads["birdnet_linear"] == "head on BirdNET's frozen BLOCK_3-5_ADD"
    assert heads["birdnet_protopnet"].startswith("head on BirdNET's BLOCK_3-5_ADD, BLOCK_3-4_ADD -> BLOCK_3-5_ADD fine-tuned")


@pytest.mark.slow
def test_home_action_opens_its_page():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.button(key="home_go_1_Clip").click().run()
    no_exception(at)
    assert at.title[0].value.startswith("Clip")


def test_sidebar_names_every_page_as_file_navigation_did():
    import app

    got = {p.name: app.page_title(p) for p in sorted((ROOT / "pages").glob("*.py"))}
    assert got["1_Clip.py"] == ("Clip", "Clip") and got["0_Field_recording.py"] == ("Field recording", "Field_recording")
    assert got["5_Compare_models.py"] == ("Compare models", "Compare_models")
    assert len({url for _, url in got.values()}) == len(got)  # one address per page


def test_clip_page_dataset_clip(data_dir):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.radio(key="clip_source").value == "Dataset"
    at.multiselect(key="clip_species").set_value(["parmaj"]).run()
    no_exception(at)
    assert any("Great Tit" in m.value for m in at.markdown)  # the chosen recording is labelled parmaj
    subheaders = [s.value for s in at.subheader]
    assert any("score" in s for s in subheaders)  # prototype explanations rendered for the top classes
    import json

    bars = [t for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"] if t.get("type") == "bar"]
    assert bars and "Great Tit" in bars[0]["x"] and "parmaj" not in bars[0]["x"]  # English names on the axis, codes in the hover
    assert any("held-out validation recordings" in c.value for c in at.caption)
    configs = [json.loads(c.proto.config) for c in at.get("plotly_chart")]
    assert configs and all(c["toImageButtonOptions"]["format"] == "svg" for c in configs)  # every chart saves as SVG
    assert not at.error


def test_clip_page_upload_real_file(data_dir):
    # a real recording from the dataset, uploaded as a file
    flac = next((data_dir / "audio").rglob("*.flac"))
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    at.radio(key="clip_source").set_value("Upload").run()
    at.file_uploader(key="clip_upload").set_value((flac.name, flac.read_bytes(), "audio/flac")).run()
    no_exception(at)
    assert not at.error
    assert any("score" in s.value for s in at.subheader)


def test_clip_page_upload_bad_file():
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    at.radio(key="clip_source").set_value("Upload").run()
    good = io.BytesIO()
    sf.write(good, tone(2500, 5.0, 32_000, amp=0.2) + np.float32(0), 32_000, format="WAV")
    at.file_uploader(key="clip_upload").set_value(("good.wav", good.getvalue(), "audio/wav")).run()
    assert at.session_state["clip"].name == "good.wav"
    at.file_uploader(key="clip_upload").set_value(("notes.wav", b"not audio", "audio/wav")).run()
    no_exception(at)
    assert at.error and "not a readable audio file" in at.error[0].value
    assert "object at 0x" not in at.error[0].value  # the reason, not a Python repr
    # the earlier clip stays on the page (its analysis too), as the README promises
    assert at.session_state["clip"].name == "good.wav"
    assert any("Still showing the earlier clip: good.wav" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) >= 2


def test_attack_page_runs_attack():
    buf = io.BytesIO()
    sf.write(buf, tone(2500, 5.0, 32_000, amp=0.2) + np.float32(0), 32_000, format="WAV")
    at = AppTest.from_file(str(ROOT / "pages" / "2_Attack.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    at.radio(key="attack_source").set_value("Upload").run()
    at.file_uploader(key="attack_upload").set_value(("tone.wav", buf.getvalue(), "audio/wav")).run()
    at.number_input(key="attack_eps").set_value(0.005).run()
    at.number_input(key="attack_steps").set_value(3).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    assert not at.error
    labels = {m.label: m.value for m in at.metric}
    snr = float(labels["SNR of perturbation"].split()[0])
    assert 10 < snr < 40
    assert float(labels["L-inf"]) <= 0.005 + 1e-6
    assert len(at.dataframe) >= 2  # score table and changed prototypes


def _attack_page_with_a_tone():
    """The Attack page on the small AudioProtoPNet with an uploaded tone."""
    at = AppTest.from_file(str(ROOT / "pages" / "2_Attack.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "protopnet"
    at.run()
    _upload_tone(at, "attack")
    return at


def _targeted_attack_on_a_tone():
    """The Attack page with the small AudioProtoPNet told to say Marsh Warbler about an uploaded tone (eps 0.01, PGD-10)."""
    at = _attack_page_with_a_tone()
    at.radio(key="attack_objective_False").set_value("output-targeted-margin").run()
    at.selectbox(key="attack_target_species").set_value("acrpal").run()
    at.number_input(key="attack_eps").set_value(0.01).run()
    at.number_input(key="attack_steps").set_value(10).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    return at


def test_attack_page_makes_the_model_say_a_chosen_species():
    at = _targeted_attack_on_a_tone()
    assert not at.error
    table = at.dataframe[0].value.set_index("species")
    row = table.loc[[s for s in table.index if "Marsh Warbler" in s][0]]
    assert row["perturbed"] > row["clean"]  # the chosen species was pushed up
    assert top_species(at)["Top species"] == "Marsh Warbler (acrpal)"  # and it is what the model now says


def test_pages_without_dataset(monkeypatch, tmp_path):
    """No dataset anywhere: the pages still run on uploads and say how to get the data."""
    import streamlit as st

    import core.io.data

    monkeypatch.delenv("BIRDSHIELD_DATA_DIR", raising=False)
    monkeypatch.setattr(core.io.data, "candidate_data_dirs", lambda explicit=None: [tmp_path / "nothing"])
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
        no_exception(at)
        assert at.radio(key="clip_source").options == ["Upload", "Record"]
        assert any("python -m core download" in i.value for i in at.info)
        home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
        no_exception(home)
        assert any("No dataset found" in w.value for w in home.warning)
    finally:
        st.cache_resource.clear()


def _upload_tone(at, prefix):
    buf = io.BytesIO()
    sf.write(buf, tone(2500, 5.0, 32_000, amp=0.2), 32_000, format="WAV")
    at.radio(key=f"{prefix}_source").set_value("Upload").run()
    at.file_uploader(key=f"{prefix}_upload").set_value(("tone.wav", buf.getvalue(), "audio/wav")).run()



def sweep_uploaded_tone(at, grid: str) -> None:
    """Upload a tone on the Sweep page and sweep it with 2 PGD steps over the eps ``grid``; no exception, no error."""
    _upload_tone(at, "sweep")
    at.number_input(key="sweep_steps").set_value(2).run()
    at.text_input(key="sweep_grid_eps").set_value(grid).run()
    at.button(key="sweep_run").click().run()
    finish_job(at, "sweep")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_sweep_page_single_clip_two_models():
    at = AppTest.from_file(str(ROOT / "pages" / "3_Sweep.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.multiselect(key="sweep_models").value == ["baseline", "protopnet"]  # the default pair: black box vs interpretable
    assert any("runs in the background" in c.value for c in at.caption)  # leaving the page does not lose a run
    sweep_uploaded_tone(at, "0, 1e-3, 2e-2")
    table = at.session_state["sweep_result"]["table"]
    assert set(table["model"]) == {"baseline", "protopnet"} and len(table) == 2 * 4
    assert "share of cells above the masking threshold (median)" in at.multiselect(key="sweep_metrics").options  # beside SNR
    assert table.groupby("budget")["above_masking"].median().is_monotonic_increasing
    assert len(at.get("plotly_chart")) >= 2  # curves
    # one audio player per budget and model (clean + 3 budgets)
    audio = at.session_state["sweep_result"]["audio"]
    assert [len(audio[m]) for m in ("baseline", "protopnet")] == [4, 4]
    strong = table[table["budget"] == 2e-2]
    assert strong["success"].any()  # eps 0.02 (about 17 dB below the tone) changes the prediction
    assert (strong["snr_db"] < table[table["budget"] == 1e-3]["snr_db"].max()).all()
    # the set-change rate at each model's own validation threshold, named in the caption
    assert any("Predicted set changed" in c.value and "protopnet 0." in c.value for c in at.caption)
    # minimal flipping eps for the clip
    at.button(key="sweep_min_run").click().run()
    finish_job(at, "sweep_min")
    no_exception(at)
    found = at.session_state["sweep_min_eps"]
    assert set(found["model"]) == {"baseline", "protopnet"}
    assert (found.loc[found["found"], "minimal eps"] <= 0.1).all()


@pytest.mark.slow
def test_sweep_page_split_subset_and_bad_grid(data_dir, tmp_path):
    at = AppTest.from_file(str(ROOT / "pages" / "3_Sweep.py"), default_timeout=TIMEOUT).run()
    at.multiselect(key="sweep_models").set_value(["protopnet"]).run()
    at.radio(key="sweep_clip_mode").set_value("Split subset").run()
    at.number_input(key="sweep_max_clips").set_value(3).run()
    at.number_input(key="sweep_steps").set_value(1).run()
    at.radio(key="sweep_budget_kind").set_value("snr_db").run()
    at.text_input(key="sweep_grid_snr_db").set_value("40, oops").run()
    at.button(key="sweep_run").click().run()
    no_exception(at)
    assert at.error and "comma-separated numbers" in at.error[0].value
    at.text_input(key="sweep_grid_snr_db").set_value("40, 20").run()
    at.button(key="sweep_run").click().run()
    finish_job(at, "sweep")
    no_exception(at)
    assert not at.error
    table = at.session_state["sweep_result"]["table"]
    assert table["clip"].nunique() == 3 and set(table["budget_kind"]) == {"clean", "snr_db"}
    adv = table[table["budget_kind"] == "snr_db"]
    assert (adv["snr_db"] >= adv["budget"] - 0.01).all()  # each clip's budget met
    assert not table.filter(like="label:").isna().any().any()  # true labels from the dataset
    # a saved table loads back; a bad one gets a message, and the loaded result stays
    path = tmp_path / "saved.csv"
    table.to_csv(path, index=False)
    at.file_uploader(key="sweep_table_upload").set_value(("notes.csv", b"a,b\n1,2\n", "text/csv")).run()
    no_exception(at)
    assert any("not a sweep table" in e.value for e in at.error)
    assert len(at.session_state["sweep_result"]["table"]) == len(table)
    at.file_uploader(key="sweep_table_upload").set_value(("saved.csv", path.read_bytes(), "text/csv")).run()
    no_exception(at)
    assert at.session_state["sweep_result"]["source"] == "saved.csv"



def run_embedding_map(monkeypatch, tmp_path, *, max_clips: int, model_name: str | None = None):
    """Run the Embeddings page's map with a 2-step attack on ``max_clips`` clips; returns the app and its result."""
    monkeypatch.setenv("BIRDSHIELD_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(ROOT / "pages" / "4_Embeddings.py"), default_timeout=300)
    if model_name:
        at.session_state["model_name"] = model_name
    at.run()
    no_exception(at)
    at.number_input(key="emb_max_clips").set_value(max_clips)
    at.checkbox(key="emb_with_attack").check()
    at.number_input(key="emb_steps").set_value(2)
    at.button[0].click().run()
    finish_job(at, "embeddings")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at, at.session_state["emb_result"]


@pytest.mark.slow
def test_embeddings_page_map_attack_and_selection(data_dir, tmp_path, monkeypatch):
    at, res = run_embedding_map(monkeypatch, tmp_path, max_clips=16)
    assert res["coords"].shape == (16, 2) and res["adv_coords"].shape == (16, 2)
    at_clip, sim = res["anchors"]  # each prototype of the default model marked at the clip of the map it fires most on
    n_protos = read_model_card(at.session_state["model_name"])["config"]
    n_protos = n_protos["prototypes_per_class"] * len(n_protos["class_names"])
    assert at_clip.shape == sim.shape == (n_protos,) and ((0 <= at_clip) & (at_clip < 16)).all() and (sim <= 1 + 1e-6).all()
    metrics = res["metrics"]
    assert list(metrics["points"]) == ["clean", "clean", "adversarial", "adversarial"]
    assert metrics[["nmi", "ari", "silhouette", "retrieval_roc_auc"]].notna().all().all()
    assert len(list((tmp_path / "cache").glob("*.npz"))) >= 3  # clean, adversarial, UMAP
    # selecting a clip (the selectbox; map clicks feed the same state) plays it clean and attacked
    at.selectbox(key="emb_clip").set_value(5).run()
    no_exception(at)
    assert any(res["clips"].clip_ids[5] in s.value for s in at.subheader)
    assert len(at.get("audio")) == 2
    import json

    traces = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    heat = [t for t in traces if t.get("type") == "heatmap"]
    assert len(heat) == 2 and heat[0]["zmin"] == heat[1]["zmin"] and heat[0]["zmax"] == heat[1]["zmax"]  # one colour range
    # a second page load of the same map comes from the disk cache
    again = AppTest.from_file(str(ROOT / "pages" / "4_Embeddings.py"), default_timeout=300).run()
    again.number_input(key="emb_max_clips").set_value(16)
    again.checkbox(key="emb_with_attack").check()
    again.number_input(key="emb_steps").set_value(2)
    again.button[0].click().run()
    finish_job(again, "embeddings")
    no_exception(again)
    assert again.session_state["emb_result"]["emb"].from_cache


def test_selected_points_parsing():
    from ui.common import selected_points

    event = {"selection": {"points": [{"customdata": [3, "id"]}, {"x": 1.0}, {"customdata": [3, "id"]}, {"customdata": ["7"]}]}}
    assert selected_points(event) == [3, 7]
    assert selected_points(None) == [] and selected_points({"selection": {"points": []}}) == []


# -- Compare models and Paper check ---------------------------------------------------------------


@pytest.fixture
def empty_user_cache(monkeypatch, tmp_path):
    """An empty user cache (the shipped results stay visible)."""
    monkeypatch.setenv("BIRDSHIELD_CACHE_DIR", str(tmp_path / "cache" / "embeddings"))
    return tmp_path / "cache" / "compare"


@pytest.fixture
def empty_compare_store(empty_user_cache, monkeypatch, tmp_path):
    """A user cache with no comparison in it, and no shipped results."""
    import core.studies.compare_store

    monkeypatch.setattr(core.studies.compare_store, "SHIPPED_DIR", tmp_path / "no_shipped")
    return empty_user_cache


def _small_compare_settings(at):
    """Three clips, one PGD step, one eps per attack: a comparison of seconds."""
    at.number_input(key="cmp_max_clips").set_value(3).run()
    at.number_input(key="cmp_steps").set_value(1).run()
    at.text_input(key="cmp_eps").set_value("1e-3").run()
    at.text_input(key="cmp_teps").set_value("1e-3").run()
    at.checkbox(key="cmp_strong").uncheck().run()  # PGD only: seconds, not minutes


@pytest.mark.slow
def test_compare_page_computes_small_comparison_and_finds_it_again(data_dir, empty_compare_store):
    # a real (small) comparison: PGD, shift and targeted attacks on two models; slow on a loaded 2-core CPU
    at = AppTest.from_file(str(ROOT / "pages" / "5_Compare_models.py"), default_timeout=300).run()
    no_exception(at)
    at.multiselect(key="cmp_models").set_value(["baseline", "protopnet"]).run()
    assert at.button(key="cmp_compute").label == "Compute"  # nothing stored for these settings
    _small_compare_settings(at)
    assert any("No stored result" in i.value and "allow about" in i.value for i in at.info)
    at.button(key="cmp_compute").click().run()
    finish_job(at, "compare")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert not any("No stored result" in i.value for i in at.info)  # the stale box is replaced by the outcome
    assert any("Computed and stored in" in m.value for m in at.success)
    summary = at.dataframe[0].value
    assert list(summary["model"]) == ["baseline", "protopnet"]
    assert summary["cmAP PGD eps 1e-03"].between(0, 1).all()
    assert len(at.get("plotly_chart")) >= 4  # shift bars, robustness and targeted curves, prototype bars
    assert len(list(empty_compare_store.glob("*/meta.json"))) == 1
    again = AppTest.from_file(str(ROOT / "pages" / "5_Compare_models.py"), default_timeout=TIMEOUT)
    again.session_state["cmp_models_saved"] = ["baseline", "protopnet"]
    again.run()
    _small_compare_settings(again)
    no_exception(again)
    assert again.button(key="cmp_compute").label == "Recompute"  # found in the store, shown without computing
    assert list(again.dataframe[0].value["model"]) == ["baseline", "protopnet"]


@pytest.mark.slow
def test_compare_page_bad_grid_is_an_error_not_a_traceback(empty_compare_store):
    at = AppTest.from_file(str(ROOT / "pages" / "5_Compare_models.py"), default_timeout=TIMEOUT).run()
    at.text_input(key="cmp_eps").set_value("1e-3, lots").run()
    no_exception(at)
    assert at.error and "eps grid must be comma-separated numbers" in at.error[0].value
    at.text_input(key="cmp_eps").set_value("5").run()
    no_exception(at)
    assert at.error and "(0, 1]" in at.error[0].value


def test_paper_check_page_without_a_stored_comparison(empty_compare_store):
    at = AppTest.from_file(str(ROOT / "pages" / "6_Paper_check.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.info and "Compare models" in at.info[0].value


@pytest.mark.slow
def test_compare_page_shows_the_shipped_comparison_without_computing(empty_user_cache):
    at = AppTest.from_file(str(ROOT / "pages" / "5_Compare_models.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.button(key="cmp_compute").label == "Recompute"
    summary = at.dataframe[0].value
    recipe = {"baseline": "OT", "baseline_ato": "AT-O", "baseline_ate": "AT-E", "protopnet": "OT", "protopnet_ato": "AT-O",
              "protopnet_ate": "AT-E", "baseline_ft": "OT+FT", "protopnet_ft": "OT+FT"}
    assert dict(zip(summary["model"], summary["recipe"])) == recipe and len(summary) == len(recipe)  # order: the page's
    s = summary.set_index("model")
    assert s["success PGD eps 1e-04"].between(0, 1).all() and s["cmAP clean"].gt(0.4).all()
    at.multiselect(key="cmp_models").set_value(["protopnet", "protopnet_ato"]).run()  # a subset comes from the same stored result
    no_exception(at)
    assert at.button(key="cmp_compute").label == "Recompute"
    assert list(at.dataframe[0].value["model"]) == ["protopnet", "protopnet_ato"]


@pytest.mark.slow
def test_paper_check_page_shows_every_claim_with_a_verdict(empty_user_cache):
    at = AppTest.from_file(str(ROOT / "pages" / "6_Paper_check.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) == 7
    assert set(table["direction"]) <= {"↑ claimed direction", "↓ opposite direction", "? inconclusive"}
    # no row claims a reproduction: our conditions differ from the paper's, and the table says so
    assert table["verdict"].str.contains("not tested under comparable conditions|our additional check").all()
    assert table["paper"].str.contains("10.5").sum() == 1  # the abstract's one figure, on one claim
    assert not table["paper"].str.contains("0.27").any()  # a figure that could not be traced to the paper
    assert len(at.expander) >= 8  # settings + one per claim
    at.number_input(key="pc_n_boot").set_value(200).run()  # a new bootstrap, computed on the page
    no_exception(at)
    assert len(at.dataframe[0].value) == 7



def clip_page_on_great_tit(model_name: str):
    """The Clip page with ``model_name`` on a Great Tit clip, run without exception or error."""
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = model_name
    at.run()
    no_exception(at)
    at.multiselect(key="clip_species").set_value(["parmaj"]).run()
    no_exception(at)
    assert not at.error
    return at


def test_clip_page_with_the_prototype_head_on_birdnet(data_dir):
    """AudioProtoPNet on BirdNET's backbone: prototypes drawn, each with its audit, the licence in the sidebar."""
    at = clip_page_on_great_tit("birdnet_protopnet")
    assert any("CC BY-NC-SA 4.0" in c.value and "BLOCK_3-5_ADD" in c.value for c in at.sidebar.caption)
    assert any(s.value == "What BirdNET sees" for s in at.subheader)
    assert any("score" in s.value for s in at.subheader)  # prototype explanations for the top classes
    audits = [c.value for c in at.caption if c.value.startswith("Audit (test split)")]
    assert len(audits) >= 2 and all("random region" in a for a in audits)
    assert any("Faithfulness (deletion)" in m.value for m in at.markdown)


@pytest.mark.slow
def test_clip_and_attack_pages_with_birdnet(data_dir):
    """BirdNET (3 s at 48 kHz) on the Clip and Attack pages, with its licence shown."""
    at = clip_page_on_great_tit("birdnet")
    assert any("CC BY-NC-SA 4.0" in c.value for c in at.sidebar.caption)
    assert any("black-box" in i.value for i in at.info)  # no prototypes: said, not crashed
    assert any(s.value == "What BirdNET sees" for s in at.subheader)  # its own two-channel input, drawn
    top = at.dataframe[-1].value  # BirdNET over all its species
    assert len(top) == 10 and top["score"].is_monotonic_decreasing
    at.checkbox(key="clip_bn_loc").check().run()
    at.number_input(key="clip_bn_lat").set_value(-33.9).run()  # Cape Town
    at.number_input(key="clip_bn_lon").set_value(18.4).run()
    no_exception(at)
    filtered = at.dataframe[-1].value
    assert "Great Tit" not in set(filtered["species"])  # no Great Tits in South Africa
    at = AppTest.from_file(str(ROOT / "pages" / "2_Attack.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "birdnet"
    at.run()
    no_exception(at)
    at.multiselect(key="attack_species").set_value(["parmaj"]).run()
    assert at.radio(key="attack_objective_True").value == "output-margin"  # BirdNET defaults to the margin loss
    at.number_input(key="attack_eps").set_value(0.001).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    assert not at.error
    labels = {m.label: m.value for m in at.metric}
    assert 10 < float(labels["SNR of perturbation"].split()[0]) < 60  # eps 1e-3 on a real clip
    assert "Top species" in top_species(at)


@pytest.mark.slow
def test_sweep_page_birdnet_beside_a_32k_model():
    """BirdNET (3 s at 48 kHz) and AudioProtoPNet (5 s at 32 kHz) in one sweep of the same uploaded clip, each on its own window."""
    at = AppTest.from_file(str(ROOT / "pages" / "3_Sweep.py"), default_timeout=TIMEOUT).run()
    at.multiselect(key="sweep_models").set_value(["birdnet", "protopnet"]).run()
    sweep_uploaded_tone(at, "0, 1e-2")
    res = at.session_state["sweep_result"]
    assert set(res["table"]["model"]) == {"birdnet", "protopnet"} and len(res["table"]) == 2 * 3  # clean row + 2 budgets each
    assert res["inputs"]["birdnet"]["x"].shape == (1, 144_000) and res["inputs"]["protopnet"]["x"].shape == (1, 160_000)
    assert [len(res["audio"][m]) for m in ("birdnet", "protopnet")] == [3, 3]
    at.button(key="sweep_min_run").click().run()
    finish_job(at, "sweep_min")
    no_exception(at)
    assert set(at.session_state["sweep_min_eps"]["model"]) == {"birdnet", "protopnet"}


@pytest.mark.slow
def test_transfer_page(data_dir):
    at = AppTest.from_file(str(ROOT / "pages" / "7_Transfer.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    at.multiselect(key="tr_models").set_value(["birdnet", "protopnet"]).run()
    at.number_input(key="tr_segments").set_value(2).run()
    at.number_input(key="tr_steps").set_value(2).run()
    at.number_input(key="tr_seconds").set_value(6.0).run()
    at.button(key="tr_run").click().run()
    finish_job(at, "transfer")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = at.session_state["tr_result"]["table"]
    assert len(table) == 2 * 2 * 2 and set(table["target"]) == {"birdnet", "protopnet"}
    assert len(at.get("plotly_chart")) == 2  # attack and control heat maps
    assert any("CC BY-NC-SA 4.0" in c.value for c in at.sidebar.caption)
    at.button(key="tr_one_run").click().run()
    no_exception(at)
    assert len(at.session_state["tr_one"]["out"]["rows"]) == 2


@pytest.mark.slow
def test_embeddings_page_with_birdnet(data_dir, tmp_path, monkeypatch):
    """BirdNET's 1,024-d embedding on the map, clean and attacked (its own 3 s / 48 kHz windows)."""
    at, res = run_embedding_map(monkeypatch, tmp_path, max_clips=12, model_name="birdnet")
    assert res["coords"].shape == (12, 2) and res["adv_coords"].shape == (12, 2)
    assert res["clips"].waveforms.shape[1] == 144_000
    assert res.get("anchors") is None


def test_field_recording_page_analyses_a_whole_file_and_opens_a_window_on_the_clip_page(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([tone(3000, 9.5, 44_100, amp=0.2), np.zeros(int(44_100 * 6.5), np.float32),
                        rng.standard_normal(44_100 * 6).astype(np.float32) * 0.01])  # 22 s: tone, silence, noise
    path = tmp_path / "field.wav"
    sf.write(path, x, 44_100)
    at = AppTest.from_file(str(ROOT / "pages" / "0_Field_recording.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    at.radio(key="field_source").set_value("File on this computer").run()
    at.text_input(key="field_path").set_value(str(tmp_path / "missing.wav")).run()
    assert any("No such file" in e.value for e in at.error)
    at.text_input(key="field_path").set_value(str(path)).run()
    at.multiselect(key="field_models").set_value(["protopnet"]).run()
    at.button(key="field_run").click().run()
    finish_job(at, "field")
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Windows"] == "4 × 5 s" and metrics["Length"] == "0.4 min"
    assert metrics["Silent (below -90 dBFS)"] == "1 windows"  # 10-15 s is all zeros
    assert at.slider(key="field_threshold_protopnet").value == pytest.approx(read_model_card("protopnet")["decision_threshold"]["value"], abs=0.01)
    labels = [b.label for b in at.get("download_button")]
    assert {"Raven selection table", "BirdNET-Analyzer CSV", "Every window (CSV)"} <= set(labels)
    at.number_input(key="field_window_protopnet").set_value(2).run()
    assert any("Window 2" in m.value and "silence" in m.value for m in at.markdown)
    # the chosen window is offered on the Clip page, read at that model's rate
    clip = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT)
    clip.session_state["field_window"] = {"path": str(path), "name": "field.wav", "offset_s": 5.0}
    clip.session_state["shared_source"] = "Field recording"
    clip.run()
    no_exception(clip)
    assert clip.radio(key="clip_source").value == "Field recording"
    assert any("field.wav" in c.value for c in clip.caption)


def test_prototype_overlay_lines_up_with_the_spectrogram_of_the_window():
    from core.models.frontend import FrontendConfig
    from ui.plots import logmel_db, similarity_overlay, spectrogram_figure

    fe = FrontendConfig()
    db = logmel_db(tone(2000, 5.0, fe.sample_rate, amp=0.1), fe)
    spec = spectrogram_figure(db, fe, offset_s=10.0)
    over = similarity_overlay(db, np.random.default_rng(0).random((4, 8)).astype(np.float32), fe, title="p", offset_s=10.0)
    assert over.data[0].x[0] == spec.data[0].x[0] == 10.0 and over.data[0].x[-1] == spec.data[0].x[-1]
    assert list(over.layout.yaxis.ticktext) == list(spec.layout.yaxis.ticktext)
    assert list(over.layout.yaxis.tickvals) == list(spec.layout.yaxis.tickvals)


@pytest.mark.slow
@pytest.mark.parametrize("seconds,starts", [(5.5, None), (8.0, [0.0, 5.0]), (12.0, [0.0, 5.0])])
def test_clip_page_offers_the_windows_the_cli_analyses(seconds, starts):
    from core.io.audio import window_starts

    buf = io.BytesIO()
    sf.write(buf, tone(2500, seconds, 32_000, amp=0.2) + np.float32(0), 32_000, format="WAV")
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "protopnet"
    at.run()
    at.radio(key="clip_source").set_value("Upload").run()
    at.file_uploader(key="clip_upload").set_value(("t.wav", buf.getvalue(), "audio/wav")).run()
    no_exception(at)
    sliders = [s for s in at.select_slider if s.label == "Window start (s)"]
    want = [s / 32_000 for s in window_starts(int(seconds * 32_000), 160_000)]
    if starts is None:
        assert not sliders and want == [0.0]  # a 0.5 s tail is not a window (as in `python -m core analyze`)
    else:
        assert [float(o) for o in sliders[0].options] == starts == want


def test_attack_difference_ignores_changes_in_near_empty_bands():
    from ui.plots import attack_difference_db

    clean = np.full((4, 5), -100.0)
    clean[1] = -10.0  # one loud band, the rest near empty
    adv = clean.copy()
    adv[0] = -60.0  # +40 dB in an empty band, still 50 dB below the loudest cell
    adv[3] = -75.0  # +25 dB but below the 60 dB range: invisible
    adv[1, 2] = -7.0  # +3 dB in the song
    diff = attack_difference_db(clean, adv)
    assert diff[1, 2] == pytest.approx(3.0) and (diff[3] == 0).all() and diff[0, 0] == pytest.approx(10.0)


def test_glossary_page_lists_and_finds_terms():
    from ui.glossary import GLOSSARY

    at = AppTest.from_file(str(ROOT / "pages" / "9_Glossary.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    shown = [m.value for m in at.markdown]
    assert len(shown) == len(GLOSSARY) and any(m.startswith("**eps**") for m in shown)
    at.text_input(key="glossary_query").set_value("prototype").run()
    assert all("prototype" in (m.value + " ".join(c.value for c in at.caption)).lower() for m in at.markdown)
    assert 1 <= len(at.markdown) < len(GLOSSARY)
    at.text_input(key="glossary_query").set_value("zzzz").run()
    assert at.info and "No term matches" in at.info[0].value


def walk_guided_demo(model_name: str | None = None):
    """The Guided demo page clicked through its five steps (with ``model_name`` chosen, else the page's default)."""
    at = AppTest.from_file(str(ROOT / "pages" / "8_Guided_demo.py"), default_timeout=300)
    if model_name:
        at.session_state["demo_model"] = model_name
    at.run()
    no_exception(at)
    assert at.header[0].value == "1. This is a Sedge Warbler" and len(at.header) == 1
    assert any("The model agrees: **Sedge Warbler" in m.value for m in at.markdown)
    for to in (2, 3, 4, 5):
        at.button(key=f"demo_next_{to}").click().run()
        no_exception(at)
        assert len(at.header) == to
    return at


def test_glossary_link_opens_the_glossary_at_its_term():
    from ui.links import glossary_link

    assert glossary_link("AT-O / AT-E", "adversarial training") == "[adversarial training](Glossary?term=AT-O%20/%20AT-E)"
    with pytest.raises(KeyError, match="not a glossary term"):
        glossary_link("no such term")
    at = AppTest.from_file(str(ROOT / "pages" / "9_Glossary.py"), default_timeout=TIMEOUT)
    at.query_params["term"] = "SNR"
    at.run()
    no_exception(at)
    assert at.text_input(key="glossary_query").value == "SNR"
    assert at.markdown[0].value.startswith("**SNR**")  # the linked term first, then the entries that mention it
    assert len(at.markdown) >= 2


@pytest.mark.slow
def test_guided_demo_walks_from_sedge_to_marsh_warbler(data_dir):
    from core.studies.demo import read_demo_record

    at = walk_guided_demo("protopnet")
    snr = float({m.label: m.value for m in at.metric}["Measured SNR of the change"].split()[0])
    assert snr >= read_demo_record().default_snr_db - 0.5  # the default: the recorded change size
    last = at.header[-1].value
    assert last.startswith("5. The model now says")
    if "Marsh Warbler" in last:
        assert at.success and "Marsh Warbler" in at.success[0].value
    else:  # reported honestly, not dressed up
        assert at.warning and "resisted" in at.warning[0].value


@pytest.mark.slow
def test_guided_demo_ends_as_the_home_page_and_readme_say(data_dir):
    """With its default model and change size, the demo ends where assets/home/demo.json (the home page, the README) says."""
    from core.models.registry import load_checkpoint
    from core.studies.demo import RECORD_COMMAND, read_demo_record
    from core.studies.embeddings import model_fingerprint

    record = read_demo_record()
    assert model_fingerprint(load_checkpoint(record.model, device="cpu")) == record.fingerprint, (
        f"{record.model}'s weights changed since the demo was recorded: rerun `{RECORD_COMMAND}` and commit assets/home/")
    at = walk_guided_demo()
    assert at.selectbox(key="demo_model").value == record.model
    assert at.select_slider(key="demo_snr").value == record.default_snr_db
    said = at.header[-1].value
    assert said.startswith("5. The model now says " + {"acrpal": "Marsh Warbler", "acrsch": "Sedge Warbler"}.get(record.outcome.top, "?"))
    assert any("As recorded for the home page and the README" in c.value for c in at.caption)
    assert not at.warning


def test_html_report_is_self_contained_and_carries_settings_audio_and_figures():
    import pandas as pd

    from ui.export import Audio, html_report
    from ui.plots import score_bars

    x = tone(2500, 1.0, 32_000, amp=0.2)
    doc = html_report("Attack on t.wav", [("Settings", [{"model": "protopnet", "eps": "0.001"}]),
                                          ("Listen", [Audio(x, 32_000, "clean"), Audio(x * 0.5, 32_000, "perturbed")]),
                                          ("Scores", [score_bars(["parmaj", "acrsch"], np.array([0.7, 0.2])),
                                                      pd.DataFrame({"species": ["Great Tit"], "clean": [0.7]}), "a <b>note</b>"])])
    assert doc.startswith("<!DOCTYPE html>") and doc.count("<audio controls src='data:audio/wav;base64,") == 2
    assert "<td>eps</td><td>0.001</td>" in doc and "Great Tit" in doc and "a &lt;b&gt;note&lt;/b&gt;" in doc
    assert doc.count("plotly.js v") == 1 and "<script src=" not in doc  # plotly.js embedded once, no script fetched when opened


def test_attack_page_offers_a_report_download():
    at = AppTest.from_file(str(ROOT / "pages" / "2_Attack.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "protopnet"
    at.run()
    _upload_tone(at, "attack")
    at.number_input(key="attack_steps").set_value(2).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    labels = [b.label for b in at.get("download_button")]
    assert "Download a report of this attack (one HTML file)" in labels


@pytest.mark.slow
def test_attack_page_plays_the_attack_through_the_field_and_can_make_it_survive():
    """A targeted attack on the small AudioProtoPNet, then an MP3 and a loudspeaker; with EOT over the loudspeaker."""
    at = _targeted_attack_on_a_tone()
    tops = top_species(at)
    assert tops["Top species"] == "Marsh Warbler (acrpal)"
    assert at.selectbox(key="attack_field_threat").value == "mp3-128"
    assert "Top species (control)" in tops and "Top species (attacked)" in tops
    n_audio = len(at.get("audio"))
    assert n_audio >= 5  # clean, perturbed, perturbation, and both after the transformation
    verdicts = [m.value for m in [*at.success, *at.info, *at.warning]]
    assert any("survives" in v or "does not survive" in v or "transformation alone" in v for v in verdicts)
    at.selectbox(key="attack_field_threat").set_value("playback-10m").run()
    no_exception(at)
    assert set(top_species(at)) >= {"Top species (control)", "Top species (attacked)"}
    # made to survive the loudspeaker at 10 m (EOT): the attack still says Marsh Warbler after it
    at.selectbox(key="attack_eot").set_value("playback-10m").run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    tops = top_species(at)
    assert tops["Top species"] == "Marsh Warbler (acrpal)" and tops["Top species (attacked)"] == "Marsh Warbler (acrpal)"
    assert any("The attack survives" in m.value for m in at.success)


def test_attack_page_offers_the_masking_threshold_as_a_budget():
    at = _attack_page_with_a_tone()
    at.radio(key="attack_budget_kind").set_value("masking").run()
    at.number_input(key="attack_eps").set_value(0.05).run()
    at.number_input(key="attack_steps").set_value(5).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    line = [c.value for c in at.caption if "Above the clip's masking threshold" in c.value]
    assert line, [c.value for c in at.caption]
    above_3db = float(line[0].split("(")[1].split("%")[0])
    assert above_3db < 1.0  # the budget holds: almost nothing pokes out by more than 3 dB
    assert len(at.get("audio")) >= 3


def test_sweep_page_draws_success_with_and_without_a_transformation():
    at = AppTest.from_file(str(ROOT / "pages" / "3_Sweep.py"), default_timeout=TIMEOUT).run()
    at.multiselect(key="sweep_models").set_value(["protopnet"]).run()
    _upload_tone(at, "sweep")
    at.number_input(key="sweep_steps").set_value(2).run()
    at.text_input(key="sweep_grid_eps").set_value("0, 1e-3, 2e-2").run()
    at.multiselect(key="sweep_through").set_value(["mp3-128", "noise-20"]).run()
    at.button(key="sweep_run").click().run()
    finish_job(at, "sweep")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = at.session_state["sweep_result"]["table"]
    assert {"after:mp3-128", "after:noise-20"} <= set(table.columns)
    import json

    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    survival = [t for t in titles if t.startswith("Attack success, digital and after")]
    assert survival, titles
    spec = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "digital and after" in json.loads(c.proto.spec)["layout"]["title"]["text"]][0]
    names = [d["name"] for d in spec["data"]]
    assert "protopnet · digital" in names and any("after saved as MP3 at 128 kbps" in n for n in names)
    assert any("clean point is the control" in c.value for c in at.caption)


def test_published_model_page_explains_a_clip_from_a_stand_in(data_dir, tmp_path, monkeypatch):
    from core.models import published as pub
    from core.models.published_io import save_published
    from tests.test_published import SMALL, _small_protopnet

    at = AppTest.from_file(str(ROOT / "pages" / "10_Published_model.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert any("fetch-model" in i.value for i in at.info)  # nothing fetched: how to get one, no traceback
    folder = save_published(_small_protopnet(), tmp_path / "apn-standin")
    full_size = pub.convnext_base_config
    monkeypatch.setattr(pub, "convnext_base_config", lambda **kw: full_size(**{**SMALL, **kw}))  # the stand-in is small
    at.text_input(key="pub_path").set_value(str(tmp_path / "missing")).run()
    no_exception(at)
    assert any("Cannot load" in e.value and "no model.safetensors" in e.value for e in at.error)
    at.text_input(key="pub_path").set_value(str(folder)).run()
    no_exception(at)
    subheaders = [s.value for s in at.subheader]
    assert len(subheaders) == 3 and all("score" in s for s in subheaders)  # the top 3 classes of the stand-in
    assert any("Fires most at" in c.value for c in at.caption)
