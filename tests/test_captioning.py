"""Captioning: the offline analysis backend, the Gemini backend against a loopback fake of the API
(faults included), the disk cache, key hygiene, and captioning manifest rows."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.captioning import (
    CAPTION_FAILED,
    CaptionCache,
    CaptionerFatalError,
    CaptionRequest,
    GeminiCaptioner,
    MissingAPIKeyError,
    OfflineCaptioner,
    TokenBucket,
    api_key_from_env,
    caption_records,
    describe,
    make_captioner,
)
from data.captioning.gemini import _parse_retry_after, _retry_delay_from_body, parse_response
from data.captioning.offline import analyse, natural_key
from data.manifest import ManifestRecord, validate_records

SR = 44100
KEY = "AIzaTEST-secret-key-0123456789abcdef"


# --------------------------------------------------------------------------------------------
# synthesized audio


def click_track(bpm: float, seconds: float, sr: int = SR, amp: float = 0.8) -> np.ndarray:
    y = np.zeros(int(seconds * sr), np.float32)
    n = int(0.01 * sr)
    t = np.arange(n) / sr
    click = (np.exp(-t / 0.002) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32) * amp
    for start in np.arange(0.0, seconds - 0.02, 60.0 / bpm):
        i = int(start * sr)
        y[i:i + n] += click
    return y


def tone(midis: list[int], seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t)
    for m in midis:
        f = 440.0 * 2 ** ((m - 69) / 12)
        y += np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)
    return (0.2 * y * np.exp(-2.0 * t)).astype(np.float32)


def c_major() -> np.ndarray:
    notes = [tone([m], 0.4) for m in [60, 62, 64, 65, 67, 69, 71, 72] * 2]
    chords = [tone([48, 60, 64, 67], 1.5), tone([55, 62, 67, 71], 1.0), tone([48, 60, 64, 67], 1.5)]
    return np.concatenate(notes + chords)


def noise(seconds: float, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * amp).astype(np.float32)


def lowpassed(y: np.ndarray, cutoff: float = 400.0) -> np.ndarray:
    from scipy.signal import butter, lfilter

    b, a = butter(4, cutoff / (SR / 2))
    return lfilter(b, a, y).astype(np.float32)


def write(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, subtype="PCM_16")
    return path


@pytest.fixture()
def clip(tmp_path) -> Path:
    return write(tmp_path / "clip.wav", click_track(120, 3.0) + 0.3 * tone([60, 64, 67], 3.0))


# --------------------------------------------------------------------------------------------
# offline backend


@pytest.mark.parametrize("true_bpm", [90, 120, 150])
def test_offline_tempo_of_click_track(tmp_path, true_bpm):
    """A click every 60/bpm s: the tempo is that bpm (within 2 %: the tempo grid's spacing), not a
    half or double of it."""
    clip = write(tmp_path / "c.wav", click_track(true_bpm, 10.0))
    r = OfflineCaptioner().caption_one(CaptionRequest("c", clip))
    assert r.ok and r.backend == "offline" and not r.cached
    bpm = r.features["tempo_bpm"]
    assert abs(bpm - true_bpm) <= 0.02 * true_bpm, bpm
    assert f"at about {round(bpm)} BPM" in r.caption


def a_harmonic_minor() -> np.ndarray:
    """C major's relative minor, told apart by its leading tone G#: scale, then i - V - i (Am, E, Am)."""
    notes = [tone([m], 0.4) for m in [57, 59, 60, 62, 64, 65, 68, 69] * 2]
    chords = [tone([45, 57, 60, 64], 1.5), tone([52, 56, 59, 64], 1.0), tone([45, 57, 60, 64], 1.5)]
    return np.concatenate(notes + chords)


@pytest.mark.parametrize("make,key", [(c_major, "C major"), (a_harmonic_minor, "A minor")])
def test_offline_key_of_a_scale_and_cadence(tmp_path, make, key):
    """The two keys share a key signature; only the right one of the relative pair is accepted."""
    r = OfflineCaptioner().caption_one(CaptionRequest("k", write(tmp_path / "k.wav", make())))
    assert r.features["key"] == key, r.features
    assert r.features["key_confidence"] >= 0.5
    assert f" in {key} " in r.caption


def test_offline_loudness_brightness_and_words():
    white = noise(4.0)
    loud, soft = analyse(white, SR), analyse(white * 0.1, SR)
    assert loud["loudness"] > soft["loudness"] + 15  # x0.1 amplitude is -20 dB
    assert loud["loudness_measure"] == "lufs" and loud["rms_dbfs"] > soft["rms_dbfs"]
    dark = analyse(lowpassed(white), SR)
    assert dark["spectral_centroid_hz"] < loud["spectral_centroid_hz"] / 3
    assert describe(dark)[0].startswith("A dark") and describe(loud)[0].startswith("A bright")
    assert loud["tempo_bpm"] is None  # noise has no clear pulse: no tempo is named
    assert "BPM" not in describe(loud)[0]


def test_offline_instruments_only_from_hints(clip):
    oc = OfflineCaptioner()
    hints = {"instruments": ["Acoustic Grand Piano", "Violin", "Electric Piano 1"], "key": "Eb major",
             "tempo_bpm": 96.0}
    r = oc.caption_one(CaptionRequest("h", clip, hints=hints))
    assert "for acoustic grand piano, violin and electric piano" in r.caption
    assert "in E-flat major at about 96 BPM" in r.caption  # metadata beats estimates
    assert r.features["caption_used"]["source"] == {"tempo": "hints", "key": "hints", "instruments": "hints"}
    assert r.features["tempo_bpm"] is not None  # the estimate is still reported
    bare = oc.caption_one(CaptionRequest("b", clip))
    assert " for " not in bare.caption and "piano" not in bare.caption  # nothing invented
    assert bare.caption.endswith(" texture.") and bare.caption.startswith("A ")
    assert natural_key("F# minor") == "F-sharp minor" and natural_key("C major") == "C major"


def test_offline_deterministic_span_and_silence(tmp_path):
    y = np.concatenate([np.zeros(SR * 2, np.float32), click_track(100, 4.0)])
    p = write(tmp_path / "s.wav", y)
    oc = OfflineCaptioner()
    silent = oc.caption_one(CaptionRequest("s0", p, offset=0.0, duration=1.5))
    assert silent.ok and silent.features["silent"] and "near-silent" in silent.caption
    a = oc.caption_one(CaptionRequest("s1", p, offset=2.0, duration=4.0))
    b = oc.caption_one(CaptionRequest("s1", p, offset=2.0, duration=4.0))
    assert a.caption == b.caption and a.features == b.features
    assert a.features["duration_s"] == pytest.approx(4.0, abs=0.01)


def test_offline_bad_items_do_not_stop_the_batch(tmp_path, clip):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    reqs = [CaptionRequest("missing", tmp_path / "nope.wav"), CaptionRequest("corrupt", bad),
            CaptionRequest("past_end", clip, offset=60.0), CaptionRequest("good", clip)]
    res = OfflineCaptioner().caption_batch(reqs)
    assert [r.id for r in res] == ["missing", "corrupt", "past_end", "good"]
    assert [r.ok for r in res] == [False, False, False, True]
    assert all(r.caption is None and r.error for r in res[:3])
    assert "not found" in res[0].error and "past the end" in res[2].error


def test_offline_speed_20s_clip(tmp_path):
    p = write(tmp_path / "long.wav", click_track(110, 20.0) + 0.5 * np.tile(c_major(), 2)[: 20 * SR])
    oc = OfflineCaptioner()
    oc.caption_one(CaptionRequest("warm", p, duration=2.0))  # imports / JIT
    t = time.perf_counter()
    n = 3
    for _ in range(n):
        assert oc.caption_one(CaptionRequest("x", p)).ok
    per_clip = (time.perf_counter() - t) / n
    print(f"offline captioning: {per_clip * 1000:.0f} ms per 20 s clip ({1 / per_clip:.1f} clips/s)")
    assert per_clip < 1.0  # target 0.3 s on a free core; loose here (shared CI cores)


def test_offline_cache(tmp_path, clip):
    cache = CaptionCache(tmp_path / "cache")
    oc = OfflineCaptioner(cache=cache)
    first = oc.caption_one(CaptionRequest("a", clip))
    again = OfflineCaptioner(cache=CaptionCache(tmp_path / "cache")).caption_one(CaptionRequest("b", clip))
    assert not first.cached and again.cached
    assert again.caption == first.caption and again.features == first.features
    hinted = oc.caption_one(CaptionRequest("c", clip, hints={"instruments": ["Flute"]}))
    assert not hinted.cached and "flute" in hinted.caption
    assert len(cache) == 2
    # a corrupt entry is a miss, not a crash
    for f in (tmp_path / "cache").rglob("*.json"):
        f.write_text("{not json")
    assert not oc.caption_one(CaptionRequest("a", clip)).cached


# --------------------------------------------------------------------------------------------
# a loopback fake of the Gemini API


class FakeGemini:
    """``generateContent`` on 127.0.0.1. ``script``: actions consumed one per request (then "ok")."""

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw,
                                          "t": time.monotonic()})
                    count = len(fake.requests)
                    action = fake.script.pop(0) if fake.script else "ok"
                fake.respond(self, action, count)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address):  # a client that timed out and left
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.requests)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("content-type", "application/json; charset=UTF-8")
        h.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def error(code: int, status: str, message: str, details: list | None = None) -> bytes:
        err = {"code": code, "message": message, "status": status}
        if details:
            err["details"] = details
        return json.dumps({"error": err}).encode()

    def respond(self, h, action, count: int) -> None:
        kind = action[0] if isinstance(action, tuple) else action
        if kind == "sleep":
            time.sleep(action[1])
            kind = "ok"
        if kind == "ok":
            parts = [{"text": f"A calm piano piece (#{count})."}, {"text": " Soft dynamics."}]
            body = {
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 12,
                                  "totalTokenCount": 132},
                "modelVersion": "gemini-2.5-flash",
            }
            self._send(h, 200, json.dumps(body).encode())
        elif kind == "status":
            _, code, headers, body = action
            self._send(h, code, body, headers)
        elif kind == "malformed":
            self._send(h, 200, b"<html>upstream proxy error</html>")
        elif kind == "no_candidates":
            self._send(h, 200, json.dumps({"promptFeedback": {"blockReason": "SAFETY"}}).encode())
        else:  # pragma: no cover
            raise AssertionError(kind)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def fake():
    f = FakeGemini()
    yield f
    f.stop()


def E429(retry_after: str | None = "0"):
    return ("status", 429, {"Retry-After": retry_after} if retry_after is not None else {},
            FakeGemini.error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."))


def E5xx(code: int):
    status = "UNAVAILABLE" if code == 503 else "INTERNAL"
    return ("status", code, {}, FakeGemini.error(code, status, "try again"))


def gemini(fake: FakeGemini, **kw) -> GeminiCaptioner:
    opts = dict(base_url=fake.url, requests_per_minute=60_000, burst=100, backoff_base_s=0.01,
                backoff_max_s=0.05, timeout_s=5, trust_env=False, seed=0)
    opts.update(kw)
    return GeminiCaptioner(KEY, **opts)


def test_gemini_request_shape_and_key_header(fake, clip):
    with gemini(fake) as g:
        req = CaptionRequest("a", clip, offset=0.5, duration=2.0, hints={"instruments": ["Violin"]})
        r = g.caption_one(req)
    assert r.ok and r.caption == "A calm piano piece (#1). Soft dynamics."
    assert r.backend == "gemini" and r.model == "gemini-2.5-flash" and not r.cached
    assert r.features["finish_reason"] == "STOP" and r.features["usage"]["totalTokenCount"] == 132
    req = fake.requests[0]
    assert req["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert KEY not in req["path"] and "key=" not in req["path"]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-goog-api-key"] == KEY
    body = json.loads(req["body"])
    parts = body["contents"][0]["parts"]
    assert parts[0]["text"].startswith(g.prompt) and "instruments: Violin" in parts[0]["text"]
    assert parts[1]["inline_data"]["mime_type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(base64.b64decode(parts[1]["inline_data"]["data"])))
    assert sr == 16000 and audio.ndim == 1 and len(audio) == pytest.approx(32000, abs=2)


def test_gemini_retries_faults_then_succeeds(fake, clip):
    fake.script = [E429("0"), E5xx(500), E5xx(503), "malformed", ("sleep", 1.0)]
    with gemini(fake, max_retries=5, timeout_s=0.3) as g:
        r = g.caption_one(CaptionRequest("a", clip))
    assert r.ok and r.caption.startswith("A calm piano piece (#6)"), r
    assert fake.hits == 6 and g.stats == {"http_requests": 6, "retries": 5}


def test_gemini_error_after_max_retries_and_batch_goes_on(fake, clip):
    fake.script = [E5xx(500)] * 3
    with gemini(fake, max_retries=2, max_workers=1) as g:
        res = g.caption_batch([CaptionRequest("bad", clip), CaptionRequest("good", clip, offset=1.0)])
    assert res[0].caption is None and "gave up after 3 attempts" in res[0].error
    assert "HTTP 500" in res[0].error
    assert res[1].ok and fake.hits == 4


@pytest.mark.parametrize("action,needle", [
    (("status", 400, {}, FakeGemini.error(400, "INVALID_ARGUMENT", "Unsupported audio")),
     "HTTP 400 INVALID_ARGUMENT"),
    ("no_candidates", "no candidates (blockReason=SAFETY)"),
])
def test_gemini_no_retry_on_client_errors(fake, clip, action, needle):
    fake.script = [action]
    with gemini(fake) as g:
        r = g.caption_one(CaptionRequest("a", clip))
    assert not r.ok and needle in r.error and fake.hits == 1


def test_gemini_auth_errors_are_fatal(fake, clip):
    fake.script = [("status", 400, {}, FakeGemini.error(
        400, "INVALID_ARGUMENT", f"API key not valid: {KEY}", [{"reason": "API_KEY_INVALID"}]))]
    with gemini(fake) as g, pytest.raises(CaptionerFatalError) as ei:
        g.caption_batch([CaptionRequest("a", clip), CaptionRequest("b", clip)])
    assert KEY not in str(ei.value) and "[REDACTED]" in str(ei.value)
    fake.script = [("status", 403, {}, FakeGemini.error(403, "PERMISSION_DENIED", "denied"))]
    with gemini(fake) as g, pytest.raises(CaptionerFatalError, match="403"):
        g.caption_one(CaptionRequest("a", clip))


def test_gemini_connection_refused_is_retried_then_an_error(clip):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    g = GeminiCaptioner(KEY, base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff_base_s=0.01,
                        requests_per_minute=60_000, burst=10, trust_env=False)
    r = g.caption_one(CaptionRequest("a", clip))
    assert not r.ok and "connection error" in r.error and g.stats["http_requests"] == 2


def test_gemini_cache_hits_and_keys(fake, clip, tmp_path):
    cache = CaptionCache(tmp_path / "cache")
    with gemini(fake, cache=cache) as g:
        first = g.caption_one(CaptionRequest("a", clip))
        second = g.caption_one(CaptionRequest("a2", clip))
        assert not first.cached and second.cached and second.caption == first.caption and fake.hits == 1
        assert second.features == first.features and second.id == "a2"
        g.caption_one(CaptionRequest("a", clip, offset=0.5))  # other span
        g.caption_one(CaptionRequest("a", clip, hints={"key": "C major"}))  # other prompt (hints)
        assert fake.hits == 3
    with gemini(fake, cache=cache, prompt="Describe the music.") as g:
        assert not g.caption_one(CaptionRequest("a", clip)).cached
    with gemini(fake, cache=cache, model="gemini-2.5-pro") as g:
        assert not g.caption_one(CaptionRequest("a", clip)).cached
    assert fake.requests[-1]["path"] == "/v1beta/models/gemini-2.5-pro:generateContent"
    with gemini(fake, cache=cache) as g:  # a fresh instance, same settings: a hit
        assert g.caption_one(CaptionRequest("a", clip)).cached
    assert fake.hits == 5 and len(cache) == 5
    # the key itself
    k = CaptionCache.key("ab" * 32, "p", "m", "gemini")
    others = [("ab" * 32, "p2", "m", "gemini"), ("ab" * 32, "p", "m2", "gemini"),
              ("cd" * 32, "p", "m", "gemini"), ("ab" * 32, "p", "m", "offline")]
    assert len({k, *(CaptionCache.key(*o) for o in others)}) == 5


def test_gemini_key_never_leaks(fake, clip, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "data.captioning"):
        caplog.set_level(logging.DEBUG, logger=name)
    echo = ("status", 400, {}, FakeGemini.error(400, "INVALID_ARGUMENT", f"bad request for key {KEY}"))
    echo5 = ("status", 500, {}, FakeGemini.error(500, "INTERNAL", f"oops {KEY}"))
    fake.script = [echo, echo5, echo5, E429("0")]
    cache = CaptionCache(tmp_path / "cache")
    with gemini(fake, cache=cache, max_retries=1, max_workers=1) as g:
        res = g.caption_batch([CaptionRequest("a", clip), CaptionRequest("b", clip, offset=0.2),
                               CaptionRequest("c", clip, offset=0.4)])
        texts = [repr(g), str(g), repr(res), repr(vars(g)), str(vars(g))]
    assert [r.ok for r in res] == [False, False, True]
    assert "[REDACTED]" in res[0].error and "[REDACTED]" in res[1].error
    assert any("retrying" in r.getMessage() for r in caplog.records)
    # the HTTP stack's own DEBUG logs were captured (and scanned) too
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    assert KEY not in caplog.text and all(KEY not in r.getMessage() for r in caplog.records)
    assert all(KEY not in t for t in texts)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(KEY.encode() not in p.read_bytes() for p in files)
    assert all(KEY not in r["path"] for r in fake.requests)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(g)


def test_api_key_from_env(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="GEMINI_API_KEY"):
        api_key_from_env()
    with pytest.raises(MissingAPIKeyError):
        make_captioner("gemini")
    monkeypatch.setenv("MY_GEMINI", f"  {KEY}\n")
    assert api_key_from_env("MY_GEMINI") == KEY
    with pytest.raises(MissingAPIKeyError):
        GeminiCaptioner("  ")
    assert isinstance(make_captioner("offline"), OfflineCaptioner)
    with pytest.raises(ValueError, match="unknown captioning backend"):
        make_captioner("whisper")


def test_token_bucket_with_fake_clock():
    now = [0.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    b = TokenBucket(rate=2.0, capacity=1, clock=lambda: now[0], sleep=sleep)
    stamps = []
    for _ in range(5):
        b.acquire()
        stamps.append(now[0])
    assert stamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    now[0] += 10.0  # idle: saves up at most `capacity` tokens
    b.acquire()
    b.acquire()
    assert now[0] == pytest.approx(12.5)


def test_rate_limiter_spaces_requests(fake, clip):
    # 20 requests/s, burst 1: 4 concurrent requests span at least 3 intervals (lower bound only: not flaky).
    with gemini(fake, requests_per_minute=1200, burst=1, max_workers=4) as g:
        res = g.caption_batch([CaptionRequest(str(i), clip, offset=0.1 * i) for i in range(4)])
    assert all(r.ok for r in res) and [r.id for r in res] == ["0", "1", "2", "3"]
    t = sorted(r["t"] for r in fake.requests)
    assert t[-1] - t[0] >= 3 / 20 * 0.8


def test_retry_after_is_honoured(fake, clip):
    slept: list[float] = []
    info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]
    fake.script = [E429("7"), ("status", 429, {}, FakeGemini.error(429, "RESOURCE_EXHAUSTED", "quota", info))]
    with gemini(fake, sleep=slept.append) as g:
        assert g.caption_one(CaptionRequest("a", clip)).ok
    assert slept == [7.0, 3.0]
    assert _parse_retry_after("2.5") == 2.5 and _parse_retry_after("soon") is None
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert _retry_delay_from_body({"error": {"details": [{"retryDelay": "1.5s"}]}}) == 1.5
    text, feats = parse_response({"candidates": [{"content": {"parts": [{"text": "x", "thought": True},
                                                                         {"text": "Jazz."}]}}]})
    assert text == "Jazz." and feats["finish_reason"] is None


# --------------------------------------------------------------------------------------------
# manifest rows


def _row(rid: str, task: str, audio: Path | None, **kw) -> ManifestRecord:
    base = dict(id=rid, task=task, language="en" if task.endswith("tts") else None, audio_path=str(audio),
                duration=2.0, sample_rate=SR, channels=1, source_corpus="test", licence="CC0", split="train",
                provenance_sha256="0" * 64, offset=0.0, source_duration=3.0)
    base.update(kw)
    return ManifestRecord(**base)


def test_caption_records(tmp_path, clip):
    rows = [
        _row("m1", "t2m", clip, text="Instruments: Violin. Tempo: 96 bpm. Key: D minor.",
             meta={"instruments": ["Violin"], "tempo_bpm": 96.0, "key": "D minor", "source": "x"}),
        _row("v1", "v2m", clip, video_path=str(tmp_path / "v.mp4"), offset=1.0),
        _row("s1", "en_tts", clip, text="hello world", speaker="spk"),
        _row("gone", "t2m", tmp_path / "missing.wav"),
        _row("q1", "t2m", None, status="quarantined", reason="unreadable_audio", audio_path=None),
        _row("m2", "t2m", clip, text="A human caption."),
    ]
    out = caption_records(rows, OfflineCaptioner())
    assert [r.id for r in out] == [r.id for r in rows]
    m1 = out[0]
    assert m1.status == "kept" and "for violin in D minor at about 96 BPM" in m1.text
    assert m1.meta["description"] == rows[0].text and m1.meta["source"] == "x"
    assert m1.meta["caption"]["backend"] == "offline" and "cached" not in m1.meta["caption"]  # run history stays out
    assert m1.meta["caption"]["features"]["spectral_centroid_hz"] > 0
    assert out[1].text and "description" not in out[1].meta  # it had no text before
    assert out[2] is rows[2] and out[4] is rows[4]  # speech and quarantined rows pass through
    assert out[3].status == "filtered" and out[3].reason == CAPTION_FAILED and "not found" in out[3].detail
    assert out[5].meta["description"] == "A human caption."
    validate_records(out)
    json.dumps([r.to_row() for r in out])

    again = caption_records(out, OfflineCaptioner())  # re-captioning keeps the original description
    assert again[0].meta["description"] == rows[0].text and again[0].text == m1.text
    only = caption_records(rows, OfflineCaptioner(), only_missing=True)
    assert only[0] is rows[0] and only[5] is rows[5] and only[1].text and only[3].reason == CAPTION_FAILED


def test_caption_task_retries_skip_a_rejected_key():
    """Prefect retries the caption task after a lost worker or failed write, never after a fatal captioner
    error (a rejected API key): retrying that only wastes the retry delays."""
    from data.captioning.base import CaptionerFatalError
    from flows.curate import _retry_unless_fatal

    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self):
            raise self.exc

    assert _retry_unless_fatal(None, None, State(CaptionerFatalError("401: API key not valid"))) is False
    assert _retry_unless_fatal(None, None, State(OSError("disk full"))) is True
