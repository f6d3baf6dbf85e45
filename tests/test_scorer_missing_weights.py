"""A scorer whose weights are not in the local store is unavailable with a message naming the file it
looked for (under $UNIMOE_WEIGHTS) and where to download it from: nothing is fetched at run time."""

from __future__ import annotations

import pytest

from evaluation.scorers import ScorerUnavailable, load_scorer

WHISPER_LARGE_V3 = "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb"

# (scorer, the package it needs, the file's path in the store, what the message must say about its origin)
CASES = [
    ("audiobox_aesthetics", "audiobox_aesthetics", "audiobox-aesthetics/checkpoint.pt",
     ["https://huggingface.co/facebook/audiobox-aesthetics (checkpoint.pt)"]),
    ("clap", "laion_clap", "laion_clap/music_audioset_epoch_15_esc_90.14.pt",
     ["https://huggingface.co/lukewys/laion_clap", "music_audioset_epoch_15_esc_90.14.pt"]),
    ("openl3_fad", "torchopenl3", "openl3/torchopenl3_mel256_music_512.pth.tar",
     ["https://github.com/torchopenl3/torchopenl3-models/raw/master/torchopenl3_mel256_music_512.pth.tar"]),
    ("passt", "hear21passt", "passt/passt-s-f128-p16-s10-ap.476-swa.pt",
     ["https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"]),
    ("utmos22_strong", "torch", "utmos/utmos22_strong_step7459_v1.pt",
     ["https://github.com/tarepan/SpeechMOS/releases", "utmos22_strong_step7459_v1.pt", "UTMOS22 strong"]),
    ("wavlm_sim", "transformers", "wavlm_sim/wavlm_large_finetune.pth",
     ["wavlm_large_finetune.pth", "microsoft/UniSpeech"]),
    ("whisper_wer", "whisper", "whisper/large-v3.pt",
     [f"https://openaipublic.azureedge.net/main/whisper/models/{WHISPER_LARGE_V3}/large-v3.pt"]),
]


@pytest.mark.parametrize("name, package, store_path, origin", CASES, ids=[c[0] for c in CASES])
def test_missing_weights_name_file_and_origin(name, package, store_path, origin, tmp_path, monkeypatch):
    pytest.importorskip(package)
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer(name)
    msg = str(e.value)
    assert str(tmp_path / store_path) in msg
    for part in origin:
        assert part in msg
