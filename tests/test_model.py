import pytest
import torch

from conftest import random_codes, random_video
from unimoe.config import overlay, paper_preset
from unimoe.model import UniMoEAudio, parameter_report
from unimoe.sequence import Example, collate


def _batch(builder, tokenizer, cfg, examples, left_pad=False):
    return collate([builder.build(e) for e in examples], tokenizer.pad_id, cfg.audio.pad_id, left_pad=left_pad)


def _examples(k):
    return [
        Example("en_tts", text="hello world", codes=random_codes(k, 12, 1)),
        Example("zh_tts", text="你好", codes=random_codes(k, 7, 2), ref_text="世界", ref_codes=random_codes(k, 6, 3)),
        Example("t2m", text="a calm piano melody", codes=random_codes(k, 20, 4)),
        Example("v2m", text="piano", codes=random_codes(k, 9, 5), video=random_video(0)),
    ]


def test_loss_is_finite_and_every_parameter_gets_a_gradient(tiny_model, builder, tokenizer, tiny_cfg):
    tiny_model.train()
    batch = _batch(builder, tokenizer, tiny_cfg, _examples(tiny_cfg.audio.num_codebooks))
    out = tiny_model.loss(batch)
    assert torch.isfinite(out["ce"]) and torch.isfinite(out["aux"]) and out["aux"] > 0
    (out["ce"] + 0.01 * out["aux"]).backward()
    no_grad = [n for n, p in tiny_model.named_parameters() if p.grad is None]
    assert no_grad == []
    # Loss positions: one per target frame of each example (delayed length), nothing else.
    k = tiny_cfg.audio.num_codebooks
    expected = sum(t + max(tiny_cfg.audio.delay_pattern) + 1 for t in (12, 7, 20, 9))
    assert len(out["rows"]) == expected
    # Every codebook has exactly T codes + one EOS as targets; BOS fill and PAD tail are ignored.
    assert out["counts"].tolist() == [sum(t + 1 for t in (12, 7, 20, 9))] * k


def test_padding_does_not_change_real_positions(tiny_model, builder, tokenizer, tiny_cfg):
    k = tiny_cfg.audio.num_codebooks
    short = Example("en_tts", text="hi", codes=random_codes(k, 5, 1))
    long = Example("t2m", text="an energetic string quartet in d minor", codes=random_codes(k, 30, 2))
    alone = tiny_model(_batch(builder, tokenizer, tiny_cfg, [short])).hidden[0]
    n = alone.shape[0]
    for left in (False, True):
        both = tiny_model(_batch(builder, tokenizer, tiny_cfg, [short, long], left_pad=left)).hidden[0]
        got = both[-n:] if left else both[:n]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)


def test_video_reaches_the_decoder(tiny_model, builder, tokenizer, tiny_cfg):
    """The released official code drops the vision path; ours must not."""
    k = tiny_cfg.audio.num_codebooks
    codes = random_codes(k, 8, 7)
    a = _batch(builder, tokenizer, tiny_cfg, [Example("v2m", text="piano", codes=codes, video=random_video(1))])
    b = _batch(builder, tokenizer, tiny_cfg, [Example("v2m", text="piano", codes=codes, video=random_video(2))])
    assert torch.equal(a.input_ids, b.input_ids)  # identical text and audio; only the pixels differ
    ha, hb = tiny_model(a).hidden, tiny_model(b).hidden
    targets = a.target_mask[0]
    assert (tiny_model.audio_logits(ha[0, targets]) - tiny_model.audio_logits(hb[0, targets])).abs().max() > 1e-4
    # and gradients flow from the audio loss into the vision tower
    tiny_model.train()
    tiny_model.loss(a)["ce"].backward()
    grads = [p.grad for p in tiny_model.vision.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_video_count_mismatch_is_a_clear_error(tiny_model, builder, tokenizer, tiny_cfg):
    batch = _batch(builder, tokenizer, tiny_cfg, [Example("v2m", text="x", codes=random_codes(4, 3), video=random_video())])
    batch.video_mask[0, batch.video_mask[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="video placeholder positions"):
        tiny_model(batch)


def test_per_layer_ffn_kinds_and_routing_stats(builder, tokenizer, tiny_cfg):
    cfg = overlay(tiny_cfg, {"ffn": ["dense", "top_k"]})
    torch.manual_seed(0)
    model = UniMoEAudio(cfg)
    batch = _batch(builder, tokenizer, cfg, _examples(cfg.audio.num_codebooks))
    out = model(batch)
    assert out.routing[0] is None
    stats = out.routing[1]
    assert (stats.experts_per_token == cfg.moe.top_k).all()
    assert int(stats.expert_counts.sum()) == cfg.moe.top_k * int(batch.attention_mask.sum())
    assert stats.task_counts.shape == (4, cfg.moe.num_dynamic)
    # every task contributed tokens in proportion to its rows
    per_task_tokens = torch.zeros(4, dtype=torch.long).index_add_(0, batch.task_ids, batch.attention_mask.sum(1))
    assert torch.equal(stats.task_counts.sum(1), per_task_tokens * cfg.moe.top_k)


def test_dense_model_has_no_aux_loss(builder, tokenizer, tiny_cfg):
    cfg = overlay(tiny_cfg, {"ffn": "dense"})
    out = UniMoEAudio(cfg).loss(_batch(builder, tokenizer, cfg, _examples(cfg.audio.num_codebooks)))
    assert out["aux"] == 0 and all(r is None for r in out["routing"])


def test_paper_preset_parameter_count_on_meta_device():
    report = parameter_report(paper_preset())
    assert abs(report["total"] - 7.1e9) <= 0.05 * 7.1e9
    assert report["active_min"] < report["active_avg_at_k"][2] < report["active_max"] == report["total"]
    assert 0.6e9 < report["vision_tower"] < 0.7e9


# ---- codebook cross-entropy as reducible sums


def test_codebook_ce_sums_add_up_over_shards():
    """Data parallelism: with the target counts summed over shards of a batch and each shard's own CE
    sums, the shards' losses add up to the loss of the whole batch, for both codebook reductions; a
    codebook without targets is left out of the mean."""
    from unimoe.audio_tokens import IGNORE_INDEX
    from unimoe.model import codebook_ce, codebook_ce_sums

    torch.manual_seed(0)
    n, k, v = 10, 3, 7
    logits, labels = torch.randn(n, k, v), torch.randint(0, v, (n, k))
    labels[:4, 1] = IGNORE_INDEX
    labels[:, 2] = IGNORE_INDEX  # no targets at all
    ce, sums, counts = codebook_ce_sums(logits, labels)
    assert counts.tolist() == [10, 6, 0] and (ce[:4, 1] == 0).all() and (ce[:, 2] == 0).all()
    # per codebook: the mean cross-entropy over its targets (independent reference)
    ref = [torch.nn.functional.cross_entropy(logits[labels[:, j] >= 0, j], labels[labels[:, j] >= 0, j])
           for j in (0, 1)]
    torch.testing.assert_close(codebook_ce(sums, counts, "mean"), (ref[0] + ref[1]) / 2)
    torch.testing.assert_close(codebook_ce(sums, counts, "sum"), ref[0] + ref[1])
    shards = [codebook_ce_sums(logits[a:b], labels[a:b]) for a, b in ((0, 3), (3, 10))]
    global_counts = sum(s[2] for s in shards)
    assert torch.equal(global_counts, counts)
    for reduction in ("mean", "sum"):
        parts = [codebook_ce(s[1], global_counts, reduction) for s in shards]
        torch.testing.assert_close(sum(parts), codebook_ce(sums, counts, reduction))
        assert abs(float(parts[0]) - float(codebook_ce(sums, counts, reduction))) > 1e-3  # shares, not copies
    with pytest.raises(ValueError, match="reduction"):
        codebook_ce(sums, counts, "max")


def test_model_loss_is_the_codebook_mean(tiny_model, builder, tokenizer, tiny_cfg):
    out = tiny_model.loss(_batch(builder, tokenizer, tiny_cfg, _examples(tiny_cfg.audio.num_codebooks)))
    assert torch.isfinite(out["per_codebook"]).all()
    torch.testing.assert_close(out["ce"].detach(), out["per_codebook"].mean())
