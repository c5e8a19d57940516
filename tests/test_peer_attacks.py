"""Peer cross-check of the worst case: the Adversarial Robustness Toolbox's APGD never breaks a window that
``core.worst_case`` calls intact (issue 24, item 1).

ART (``adversarial-robustness-toolbox``, pinned in requirements-dev.txt; Nicolae et al. 2018, arXiv 1807.01069)
implements Croce & Hein 2020's APGD independently. It wants numpy inputs and a multi-class classifier that
returns logits: our models already map ``(batch, n_samples)`` float32 waveforms to ``(batch, n_classes)``
logits, so :class:`_Logits` only hands them over with the parameters frozen (ART's backward would otherwise
compute every weight's gradient too; the input gradient is the same). ``PyTorchClassifier`` gets
``clip_values=(-1, 1)`` (full-scale audio) and ``input_shape=(window_samples,)``; its softmax cross-entropy and
DLR losses then treat the 9 sigmoid logits as the logits of a 9-way decision, and with ``y=None`` ART attacks
the clean top-1, which is what the worst case's success means (the top-1 changed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

EPS = 1e-4  # waveform L-inf, the headline budget
ITERATIONS = 50


class _Logits(torch.nn.Module):
    """The model's logits for ART, with every parameter frozen (only the input gradient is needed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def forward(self, x):
        return self.model(x)


def _windows(data_dir, model, n: int):
    """``n`` test windows, spread over the species, whose clean top-1 is a true label (the rule of the reported rates)."""
    from core.attacks.worstcase import true_top1
    from core.io.clips import dataset_clips
    from core.io.data import open_dataset

    c = model.config
    clips = dataset_clips(open_dataset(data_dir), split="test", class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                          window_samples=c.window_samples, max_clips=3 * n)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.as_tensor(clips.waveforms))).numpy()
    keep = np.flatnonzero(true_top1(scores, clips.labels))[:n]
    return clips.waveforms[keep], clips.labels[keep]


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("baseline_ato", 6), ("birdnet_protopnet_ato", 3)])
def test_art_apgd_breaks_no_window_the_worst_case_calls_intact(data_dir, name, n):
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:  # pragma: no cover
        pytest.fail("the peer check needs the Adversarial Robustness Toolbox: python -m pip install -r requirements-dev.txt")
    import core

    model = core.load_model(name, device="cpu")
    x, labels = _windows(data_dir, model, n)
    classifier = PyTorchClassifier(model=_Logits(model), loss=torch.nn.CrossEntropyLoss(), input_shape=(x.shape[1],),
                                   nb_classes=len(model.config.class_names), clip_values=(-1.0, 1.0), device_type="cpu")
    clean_top1 = classifier.predict(x).argmax(1)
    flipped = np.zeros(len(x), bool)
    for loss_type in ("cross_entropy", "difference_logits_ratio"):
        np.random.seed(0)  # ART draws its random start from numpy's global generator
        apgd = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=ITERATIONS, nb_random_init=1,
                                            batch_size=n, loss_type=loss_type, verbose=False)
        adv = apgd.generate(x)
        assert np.abs(adv - x).max() <= EPS * (1 + 1e-4)
        flipped |= classifier.predict(adv).argmax(1) != clean_top1
    model.requires_grad_(True)
    if not flipped.any():
        return  # nothing for the worst case to match
    wc = core.worst_case(model, torch.as_tensor(x[flipped]), eps=EPS, labels=labels[flipped], strong_steps=20, restarts=2)
    missed = np.flatnonzero(flipped)[~wc.success.numpy()]
    assert not len(missed), f"{name}: ART's APGD flipped windows {missed.tolist()} that core.worst_case left intact"
