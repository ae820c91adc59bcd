#!/usr/bin/env python3
"""The test pattern of the guest scenario `vnc` (scripts/guest/build-assets.sh, tests-e2e).

Pixel (x, y) of a W x H screen has
    red   = x mod 256
    green = y mod 256
    blue  = (64 * (x div 256) + 16 * (y div 256) + ((x xor y) mod 16)) mod 256
so every shift, stride or channel-order error changes some pixel.

    fb-pattern.py raw W H OUT        write the pattern as the guest's /dev/fb0 takes it: 32 bpp,
                                     red/green/blue at bits 16/8/0 of a little-endian word (bytes
                                     B, G, R, 0), W * 4 bytes a row, top row first
    fb-pattern.py check W H PNG...   compare screen captures (e.g. `vncdo capture`) with the
                                     pattern, pixel for pixel (RGB); one line per file:
                                     `ok FILE` or `bad FILE why=...`; exit 0 iff all match.
                                     Needs Pillow (vncdotool brings it).
"""
import sys


def row_rgb(y, w):
    """Row y of the pattern as R, G, B bytes."""
    out = bytearray(w * 3)
    for x in range(w):
        i = 3 * x
        out[i] = x & 255
        out[i + 1] = y & 255
        out[i + 2] = (64 * (x >> 8) + 16 * (y >> 8) + ((x ^ y) & 15)) & 255
    return out


def raw(w, h, path):
    with open(path, "wb") as f:
        for y in range(h):
            rgb = row_rgb(y, w)
            bgrx = bytearray(w * 4)
            bgrx[0::4] = rgb[2::3]
            bgrx[1::4] = rgb[1::3]
            bgrx[2::4] = rgb[0::3]
            f.write(bgrx)


def check(w, h, paths):
    from PIL import Image

    want = b"".join(row_rgb(y, w) for y in range(h))
    ok = True
    for p in paths:
        try:
            img = Image.open(p).convert("RGB")
        except Exception as e:  # a missing or broken capture is a failure, not a crash
            print(f"bad {p} why=unreadable:{type(e).__name__}")
            ok = False
            continue
        if img.size != (w, h):
            print(f"bad {p} why=size:{img.size[0]}x{img.size[1]}(want:{w}x{h})")
            ok = False
            continue
        got = img.tobytes()
        if got == want:
            print(f"ok {p} pixels={w * h}")
            continue
        ok = False
        bad = [i // 3 for i in range(0, len(want), 3) if got[i:i + 3] != want[i:i + 3]]
        i = bad[0]
        x, y = i % w, i // w
        g = tuple(got[3 * i:3 * i + 3])
        e = tuple(want[3 * i:3 * i + 3])
        print(f"bad {p} why=pixels:{len(bad)}/{w * h}-differ,first=({x},{y}),"
              f"got=rgb{g},want=rgb{e}".replace(", ", ","))
    return ok


def main(argv):
    if len(argv) >= 5 and argv[1] == "raw":
        raw(int(argv[2]), int(argv[3]), argv[4])
        return 0
    if len(argv) >= 5 and argv[1] == "check":
        return 0 if check(int(argv[2]), int(argv[3]), argv[4:]) else 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
