"""Gemini captions over the public REST API (``models/{model}:generateContent``).

Each span is sent as 16 kHz mono 16-bit WAV (``inline_data``) with a text prompt; the caption is the
concatenated ``candidates[0].content.parts[*].text``.

- **Key**: passed in by the caller — :func:`api_key_from_env` reads ``GEMINI_API_KEY``; a Prefect
  flow resolves its Secret block and passes the string (this module never imports Prefect). The key
  travels only in the ``x-goog-api-key`` header (never in the URL, so it never lands in access
  logs); it is kept out of ``repr``, log messages, exception texts, results and cache files (any
  text the server sends back is scrubbed of it, too).
- **Rate limit**: a thread-safe token bucket (``requests_per_minute``, bursts of ``burst``) taken
  before every HTTP attempt, retries included.
- **Retries** (tenacity): 429, 5xx, timeouts, connection errors and unparsable bodies are retried up to
  ``max_retries`` times with exponential backoff and full jitter, waiting at least what the server
  asks for (``Retry-After`` header or a ``google.rpc.RetryInfo`` ``retryDelay``). Other 4xx and an
  answer without a usable candidate (e.g. blocked by safety filters) fail the item at once.
  401/403/404 and an invalid key would fail every item the same way, so they raise
  :class:`~data.captioning.base.CaptionerFatalError` instead of being charged to the data.
- **Cache**: with a :class:`~data.captioning.cache.CaptionCache`, keyed by the span's audio hash, the
  full prompt (hints included) + generation config, the model and the backend.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import httpx
import numpy as np
import soundfile as sf
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from data.captioning.base import Captioner, CaptionerFatalError, CaptionRequest, CaptionResult
from unimoe.common.audio import resample, to_mono

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_ENV_VAR = "GEMINI_API_KEY"
DEFAULT_PROMPT = (
    "You are writing training captions for a text-to-music model. Listen to this music clip and write "
    "one fluent English paragraph of 2-4 sentences describing it: genre and style, mood, instrumentation, "
    "tempo and rhythmic feel, key or tonality if clear, dynamics, and recording quality. Describe only what "
    "you hear; do not name the piece, the composer or the performers. Answer with the caption only."
)
WAV_SAMPLE_RATE = 16000
_REDACTED = "[REDACTED]"


class MissingAPIKeyError(RuntimeError):
    """No API key was given / found in the environment."""


class GeminiError(RuntimeError):
    """One request failed (after retries, or at once for a non-retryable answer)."""


def api_key_from_env(var: str = DEFAULT_ENV_VAR) -> str:
    """The API key from environment variable ``var``; raises :class:`MissingAPIKeyError` if unset or blank."""
    key = os.environ.get(var, "").strip()
    if not key:
        raise MissingAPIKeyError(
            f"no Gemini API key: set the environment variable {var} (or, in a Prefect flow, load the key "
            "from a Secret block and pass it as api_key), or use the offline captioning backend"
        )
    return key


class TokenBucket:
    """Thread-safe token bucket: ``rate`` tokens per second, at most ``capacity`` saved up.

    :meth:`acquire` blocks (via ``sleep``) until a token is available and returns the seconds it
    waited. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self, rate: float, capacity: float = 1.0, *,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if not capacity >= 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.rate, self.capacity = float(rate), float(capacity)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)
            waited += wait


def encode_wav(wav: np.ndarray, sample_rate: int, out_rate: int = WAV_SAMPLE_RATE) -> bytes:
    """The span as mono 16-bit PCM WAV bytes at ``out_rate``."""
    y = to_mono(wav)
    if sample_rate != out_rate:
        y = resample(y, sample_rate, out_rate)
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1.0, 1.0), out_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    v = value.strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


def _retry_delay_from_body(payload: Any) -> float | None:
    """``error.details[].retryDelay`` ("37s", "1.5s") of a google.rpc.RetryInfo, in seconds."""
    try:
        for d in payload["error"].get("details") or []:
            rd = d.get("retryDelay") if isinstance(d, dict) else None
            if isinstance(rd, str):
                m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", rd)
                if m:
                    return float(m.group(1))
    except (KeyError, TypeError, AttributeError):
        pass
    return None


def parse_response(payload: Any) -> tuple[str, dict[str, Any]]:
    """``(caption text, features)`` from a ``generateContent`` response; raises :class:`GeminiError`."""
    if not isinstance(payload, dict):
        raise GeminiError(f"response is a JSON {type(payload).__name__}, not an object")
    cands = payload.get("candidates")
    if not isinstance(cands, list) or not cands:
        fb = payload.get("promptFeedback") if isinstance(payload.get("promptFeedback"), dict) else {}
        why = f" (blockReason={fb.get('blockReason')})" if fb.get("blockReason") else ""
        raise GeminiError(f"response has no candidates{why}")
    c0 = cands[0] if isinstance(cands[0], dict) else {}
    content = c0.get("content") if isinstance(c0.get("content"), dict) else {}
    parts = content.get("parts") if isinstance(content.get("parts"), list) else []
    text = "".join(p["text"] for p in parts
                   if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")).strip()
    finish = c0.get("finishReason")
    if not text:
        raise GeminiError(f"the first candidate has no text (finishReason={finish})")
    feats: dict[str, Any] = {"finish_reason": finish}
    if isinstance(payload.get("modelVersion"), str):
        feats["model_version"] = payload["modelVersion"]
    usage = payload.get("usageMetadata")
    if isinstance(usage, dict):
        feats["usage"] = {k: v for k, v in usage.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return text, feats


class _Secret:
    """Holds the key; prints as ``'***'`` so ``vars(captioner)`` or a debugger dump never shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("an API key cannot be pickled")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GeminiCaptioner(Captioner):
    """Captions from the Gemini API. See the module docstring for key handling, limits and retries."""

    name = "gemini"

    def __init__(
        self,
        api_key: str,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        prompt: str = DEFAULT_PROMPT,
        *,
        requests_per_minute: float = 60,
        burst: float = 1,
        max_retries: int = 5,
        timeout_s: float = 60,
        cache=None,
        include_hints: bool = True,
        generation_config: dict[str, Any] | None = None,
        max_workers: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 600.0,
        trust_env: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        super().__init__(cache=cache)
        if not isinstance(api_key, str) or not api_key.strip():
            raise MissingAPIKeyError("GeminiCaptioner needs a non-empty api_key (see api_key_from_env)")
        key = api_key.strip()
        if any(ch in key for ch in "\r\n\t ") or not key.isascii():
            raise ValueError("api_key contains whitespace or non-ASCII characters; "
                             "it cannot be sent as a header")
        self.__key = _Secret(key)
        if not re.fullmatch(r"[A-Za-z0-9._\-]+", model):
            raise ValueError(f"bad model name {model!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.prompt = prompt
        self.include_hints = include_hints
        self.generation_config = dict(generation_config) if generation_config else None
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.max_workers = max(1, int(max_workers))
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.limiter = TokenBucket(float(requests_per_minute) / 60.0, burst, sleep=sleep)
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), trust_env=trust_env)
        self.stats = {"http_requests": 0, "retries": 0}
        self._stats_lock = threading.Lock()

    # -- secrets ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"GeminiCaptioner(model={self.model!r}, base_url={self.base_url!r}, "
                f"requests_per_minute={self.limiter.rate * 60:g}, cache={self.cache!r})")

    def __getstate__(self):  # never pickle the key (or a live HTTP client) into a Prefect result
        raise TypeError("GeminiCaptioner holds an API key and cannot be pickled; "
                        "pass the key to the task instead")

    def _redact(self, text: str) -> str:
        return text.replace(self.__key.value, _REDACTED) if self.__key.value else text

    # -- requests --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1beta/models/{self.model}:generateContent"

    def build_prompt(self, request: CaptionRequest) -> str:
        """The prompt for one request: the base prompt, plus what the metadata already says (hints)."""
        h = (request.hints or {}) if self.include_hints else {}
        facts = []
        if h.get("instruments"):
            facts.append("instruments: " + ", ".join(str(x) for x in h["instruments"]))
        if h.get("tempo_bpm"):
            facts.append(f"tempo: about {float(h['tempo_bpm']):g} BPM")
        if h.get("key"):
            facts.append(f"key: {h['key']}")
        if not facts:
            return self.prompt
        return (f"{self.prompt}\n\nKnown from the score's metadata (trust it over your own guess): "
                + "; ".join(facts) + ".")

    def cache_prompt(self, request: CaptionRequest) -> str:
        return json.dumps({"prompt": self.build_prompt(request), "generation_config": self.generation_config,
                           "audio": f"wav/{WAV_SAMPLE_RATE}/mono/pcm16"}, sort_keys=True, ensure_ascii=False)

    def request_body(self, prompt: str, wav_bytes: bytes) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [
            {"text": prompt},
            {"inline_data": {"mime_type": "audio/wav", "data": base64.b64encode(wav_bytes).decode("ascii")}},
        ]}]}
        if self.generation_config:
            body["generationConfig"] = self.generation_config
        return body

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: exponential backoff with full jitter (tenacity's
        ``wait_random_exponential``, drawn from this captioner's seeded RNG), but at least what the
        server asked for (capped at ``max_retry_after_s``)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (state.attempt_number - 1))
        with self._rng_lock:
            delay = self._rng.uniform(0.0, cap)
        retry_after = state.outcome.exception().retry_after
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay

    def _before_retry(self, state: RetryCallState) -> None:
        with self._stats_lock:
            self.stats["retries"] += 1
        log.info("gemini: attempt %d/%d failed (%s); retrying in %.2f s", state.attempt_number,
                 self.max_retries + 1, self._redact(str(state.outcome.exception())), state.next_action.sleep)

    def _attempt(self, body: bytes) -> dict[str, Any]:
        """One HTTP attempt: the parsed JSON, or :class:`_Retryable` / :class:`GeminiError` / fatal."""
        self.limiter.acquire()
        with self._stats_lock:
            self.stats["http_requests"] += 1
        try:
            resp = self._client.post(self.url, content=body, headers={
                "x-goog-api-key": self.__key.value, "content-type": "application/json"})
        except httpx.TimeoutException as e:
            raise _Retryable(f"timed out after {self.timeout_s:g} s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None
        status = resp.status_code
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if status == 200:
            if payload is None:
                raise _Retryable(f"HTTP 200 with a body that is not JSON ({len(resp.content)} bytes)")
            return payload
        err = payload.get("error") if isinstance(payload, dict) else None
        err = err if isinstance(err, dict) else {}
        msg = str(err.get("message") or resp.text[:300] or resp.reason_phrase).strip()
        what = f"HTTP {status}" + (f" {err['status']}" if err.get("status") else "") + f": {msg}"
        if status == 429 or 500 <= status < 600:
            ra = _parse_retry_after(resp.headers.get("retry-after"))
            if ra is None and payload is not None:
                ra = _retry_delay_from_body(payload)
            raise _Retryable(what, ra)
        invalid_key = "API_KEY_INVALID" in json.dumps(err) or "API key not valid" in msg
        if status in (401, 403, 404) or invalid_key:
            raise CaptionerFatalError(self._redact(f"gemini ({self.model} at {self.base_url}): {what}"))
        raise GeminiError(what)

    def _call(self, prompt: str, wav_bytes: bytes) -> tuple[str, dict[str, Any]]:
        body = json.dumps(self.request_body(prompt, wav_bytes)).encode("utf-8")
        # The one retry layer for transient HTTP faults. Prefect's retries on the caption-shard task never
        # see these (a captioner raises only CaptionerFatalError, which no retry can fix); they stay for
        # what fails the whole task (a lost worker, a failed shard write), where the caption cache makes
        # the re-run cheap.
        retrying = Retrying(retry=retry_if_exception_type(_Retryable),
                            stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                            sleep=self._sleep, before_sleep=self._before_retry, reraise=True)
        try:
            payload = retrying(self._attempt, body)
        except _Retryable as e:
            raise GeminiError(f"gave up after {self.max_retries + 1} attempts; last error: {e}") from None
        return parse_response(payload)

    def _generate(self, request: CaptionRequest, wav: np.ndarray, sr: int) -> tuple[str, dict[str, Any]]:
        return self._call(self.build_prompt(request), encode_wav(wav, sr))

    def caption_batch(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        reqs = list(requests)
        if self.max_workers == 1 or len(reqs) <= 1:
            return [self.caption_one(r) for r in reqs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(reqs)),
                                thread_name_prefix="gemini-caption") as ex:
            futures = [ex.submit(self.caption_one, r) for r in reqs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        self._client.close()
