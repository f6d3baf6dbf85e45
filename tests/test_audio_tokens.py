import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unimoe.audio_tokens import (IGNORE_INDEX, AudioEmbedding, audio_labels, build_delayed,
                                 undo_delay)
from unimoe.config import AudioConfig


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), t=st.integers(0, 40), data=st.data())
def test_delay_build_and_undo_are_exact_inverses(k, t, data):
    delays = data.draw(st.lists(st.integers(0, 12), min_size=k, max_size=k))
    audio = AudioConfig(num_codebooks=k, codebook_size=1024, delays=delays)
    codes = torch.randint(0, 1024, (k, t), generator=torch.Generator().manual_seed(t))
    delayed = build_delayed(codes, audio)
    assert delayed.shape == (k, t + max(delays) + 1)
    assert torch.equal(undo_delay(delayed, audio), codes)
    for c, d in enumerate(delays):
        row = delayed[c]
        assert (row[:d] == audio.bos_id).all()
        assert torch.equal(row[d:d + t], codes[c])
        assert row[d + t] == audio.eos_id and (row == audio.eos_id).sum() == 1
        assert (row[d + t + 1:] == audio.pad_id).all()


def test_default_delay_pattern_and_special_ids():
    audio = AudioConfig(num_codebooks=12)
    assert audio.delay_pattern == [0] + list(range(8, 19))
    assert (audio.eos_id, audio.pad_id, audio.bos_id, audio.vocab_size) == (1024, 1025, 1026, 1027)


def test_undo_rejects_unfinished_and_bad_codes():
    audio = AudioConfig(num_codebooks=2, delays=[0, 1])
    with pytest.raises(ValueError, match="no EOS"):
        undo_delay(torch.zeros(2, 5, dtype=torch.long), audio)
    with pytest.raises(ValueError, match="codebook_size"):
        build_delayed(torch.full((2, 3), 1024), audio)


def test_audio_embedding_sums_one_table_per_codebook():
    audio = AudioConfig(num_codebooks=3, codebook_size=16)
    emb = AudioEmbedding(audio, 8)
    torch.nn.init.normal_(emb.weight)
    codes = torch.randint(0, audio.vocab_size, (5, 3))
    tables = emb.weight.view(3, audio.vocab_size, 8)
    expected = sum(tables[c][codes[:, c]] for c in range(3))
    torch.testing.assert_close(emb(codes), expected)


def test_codebook_ce_equal_weights_and_ignored_labels():
    audio = AudioConfig(num_codebooks=3, codebook_size=8, delays=[0, 1, 2])
    logits = torch.randn(6, 3, audio.vocab_size)
    nxt = torch.randint(0, 8, (6, 3))
    nxt[0, 1] = audio.pad_id
    nxt[1, 2] = audio.bos_id
    nxt[:, 2] = audio.pad_id  # codebook 2 has no target at all
    labels = audio_labels(nxt, audio)
    assert labels[0, 1] == IGNORE_INDEX and (labels[:, 2] == IGNORE_INDEX).all()
    from unimoe.model import codebook_ce, codebook_ce_sums

    _, ce_sums, counts = codebook_ce_sums(logits, labels)
    expected = []
    for c in range(2):
        keep = labels[:, c] != IGNORE_INDEX
        expected.append(F.cross_entropy(logits[keep, c], labels[keep, c]))
    torch.testing.assert_close(ce_sums[:2] / counts[:2], torch.stack(expected))
    assert ce_sums[2] == 0 and counts.tolist() == [6, 5, 0]
    torch.testing.assert_close(codebook_ce(ce_sums, counts, "mean"), torch.stack(expected).mean())  # codebooks with targets
    torch.testing.assert_close(codebook_ce(ce_sums, counts, "sum"), torch.stack(expected).sum())
