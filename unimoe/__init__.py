"""UniMoE-Audio: the model library (model, codec, tokenizer, generation, training); shared audio and
I/O helpers are in :mod:`unimoe.common`."""
