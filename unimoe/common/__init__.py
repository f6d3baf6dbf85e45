"""The bottom layer every layer may import: audio I/O and resampling, atomic writes, beat/onset and key
estimation, quarantine/failure reason codes; it imports nothing else from unimoe.

As audiocraft's ``data/audio.py`` or lhotse's ``audio/``: helpers the data pipeline, the evaluation
and the model code share, kept out of the model package so that none of them has to reach into
another's layer for them.
"""
