"""Input-space attribution (core.field.attribution): the Hz x s grid, occlusion, gradient x input, shares in a range."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ParameterError
from core.field.attribution import (
    InputAxes,
    attribution_grid,
    frequency_quantiles,
    grad_x_input,
    input_axes,
    occlusion,
    share_inside,
)
from core.models.base import BirdClassifier
from core.models.frontend import FrontendConfig, LogMel

FE = FrontendConfig(sample_rate=16_000, n_fft=512, hop_length=256, n_mels=48, f_min=50.0, f_max=8_000.0)


class LinearOnSpectrogram(BirdClassifier):
    """logit_0 = sum(weight * spectrogram), logit_1 = -logit_0: an energy detector, linear in its input spectrogram."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = SimpleNamespace(class_names=("up", "down"), clip_seconds=1.0, frontend=FE, arch="test-linear")
        self.frontend = LogMel(FE)
        n_frames = FE.n_frames(FE.sample_rate)
        self.weight = nn.Parameter(torch.ones(1, FE.n_mels, n_frames) if weight is None else weight)

    def features_from_spectrogram(self, spectrogram):
        return spectrogram

    def forward_head(self, features, pre_logits=False):
        a = (features * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([a, -a], dim=1)


def burst(freq_hz: float, t0: float, t1: float, *, seed: int = 0) -> np.ndarray:
    """1 s of weak noise at 16 kHz with a Hann-shaped tone burst from t0 to t1 [s]."""
    rng = np.random.default_rng(seed)
    t = np.arange(FE.sample_rate) / FE.sample_rate
    envelope = np.where((t >= t0) & (t < t1), np.sin(np.pi * (t - t0) / (t1 - t0)) ** 2, 0.0)
    return (0.3 * np.sin(2 * np.pi * freq_hz * t) * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_grid_puts_every_row_in_the_band_that_holds_its_frequency_on_one_axis_for_two_channels():
    # two channels as BirdNET's: 0-3 kHz and 0.5-15 kHz, rows highest first, frames of different hops
    low, high = np.linspace(3000, 20, 96), np.geomspace(15000, 500, 96)
    axes = InputAxes(row_hz=(low, high), frame_s=(np.arange(511) * 278 / 48000 + 1024 / 48000, np.arange(511) * 280 / 48000 + 512 / 48000),
                     window_s=3.0)
    g = attribution_grid(axes, bands_per_octave=3, cell_s=0.25)
    e = g.frequency_edges_hz
    assert e[0] == 0 and np.all(np.diff(e) > 0) and g.shape == (len(e) - 1, 12)
    for hz, cell in zip(axes.row_hz, g.row_cell):
        assert np.all((e[cell] <= hz) & (hz < e[cell + 1]))  # each row lies inside its band
    ratios = e[2:-1][1:] / e[2:-1][:-1]  # inner bands are third-octaves
    assert np.allclose(ratios[ratios < 1.27], 2 ** (1 / 3), rtol=1e-9)
    # a band between 0.5 and 3 kHz holds rows of both channels: it is occluded (and summed) in both at once
    band_1k = int(np.searchsorted(e, 1000.0, side="right") - 1)
    assert (g.row_cell[0] == band_1k).any() and (g.row_cell[1] == band_1k).any()
    assert not (g.row_cell[0] == len(e) - 2).any()  # the top band holds no row of the 0-3 kHz channel
    assert all(np.bincount(np.concatenate(g.row_cell), minlength=g.shape[0]) > 0)  # no empty band
    assert np.allclose(g.time_edges_s, np.arange(13) * 0.25)
    strips = attribution_grid(axes, bands_per_octave=1, cell_s=None)
    assert strips.shape[1] == 1 and strips.shape[0] < g.shape[0]


@pytest.mark.parametrize("kw", [dict(bands_per_octave=0), dict(bands_per_octave=2.5), dict(cell_s=0.0), dict(f_low_hz=-1.0)])
def test_grid_refuses_bad_settings(kw):
    axes = InputAxes(row_hz=(np.linspace(100, 8000, 32),), frame_s=(np.linspace(0, 1, 60),), window_s=1.0)
    with pytest.raises(ParameterError):
        attribution_grid(axes, **kw)


def test_share_inside_a_range():
    edges = np.array([0.0, 1000.0, 2000.0, 4000.0, 8000.0])
    only_inside = np.zeros((2, 4, 3))
    only_inside[:, 1:3] = np.random.default_rng(0).random((2, 2, 3))
    only_inside[:, 0] = -5.0  # negative attribution outside does not count
    assert np.allclose(share_inside(only_inside, edges, [(1000.0, 4000.0)]), 1.0)
    even = np.ones((4, 2))
    assert share_inside(even, edges, [(1000.0, 3000.0)]) == pytest.approx((1 + 0.5) / 4)  # half of the 2-4 kHz band
    assert share_inside(even, edges, [(1000.0, 2500.0), (1500.0, 3000.0)]) == pytest.approx(1.5 / 4)  # overlap counts once
    assert np.isnan(share_inside(-even, edges, [(0.0, 8000.0)]))  # nothing positive
    assert share_inside(np.array([0.0, 1.0, 3.0, 0.0]), edges, [(2000.0, 4000.0)], profile=True) == pytest.approx(0.75)
    with pytest.raises(ParameterError, match="low < high"):
        share_inside(even, edges, [(3000.0, 1000.0)])
    with pytest.raises(ParameterError, match="frequency cells"):
        share_inside(np.ones((3, 2)), edges, [(0.0, 1.0)])
    assert frequency_quantiles(np.array([0.0, 1.0, 1.0, 0.0]), edges, [0.0, 0.5, 1.0]) == pytest.approx([1000.0, 2000.0, 4000.0])


def test_occlusion_equals_grad_x_input_on_a_linear_model_and_both_sum_to_the_difference_from_the_baseline():
    torch.manual_seed(0)
    model = LinearOnSpectrogram(torch.randn(1, FE.n_mels, FE.n_frames(FE.sample_rate))).eval()
    x = burst(2000.0, 0.3, 0.55)
    occ = occlusion(model, x, bands_per_octave=3, cell_s=0.25, batch_size=7)
    gxi = grad_x_input(model, x, bands_per_octave=3, cell_s=0.25)
    with torch.no_grad():
        truth = model(torch.as_tensor(x)[None])[0].numpy()
    assert np.allclose(occ.clean, truth, atol=1e-4) and np.allclose(gxi.clean, truth, atol=1e-4)  # through model(x)
    assert occ.values.shape == gxi.values.shape == (2, *occ.values.shape[1:]) and occ.values.shape[2] == 4
    scale = np.abs(occ.values).max()
    assert np.allclose(occ.values, gxi.values, atol=1e-4 * scale)  # linear: the drop of a cell is its gradient x input
    assert np.allclose(gxi.values.sum(axis=(1, 2)), gxi.clean - gxi.at_baseline, atol=1e-3 * scale)  # completeness
    assert np.allclose(occ.values[1], -occ.values[0], atol=1e-4 * scale)  # logit 1 = -logit 0: signs follow the weight


@pytest.mark.parametrize("freq_hz,t0", [(1000.0, 0.3), (4000.0, 0.6)])
def test_occlusion_finds_the_cell_that_holds_a_tone(freq_hz, t0):
    model = LinearOnSpectrogram().eval()  # logit 0 = the spectrogram's total level above each band's median
    occ = occlusion(model, burst(freq_hz, t0, t0 + 0.2), bands_per_octave=3, cell_s=0.25)
    i, j = np.unravel_index(np.argmax(occ.values[0]), occ.values.shape[1:])
    assert occ.frequency_edges_hz[i] <= freq_hz < occ.frequency_edges_hz[i + 1]
    assert occ.time_edges_s[j] <= t0 + 0.1 < occ.time_edges_s[j + 1]
    assert occ.share_inside([(freq_hz / 1.5, freq_hz * 1.5)])[0] > 0.8  # most evidence lies around the tone
    gxi = grad_x_input(model, burst(freq_hz, t0, t0 + 0.2), indices=[0])
    assert gxi.share_inside([(freq_hz / 1.5, freq_hz * 1.5)])[0] > 0.8


def test_attribution_of_a_prototype_model_goes_through_its_own_path(tiny_proto):
    x = burst(1500.0, 0.2, 0.5)  # 1 s at 16 kHz: the tiny model's window
    with torch.no_grad():
        out = tiny_proto.forward_all(torch.as_tensor(x)[None])
    tiny_proto.train()
    occ = occlusion(tiny_proto, x, target="prototype", indices=[1, 4], cell_s=0.5)
    assert np.allclose(occ.clean, out.prototype_activations[0, [1, 4]].numpy(), atol=1e-5)
    assert occ.names == (tiny_proto.class_names[0], tiny_proto.class_names[2])
    logits = occlusion(tiny_proto, x, cell_s=0.5)
    assert np.allclose(logits.clean, out.logits[0].numpy(), atol=1e-5) and np.isfinite(logits.values).all()
    g = grad_x_input(tiny_proto, x, target="prototype", indices=[0, 1, 2], batch_size=2)
    assert np.allclose(g.clean, out.prototype_activations[0, :3].numpy(), atol=1e-5) and np.isfinite(g.values).all()
    assert tiny_proto.training  # the mode is restored
    tiny_proto.eval()


def test_attribution_refuses_bad_input(tiny_model):
    x = np.zeros(tiny_model.config.window_samples, np.float32)
    with pytest.raises(ParameterError, match="one float window"):
        occlusion(tiny_model, np.zeros((2, len(x)), np.float32))
    with pytest.raises(ParameterError, match="non-finite"):
        occlusion(tiny_model, np.full_like(x, np.nan))
    with pytest.raises(ParameterError, match="target"):
        occlusion(tiny_model, x, target="score")
    with pytest.raises(ParameterError, match="baseline"):
        grad_x_input(tiny_model, x, baseline="mean")
    with pytest.raises(ParameterError, match="indices"):
        grad_x_input(tiny_model, x, indices=[3])
    with pytest.raises(ParameterError, match="batch_size"):
        occlusion(tiny_model, x, batch_size=0)
    if tiny_model.config.arch == "baseline":
        with pytest.raises(ParameterError, match="prototype model"):
            occlusion(tiny_model, x, target="prototype")


def test_input_axes_of_a_log_mel_model(tiny_model):
    fe = tiny_model.frontend.config
    axes = input_axes(tiny_model, fe.sample_rate, fe.n_frames(fe.sample_rate))
    assert len(axes.row_hz) == 1 and axes.row_hz[0][0] > fe.f_min and axes.row_hz[0][-1] < fe.f_max
    assert np.all(np.diff(axes.row_hz[0]) > 0) and axes.frame_s[0][1] == pytest.approx(fe.hop_length / fe.sample_rate)


@pytest.mark.slow
def test_shipped_model_attribution_of_a_real_window_is_finite_and_starts_from_model_x(data_dir):
    import core
    from core.io.data import build_windows, open_dataset

    model = core.load_model("birdnet_protopnet")
    ds = open_dataset(data_dir)
    rec = next(r for r in ds.split("test") if "parmaj" in r.labels)
    w = build_windows(ds, [rec], sample_rate=model.sample_rate, window_s=model.clip_seconds, class_names=model.class_names)
    x = w.waveforms[0]
    with torch.no_grad():
        truth = model(torch.as_tensor(x)[None])[0].numpy()
    occ = occlusion(model, x, bands_per_octave=1, cell_s=None)
    assert np.allclose(occ.clean, truth, atol=1e-4) and np.isfinite(occ.values).all()
    # BirdNET's two channels on one Hz axis: the octave bands inside 0.5-3 kHz hold rows of both channels
    axes = input_axes(model, len(x), 511)
    grid = attribution_grid(axes, bands_per_octave=1, cell_s=None)
    both = set(grid.row_cell[0].tolist()) & set(grid.row_cell[1].tolist())
    assert any(500 <= grid.frequency_edges_hz[i] and grid.frequency_edges_hz[i + 1] <= 3000 for i in both)
    assert np.array_equal(occ.frequency_edges_hz, grid.frequency_edges_hz)
    parmaj = model.class_names.index("parmaj")
    g = grad_x_input(model, x, indices=[parmaj], bands_per_octave=1, cell_s=None)
    assert np.allclose(g.clean, truth[parmaj], atol=1e-4) and np.isfinite(g.values).all()


def test_explain_attributes_each_windows_top_class_or_the_named_ones(tiny_proto):
    from core.field.explanation import explain

    x = np.concatenate([burst(1000.0, 0.2, 0.5), burst(3000.0, 0.4, 0.7, seed=1)])  # two 1 s windows
    e = explain(tiny_proto, x, attribution="occlusion", cell_s=0.5)
    assert len(e.attribution) == len(e.scores) == 2
    for i, amap in enumerate(e.attribution):
        assert amap.method == "occlusion" and list(amap.indices) == [int(np.argmax(e.scores[i]))]
        assert 1 / (1 + np.exp(-amap.clean[0])) == pytest.approx(e.scores[i].max(), abs=1e-4)  # the logit of the shown score
    named = explain(tiny_proto, x, attribution="grad_x_input", classes=["ccc", 0])
    assert all(a.names == ("ccc", "aaa") for a in named.attribution)
    assert explain(tiny_proto, x).attribution is None  # not computed unless asked
    with pytest.raises(ParameterError, match="attribution must be"):
        explain(tiny_proto, x, attribution="lime")
    with pytest.raises(ParameterError, match="unknown class"):
        explain(tiny_proto, x, attribution="occlusion", classes="zzz")


@pytest.mark.slow
def test_clip_page_computes_the_attribution_only_when_asked(data_dir):
    import base64
    import json
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "1_Clip.py"), default_timeout=600).run()
    at.multiselect(key="clip_species").set_value(["parmaj"]).run()
    assert not at.exception and not at.error

    def titles():
        return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]

    assert not any(t.startswith(("Occlusion", "Gradient")) for t in titles())  # the first visit pays nothing
    at.button(key="clip_attr_run").click().run()
    assert not at.exception and not at.error
    got = [t for t in titles() if t.startswith(("Occlusion", "Gradient"))]
    assert len(got) == 2 and all("Great Tit" in t for t in got)  # the clip's top class by default
    heat = [tr for c in at.get("plotly_chart") for tr in json.loads(c.proto.spec)["data"] if tr.get("type") == "heatmap"
            and tr.get("colorbar", {}).get("title", {}).get("text") == "Δ logit"]
    z = heat[0]["z"]  # plotly sends numpy arrays as base64 typed arrays
    z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]) if isinstance(z, dict) else np.asarray(z, float)
    assert len(heat) == 2 and z.size >= 8 and np.isfinite(z).all() and np.abs(z).max() > 0
    captions = " ".join(c.value for c in at.caption)
    assert "Zeiler & Fergus 2014" in captions and "Shrikumar et al. 2016" in captions
    assert any("sourced range of Great Tit" in m.value for m in at.markdown)
