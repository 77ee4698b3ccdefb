#!/usr/bin/env python3
"""Write the compiled SuperCollider synthdefs of the built-in sc_* modules without sclang.

    scripts/scsyndef.py            # (re)write modules/sc_*/<name>.scsyndef
    scripts/scsyndef.py --check    # exit 1 if a committed file differs from what this writes

sclang (SuperCollider's language, which compiles a SynthDef) needs Qt and is not what a synth
host installs: Debian's supercollider-server is scsynth alone. So each built-in module's
graph is written here, ugen by ugen, in the binary synthdef format version 2 ("SCgf", as
SuperCollider's "Synth Definition File Format" help page describes it), the same graph
sclang makes of the `.scd` source beside the file: a control ugen holding the params first,
then the ugens in the order their inputs need them, every value big-endian.
"""

import math
import struct
import sys
from pathlib import Path

SCALAR, CONTROL, AUDIO = 0, 1, 2
# BinaryOpUGen's special index: the operator.
MUL, MIN = 2, 12


def pstring(text):
    data = text.encode("ascii")
    assert len(data) < 256
    return struct.pack(">B", len(data)) + data


class SynthDef:
    """One synthdef: named params (one `Control` ugen, rate kr, so /n_set changes them on a
    running node), constants, and ugens added in an order where inputs come first."""

    def __init__(self, name, params):
        self.name = name
        self.params = params  # [(name, default)]
        self.constants = []
        self.ugens = []  # (class, rate, inputs, outputs' rates, special index)
        control = self.ugen("Control", CONTROL, [], [CONTROL] * len(params))
        self.controls = [(control[0], i) for i in range(len(params))]

    def ugen(self, cls, rate, inputs, outputs=None, special=0):
        """Add a ugen; `inputs` are (ugen, output) pairs or floats (constants). Returns its
        first output, or None when it has none."""
        if outputs is None:
            outputs = [rate]
        self.ugens.append((cls, rate, inputs, outputs, special))
        index = len(self.ugens) - 1
        return (index, 0) if outputs else None

    def _input(self, value):
        if isinstance(value, tuple):
            return struct.pack(">ii", *value)
        value = float(value)
        if value not in self.constants:
            self.constants.append(value)
        return struct.pack(">ii", -1, self.constants.index(value))

    def encode(self):
        ugens = b""
        for cls, rate, inputs, outputs, special in self.ugens:
            ugens += pstring(cls)
            ugens += struct.pack(">biih", rate, len(inputs), len(outputs), special)
            ugens += b"".join(self._input(v) for v in inputs)
            ugens += b"".join(struct.pack(">b", r) for r in outputs)
        out = pstring(self.name)
        out += struct.pack(">i", len(self.constants))
        out += b"".join(struct.pack(">f", c) for c in self.constants)
        out += struct.pack(">i", len(self.params))
        out += b"".join(struct.pack(">f", default) for _, default in self.params)
        out += struct.pack(">i", len(self.params))
        out += b"".join(pstring(n) + struct.pack(">i", i) for i, (n, _) in enumerate(self.params))
        out += struct.pack(">i", len(self.ugens)) + ugens
        out += struct.pack(">h", 0)  # no variants
        return out


def file_of(*defs):
    return b"SCgf" + struct.pack(">ih", 2, len(defs)) + b"".join(d.encode() for d in defs)


def sc_sine():
    # SynthDef(\sc_sine, { |freq = 440, amp = 0.3, phase = 0|
    #     Out.ar(0, SinOsc.ar(freq, phase * 2pi, Lag.kr(amp, 0.01)))
    # })
    d = SynthDef("sc_sine", [("freq", 440.0), ("amp", 0.3), ("phase", 0.0)])
    freq, amp, phase = d.controls
    radians = d.ugen("BinaryOpUGen", CONTROL, [phase, 2 * math.pi], special=MUL)
    sine = d.ugen("SinOsc", AUDIO, [freq, radians])
    glide = d.ugen("Lag", CONTROL, [amp, 0.01])
    scaled = d.ugen("BinaryOpUGen", AUDIO, [sine, glide], special=MUL)
    d.ugen("Out", AUDIO, [0.0, scaled], outputs=[])
    return d


def sc_lp():
    # SynthDef(\sc_lp, { |cutoff = 2000|
    #     Out.ar(0, LPF.ar(In.ar(NumOutputBuses.ir), cutoff.min(SampleRate.ir * 0.45)))
    # })
    d = SynthDef("sc_lp", [("cutoff", 2000.0)])
    (cutoff,) = d.controls
    first_input = d.ugen("NumOutputBuses", SCALAR, [])
    sound = d.ugen("In", AUDIO, [first_input])
    rate = d.ugen("SampleRate", SCALAR, [])
    highest = d.ugen("BinaryOpUGen", SCALAR, [rate, 0.45], special=MUL)
    below_nyquist = d.ugen("BinaryOpUGen", CONTROL, [cutoff, highest], special=MIN)
    low = d.ugen("LPF", AUDIO, [sound, below_nyquist])
    d.ugen("Out", AUDIO, [0.0, low], outputs=[])
    return d


DEFS = {"sc_sine": sc_sine, "sc_lp": sc_lp}


def main():
    check = sys.argv[1:] == ["--check"]
    modules = Path(__file__).resolve().parent.parent / "modules"
    stale = []
    for name, make in DEFS.items():
        path = modules / name / f"{name}.scsyndef"
        data = file_of(make())
        if check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(str(path))
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if stale:
        print("not what scripts/scsyndef.py writes: " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
