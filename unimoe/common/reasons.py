"""Why a row or an item did not go through: the one vocabulary of reason codes.

Ingestion, segmentation, captioning, quality filtering and tokenisation write these codes to the
manifests' ``reason`` column (lhotse keeps the same kind of per-cut provenance), and
:class:`~unimoe.common.audio.AudioSpanError` carries one. :class:`Reason` is a ``str`` enum: a member
equals, hashes and is written (Parquet, JSON) exactly as its code, so files written before the enum
read the same. Quality rules add ``quality:<metric><<min>`` / ``quality:<metric>><max>`` codes built
from their thresholds, which no enum can list.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """A stable reason code (the value) with a one-line ``meaning`` for reports and docs."""

    meaning: str

    def __new__(cls, code: str, meaning: str) -> "Reason":
        member = str.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    # the file and its audio (ingestion probe, span reads)
    PATH_ESCAPE = "path_escape", "path resolves outside the corpus root"
    MISSING_FILE = "missing_file", "no path given, or the audio file does not exist"
    NOT_A_FILE = "not_a_file", "path is not a regular file"
    ZERO_LENGTH = "zero_length", "the file or the span has no samples"
    NOT_AUDIO = "not_audio", "not an audio file"
    CORRUPT_AUDIO = "corrupt_audio", "audio header or stream cannot be decoded"
    TRUNCATED = "truncated", "the file holds less audio than its header declares or the span asks for"
    NON_FINITE = "non_finite", "NaN or infinite samples"
    BAD_SAMPLE_RATE = "bad_sample_rate", "sample rate outside the allowed range"
    TOO_MANY_CHANNELS = "too_many_channels", "more channels than allowed"
    TOO_LONG = "too_long", "longer than the allowed maximum duration"
    TOO_SHORT = "too_short", "shorter than the allowed minimum duration"
    BAD_SEGMENT = "bad_segment", "segment bounds (offset/duration) are invalid or outside the file"
    # the row's text and metadata
    NON_UTF8_TEXT = "non_utf8_text", "text is not valid UTF-8"
    NON_UTF8_PATH = "non_utf8_path", "path is not valid UTF-8"
    EMPTY_TEXT = "empty_text", "transcript or caption is empty"
    MISSING_TEXT = "missing_text", "no transcript or caption for this audio"
    MISSING_ID = "missing_id", "row has no id"
    DUPLICATE_ID = "duplicate_id", "id already used by an earlier kept row"
    INVALID_TASK = "invalid_task", "task is not one of the four tasks"
    MISSING_METADATA = "missing_metadata", "audio file has no metadata row"
    SAMPLE_RATE_MISMATCH = "sample_rate_mismatch", "file's sample rate differs from the one in metadata"
    DURATION_MISMATCH = "duration_mismatch", "file's duration differs from the one declared in metadata"
    BAD_ROW = "bad_row", "metadata row cannot be parsed"
    BUILD_FAILED = "build_failed", "the corpus builder recorded a failure for this item"
    # video (V2M)
    MISSING_VIDEO = "missing_video", "no video file for this V2M pair"
    NOT_VIDEO = "not_video", "video file is not a recognised container"
    CORRUPT_VIDEO = "corrupt_video", "video cannot be decoded"
    # segmentation (status "filtered")
    SHORT_TAIL = "short_tail", "tail of a long track shorter than the clip length (dropped by tail policy)"
    TOO_SHORT_FOR_CLIP = "too_short_for_clip", "track shorter than the minimum clip length"
    # captioning and quality filtering
    CAPTION_FAILED = "caption_failed", "every captioning backend failed on this row"
    UNKNOWN_TASK = "unknown_task", "quality filtering has no rule for the row's task"
    UNREADABLE_AUDIO = "unreadable_audio", "the audio span cannot be loaded for scoring"
    SCORE_FAILED = "score_failed", "a deciding quality scorer failed or returned NaN/inf"
    QUALITY_NO_TEXT = "quality:no_text", "a text-conditioned quality scorer needs text the row lacks"
    # tokenisation
    ENCODE_FAILED = "encode_failed", "the codec failed on this audio"
    BAD_TEXT = "bad_text", "text cannot be tokenized"
    # anything else
    INTERNAL_ERROR = "internal_error", "unexpected error while processing this row (a bug: please report)"
