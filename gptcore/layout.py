"""The names of the files a checkpoint folder holds: no torch here, so the tuner's parent process (which never
imports torch) can check and copy checkpoints by the same names gptcore.checkpoint writes."""

WEIGHTS, OPTIMIZER, STATE = "model.safetensors", "optimizer.pt", "state.json"
CONFIG, VOCAB = "config.json", "vocab.json"
CURVE = "curve.csv"  # `gptcore train`'s training curve (gptcore.curve), written beside the checkpoint it trained
# Everything a save writes (optimizer.pt only with an optimizer), and the curve `gptcore train` adds after it. A folder
# holding anything else is not replaced: that would delete a file the program did not write.
CHECKPOINT_FILES = (WEIGHTS, OPTIMIZER, CONFIG, VOCAB, STATE, CURVE)
