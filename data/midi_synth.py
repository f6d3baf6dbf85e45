"""Notes -> MIDI file -> audio: a Standard MIDI File written from a note list (music21's MIDI classes
serialise it), rendered to WAV with Debian's ``fluidsynth`` and a General MIDI soundfont.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from data.general_midi import Part

_PPQ = 480


def midi_bytes(parts: Sequence[Part], bpm: float, *, tail_seconds: float = 0.0, title: str = "") -> bytes:
    """A type-1 Standard MIDI File for the parts at a constant tempo.

    The events come straight from the note list (seconds -> ticks at ``bpm``, note-offs before note-ons
    on the same tick, every note at least one tick long); music21's MIDI classes only serialise them.
    music21's stream-to-MIDI translation is not used: it would re-derive onsets from quarter lengths and
    velocities from dynamics, and the rendered corpus audio is defined by this note list.
    """
    from music21 import midi

    meta, voice = midi.MetaEvents, midi.ChannelVoiceMessages
    tps = bpm / 60.0 * _PPQ  # ticks per second

    def tick(t: float) -> int:
        return int(round(t * tps))

    def event(trk: midi.MidiTrack, kind: midi.MidiEventTypes, data: bytes | int = b"", channel: int = 0,
              note: tuple[int, int] | None = None) -> midi.MidiEvent:
        ev = midi.MidiEvent(trk, type=kind, channel=channel + 1)  # music21 numbers channels 1-16
        if note is None:
            ev.data = data
        else:
            ev.pitch, ev.velocity = note
        return ev

    def text(s: str) -> bytes:
        return s.encode("latin-1", "replace")[:120]

    def track(trk: midi.MidiTrack, events: list[tuple[int, int, midi.MidiEvent]]) -> midi.MidiTrack:
        """``events`` as (tick, order within the tick, event), delta-timed, then end-of-track."""
        now = 0
        for t, _, ev in sorted(events, key=lambda e: (e[0], e[1])):
            trk.events += [midi.DeltaTime(trk, time=t - now), ev]
            now = t
        trk.events += [midi.DeltaTime(trk, time=max(0, end_tick - now)), event(trk, meta.END_OF_TRACK)]
        return trk

    last = max((n[1] for p in parts for n in p.notes), default=0.0)
    end_tick = tick(last + tail_seconds)
    usec = int(round(60_000_000 / bpm))
    mf = midi.MidiFile()  # format 1
    mf.ticksPerQuarterNote = _PPQ
    trk = midi.MidiTrack(0)
    mf.tracks.append(track(trk, [
        (0, 0, event(trk, meta.SEQUENCE_TRACK_NAME, text(title or "score"))),
        (0, 1, event(trk, meta.SET_TEMPO, usec.to_bytes(3, "big"))),
        (0, 2, event(trk, meta.TIME_SIGNATURE, b"\x04\x02\x18\x08")),  # 4/4
    ]))
    for p in parts:
        ch = p.channel & 0x0F
        trk = midi.MidiTrack(len(mf.tracks))
        evs = [(0, 0, event(trk, meta.SEQUENCE_TRACK_NAME, text(p.name))),
               (0, 1, event(trk, voice.PROGRAM_CHANGE, p.program & 0x7F, ch))]
        for a, b, pt, v in p.notes:
            ta = tick(a)
            evs.append((max(tick(b), ta + 1), 2, event(trk, voice.NOTE_OFF, channel=ch, note=(pt, 0))))
            evs.append((ta, 3, event(trk, voice.NOTE_ON, channel=ch, note=(pt, v))))
        mf.tracks.append(track(trk, evs))
    return mf.writestr()


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
# fluidsynth's own default gain (0.2) renders quietly; 0.5 leaves headroom on dense scores, and the
# audio is peak-normalised afterwards anyway.
FLUIDSYNTH_GAIN = 0.5


def find_soundfont(path: str | None) -> Path:
    cands = [path] if path else []
    cands += [DEFAULT_SOUNDFONT, "/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/soundfonts/default.sf2"]
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(
        f"no General MIDI soundfont found (tried {cands}); install Debian's fluid-soundfont-gm (scripts/setup.sh does)"
    )


def render_midi(midi_path: Path, wav_out: Path, *, sample_rate: int, soundfont: Path,
                timeout: float = 300.0) -> None:
    """Render a MIDI file to a float32 WAV with fluidsynth (no audio device; faster than real time)."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise FileNotFoundError(
            "fluidsynth is not installed (Debian package fluidsynth; scripts/setup.sh installs it)"
        )
    cmd = [
        exe, "-ni", "-q",  # no shell, no MIDI input, quiet
        "-g", str(FLUIDSYNTH_GAIN), "-r", str(int(sample_rate)),
        "-O", "float", "-T", "wav", "-o", "synth.cpu-cores=1",
        "-F", str(wav_out), str(soundfont), str(midi_path),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not wav_out.is_file() or wav_out.stat().st_size <= 44:
        raise RuntimeError(f"fluidsynth failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")


def peak_normalise(y: np.ndarray, peak_db: float = -1.0) -> np.ndarray:
    m = float(np.max(np.abs(y))) if y.size else 0.0
    if m <= 0 or not math.isfinite(m):
        return y
    return (y * (10 ** (peak_db / 20) / m)).astype(np.float32)
