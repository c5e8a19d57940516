"""Field recordings: clip analysis and attack of one waveform, whole-file analysis of long recordings,
detection tables (Raven, BirdNET CSV).

May import io, models, attacks and training (decision thresholds); never a study, the API or the CLI.
"""
