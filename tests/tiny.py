"""The tiny model that config-file tests write into their TOML: one layer, width 32, four
sequences of 32 tokens a step (a trial of a few steps takes well under a second)."""

TINY_MODEL_TOML = """\
[spec]
depth = 1
head_dim = 16
seq_len = 32
base_width = 32

[hparams]
batch_size = 4
"""
