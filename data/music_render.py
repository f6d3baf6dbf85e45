"""Music for the offline demo corpus: music21 scores -> note lists -> MIDI -> fluidsynth audio.

The score is reduced to a plain note list (seconds, pitch, velocity per part) at one constant tempo
that the builder chooses; the same note list drives the MIDI file (its events made here, so the timing
is exact; music21 serialises them), the per-clip MIDI, the clip key/instrument descriptions and the
piano-roll video. Each part gets a General MIDI program picked per score from a register-aware palette,
so the corpus has varied timbres.

This module turns scores into notes and describes clips (key, instruments); the General MIDI tables
and the program choice are in :mod:`data.general_midi`, MIDI writing and fluidsynth rendering in
:mod:`data.midi_synth` (their names are re-exported here, the demo builder's one entry point).
Nothing here imports Prefect; music21 is imported lazily (it is slow to import).
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data.general_midi import ENSEMBLES, GM_PROGRAM_NAMES, Part, choose_programs, instrument_names
from data.midi_synth import DEFAULT_SOUNDFONT, find_soundfont, midi_bytes, peak_normalise, render_midi
from unimoe.common.music import estimate_key as profile_key

__all__ = [
    "COMPOSERS", "DEFAULT_SOUNDFONT", "ENSEMBLES", "GM_PROGRAM_NAMES", "Part", "ScoreError", "ScoreNotes",
    "choose_programs", "clip_parts", "estimate_key", "find_soundfont", "instrument_names", "midi_bytes",
    "parse_score", "peak_normalise", "render_midi", "resolve_corpus_path", "score_to_notes", "split_name",
]  # fmt: skip


@dataclass
class ScoreNotes:
    """A score reduced to notes at a constant tempo."""

    corpus_name: str
    composer: str
    title: str
    copyright: str | None
    bpm: float
    ensemble: str
    parts: list[Part]
    duration: float  # end of the last note, seconds
    truncated_from: float | None = None  # original length when cut at max_seconds
    key_signatures: list[tuple[float, int]] = field(default_factory=list)  # (start s, sharps; flats < 0)

    def sharps_at(self, t: float) -> int | None:
        """The key signature (number of sharps, negative for flats) in force at ``t`` seconds."""
        cur = None
        for start, sharps in self.key_signatures:
            if start <= t + 1e-6:
                cur = sharps
        return cur

    @property
    def programs(self) -> list[int]:
        return [p.program for p in self.parts]


_EXT_RE = re.compile(r"\.(mxl|xml|musicxml|krn|abc|mid|midi)$", re.I)


class ScoreError(Exception):
    """A score could not be turned into notes (parse error, no pitched notes, ...)."""


# --------------------------------------------------------------------------------------------
# music21 -> notes
# --------------------------------------------------------------------------------------------

COMPOSERS = {
    "bach": "Johann Sebastian Bach",
    "beethoven": "Ludwig van Beethoven",
    "chopin": "Frédéric Chopin",
    "cpebach": "Carl Philipp Emanuel Bach",
    "handel": "George Frideric Handel",
    "haydn": "Joseph Haydn",
    "johnson_j_r": "J. Rosamond Johnson",
    "joplin": "Scott Joplin",
    "liliuokalani": "Liliʻuokalani",
    "lusitano": "Vicente Lusitano",
    "mozart": "Wolfgang Amadeus Mozart",
    "palestrina": "Giovanni Pierluigi da Palestrina",
    "schubert": "Franz Schubert",
    "schumann_clara": "Clara Schumann",
    "schumann_robert": "Robert Schumann",
    "verdi": "Giuseppe Verdi",
    "corelli": "Arcangelo Corelli",
    "monteverdi": "Claudio Monteverdi",
    "ciconia": "Johannes Ciconia",
    "josquin": "Josquin des Prez",
    "weber": "Carl Maria von Weber",
    "beach": "Amy Beach",
    "luca": "Luca Marenzio",
    "ryansMammoth": "traditional (Ryan's Mammoth Collection)",
    "oneills1850": "traditional (O'Neill's Music of Ireland)",
    "leadSheet": "lead sheet",
    "trecento": "trecento (anonymous)",
}


def corpus_root() -> Path:
    from music21 import corpus

    return Path(corpus.__file__).resolve().parent


def split_name(name: str) -> tuple[str, int | None]:
    """``"oneills1850/0001-0050.abc#3"`` -> (path, 3); no ``#`` -> (name, None)."""
    if "#" in name:
        base, num = name.rsplit("#", 1)
        return base, int(num)
    return name, None


def resolve_corpus_path(name: str) -> Path:
    """A corpus file for ``name`` (with or without extension); raises ScoreError if there is none."""
    base, _ = split_name(name)
    root = corpus_root()
    p = root / base
    if p.is_file():
        return p
    from music21 import corpus

    try:
        found = corpus.getWork(base)
    except Exception as e:  # music21 raises several kinds
        raise ScoreError(f"not in the music21 corpus: {type(e).__name__}: {e}") from None
    if isinstance(found, (list, tuple)):
        found = sorted(found, key=lambda q: (Path(q).suffix not in (".mxl", ".xml", ".musicxml"), str(q)))
        if not found:
            raise ScoreError("not in the music21 corpus")
        found = found[0]
    if not found or not Path(found).is_file():
        raise ScoreError("not in the music21 corpus")
    return Path(found)


def parse_score(name: str):
    """Parse a corpus score (an Opus yields its ``#N`` score, else its first one)."""
    import music21

    path = resolve_corpus_path(name)
    _, number = split_name(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # From source every time, no pickle cache: parallel builds share nothing.
            s = music21.converter.parse(str(path), number=number, forceSource=True, storePickle=False)
        except Exception as e:
            raise ScoreError(f"music21 could not parse {path.name}: {type(e).__name__}: {e}") from None
    if isinstance(s, music21.stream.Opus):
        scores = list(s.scores)
        if not scores:
            raise ScoreError("opus holds no scores")
        s = scores[0]
    if not isinstance(s, music21.stream.Score):
        # A lone Part or Stream: wrap it so .parts works.
        sc = music21.stream.Score()
        sc.insert(0, s)
        s = sc
    return s



def _median_pitch(notes: Sequence[tuple[float, float, int, int]]) -> float:
    return float(np.median([n[2] for n in notes])) if notes else 60.0


def score_to_notes(
    name: str,
    *,
    seed: int,
    tempo_range: tuple[float, float],
    max_seconds: float | None,
    default_velocity: int = 80,
) -> ScoreNotes:
    """Parse ``name`` and reduce it to notes at a seeded tempo with seeded GM programs."""
    import music21

    s = parse_score(name)
    rng = random.Random(f"demo-music:{seed}:{name}")
    lo, hi = tempo_range
    bpm = float(rng.randrange(int(lo), int(hi) + 1, 2))
    spq = 60.0 / bpm  # seconds per quarter note

    raw_parts: list[tuple[str, list[tuple[float, float, int, int]]]] = []
    parts = list(s.parts) or [s]
    for i, part in enumerate(parts):
        try:
            p = part.stripTies(inPlace=False)
        except Exception:
            p = part
        flat = p.flatten()
        notes: list[tuple[float, float, int, int]] = []
        for el in flat.notes:
            if isinstance(el, music21.harmony.Harmony):
                continue  # chord symbols of lead sheets are labels, not notes
            ql = float(el.quarterLength)
            if ql <= 0 or el.duration.isGrace:
                continue
            pitches = getattr(el, "pitches", ())
            if not pitches:
                continue
            start = float(flat.elementOffset(el)) * spq
            end = start + ql * spq
            vel = getattr(el.volume, "velocity", None) if el.volume is not None else None
            vel = int(vel) if vel else default_velocity
            vel = max(1, min(127, vel))
            for pt in pitches:
                midi = int(round(pt.ps))
                if 0 <= midi <= 127:
                    notes.append((round(start, 6), round(end, 6), midi, vel))
        if notes:
            pname = (part.partName or "").strip() or f"Part {i + 1}"
            raw_parts.append((pname, sorted(notes)))
    if not raw_parts:
        raise ScoreError("no pitched notes in the score")

    duration = max(n[1] for _, ns in raw_parts for n in ns)
    truncated_from = None
    if max_seconds is not None and duration > max_seconds:
        truncated_from = duration
        cut = []
        for pname, ns in raw_parts:
            kept = [(a, min(b, max_seconds), p, v) for a, b, p, v in ns if a < max_seconds - 1e-6]
            if kept:
                cut.append((pname, kept))
        raw_parts = cut
        duration = max(n[1] for _, ns in raw_parts for n in ns)

    ensemble, programs = choose_programs([_median_pitch(ns) for _, ns in raw_parts], rng)
    out_parts = []
    for i, ((pname, ns), prog) in enumerate(zip(raw_parts, programs)):
        ch = i % 15
        ch = ch + 1 if ch >= 9 else ch  # skip the GM drum channel
        out_parts.append(Part(pname, prog, ch, _fix_overlaps(ns)))
    # Parts that share a channel must share its program.
    by_ch: dict[int, int] = {}
    for p in out_parts:
        p.program = by_ch.setdefault(p.channel, p.program)

    key_sigs: list[tuple[float, int]] = []
    try:
        flat0 = parts[0].flatten()
        for ks in flat0.getElementsByClass(music21.key.KeySignature):
            t = round(float(flat0.elementOffset(ks)) * spq, 6)
            sh = int(ks.sharps)
            if key_sigs and key_sigs[-1][0] == t:
                key_sigs[-1] = (t, sh)
            elif not key_sigs or key_sigs[-1][1] != sh:
                key_sigs.append((t, sh))
    except Exception:
        key_sigs = []

    md = s.metadata
    dir_name = split_name(name)[0].split("/")[0]
    composer = (getattr(md, "composer", None) or "").strip() if md is not None else ""
    composer = composer or COMPOSERS.get(dir_name, dir_name)
    title = ""
    if md is not None:
        title = (md.title or md.movementName or "").strip()
    stem = _EXT_RE.sub("", "/".join(split_name(name)[0].split("/")[1:]) or split_name(name)[0])
    if not title or _EXT_RE.search(title) or title.lower() == stem.lower():
        title = stem
    title = re.sub(r"\s+", " ", title)
    copyright_ = None
    if md is not None and getattr(md, "copyright", None):
        copyright_ = str(md.copyright).strip() or None
    return ScoreNotes(
        name, composer, title, copyright_, bpm, ensemble, out_parts, round(duration, 6), truncated_from, key_sigs
    )


def _fix_overlaps(notes: list[tuple[float, float, int, int]]) -> list[tuple[float, float, int, int]]:
    """Within one part, a note that starts while the same pitch sounds ends the earlier one."""
    last: dict[int, int] = {}
    out: list[list] = []
    for a, b, p, v in sorted(notes):
        j = last.get(p)
        if j is not None and out[j][1] > a:
            if out[j][0] == a:  # same onset, same pitch: keep the longer one
                out[j][1] = max(out[j][1], b)
                continue
            out[j][1] = a
        last[p] = len(out)
        out.append([a, b, p, v])
    return [tuple(n) for n in sorted((n for n in out if n[1] - n[0] > 1e-4), key=lambda n: (n[0], n[2]))]


# --------------------------------------------------------------------------------------------
# Clip helpers
# --------------------------------------------------------------------------------------------


def clip_parts(parts: Sequence[Part], t0: float, t1: float) -> list[Part]:
    """The notes sounding in [t0, t1), shifted to start at 0 and cut at the window's edges."""
    out = []
    for p in parts:
        ns = [
            (round(max(a, t0) - t0, 6), round(min(b, t1) - t0, 6), pt, v)
            for a, b, pt, v in p.notes
            if a < t1 and b > t0
        ]
        ns = [n for n in ns if n[1] - n[0] > 1e-4]
        out.append(Part(p.name, p.program, p.channel, ns))
    return out


_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


def estimate_key(parts: Sequence[Part], sharps: int | None = None) -> str | None:
    """Krumhansl–Kessler key of the notes (duration-weighted pitch classes), e.g. ``"A minor"``.

    With a key signature (``sharps``, negative for flats) the answer is its major key or its
    relative minor, spelled to match the signature; without one, any of the 24 keys.
    """
    hist = np.zeros(12)
    for p in parts:
        for a, b, pt, _ in p.notes:
            hist[pt % 12] += b - a
    if hist.sum() <= 0 or np.count_nonzero(hist) < 2:
        return None
    if sharps is not None and -7 <= sharps <= 7:
        major = (7 * sharps) % 12
        key, _ = profile_key(hist, ((major, "major"), ((major + 9) % 12, "minor")))
        spelling = _SHARP_NAMES if sharps > 0 else _FLAT_NAMES
        names = {"major": spelling, "minor": spelling}
    else:
        key, _ = profile_key(hist)
        names = {"major": _MAJOR_NAMES, "minor": _MINOR_NAMES}
    return None if key is None else f"{names[key[1]][key[0]]} {key[1]}"
