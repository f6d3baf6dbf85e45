"""PaSST KL/IS scorer, offline. Fast tests use a small PaSST (the package's class and wrapper, one
block of width 64, the released model's patch grid, distillation token and 527-class heads) with
random weights saved as a checkpoint and loaded through the registry: the full-size network costs
~4 s per 10 s window on one CPU thread. The full-size architecture is checked by its tensor shapes
here and run end to end in a slow test. Windowing is checked against an independent transcription
of stable-audio-metrics' loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.metrics import inception_score, kl_gen_ref, kl_ref_gen
from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from unimoe.io import sha256_file

pytest.importorskip("hear21passt")
from evaluation.scorers import passt as P

SR = P.SAMPLE_RATE
SMALL = {"embed_dim": 64, "depth": 1, "num_heads": 4}


def tone(seconds: float, sr: int, f0: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = P.build_passt(SMALL)
    path = tmp_path_factory.mktemp("w") / "passt" / P.WEIGHTS_FILE
    path.parent.mkdir()
    torch.save(model.net.state_dict(), path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(ckpt):
    return load_scorer("passt", weights_path=str(ckpt[0]), sha256=ckpt[1], net_config=SMALL, batch_size=2)


# ---- windowing -----------------------------------------------------------------------------------------


def sam_windows(audio: np.ndarray) -> list[np.ndarray]:
    """stable-audio-metrics' loop (window 10 s, overlap 5 s), except that a window of <= 15 % is
    dropped instead of being fed unpadded."""
    step, win = int(5 * SR), int(10 * SR)
    out = []
    for i in range(0, max(step, len(audio) - step), step):
        w = audio[i : i + win]
        if len(w) < win:
            if len(w) > int(win * 0.15):
                w = np.concatenate([w, np.zeros(win - len(w), w.dtype)])
            else:
                continue
        out.append(w)
    return out


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (10.0, [(0, 320_000)]),
        (12.0, [(0, 320_000), (160_000, 224_000)]),
        (20.0, [(0, 320_000), (160_000, 320_000), (320_000, 320_000)]),
        (21.0, [(0, 320_000), (160_000, 320_000), (320_000, 320_000), (480_000, 192_000)]),
        (3.0, [(0, 96_000)]),
        (1.6, [(0, 51_200)]),
        (1.5, []),  # exactly 15 %: skipped
        (0.0, []),
    ],
)
def test_window_spans(seconds, expected):
    assert P.window_spans(round(seconds * SR)) == expected


@pytest.mark.parametrize("n", [1, 47_999, 48_001, 159_999, 160_000, 320_000, 320_001, 480_000, 555_555, 1_000_003])
def test_windows_match_reference_loop(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ours = P.clip_windows(x)
    ref = sam_windows(x)
    assert ours.shape == (len(ref), 320_000)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


# ---- posteriors ----------------------------------------------------------------------------------------


def test_registry_version_and_info(scorer, ckpt):
    assert "passt" in available_scorers()
    assert scorer.metrics == P.PaSSTKL.metrics == {"kl_gen_ref": "lower", "is": "higher"}
    assert not scorer.needs_reference  # IS needs none
    assert scorer.version == (f"hear21passt-0.0.26+passt_s_swa_p16_128_ap476+sha256:{ckpt[1][:12]}"
                              "+kl:gen||ref,eps-on-ref1e-06")
    info = scorer.info()
    assert info["kl_direction"] == "gen||ref" and info["kl_metric"] == "kl_gen_ref" and info["kl_eps"] == 1e-6
    assert info["sample_rate"] == 32_000 and info["is_splits"] == 10


def test_posteriors_are_softmax_of_mean_window_logits(scorer):
    x = tone(12.0, 16_000, 440.0, seed=1)
    post = scorer.embed([AudioItem("a", x, 16_000)])[0]
    # independent path: soxr to 32 kHz, peak -1 dB, reference windows, the wrapped model
    import soxr

    y = soxr.resample(x, 16_000, SR).astype(np.float32)
    y = y * (10 ** (-1 / 20) / np.abs(y).max())
    wins = torch.from_numpy(np.stack(sam_windows(y)))
    with torch.inference_mode():
        logits = scorer.model(wins).double()
    expected = torch.softmax(logits.mean(0), dim=0).numpy()
    assert wins.shape[0] == 2
    np.testing.assert_allclose(post, expected, rtol=1e-4, atol=1e-7)
    assert post.shape == (527,) and post.sum() == pytest.approx(1.0)
    assert not np.allclose(post, np.full(527, 1 / 527))  # a real prediction, not uniform


def test_batching_stereo_and_failures(scorer):
    sr = 44_100
    a, b = tone(3.0, sr, 300.0, seed=2), tone(3.0, sr, 900.0, seed=3)
    items = [
        AudioItem("mono", a, sr),
        AudioItem("empty", np.zeros(0, np.float32), sr),
        AudioItem("stereo", np.stack([a, b]), sr),
        AudioItem("short", tone(1.0, sr, 300.0), sr),  # 10 % of a window: no usable window
        AudioItem("silent", np.zeros(sr * 2, np.float32), sr),
        AudioItem("nan", np.full(sr, np.nan, np.float32), sr),
    ]
    post = scorer.embed(items)
    assert post.shape == (6, 527)
    assert np.isfinite(post[[0, 2]]).all() and np.isnan(post[[1, 3, 4, 5]]).all()
    assert set(scorer.last_failures) == {"empty", "short", "silent", "nan"}
    assert "window" in scorer.last_failures["short"]
    # batch-independent, and stereo = its channel mean
    np.testing.assert_allclose(scorer.embed([items[0]])[0], post[0], rtol=1e-5, atol=1e-9)
    mean_item = AudioItem("m", (a + b) / 2, sr)
    np.testing.assert_allclose(scorer.embed([mean_item])[0], post[2], rtol=1e-5, atol=1e-9)


# ---- set metrics ---------------------------------------------------------------------------------------


def dirichlet(n: int, seed: int, alpha: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(527, alpha), size=n)


def test_kl_is_generated_given_reference_as_stable_audio_metrics(scorer):
    """Issue 12 item 4: KL(gen || ref) with stable-audio-metrics' epsilon on the reference, named kl_gen_ref."""
    g, r = dirichlet(12, 0), dirichlet(12, 1)
    out = scorer.compare(g, r)
    assert "kl" not in out and set(out) == {"kl_gen_ref", "is", "is_std", "is_splits"}
    manual = np.mean([np.sum(g[i] * np.log(g[i] / (r[i] + 1e-6))) for i in range(12)])
    assert out["kl_gen_ref"] == pytest.approx(manual, rel=1e-9)
    assert out["kl_gen_ref"] == pytest.approx(kl_gen_ref(g, r), rel=1e-12)
    assert out["kl_gen_ref"] != pytest.approx(kl_ref_gen(r, g), rel=1e-3)  # not the earlier direction
    # identical posteriors: not exactly 0 -- the epsilon is on the reference only, not renormalised, so
    # KL(p || p + eps) ~= -527 * eps, as in stable-audio-metrics
    same = scorer.compare(g, g)["kl_gen_ref"]
    assert same == pytest.approx(np.mean(np.sum(g * np.log(g / (g + 1e-6)), axis=1)), rel=1e-9)
    assert -P.N_CLASSES * 1e-6 <= same < 0
    # failed items on either side drop the pair
    g2, r2 = g.copy(), r.copy()
    g2[3] = np.nan
    r2[7] = np.nan
    keep = [i for i in range(12) if i not in (3, 7)]
    assert scorer.compare(g2, r2)["kl_gen_ref"] == pytest.approx(kl_gen_ref(g[keep], r[keep]), rel=1e-12)
    with pytest.raises(ValueError, match="paired"):
        scorer.compare(g, r[:5])


def test_kl_direction_option_keeps_the_earlier_form(ckpt, scorer):
    old = load_scorer("passt", weights_path=str(ckpt[0]), sha256=ckpt[1], net_config=SMALL, kl_direction="ref||gen")
    assert old.metrics == {"kl_ref_gen": "lower", "is": "higher"}
    assert old.version.endswith("+kl:ref||gen,clip-renorm1e-08") and old.version != scorer.version
    g, r = dirichlet(8, 3), dirichlet(8, 4)
    out = old.compare(g, r)
    assert "kl_gen_ref" not in out and out["kl_ref_gen"] == pytest.approx(kl_ref_gen(r, g), rel=1e-12)
    manual = np.mean([np.sum(r[i] * np.log(r[i] / g[i])) for i in range(8)])
    assert out["kl_ref_gen"] == pytest.approx(manual, rel=1e-6)
    with pytest.raises(ValueError, match="kl_direction"):
        load_scorer("passt", weights_path=str(ckpt[0]), net_config=SMALL, kl_direction="sym")


def test_inception_score(scorer):
    g = dirichlet(30, 2)
    out = scorer.compare(g, None)
    assert "kl_gen_ref" not in out  # no reference: no KL metric at all
    mean, std = inception_score(g, splits=10, seed=0)
    assert out["is"] == pytest.approx(mean) and out["is_std"] == pytest.approx(std) and out["is_splits"] == 10
    # confident, diverse posteriors score higher than flat ones
    sharp = np.eye(527)[np.arange(30) % 527] * 0.99 + 0.01 / 527
    assert scorer.compare(sharp, None)["is"] > out["is"] > 1.0
    few = scorer.compare(g[:4], None)
    assert few["is_splits"] == 4 and few["is"] == pytest.approx(inception_score(g[:4], splits=4)[0])
    assert math.isnan(scorer.compare(g[:1], None)["is"])


def test_runner_scores_is_without_reference_audio_and_kl_where_there_is_one(scorer, tmp_path):
    """Issue 12 item 8: IS needs no reference, so items without reference audio are scored (they used to be
    dropped, and with them IS); KL is computed over the items that have a reference."""
    import soundfile as sf

    from evaluation.bench import score as bench_score

    def wav(name, f0, seed):
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), tone(2.0, 16_000, f0, seed=seed), 16_000)
        return str(path)

    rows = []
    for k in range(5):
        item = {"id": f"i{k}", "task": "t2m"}
        if k < 2:
            item["reference_audio"] = wav(f"r{k}", 500.0 + 150 * k, 10 + k)
        g = wav(f"g{k}", 200.0 + 120 * k, k)
        rows.append({"item": item, "seed": 0, "system": "model", "audio": g, "audio_sha256": bench_score.file_hash(g)})
    directions = {m: d == "higher" for m, d in scorer.metrics.items()}

    def embed(path):
        from unimoe.common.audio import load_audio

        w, sr = load_audio(path)
        return scorer.embed([AudioItem("x", w, sr)])[0]

    gen = np.stack([embed(r["audio"]) for r in rows])
    ref = np.stack([embed(r["item"]["reference_audio"]) for r in rows[:2]])
    agg, failed = bench_score._score_set(scorer, scorer.version, rows, "t2m", "model", directions, tmp_path / "c", 10, False)
    got = {r["metric"]: r for r in agg}
    assert failed == [] and set(got) == {"is", "kl_gen_ref"}
    assert got["is"]["value"] == pytest.approx(inception_score(gen, splits=5)[0], rel=1e-6) and got["is"]["n"] == 5
    assert got["kl_gen_ref"]["value"] == pytest.approx(kl_gen_ref(gen[:2], ref), rel=1e-6)
    # no item with reference audio: IS alone
    bare = [{**r, "item": {"id": r["item"]["id"], "task": "t2m"}} for r in rows]
    agg, _ = bench_score._score_set(scorer, scorer.version, bare, "t2m", "model", directions, tmp_path / "c", 10, False)
    assert [r["metric"] for r in agg] == ["is"] and agg[0]["value"] == pytest.approx(got["is"]["value"])


# ---- checkpoints and the full-size architecture --------------------------------------------------------


def test_wrapper_saved_checkpoint_loads(scorer, tmp_path):
    sd = {f"net.{k}": v for k, v in scorer.model.net.state_dict().items()}
    sd["device_proxy"] = torch.zeros(1)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": sd}, path)
    s = load_scorer("passt", weights_path=str(path), net_config=SMALL)
    for k, v in scorer.model.net.state_dict().items():
        torch.testing.assert_close(s.model.net.state_dict()[k], v)


def test_wrong_checkpoints_are_refused(ckpt, tmp_path):
    with pytest.raises(ScorerUnavailable, match="does not fit"):
        load_scorer("passt", weights_path=str(ckpt[0]), net_config={"embed_dim": 128, "depth": 1, "num_heads": 4})
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(2)}, bad)
    with pytest.raises(ScorerUnavailable, match="does not fit"):
        load_scorer("passt", weights_path=str(bad), net_config=SMALL)


def test_full_size_architecture_shapes():
    net = P.build_passt().net
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert type(net).__name__ == "PaSST"
    assert shapes["patch_embed.proj.weight"] == (768, 1, 16, 16)
    assert shapes["time_new_pos_embed"] == (1, 768, 1, 99) and shapes["freq_new_pos_embed"] == (1, 768, 12, 1)
    assert shapes["new_pos_embed"] == (1, 2, 768)
    assert shapes["head.1.weight"] == (527, 768) and shapes["head_dist.weight"] == (527, 768)
    assert sum(k.startswith("blocks.") and k.endswith(".attn.qkv.weight") for k in shapes) == 12
    # the small test net has exactly the same tensor names apart from the extra blocks
    small = {k for k in P.build_passt(SMALL).net.state_dict()}
    assert small == {k for k in shapes if not k.startswith("blocks.") or k.startswith("blocks.0.")}


@pytest.mark.slow
def test_full_size_end_to_end(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / P.WEIGHTS_FILE
    torch.save(P.build_passt().net.state_dict(), path)
    s = load_scorer("passt", weights_path=str(path))
    post = s.embed([AudioItem("x", tone(10.0, SR, 440.0), SR)])
    assert post.shape == (1, 527) and np.isfinite(post).all() and post.sum() == pytest.approx(1.0)
