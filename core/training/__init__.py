"""Training: AudioProtoPNet and baseline training, adversarial training (AT-O, AT-E), BirdNET head training and
fine-tuning, calibration of decision thresholds, seed arms, losses and the bird-free noise bank.

May import :mod:`core.io`, :mod:`core.models` and :mod:`core.attacks` (adversarial training uses the attacks);
never a study, the field wing, the API or the CLI.
"""
