"""General MIDI for the demo corpus's music: program names, the programs that suit each ensemble (with
the pitch range each plays well), the seeded choice of programs for a score's parts, and :class:`Part`,
one part's notes on one MIDI channel with one program.

Program numbers are 0-based as in the General MIDI 1 sound set (program 0 is "Acoustic Grand Piano");
the note tuples are ``(start s, end s, MIDI pitch, velocity)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

GM_PROGRAM_NAMES: tuple[str, ...] = (
    "Acoustic Grand Piano",
    "Bright Acoustic Piano",
    "Electric Grand Piano",
    "Honky-tonk Piano",
    "Electric Piano 1",
    "Electric Piano 2",
    "Harpsichord",
    "Clavinet",
    "Celesta",
    "Glockenspiel",
    "Music Box",
    "Vibraphone",
    "Marimba",
    "Xylophone",
    "Tubular Bells",
    "Dulcimer",
    "Drawbar Organ",
    "Percussive Organ",
    "Rock Organ",
    "Church Organ",
    "Reed Organ",
    "Accordion",
    "Harmonica",
    "Tango Accordion",
    "Acoustic Guitar (nylon)",
    "Acoustic Guitar (steel)",
    "Electric Guitar (jazz)",
    "Electric Guitar (clean)",
    "Electric Guitar (muted)",
    "Overdriven Guitar",
    "Distortion Guitar",
    "Guitar Harmonics",
    "Acoustic Bass",
    "Electric Bass (finger)",
    "Electric Bass (pick)",
    "Fretless Bass",
    "Slap Bass 1",
    "Slap Bass 2",
    "Synth Bass 1",
    "Synth Bass 2",
    "Violin",
    "Viola",
    "Cello",
    "Contrabass",
    "Tremolo Strings",
    "Pizzicato Strings",
    "Orchestral Harp",
    "Timpani",
    "String Ensemble 1",
    "String Ensemble 2",
    "Synth Strings 1",
    "Synth Strings 2",
    "Choir Aahs",
    "Voice Oohs",
    "Synth Voice",
    "Orchestra Hit",
    "Trumpet",
    "Trombone",
    "Tuba",
    "Muted Trumpet",
    "French Horn",
    "Brass Section",
    "Synth Brass 1",
    "Synth Brass 2",
    "Soprano Sax",
    "Alto Sax",
    "Tenor Sax",
    "Baritone Sax",
    "Oboe",
    "English Horn",
    "Bassoon",
    "Clarinet",
    "Piccolo",
    "Flute",
    "Recorder",
    "Pan Flute",
    "Blown Bottle",
    "Shakuhachi",
    "Whistle",
    "Ocarina",
    "Lead 1 (square)",
    "Lead 2 (sawtooth)",
    "Lead 3 (calliope)",
    "Lead 4 (chiff)",
    "Lead 5 (charang)",
    "Lead 6 (voice)",
    "Lead 7 (fifths)",
    "Lead 8 (bass + lead)",
    "Pad 1 (new age)",
    "Pad 2 (warm)",
    "Pad 3 (polysynth)",
    "Pad 4 (choir)",
    "Pad 5 (bowed)",
    "Pad 6 (metallic)",
    "Pad 7 (halo)",
    "Pad 8 (sweep)",
    "FX 1 (rain)",
    "FX 2 (soundtrack)",
    "FX 3 (crystal)",
    "FX 4 (atmosphere)",
    "FX 5 (brightness)",
    "FX 6 (goblins)",
    "FX 7 (echoes)",
    "FX 8 (sci-fi)",
    "Sitar",
    "Banjo",
    "Shamisen",
    "Koto",
    "Kalimba",
    "Bagpipe",
    "Fiddle",
    "Shanai",
    "Tinkle Bell",
    "Agogo",
    "Steel Drums",
    "Woodblock",
    "Taiko Drum",
    "Melodic Tom",
    "Synth Drum",
    "Reverse Cymbal",
    "Guitar Fret Noise",
    "Breath Noise",
    "Seashore",
    "Bird Tweet",
    "Telephone Ring",
    "Helicopter",
    "Applause",
    "Gunshot",
)
assert len(GM_PROGRAM_NAMES) == 128

# (program, lowest MIDI pitch, highest MIDI pitch) of instruments that suit classical part writing, one
# family per table; the comment names the programs in order.
_KEYBOARDS = (  # piano, harpsichord, church organ, e-piano 1, harp, marimba, vibraphone, guitar, accordion
    (0, 21, 108), (6, 29, 89), (19, 24, 96), (4, 28, 103), (46, 23, 103), (12, 45, 96), (11, 53, 89),
    (24, 40, 84), (21, 41, 89),
)  # fmt: skip
_STRINGS = (  # violin, viola, cello, contrabass, string ensemble 1, pizzicato strings, fiddle
    (40, 55, 103), (41, 48, 91), (42, 36, 76), (43, 28, 67), (48, 28, 96), (45, 28, 96), (110, 55, 100),
)  # fmt: skip
_WINDS = (  # flute, oboe, clarinet, bassoon, horn, trumpet, trombone, tuba, alto/tenor sax, recorder, cor anglais
    (73, 60, 96), (68, 58, 91), (71, 50, 94), (70, 34, 75), (60, 34, 77), (56, 52, 84), (57, 34, 72),
    (58, 28, 58), (65, 49, 81), (74, 60, 96), (69, 52, 81), (66, 44, 76),
)  # fmt: skip
_VOICES = ((52, 36, 84), (53, 36, 84))  # choir aahs, voice oohs
ENSEMBLES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "keyboard": _KEYBOARDS,
    "strings": _STRINGS,
    "winds": _WINDS,
    "choir": _VOICES,
    "mixed": _KEYBOARDS + _STRINGS + _WINDS + _VOICES,
}
_ENSEMBLE_WEIGHTS = {"keyboard": 3, "strings": 3, "winds": 2, "choir": 1, "mixed": 3}


@dataclass
class Part:
    name: str
    program: int
    channel: int
    notes: list[tuple[float, float, int, int]] = field(default_factory=list)  # (start s, end s, pitch, velocity)


def choose_programs(medians: Sequence[float], rng: random.Random) -> tuple[str, list[int]]:
    """Pick an ensemble and one GM program per part (by the part's median pitch)."""
    names = sorted(_ENSEMBLE_WEIGHTS)
    ensemble = rng.choices(names, weights=[_ENSEMBLE_WEIGHTS[n] for n in names])[0]
    palette = ENSEMBLES[ensemble]
    if ensemble == "keyboard":
        # One keyboard-like instrument for the whole score, like a piano reduction.
        lo = min(medians) if medians else 60
        hi = max(medians) if medians else 60
        fits = [e for e in palette if e[1] <= lo and hi <= e[2]] or [(0, 21, 108)]
        prog = rng.choice(fits)[0]
        return ensemble, [prog] * len(medians)
    progs = []
    for m in medians:
        fits = [e for e in palette if e[1] + 3 <= m <= e[2] - 3]
        if not fits:
            fits = sorted(palette, key=lambda e: min(abs(m - e[1]), abs(m - e[2])))[:2]
        progs.append(rng.choice(fits)[0])
    return ensemble, progs


def instrument_names(parts: Sequence[Part]) -> list[str]:
    """GM names of the programs that play at least one note, in part order, without repeats."""
    seen: list[str] = []
    for p in parts:
        if p.notes:
            n = GM_PROGRAM_NAMES[p.program]
            if n not in seen:
                seen.append(n)
    return seen
