"""The default model's name, in a module that imports nothing (the CLI's parser reads it without loading torch)."""

#: The one default model of the CLI, the API and the dashboard: the interpretable model with the best recording top-1
#: on the validation split, never chosen on the test split: AudioProtoPNet on BirdNET V2.4's backbone with the bird
#: gate (0.935, against 0.891 for the same head without the gate, 0.870 for its AT-O variant and 0.696 for the small
#: AudioProtoPNet; one seed each). The gate (core.training.open_set) gives it the open-set judgement a 9-class head lacks.
DEFAULT_MODEL = "birdnet_protopnet_gated"
