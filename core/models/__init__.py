"""Models: every architecture (AudioProtoPNet, the ConvNeXt baseline, BirdNET V2.4 as a white box, BirdNET's trunk,
tuned stage and heads, the published BirdSet models), the log-mel front end, batch scoring and the one registry that
loads a model by name.

Every model is an ``nn.Module`` that takes the raw waveform and offers ``frontend``, ``forward_features``,
``forward_head``, ``forward``, ``forward_all`` and ``embed`` (see :class:`core.models.base.BirdClassifier`); a study
that must change the spectrogram first (the audit's deletions) uses ``features_from_spectrogram``,
``outputs_from_features`` and ``spectrogram_region``, and training uses the parameter groups the models expose,
never a layer. May import :mod:`core.io`,
:mod:`core.errors` and :mod:`core.metrics`; never an attack, a training loop, a study, the API or the CLI.
"""
