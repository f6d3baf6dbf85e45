"""The bottom layer every layer may import: audio I/O and resampling (``audio``), atomic writes (``files``),
beat/onset and key estimation (``music``), quarantine/failure reason codes (``reasons``), the validated
config base (``config``: ``ConfigModel``, ``ConfigError``), a row-by-row CSV reader (``tables``) and
surrogate-escaped text repair (``text``); it imports nothing else from unimoe.

As audiocraft's ``data/audio.py`` or lhotse's ``audio/``: helpers the data pipeline, the evaluation
and the model code share, kept out of the model package so that none of them has to reach into
another's layer for them.
"""
