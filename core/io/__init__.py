"""Input and output: audio decoding, datasets and their splits, clip sets, atomic file writes, device choice.

The bottom floor of core: it imports only :mod:`core.errors` and :mod:`core.metrics`, never a model, an attack or a study. Wings import bottom
to top: io; models; attacks; training; field; studies; api and cli (pages and ui
sit above all of core).
"""
