"""Codec codes of audio files, cached per (codec key, audio file hash).

The benchmark encodes each item's ground truth with the checkpoint's codec twice over: for the
``codec_resynth`` topline (encode + decode) and for ``token_nll`` (the teacher-forced targets). Both go
through :func:`encode_cached`, so a clip is encoded once per codec, and later runs of the same set and
codec encode nothing. Files: ``<cache>/<codec key[:16]>/<audio sha256>.npy`` (int32 ``[K, T]``), written
atomically.

:func:`codec_key` names a model config's codec without building it (so a run whose resyntheses and codes
are all cached never loads the codec): the weights' SHA-256 (the configured checksum, which loading
verifies, else the weights file's hash) with the codec's shapes; for a random-init codec, whose weights
are a deterministic function of its config, the config with the versions of the packages that draw
them (descript-audio-codec, torch).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from unimoe.common.files import atomic_path


def codec_key(cfg) -> str:
    """A hash naming the codec of the model config ``cfg`` (``UniMoEConfig``): see the module docstring."""
    from importlib.metadata import PackageNotFoundError, version

    c = cfg.codec.to_dict()
    c.pop("weights_path", None)
    spec: dict = {"codec": c, "num_codebooks": cfg.audio.num_codebooks, "codebook_size": cfg.audio.codebook_size}
    if cfg.codec.random_init:
        try:
            dac = version("descript-audio-codec")
        except PackageNotFoundError:
            dac = "unknown"
        spec["random_init"] = {"dac": dac, "torch": torch.__version__}
    elif not cfg.codec.weights_sha256:
        from unimoe.io import resolve_weights, sha256_file

        spec["weights_sha256"] = sha256_file(resolve_weights(cfg.codec.weights_path, sha256=None, what="DAC codec",
                                                             origin="the codec's weights store"))
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def codes_path(cache_dir: str | Path, key: str, audio_sha256: str) -> Path:
    return Path(cache_dir) / key[:16] / f"{audio_sha256}.npy"


def encode_cached(codec, audio: str | Path, audio_sha256: str, cache_dir: str | Path | None,
                  key: str | None = None) -> torch.Tensor:
    """``codec.encode`` of the file ``audio`` (LongTensor ``[K, T]``), read from / written to ``cache_dir``
    under the codec's ``key`` (``codec_key`` of its config; no caching without ``cache_dir`` and ``key``)."""
    from unimoe.common.audio import load_audio

    path = codes_path(cache_dir, key, audio_sha256) if cache_dir is not None and key else None
    if path is not None and path.is_file():
        return torch.from_numpy(np.load(path)).long()
    wav, sr = load_audio(audio)
    codes = codec.encode([wav], sr)[0]
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, codes.numpy().astype(np.int32))
    return codes
