"""Quality filtering: plan, signal checks, filter_records outcomes, report.

The scorers passed to ``filter_records`` here are deterministic test doubles for the injection point
(the real scorers are tested in ``evaluation``); the signal checks and the audio loading are real.
"""

import copy
import math

import numpy as np
import pytest

from data.manifest import ManifestRecord, read_manifest, split_by_status, write_manifest
from data.quality import (
    SIGNAL_CHECKS,
    SIGNAL_CHECKS_VERSION,
    FilterPlan,
    QualityConfig,
    QualityError,
    QualityItem,
    QualityScorer,
    Rule,
    SignalChecks,
    filter_records,
    load_span,
    plan_scorers,
    quality_report,
    signal_checks,
)
from unimoe.common.audio import save_wav

SR = 16000
HASH = "0" * 64


# --------------------------------------------------------------------------------------------
# audio and rows


def tone(seconds=2.0, amp=0.3, sr=SR, f=220.0):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * (0.7 * np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 3 * f * t))).astype(np.float32)


def silent_mostly(seconds=2.0, frac=0.7):
    x = tone(seconds)
    x[: int(frac * x.size)] = 0.0
    return x


def clipped(seconds=2.0):
    return np.clip(tone(seconds, amp=3.0), -1.0, 1.0)


def quiet(seconds=2.0):
    return tone(seconds, amp=0.003)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    out = {}
    for name, x in {
        "normal": tone(), "silence": silent_mostly(), "clipped": clipped(), "quiet": quiet(),
        "short": tone(0.5), "two_part": np.concatenate([np.zeros(SR, np.float32), tone(1.0)]),
    }.items():  # fmt: skip
        out[name] = str(save_wav(d / f"{name}.wav", x, SR))
    (d / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    out["garbage"] = str(d / "garbage.wav")
    out["missing"] = str(d / "missing.wav")
    return out


def rec(rid, task, path, *, duration=2.0, offset=0.0, source_duration=None, text="a caption", speaker=None,
        **kw):
    lang = {"en_tts": "en", "zh_tts": "zh"}.get(task)
    return ManifestRecord(
        id=rid, task=task, language=lang, audio_path=path, duration=duration, sample_rate=SR, channels=1,
        text=text, speaker=speaker, source_corpus="test", licence="CC0", split="train",
        video_path="/v.mp4" if task == "v2m" else None, provenance_sha256=HASH, offset=offset,
        source_duration=source_duration or (offset + duration), **kw,
    )  # fmt: skip


class FakeScorer:
    """A deterministic scorer double: ``fn(item) -> dict`` (or raise); records the batch sizes."""

    def __init__(self, name, fn, version="fake/1"):
        self.name, self._fn, self._version = name, fn, version
        self.batches = []

    @property
    def version(self):
        return self._version

    def info(self):
        return {"scorer": self.name, "version": self.version}

    def score(self, items):
        self.batches.append([it.id for it in items])
        return [self._fn(it) for it in items]


def table_scorer(name, metric, table, default=4.0):
    """Scores looked up by item id (``table``); ``default`` for others."""
    return FakeScorer(name, lambda it: {metric: table.get(it.id, default), "extra": 1.0})


def rms_dnsmos(item):
    """A loudness-driven stand-in: ovrl = 1 + 4 * min(1, 5 * RMS)."""
    rms = float(np.sqrt(np.mean(np.square(item.wav))))
    return {"dnsmos_ovrl": 1.0 + 4.0 * min(1.0, 5.0 * rms), "dnsmos_sig": 3.0, "dnsmos_bak": 3.0}


# --------------------------------------------------------------------------------------------
# signal checks


def test_signal_checks_on_synthesized_audio():
    cfg = QualityConfig()
    n = signal_checks(tone(), SR, cfg)
    assert n["silence_ratio"] == 0.0 and n["clipping_ratio"] == 0.0
    assert n["duration"] == pytest.approx(2.0)
    expected_db = 20 * math.log10(float(np.sqrt(np.mean(tone().astype(np.float64) ** 2))))
    assert n["loudness_dbfs"] == pytest.approx(expected_db, abs=1e-6)
    assert -20 < n["loudness_dbfs"] < -10

    s = signal_checks(silent_mostly(frac=0.7), SR, cfg)
    assert s["silence_ratio"] == pytest.approx(0.7, abs=0.03)

    c = signal_checks(clipped(), SR, cfg)
    assert c["clipping_ratio"] > 0.2

    q = signal_checks(quiet(), SR, cfg)
    assert q["loudness_dbfs"] == pytest.approx(n["loudness_dbfs"] + 20 * math.log10(0.003 / 0.3), abs=1e-3)
    assert q["silence_ratio"] == 0.0  # quiet but not below the -60 dBFS frame threshold

    z = signal_checks(np.zeros(SR, np.float32), SR, cfg)
    assert z["silence_ratio"] == 1.0 and z["loudness_dbfs"] == pytest.approx(-200.0)

    # stereo input is mixed down; a partial last frame counts as a frame
    st = signal_checks(np.stack([tone(1.01), tone(1.01)]), SR, cfg)
    assert st["duration"] == pytest.approx(1.01) and st["silence_ratio"] == 0.0

    bad = tone()
    bad[10] = np.nan
    assert all(math.isnan(v) for k, v in signal_checks(bad, SR, cfg).items() if k != "duration")


def test_signal_checks_scorer_protocol_and_version():
    sc = SignalChecks()
    assert isinstance(sc, QualityScorer)
    assert sc.name == SIGNAL_CHECKS and sc.version == SIGNAL_CHECKS_VERSION
    assert "silence_ratio" in SIGNAL_CHECKS_VERSION and "|x| >= clip_level" in SIGNAL_CHECKS_VERSION
    out = sc.score([QualityItem("a", tone(), SR), QualityItem("b", quiet(), SR)])
    assert len(out) == 2 and out[0]["loudness_dbfs"] > out[1]["loudness_dbfs"]
    assert "loudness_dbfs>=-45" in sc.info()["rules"]


# --------------------------------------------------------------------------------------------
# plan


def test_plan_uses_substitutes_when_paper_scorers_are_missing():
    msgs = {"utmos22_strong": "weights/utmos22_strong.ckpt missing", "audiobox_aesthetics": "no ckpt",
            "clap": "no clap ckpt"}  # fmt: skip
    plan = plan_scorers({"dnsmos"}, msgs)
    assert plan.deciders == {"speech": ("dnsmos",), "music": ("signal_checks",)}
    assert plan.substitute_for == {"speech": ("utmos22_strong",), "music": ("audiobox_aesthetics", "clap")}
    assert plan.unavailable == msgs
    assert plan.for_task("zh_tts") == (("dnsmos",), ("utmos22_strong",))
    assert plan.for_task("v2m")[0] == ("signal_checks",)
    assert plan.to_dict()["unavailable"]["clap"] == "no clap ckpt"


def test_plan_prefers_paper_scorers_and_fills_partial_gaps():
    full = plan_scorers({"utmos22_strong", "audiobox_aesthetics", "clap", "dnsmos"})
    assert full.deciders == {"speech": ("utmos22_strong",), "music": ("audiobox_aesthetics", "clap")}
    assert full.substitute_for == {"speech": (), "music": ()}
    part = plan_scorers({"dnsmos", "audiobox_aesthetics"}, {"clap": "missing"})
    assert part.deciders["music"] == ("audiobox_aesthetics", "signal_checks")
    assert part.substitute_for["music"] == ("clap",)


def test_plan_refuses_a_silent_pass_through():
    with pytest.raises(QualityError, match=r"speech.*utmos22_strong: no weights.*dnsmos: speechmos missing"):
        plan_scorers(set(), {"utmos22_strong": "no weights", "dnsmos": "speechmos missing"})


# --------------------------------------------------------------------------------------------
# filter_records


def _substitute_rows(wavs):
    return [
        rec("en_good", "en_tts", wavs["normal"], speaker="s1"),
        rec("zh_quiet", "zh_tts", wavs["quiet"], speaker="s2"),  # rms_dnsmos ~1.05 -> filtered
        rec("en_nan", "en_tts", wavs["normal"]),
        rec("t2m_good", "t2m", wavs["normal"]),
        rec("t2m_silent", "t2m", wavs["silence"]),
        rec("t2m_clipped", "t2m", wavs["clipped"]),
        rec("v2m_quiet", "v2m", wavs["quiet"], text=None),  # no text needed by signal checks
        rec("t2m_short", "t2m", wavs["short"], duration=0.5),
        rec("t2m_missing", "t2m", wavs["missing"]),
        rec("en_garbage", "en_tts", wavs["garbage"]),
        rec("old_filtered", "t2m", wavs["normal"], status="filtered", reason="short_tail", detail="x"),
        rec("old_quarantined", "t2m", None, status="quarantined", reason="missing_file"),
    ]


def _dnsmos_with_nan():
    def fn(it):
        d = rms_dnsmos(it)
        if it.id == "en_nan":
            d["dnsmos_ovrl"] = float("nan")
        return d

    return FakeScorer("dnsmos", fn, version="speechmos-fake 0.0")


def test_filter_with_substitutes_every_row_accounted(wavs, tmp_path):
    rows = _substitute_rows(wavs)
    before = copy.deepcopy(rows)
    dns = _dnsmos_with_nan()
    progress = []
    unavailable = {"utmos22_strong": "missing", "audiobox_aesthetics": "missing", "clap": "missing"}
    out = filter_records(rows, QualityConfig(batch_size=4), {"dnsmos": dns}, unavailable,
                         progress=lambda d, t: progress.append((d, t)))  # fmt: skip

    assert rows == before  # inputs untouched
    assert [r.id for r in out] == [r.id for r in rows]
    got = {r.id: (r.status, r.reason) for r in out}
    assert got == {
        "en_good": ("kept", None),
        "zh_quiet": ("filtered", "quality:dnsmos_ovrl<2.5"),
        "en_nan": ("quarantined", "score_failed"),
        "t2m_good": ("kept", None),
        "t2m_silent": ("filtered", "quality:silence_ratio>0.5"),
        "t2m_clipped": ("filtered", "quality:clipping_ratio>0.001"),
        "v2m_quiet": ("filtered", "quality:loudness_dbfs<-45"),
        "t2m_short": ("filtered", "quality:duration<1"),
        "t2m_missing": ("quarantined", "unreadable_audio"),
        "en_garbage": ("quarantined", "unreadable_audio"),
        "old_filtered": ("filtered", "short_tail"),
        "old_quarantined": ("quarantined", "missing_file"),
    }
    # rows that were not kept pass through unchanged (same object, no quality block)
    assert out[-2] is rows[-2] and out[-1] is rows[-1]
    # every row in exactly one status bucket, and the result is a valid manifest
    buckets = split_by_status(out)
    assert sum(len(v) for v in buckets.values()) == len(rows)
    assert sorted(r.id for v in buckets.values() for r in v) == sorted(r.id for r in rows)
    write_manifest(tmp_path / "m.parquet", out)
    back = {r.id: r for r in read_manifest(tmp_path / "m.parquet")}

    q = back["en_good"].meta["quality"]
    assert q["decided_by"] == ["dnsmos"] and q["substitute_for"] == ["utmos22_strong"]
    assert q["versions"] == {"dnsmos": "speechmos-fake 0.0"}
    assert q["scores"]["dnsmos"]["dnsmos_ovrl"] > 2.5 and q["rules"]["dnsmos"] == ["dnsmos_ovrl>=2.5"]
    qm = back["t2m_good"].meta["quality"]
    assert qm["decided_by"] == ["signal_checks"]
    assert qm["substitute_for"] == ["audiobox_aesthetics", "clap"]
    assert qm["versions"] == {"signal_checks": SIGNAL_CHECKS_VERSION}
    # dropped rows keep their scores and say why
    fz = back["zh_quiet"]
    assert fz.meta["quality"]["scores"]["dnsmos"]["dnsmos_ovrl"] < 2.5 and "dnsmos_ovrl=" in fz.detail
    fs = back["t2m_silent"].meta["quality"]["scores"]["signal_checks"]
    assert fs["silence_ratio"] == pytest.approx(0.7, abs=0.03)
    assert back["v2m_quiet"].detail.count("fails") == 1 and "loudness_dbfs" in back["v2m_quiet"].detail
    nan = back["en_nan"]
    assert nan.meta["quality"]["scores"]["dnsmos"]["dnsmos_ovrl"] is None and "nan" in nan.detail.lower()
    assert "not found" in back["t2m_missing"].detail
    # batching and progress: speech rows scored in batches of at most 4, never the unreadable one
    assert all(len(b) <= 4 for b in dns.batches)
    assert sorted(i for b in dns.batches for i in b) == ["en_good", "en_nan", "zh_quiet"]
    assert progress[-1] == (10, 10) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def _paper_scorers(**overrides):
    utmos = table_scorer("utmos22_strong", "utmos", {"en_low": 2.9, "en_edge": 3.0})
    aes_table = {"m_lowpq": {"PQ": 5.9}, "m_lowpc": {"PC": 1.0}}
    aes_base = {"CE": 6.0, "CU": 6.0, "PC": 4.0, "PQ": 7.0}
    aes = FakeScorer("audiobox_aesthetics", lambda it: {**aes_base, **aes_table.get(it.id, {})})
    clap = table_scorer("clap", "clap", {"m_lowclap": 0.1}, default=0.5)
    s = {"utmos22_strong": utmos, "audiobox_aesthetics": aes, "clap": clap, **overrides}
    return {k: v for k, v in s.items() if v is not None}


def test_filter_with_paper_scorers_and_thresholds(wavs):
    rows = [
        rec("en_ok", "en_tts", wavs["normal"]),
        rec("en_low", "en_tts", wavs["normal"]),
        rec("en_edge", "en_tts", wavs["normal"]),  # exactly at the minimum: passes
        rec("m_ok", "t2m", wavs["silence"]),  # signal checks do not run when the paper scorers do
        rec("m_lowpq", "t2m", wavs["normal"]),
        rec("m_lowpc", "v2m", wavs["normal"]),  # PC has no minimum by default
        rec("m_lowclap", "t2m", wavs["normal"]),
        rec("m_notext", "v2m", wavs["normal"], text=None),
    ]
    scorers = _paper_scorers()
    out = {r.id: r for r in filter_records(rows, QualityConfig(), scorers)}
    assert {k: (r.status, r.reason) for k, r in out.items()} == {
        "en_ok": ("kept", None), "en_low": ("filtered", "quality:utmos<3"), "en_edge": ("kept", None),
        "m_ok": ("kept", None), "m_lowpq": ("filtered", "quality:PQ<6"), "m_lowpc": ("kept", None),
        "m_lowclap": ("filtered", "quality:clap<0.2"), "m_notext": ("filtered", "quality:no_text"),
    }  # fmt: skip
    q = out["m_ok"].meta["quality"]
    assert q["decided_by"] == ["audiobox_aesthetics", "clap"] and q["substitute_for"] is None
    assert set(q["scores"]) == {"audiobox_aesthetics", "clap"}
    assert q["scores"]["audiobox_aesthetics"]["PC"] == 4.0
    assert "m_notext" not in [i for b in scorers["clap"].batches for i in b]
    assert "audiobox_aesthetics" in out["m_notext"].meta["quality"]["scores"]

    # thresholds come from the config: stricter UTMOS, a PC minimum, a looser CLAP
    cfg = QualityConfig.from_dict({"utmos_min": 3.5, "aesthetics_min": {"PC": 2.0}, "clap_min": 0.05})
    assert cfg.aesthetics_min == {"CE": 5.0, "CU": 5.0, "PC": 2.0, "PQ": 6.0}
    out2 = {r.id: r for r in filter_records(rows, cfg, _paper_scorers())}
    assert out2["en_edge"].reason == "quality:utmos<3.5" and out2["en_ok"].status == "kept"
    assert out2["m_lowpc"].reason == "quality:PC<2" and out2["m_lowclap"].status == "kept"


def test_config_rejects_unknown_keys_and_builds_rules():
    with pytest.raises(ValueError, match="unknown key"):
        QualityConfig.from_dict({"utmos_minimum": 3})
    cfg = QualityConfig(max_duration=None)
    assert [str(r) for r in cfg.rules("signal_checks")] == [
        "silence_ratio<=0.5", "clipping_ratio<=0.001", "loudness_dbfs>=-45", "loudness_dbfs<=-2",
        "duration>=1"]
    assert Rule("x", "<=", 0.5).reason == "quality:x>0.5" and Rule("x", ">=", 2.5).reason == "quality:x<2.5"
    assert QualityConfig.from_dict(cfg.to_dict()) == cfg


def test_span_loading_uses_offset_and_duration(wavs):
    wav, sr = load_span(wavs["two_part"], 1.0, 1.0)
    assert sr == SR and wav.shape == (SR,) and wav.dtype == np.float32
    assert signal_checks(wav, sr)["silence_ratio"] == 0.0
    assert signal_checks(*load_span(wavs["two_part"], 0.0, 1.0))["silence_ratio"] == 1.0
    rows = [
        rec("first", "t2m", wavs["two_part"], offset=0.0, duration=1.0, source_duration=2.0),
        rec("second", "t2m", wavs["two_part"], offset=1.0, duration=1.0, source_duration=2.0),
        rec("past_end", "t2m", wavs["two_part"], offset=1.5, duration=1.0, source_duration=2.5),
    ]
    out = filter_records(rows, QualityConfig(), {"dnsmos": FakeScorer("dnsmos", rms_dnsmos)})
    assert [(r.status, r.reason) for r in out] == [
        ("filtered", "quality:silence_ratio>0.5"), ("kept", None), ("quarantined", "unreadable_audio")]
    assert "truncated" in out[2].detail


def test_a_scorer_that_raises_only_fails_its_own_items(wavs):
    def fn(it):
        if it.id == "boom":
            raise RuntimeError("model exploded")
        return rms_dnsmos(it)

    dns = FakeScorer("dnsmos", fn)
    rows = [rec(i, "en_tts", wavs["normal"]) for i in ("a", "boom", "c")]
    out = filter_records(rows, QualityConfig(batch_size=8), {"dnsmos": dns})
    assert [(r.status, r.reason) for r in out] == [
        ("kept", None), ("quarantined", "score_failed"), ("kept", None)]
    assert "model exploded" in out[1].detail
    assert dns.batches[0] == ["a", "boom", "c"] and ["boom"] in dns.batches  # batch retried per item


def test_wrong_metric_name_is_a_loud_configuration_error(wavs):
    dns = FakeScorer("dnsmos", lambda it: {"ovrl_mos": 3.0})
    with pytest.raises(QualityError, match=r"dnsmos_ovrl.*ovrl_mos"):
        filter_records([rec("a", "en_tts", wavs["normal"])], QualityConfig(), {"dnsmos": dns})
    # ... and the config can name the key the scorer reports
    out = filter_records([rec("a", "en_tts", wavs["normal"])], QualityConfig(dnsmos_metric="ovrl_mos"),
                         {"dnsmos": dns})  # fmt: skip
    assert out[0].status == "kept"


def test_injected_loader_and_item_factory():
    made = []

    class MyItem(QualityItem):
        pass

    def factory(**kw):
        made.append(kw)
        return MyItem(**kw)

    def loader(path, offset, duration):
        if path == "bad":
            raise OSError("disk on fire")
        return tone(duration), SR

    rows = [rec("a", "en_tts", "good"), rec("b", "zh_tts", "bad")]
    out = filter_records(rows, QualityConfig(), {"dnsmos": FakeScorer("dnsmos", rms_dnsmos)},
                         load_audio=loader, make_item=factory)  # fmt: skip
    assert [(r.status, r.reason) for r in out] == [("kept", None), ("quarantined", "unreadable_audio")]
    assert "disk on fire" in out[1].detail
    assert made[0]["id"] == "a" and made[0]["language"] == "en" and made[0]["sample_rate"] == SR


def test_plan_and_scorers_must_agree(wavs):
    plan = FilterPlan(deciders={"speech": ("utmos22_strong",), "music": ("signal_checks",)},
                      substitute_for={"speech": (), "music": ()})  # fmt: skip
    with pytest.raises(QualityError, match="utmos22_strong"):
        filter_records([rec("a", "en_tts", wavs["normal"])], QualityConfig(), {}, plan=plan)
    with pytest.raises(QualityError, match="no quality scorer for speech"):
        filter_records([rec("a", "en_tts", wavs["normal"])], QualityConfig(), {})


def test_quality_report_counts(wavs):
    out = filter_records(_substitute_rows(wavs), QualityConfig(), {"dnsmos": _dnsmos_with_nan()})
    plan = plan_scorers({"dnsmos"}, {"utmos22_strong": "missing"})
    rep = quality_report(out, plan)
    assert rep["rows"] == 12 and rep["status"] == {"kept": 2, "filtered": 6, "quarantined": 4}
    assert rep["scored"] == 10  # every kept input row carries a quality block
    assert rep["by_task"]["t2m"] == {"rows": 7, "kept": 1, "filtered": 4, "quarantined": 2,
                                     "kept_hours": pytest.approx(2.0 / 3600)}  # fmt: skip
    assert rep["reasons"]["quarantined"] == {"missing_file": 1, "score_failed": 1, "unreadable_audio": 2}
    assert rep["reasons_by_task"]["en_tts"] == {"score_failed": 1, "unreadable_audio": 1}
    assert rep["decided_by"]["en_tts"] == {"dnsmos": 3} and rep["decided_by"]["t2m"] == {"signal_checks": 5}
    assert rep["substitute_for"]["v2m"] == {"audiobox_aesthetics": 1, "clap": 1}
    assert rep["plan"]["unavailable"] == {"utmos22_strong": "missing"}
