"""Plain-language explanations of the terms the dashboard uses; the Glossary page lists them, controls reuse them as help."""

from __future__ import annotations

#: term -> (one-line explanation for tooltips, longer explanation for the Glossary page)
GLOSSARY: dict[str, tuple[str, str]] = {
    "score": (
        "How strongly the model believes the species is in the window, from 0 to 1.",
        "Each model gives every species a number from 0 to 1 for each window. It is not a probability: the small "
        "AudioProtoPNet's scores bunch between 0.3 and 0.7, BirdNET's for a quiet call can be 0.05. That is why each "
        "model has its own detection threshold.",
    ),
    "detection threshold": (
        "The score from which a species counts as detected; chosen per model on held-out recordings.",
        "For each model, the cut-off that gave the best balance of missed and false detections (micro-F1) on the "
        "validation recordings, which the model never trained on. A window with no species at or above it is "
        "\"no bird detected\". You can move it on the Field recording page; a higher threshold gives fewer, surer "
        "detections.",
    ),
    "window": (
        "The stretch of audio the model judges at once: 5 s for the small models, 3 s for BirdNET and its heads.",
        "Recordings are cut into non-overlapping windows; each gets its own scores. A last piece shorter than half "
        "a window is not analysed; one of at least half a window is padded with silence and flagged.",
    ),
    "eps": (
        "The attack budget: the largest change allowed to any single audio sample (full scale = 1).",
        "An attacker may change every sample of the waveform by at most eps. eps = 0.0001 on a clip whose loudness "
        "(RMS) is 0.01 is a change at least 40 dB quieter than the clip: usually inaudible. The pages show the SNR "
        "each eps gives on the clip at hand.",
    ),
    "SNR": (
        "Signal-to-noise ratio of the perturbation, in dB: how much quieter the change is than the clip.",
        "10 log10(power of the clip / power of the change). 20 dB: the change is 100 times weaker in power; 40 dB: "
        "10,000 times; above about 40-50 dB a change is usually inaudible next to birdsong.",
    ),
    "masking threshold": (
        "How loud a change may be, at each moment and pitch, before the clip's own louder sounds stop hiding it.",
        "A loud note hides quieter sounds close to it in pitch and time. The masking threshold (the psychoacoustic "
        "model of MPEG audio coding, as Qin et al. 2019 use it for adversarial audio) says, for every moment and "
        "frequency of a clip, how loud an added sound can be and still be hidden. A change kept under it is "
        "inaudible *by that model*, even at an SNR near 7 dB; it was built for coding noise heard by ordinary "
        "listeners, not for an expert listening for a faint call, and a spectrogram still shows the change.",
    ),
    "expectation over transformation": (
        "Making an attack work after a transformation (MP3, a loudspeaker in a room) by averaging over random versions of it.",
        "Each attack step averages its direction over several random versions of the transformation (other rooms, "
        "distances, noise), so the result still fools the model after the real one. The Attack page's *Make it "
        "survive* runs it; it is slower by the number of versions.",
    ),
    "attack success": (
        "The share of windows where the attack changed the model's top species (or reached its goal).",
        "Untargeted: the top species after the attack differs from before. Targeted (\"make it say X\"): X is now "
        "the top species. No score threshold is involved, so it is comparable between models.",
    ),
    "PGD": (
        "Projected gradient descent: the standard attack, a few small steps each in the most harmful direction.",
        "Each step follows the gradient of the model's loss with respect to the waveform, then clips the change "
        "back to the budget eps. FGSM is a single step; more steps find stronger perturbations.",
    ),
    "worst case": (
        "For each window, the strongest of several attacks: PGD, a transfer attack, APGD and PGD with restarts.",
        "One attack can fail where another succeeds, for example when a model's gradients are uninformative. A "
        "robustness figure is only credible as the worst case over diverse attacks (Croce & Hein 2020).",
    ),
    "prototype": (
        "A learned sound pattern, taken from a real training recording, that the model compares each window with.",
        "AudioProtoPNet decides by similarity: \"this looks like that\". Each species has 10 prototypes, each a patch "
        "of a training spectrogram (the page shows which recording and when). The similarity map shows where in the "
        "window the pattern was found; the species' score adds up the best similarities.",
    ),
    "deletion check": (
        "Does silencing the spot a prototype points at lower the score more than silencing a random spot?",
        "A faithfulness test of an explanation (Samek et al. 2017): if the model really relies on the highlighted "
        "region, deleting it should hurt the score more than deleting a random region of the same size.",
    ),
    "cmAP": (
        "Class-wise mean average precision, 0 to 1: how well the scores rank windows with a species above those without.",
        "For each species, the average precision of ranking all windows by that species' score; then the mean over "
        "species. 1 is a perfect ranking; a random model scores about the species' share of windows.",
    ),
    "top-1": (
        "The share of windows (or recordings) whose highest-scoring species is one of the labelled ones.",
        "A strict, threshold-free accuracy. Recording top-1 uses the maximum score over the recording's windows.",
    ),
    "PRS": (
        "Prediction robustness score (Heinrich et al. 2023): 1 = the attack did not change the predictions.",
        "Computed from the classification loss before and after the attack. It is a ratio of losses, so models "
        "trained with different losses (AudioProtoPNet's asymmetric loss) are not directly comparable; prefer "
        "attack success when comparing models.",
    ),
    "DRS": (
        "Distance robustness score: 1 = the attack did not move the window's internal representation.",
        "Compares the model's feature map before and after the attack (cosine distance). Distrust it when the "
        "embedding is tiny or the attack does not target the embedding.",
    ),
    "TARS": (
        "Targeted attack robustness score: 1 = a targeted attack could not pull the window towards another one.",
        "For embedding-targeted attacks: how far the attacked window's representation stayed from the target "
        "clip's. It summarises the distances, not whether the predicted species changed.",
    ),
    "AT-O / AT-E": (
        "Adversarial training in output space / embedding space: training on attacked windows to resist attacks.",
        "AT-O attacks the species scores during training, AT-E the internal representation. OT+FT is the control: "
        "the same extra training without the attacker, so that any gain can be credited to the attacker alone.",
    ),
    "no bird detected": (
        "No species reaches the model's detection threshold in this window.",
        "Models trained only on windows with birds may still name a species for silence or noise: docs/results.md's "
        "table of \"sounds without birds\" says how often each model does, and the Field recording page warns.",
    ),
    "dBFS": (
        "Level in decibels relative to digital full scale (0 dBFS = the loudest a file can hold).",
        "A quiet night at an AudioMoth sits near -60 dBFS; 16-bit silence near -100 dBFS. Windows below -90 dBFS are "
        "reported as silence whatever a model says.",
    ),
    "certified": (
        "No sound quieter than the stated dB below the window can change the smoothed model's answer.",
        "Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): the smoothed model answers with the species the model "
        "names most often on many copies of the window with faint random noise added. From how often the copies agree "
        "follows the quietest change, in dB below the window, that could alter that answer (\"abstain\" when too few "
        "agree). The higher the figure, the weaker the guarantee. It holds for the smoothed model, not the plain one, "
        "and for a change's total energy, not the per-sample budget eps of the attacks; it is wrong with probability "
        "at most alpha (0.001).",
    ),
    "explanation attack": (
        "A quiet change that keeps the model's answer but changes its explanation; a changed answer is a failure.",
        "The change is made, as for an attack on the answer, within the per-sample budget eps, but it aims at the "
        "explanation instead: another of the species' prototypes becomes the most active, a prototype's best match moves "
        "in time and pitch, or the input evidence (gradient x input) moves into a region you choose (Dombrowski et al. "
        "2019; Hoffmann et al. 2021). If such a change is inaudible, the explanation alone cannot vouch for what the "
        "model heard.",
    ),
}


def help_text(term: str) -> str:
    """The one-line explanation of a term (for ``help=``); KeyError for an unknown term, so typos fail in tests."""
    return GLOSSARY[term][0]
