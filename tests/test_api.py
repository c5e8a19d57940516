"""The public Python API (core.api, re-exported from core): every attack option on a tiny model, and a real recording end to end."""

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core
from core import api
from core.attacks import OBJECTIVES
from core.attacks.worstcase import ATTACK_ORDER
from core.errors import AudioLoadError, ParameterError
from tests.conftest import CLASSES, build_model, tiny_config, tone

SR, WIN = 16_000, 16_000  # the tiny models: 16 kHz, 1 s windows
EPS = {"linf": 0.01, "l2": 0.5}


def _tiny(arch="protopnet"):
    torch.manual_seed(0)
    return build_model(tiny_config(arch)).eval()


TINY = _tiny()


def _recording(seconds=2.6, seed=0):
    """A 1-D clip: two full windows and a 0.6-window tail that becomes a zero-padded third window."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(int(seconds * SR), generator=gen) * 2 - 1) * 0.5


#: The options each objective needs on the tiny AudioProtoPNet (3 classes, 2 prototypes each).
OPTIONS = {"output-targeted": {"class_index": 1, "mode": "add"}, "output-targeted-margin": {"class_index": "ccc"},
           "embedding-targeted": {"target_waveform": _recording(1.0, seed=5) * 0.3}, "prototype-suppress": {"k": 2},
           "prototype-activate": {"prototype_index": 3}}


def test_every_objective_is_covered():
    assert set(OBJECTIVES) >= set(OPTIONS) and len(OBJECTIVES) == 9


def _check_attack(method, objective, norm, restarts, with_labels, batch, scale):
    """One public attack call and the properties every result must have."""
    x = _recording(2.6).reshape(-1)[: 2 * WIN].reshape(2, WIN) if batch else _recording(2.6)
    eps = EPS[norm] * scale
    labels = (torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]]) if batch else ["aaa"]) if with_labels else None
    call = dict(method=method, eps=eps, norm=norm, steps=2, objective=objective, restarts=restarts, labels=labels,
                **OPTIONS.get(objective, {}))
    if objective == "prototype-shift" and method in ("fgsm", "bim"):  # no gradient at the clean clip
        with pytest.raises(ParameterError, match="random start"):
            core.attack(TINY, x, **call)
        return
    if restarts > 1 and method in ("fgsm", "bim"):  # deterministic attacks have nothing to restart
        with pytest.raises(ParameterError, match="restarts"):
            core.attack(TINY, x, **call)
        return
    res = core.attack(TINY, x, **call)
    adv = res.adversarial
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= -1.0 and adv.max() <= 1.0
    rows, starts = (range(2), [0, 0]) if batch else ([0, 0, 0], [0, WIN, 2 * WIN])
    assert res.success.shape == (len(starts),) and res.success.dtype == torch.bool
    assert np.allclose(res.starts_s, np.asarray(starts) / SR) and np.allclose(res.eps.numpy(), eps)
    delta = (adv - x).reshape(-1, x.shape[-1])
    for r, s in zip(rows, starts):
        d = delta[r, s : s + WIN]
        size = d.abs().max() if norm == "linf" else d.norm()
        assert size <= eps * (1 + 1e-5) + 1e-6, (r, s, float(size), eps)
    assert delta.abs().sum() > 0  # the attack did move the clip
    assert torch.isfinite(res.snr_db).all() and res.snr_db.shape == ((2,) if batch else ())
    assert res.clean_scores.shape == res.adversarial_scores.shape == (len(starts), len(CLASSES))


@pytest.mark.slow
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["fgsm", "bim", "pgd", "apgd"]), objective=st.sampled_from(sorted(OBJECTIVES)),
       norm=st.sampled_from(["linf", "l2"]), restarts=st.sampled_from([1, 2]), with_labels=st.booleans(),
       batch=st.booleans(), scale=st.floats(0.1, 1.0))
def test_attack_property(method, objective, norm, restarts, with_labels, batch, scale):
    """A sample of the option space (fast tier); :func:`test_attack_every_combination` runs all of it."""
    _check_attack(method, objective, norm, restarts, with_labels, batch, scale)


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("method", ["fgsm", "bim", "pgd", "apgd"])
def test_attack_every_combination(method, objective):
    for i, (norm, restarts, with_labels) in enumerate((n, r, lab) for n in ("linf", "l2") for r in (1, 2) for lab in (False, True)):
        _check_attack(method, objective, norm, restarts, with_labels, batch=bool(i % 2), scale=1.0)


@pytest.mark.slow
def test_attack_keeps_padding_and_tail_untouched():
    x = _recording(1.6)  # windows at 0 and 1 s; the 0.6 s tail is a zero-padded window
    res = core.attack(TINY, x, eps=0.05, steps=2)
    assert res.adversarial.shape == x.shape and (res.adversarial - x).abs().amax() <= 0.05 + 1e-6
    short = _recording(1.2)  # the 0.2 s tail is shorter than half a window: no window holds it, so it is never changed
    res = core.attack(TINY, short, eps=0.05, steps=2)
    assert torch.equal(res.adversarial[WIN:], short[WIN:]) and not torch.equal(res.adversarial[:WIN], short[:WIN])


@pytest.mark.slow
def test_attack_restarts_with_labels_never_worse():
    """The issue's bug through the public call: restarts with true labels used to raise KeyError 'clean_top1'."""
    x = _recording(2.0)
    one = core.attack(TINY, x, eps=0.003, steps=2, labels=["bbb"])
    two = core.attack(TINY, x, eps=0.003, steps=2, restarts=3, labels=["bbb"])
    assert (two.success.int() >= one.success.int()).all()


def test_attack_options_and_errors():
    x = _recording(1.0)
    with pytest.raises(ParameterError, match="attack must be one of"):
        core.attack(TINY, x, method="cw", eps=0.01)
    with pytest.raises(ParameterError, match="objective must be one of"):
        core.attack(TINY, x, eps=0.01, objective="nope")
    with pytest.raises(ParameterError, match="exactly one budget"):
        core.attack(TINY, x)
    with pytest.raises(ParameterError, match="class_index"):
        core.attack(TINY, x, eps=0.01, objective="output-targeted-margin", class_index="zzz")
    with pytest.raises(ParameterError, match="objective 'output-untargeted'"):
        core.attack(TINY, x, eps=0.01, class_index=1)  # output-untargeted takes no class
    with pytest.raises(ParameterError, match="labels must be class names"):
        core.attack(TINY, x, eps=0.01, labels=["zzz"])
    for call in (core.attack, core.predict, core.explain):  # every public call refuses samples beyond full scale
        with pytest.raises(ParameterError, match=r"must lie in \[-1, 1\]"):
            call(TINY, x * 3, **({"eps": 0.01} if call is core.attack else {"min_conf": 0.5} if call is core.predict else {}))
    with pytest.raises(ParameterError, match="must be a float array or tensor, got str"):
        core.explain(TINY, "clip.wav")
    with pytest.raises(ParameterError, match="at most one window"):
        core.attack(TINY, _recording(2.0).reshape(1, -1), eps=0.01)
    with pytest.raises(ParameterError, match="prototype objectives need a prototype model"):
        core.attack(_tiny("baseline"), x, eps=0.01, objective="prototype-suppress")
    snr = core.attack(TINY, x, snr_db=30.0, steps=2)  # an SNR budget: the perturbation is at least 30 dB below the clip
    assert float(snr.snr_db) >= 30.0 - 1e-3
    from core.attacks.threats import AmbientNoise

    eot = core.attack(TINY, x, eps=0.01, steps=2, eot=AmbientNoise(snr_db=20.0), eot_samples=2)
    assert eot.settings["objective"]["name"] == "eot" and (eot.adversarial - x).abs().amax() <= 0.01 + 1e-6
    masked = core.attack(TINY, x, eps=0.05, steps=2, masking=True)
    # the budget is the masking threshold (eps only caps the search): 99 % of the cells stay under it
    from core.attacks.psychoacoustic import masking_excess, masking_threshold

    assert masked.settings["attack"] == "masked-pgd" and not torch.equal(masked.adversarial, x)
    assert masking_excess(masked.adversarial - x, masking_threshold(x.numpy(), SR))["p99_excess_db"][0] < 1.0
    with pytest.raises(ParameterError, match="masking needs"):
        core.attack(TINY, x, eps=0.05, norm="l2", masking=True)


def test_worst_case_per_window():
    x = _recording(3.0) * 0.3
    zero = core.worst_case(TINY, x, eps=0.0, strong_steps=2)
    assert torch.equal(zero.adversarial, x) and not zero.success.any()
    res = core.worst_case(TINY, x, eps=0.05, steps=2, strong_steps=3, labels=["aaa"], source=_tiny("baseline"))
    assert res.success.shape == (3,) and res.success.dtype == torch.bool and len(res.attack) == 3
    assert set(res.attack) <= set(ATTACK_ORDER) and (res.adversarial - x).abs().amax() <= 0.05 + 1e-6
    # a window succeeds exactly when its top-1 changed; a broken window names the attack that broke it
    changed = res.adversarial_scores.argmax(-1) != res.clean_scores.argmax(-1)
    assert np.array_equal(res.success.numpy(), changed)
    assert len({a for a, s in zip(res.attack, res.success) if not s}) <= 1  # an intact window keeps the last leg's result
    # success is also reported over the windows whose clean top-1 is a true label ("aaa") only
    is_true = res.clean_scores.argmax(-1) == 0
    assert np.array_equal(res.true_top1, is_true) and res.summary["n_counted"] == is_true.sum()
    assert res.summary["n_success"] == (res.success.numpy() & is_true).sum() and res.summary["n_excluded"] == 3 - is_true.sum()
    with pytest.raises(ParameterError, match="eps"):
        core.worst_case(TINY, x, eps=2.0)


def test_explain_maps_and_axes():
    x = _recording(2.0)
    ex = core.explain(TINY, x)
    fe = TINY.config.frontend
    n_protos = len(CLASSES) * TINY.config.prototypes_per_class
    assert ex.scores.shape == (2, 3) and np.allclose(ex.starts_s, [0.0, 1.0])
    assert ex.spectrogram_db.shape[:2] == (2, fe.n_mels) and ex.frequency_hz.shape == (fe.n_mels,)
    assert fe.f_min < ex.frequency_hz[0] < ex.frequency_hz[-1] < fe.f_max and np.all(np.diff(ex.frequency_hz) > 0)
    assert ex.time_s[0] == 0.0 and np.isclose(ex.time_s[1], fe.hop_length / fe.sample_rate)
    assert ex.similarity_maps.shape[:2] == (2, n_protos)
    assert ex.map_frequency_hz.shape == (ex.similarity_maps.shape[2],) and ex.map_time_s.shape == (ex.similarity_maps.shape[3],)
    assert ex.frequency_hz[0] <= ex.map_frequency_hz[0] < ex.map_frequency_hz[-1] <= ex.frequency_hz[-1]
    with torch.no_grad():
        out = TINY.forward_all(x.reshape(2, WIN))
    assert np.allclose(ex.similarity_maps, out.similarity_maps.numpy(), atol=1e-5)  # the model's own maps
    assert np.allclose(ex.prototype_activations, ex.similarity_maps.max(axis=(2, 3)), atol=1e-6)
    assert np.allclose(ex.scores, torch.sigmoid(out.logits).numpy(), atol=1e-5)
    up = ex.similarity_on_spectrogram(1, 3)
    assert up.shape == ex.spectrogram_db.shape[1:] and np.isclose(up.max(), ex.similarity_maps[1, 3].max(), atol=0.05)
    ranked = ex.prototypes(0, 2)
    assert list(ranked["prototype"]) == sorted(ranked["prototype"], key=lambda j: -ex.prototype_activations[0, j] * ex.class_connection[2, j])
    assert set(ranked["prototype"]) == {4, 5}
    batch = core.explain(TINY, x.reshape(2, WIN))  # a batch of windows explains as the recording's windows
    assert np.allclose(batch.similarity_maps, ex.similarity_maps, atol=1e-6)
    plain = core.explain(_tiny("baseline"), x)
    assert plain.similarity_maps is None and plain.scores.shape == (2, 3)
    with pytest.raises(ParameterError, match="no prototypes"):
        plain.similarity_on_spectrogram(0, 0)


def test_predict_format_threshold_and_silence():
    x = torch.as_tensor(tone(2000.0, 2.0, SR))
    with pytest.raises(ParameterError, match="min_conf"):
        core.predict(TINY, x)  # a model built in the test has no stored threshold
    with pytest.raises(ParameterError, match="min_conf"):
        core.predict(TINY, x, min_conf=1.5)
    dets = core.predict(TINY, x, min_conf=0.01)
    scores = core.explain(TINY, x).scores
    assert len(dets) == int((scores >= 0.01).sum())
    for d in dets:
        assert set(d) == {"start_time", "end_time", "scientific_name", "common_name", "label", "confidence", "ebird_code"}
        assert d["ebird_code"] is None  # the tiny model's classes are no species BirdNET knows
        assert d["label"] == f"{d['scientific_name']}_{d['common_name']}" and d["end_time"] - d["start_time"] == 1.0
        w, c = int(d["start_time"]), CLASSES.index(d["scientific_name"])
        assert np.isclose(d["confidence"], scores[w, c], atol=1e-6)
    assert [d["start_time"] for d in dets] == sorted(d["start_time"] for d in dets)
    assert core.predict(TINY, torch.zeros(2 * SR), min_conf=0.01) == []  # silence never detects a bird
    with pytest.raises(ParameterError, match=r"\(n_samples,\)"):
        core.predict(TINY, x.reshape(2, -1), min_conf=0.5)
    with pytest.raises(ParameterError, match=r"0.40 s long; predict needs at least 0.5 s"):
        core.predict(TINY, x[: int(0.4 * SR)], min_conf=0.5)  # refused, never padded silently into a window
    assert isinstance(core.predict(TINY, x[: SR // 2], min_conf=0.5), list)  # 0.5 s is enough


def test_predict_sensitivity_and_bad_settings():
    """sensitivity shifts every logit by 10 (s - 1) before the sigmoid; bad settings fail before any scoring."""
    x = torch.as_tensor(tone(2000.0, 2.0, SR)) + _recording(2.0, seed=3) * 0.1
    with torch.no_grad():
        logits = TINY(x.reshape(2, WIN))
    by_s = {}
    for s in (0.5, 1.0, 1.5):
        dets = core.predict(TINY, x, min_conf=0.5, sensitivity=s)
        want = torch.sigmoid((logits + 10 * (s - 1)).clamp(-20, 20))
        assert len(dets) == int((want >= 0.5).sum())
        assert all(np.isclose(d["confidence"], want[int(d["start_time"]), CLASSES.index(d["scientific_name"])], atol=1e-6) for d in dets)
        by_s[s] = {(d["start_time"], d["scientific_name"]) for d in dets}
    assert by_s[0.5] <= by_s[1.0] <= by_s[1.5] and len(by_s[0.5]) < len(by_s[1.5])
    for kw, needle in [({"sensitivity": 1.6}, "sensitivity must lie in"), ({"sensitivity": 0.4}, "sensitivity"),
                       ({"locale": "xx"}, "locale must be one of en, "), ({"lat": 91.0, "lon": 0.0}, "lat must lie in"),
                       ({"lat": 50.0, "lon": 8.0, "week": 0}, "week must be"), ({"lon": 8.0}, "both lat and lon"),
                       ({"min_conf": 0.0}, "min_conf")]:
        with pytest.raises(ParameterError, match=needle):
            core.predict(TINY, x, **{"min_conf": 0.5, **kw})
        with pytest.raises(ParameterError, match=needle):
            core.analyze("never-read.wav", model=TINY, **{"min_conf": 0.5, **kw})  # checked before the file is opened


def test_load_model_and_audio(tmp_path):
    assert core.DEFAULT_MODEL == "birdnet_protopnet_gated" and core.load_model is api.load_model
    from core.models.birdnet import birdnet_available

    assert core.DEFAULT_MODEL in api.model_names() and ("birdnet-all" in api.model_names()) == birdnet_available()
    with pytest.raises(ParameterError, match="protopnet"):
        core.load_model("no_such_model")
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone(1000.0, 1.5, 44_100, amp=0.99)] * 2, axis=1), 44_100)
    w = core.load_audio(path, 16_000)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.shape == (24_000,)
    assert w.abs().max() <= 1.0
    with pytest.raises(AudioLoadError):
        core.load_audio(tmp_path / "missing.wav", 16_000)
    with pytest.raises(ParameterError, match="sample_rate"):
        core.load_audio(path, 0)


@pytest.mark.slow
def test_real_recording_end_to_end(data_dir):
    """load_audio -> predict -> attack -> explain -> analyze on a recording of the dataset, with the shipped protopnet."""
    from core.io.names import common_name, ebird_code
    from core.models.birdnet import dataset_species

    path = sorted((data_dir / "audio" / "parmaj").glob("*.flac"))[0]
    model = core.load_model("protopnet", device="cpu")
    sr = model.config.frontend.sample_rate
    x = core.load_audio(path, sr)
    codes = {r["scientific_name"]: r["species_code"] for r in dataset_species()}
    dets = core.predict(model, x)
    ex = core.explain(model, x)
    threshold = model.card["decision_threshold"]["value"]
    assert len(dets) == int((ex.scores >= threshold).sum()) >= 1  # every score at or above the card's threshold, and some are
    assert all(np.isclose(d["confidence"], ex.scores[int(d["start_time"] // 5), model.config.class_names.index(c)])
               for d, c in zip(dets, [codes[d["scientific_name"]] for d in dets]))
    names = {d["scientific_name"]: d["common_name"] for d in dets}
    assert all(common_name(n, "en") == c for n, c in names.items())  # BirdNET-Analyzer's English names, as --locale en
    assert all(d["ebird_code"] == ebird_code(d["scientific_name"]) for d in dets)
    table = core.analyze(path, model=model)
    assert table.attrs["threshold"] == threshold and list(table.columns)[:3] == ["start_s", "end_s", "species_code"]
    assert set(table["scientific_name"]) == set(names)  # streamed decoding gives the same detections
    res = core.attack(model, x, eps=1e-3, steps=2)
    assert res.adversarial.shape == x.shape and (res.adversarial - x).abs().amax() <= 1e-3 + 1e-6
    assert torch.isfinite(res.snr_db) and res.success.shape == (len(ex.scores),)
    assert ex.similarity_maps.shape[1] == model.n_prototypes and ex.frequency_hz[-1] < model.config.frontend.f_max


@pytest.mark.slow
@pytest.mark.parametrize("name", ["birdnet", "birdnet-all", core.DEFAULT_MODEL])
def test_birdnet_models_predict(data_dir, name):
    path = sorted((data_dir / "audio" / "parmaj").glob("*.flac"))[0]
    model = core.load_model(name, device="cpu")
    x = core.load_audio(path, model.config.frontend.sample_rate)
    dets = core.predict(model, x)
    threshold, source = api.decision_threshold(model)
    table = core.analyze(path, model=model)
    assert table.attrs["model"] == name and table.attrs["threshold"] == threshold
    assert [(d["start_time"], d["scientific_name"]) for d in dets] == list(zip(table["start_s"], table["scientific_name"]))
    assert all(d["confidence"] >= threshold for d in dets) and len(dets) >= 1
    if name == "birdnet-all":  # no validation threshold over 6,522 classes: birdnetlib's default
        assert threshold == api.BIRDNETLIB_MIN_CONF and all("_" not in d["scientific_name"] for d in dets)
    else:
        assert source.startswith("validation threshold") and "Parus major" in {d["scientific_name"] for d in dets}


def test_explain_works_on_the_published_models_own_htk_front_end():
    """A published BirdSet model (tiny stand-in) is explained on its own HTK log-mel, with HTK band centres."""
    import librosa

    from core.models.published import CONVNEXT_FRONTEND, PublishedConfig, PublishedConvNeXt, convnext_base_config

    torch.manual_seed(0)
    model = PublishedConvNeXt(PublishedConfig("published-convnext", ("a", "b"), 0, CONVNEXT_FRONTEND),
                              convnext_base_config(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64])).eval()
    x = torch.randn(32_000 * 5, generator=torch.Generator().manual_seed(1)) * 0.1
    exp = core.explain(model, x)
    fe = CONVNEXT_FRONTEND
    with torch.no_grad():
        assert np.allclose(exp.spectrogram_db[0], model.frontend.db(x[None])[0].numpy(), atol=1e-5)
        assert np.allclose(exp.scores[0], torch.sigmoid(model(x[None]))[0].numpy(), atol=1e-5)
    htk = librosa.mel_frequencies(n_mels=fe.n_mels + 2, fmin=fe.f_min, fmax=fe.f_max, htk=True)[1:-1]
    assert np.allclose(exp.frequency_hz, htk) and exp.similarity_maps is None
    with pytest.raises(ParameterError, match="no prototypes"):
        exp.prototypes(0, 0)


def test_explanation_refuses_indices_out_of_range():
    exp = core.explain(TINY, torch.as_tensor(_recording(2.0)))
    assert exp.prototypes(0, 0)["contribution"].is_monotonic_decreasing
    with pytest.raises(ParameterError, match="class_index in"):
        exp.prototypes(0, 99)
    with pytest.raises(ParameterError, match="window must be in"):
        exp.prototypes(5, 0)


def test_a_model_name_where_a_loaded_model_is_wanted_says_how_to_load_it():
    """core.certify("birdnet", ...) and the others refuse a name with the call that loads it, never an AttributeError."""
    x = _recording()
    calls = {"core.predict": lambda m: core.predict(m, x), "core.attack": lambda m: core.attack(m, x, eps=1e-3, steps=1),
             "core.worst_case": lambda m: core.worst_case(m, x[None, :WIN], eps=1e-3), "core.explain": lambda m: core.explain(m, x),
             "core.certify": lambda m: core.certify(m, x, n=10)}
    for what, call in calls.items():
        with pytest.raises(ParameterError, match=rf"{what} wants a loaded model, got the name 'birdnet'.*core.load_model\('birdnet'\)"):
            call("birdnet")
        with pytest.raises(ParameterError, match=rf"{what} wants a loaded model .*got int"):
            call(3)
    assert core.predict(TINY, x, min_conf=0.5) is not None  # a loaded model passes the guard
