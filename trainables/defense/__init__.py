"""The defense being trained: the networks (encoder, decoder, head, defended model), MID's
losses and meta step, PCL, UniG, the reference recipes, and saving a defended model.

Imports nothing from the other rooms of `trainables` (attacks, setting, scoring)."""
