"""Generates tests/fixtures/image/: varied JPEG/PNG inputs made with Pillow (or by hand where Pillow cannot write the
format: 16-bit RGB/LA/RGBA, 1/2/4-bit grey and palette, tRNS on grey/RGB, Adam7) and the uint8 CHW output of LLaVA's
CLIP preprocessing (Image.open().convert("RGB"), optional expand2square, CLIPImageProcessor use_fast=False), checked
against the processor's float output. Run: python3 tests/reference/make_image_fixtures.py (consumed by test_image.c).
Regenerating with the same Pillow reproduces the committed files byte for byte."""
import io
import os
import sys

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "image")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def processor(size):
    try:
        from transformers import CLIPImageProcessorPil as P  # transformers 5.x: the PIL ("slow") backend
    except ImportError:
        from transformers import CLIPImageProcessor as P
    kw = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    try:
        return P(use_fast=False, **kw)
    except TypeError:
        return P(**kw)


def expand2square(img, bg):
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    r = Image.new(img.mode, (s, s), bg)
    r.paste(img, ((s - w) // 2, (s - h) // 2) if w < h else (0, (s - h) // 2))
    return r


def u8_stage(img, size):
    """The PIL calls the processor makes: shortest edge -> size (int() of the long edge), BICUBIC, centre crop."""
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    nl = int(size * long_ / short)
    nw, nh = (size, nl) if w <= h else (nl, size)
    r = np.array(img.resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(r[top:top + size, left:left + size].transpose(2, 0, 1))


def content(rng, w, h, mode):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([127 + 100 * np.sin(x / (3 + w / 9) + c) * np.cos(y / (4 + h / 7) - c) for c in range(4)], -1)
    base += rng.normal(0, 18, base.shape)
    # sharp edges make the resampler's negative lobes and clipping matter
    base[(x // max(1, w // 5) + y // max(1, h // 4)) % 3 == 0] = 250
    a = np.clip(base, 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(a[..., 0], "L")
    if mode == "LA":
        return Image.fromarray(a[..., :2], "LA")
    if mode == "RGBA":
        return Image.fromarray(a, "RGBA")
    if mode == "CMYK":
        return Image.fromarray(a, "CMYK")
    return Image.fromarray(a[..., :3], "RGB")


def encode(img, kind, rng):
    b = io.BytesIO()
    if kind == "jpg":
        img.save(b, "JPEG", quality=90)
    elif kind == "jpg_prog":
        img.save(b, "JPEG", quality=85, progressive=True)
    elif kind == "jpg444":
        img.save(b, "JPEG", quality=92, subsampling=0)
    elif kind == "jpg422":
        img.save(b, "JPEG", quality=80, subsampling=1)
    elif kind == "png":
        img.save(b, "PNG")
    elif kind == "png_i":
        img.save(b, "PNG", interlace=1) if False else img.save(b, "PNG", optimize=False)
    elif kind == "pal":
        img.convert("RGB").quantize(64).save(b, "PNG")
    elif kind == "pal_trns":
        p = img.convert("RGB").quantize(16)
        p.save(b, "PNG", transparency=3)
    elif kind == "png16":
        a = np.array(img.convert("RGB")).astype(np.uint16) * 257 + rng.integers(0, 256, (img.size[1], img.size[0], 3), dtype=np.uint16) % 257
        return png16_rgb(a)
    elif kind == "grey16":
        a = np.array(img.convert("L")).astype(np.uint16) * 3
        Image.fromarray(a.astype(np.uint16)).save(b, "PNG")
    return b.getvalue()


def png16_rgb(a):
    """16-bit RGB PNG by hand (Pillow cannot write one)."""
    import struct
    import zlib
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def interlaced_png(img):
    """Adam7 PNG via a re-encode with libpng-compatible interlacing (Pillow does not write interlaced PNGs)."""
    import struct
    import zlib
    a = np.array(img.convert("RGB"))
    h, w, _ = a.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        raw += b"".join(b"\x00" + sub[y].tobytes() for y in range(sub.shape[0]))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

def png_raw(w, h, depth, ctype, rows, plte=None, trns=None):
    """A PNG by hand from packed rows (bytes each), for bit depths and colour types Pillow does not write."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows), 9)) + chunk(b"IEND", b"")


def pack_bits(a, depth):
    """Rows of small ints (h, w) packed MSB first at depth bits per sample."""
    per = 8 // depth
    rows = []
    for r in a:
        r = list(r) + [0] * (-len(r) % per)
        rows.append(bytes(sum(int(v) << (8 - depth * (j + 1)) for j, v in enumerate(r[i:i + per]))
                          for i in range(0, len(r), per)))
    return rows


def extra_image(rng, w, h, kind):
    """Formats and sizes beyond the random set: sub-byte grey and palette PNGs, 16-bit LA/RGBA, tRNS on grey/RGB,
    greyscale/CMYK progressive and EXIF-rotated JPEGs (Pillow's open() ignores the orientation, as LLaVA does), and
    aspect ratios around 2:1 where Pillow's resize switches to the vertical pass first."""
    img = content(rng, w, h, "RGB")
    a = np.array(img)
    if kind in ("g1", "g2", "g4"):
        d = int(kind[1])
        return png_raw(w, h, d, 0, pack_bits(a[..., 0] >> (8 - d), d))
    if kind in ("p1", "p2", "p4"):
        d = int(kind[1])
        n = 1 << d
        plte = rng.integers(0, 256, 3 * n, dtype=np.uint8).tobytes()
        return png_raw(w, h, d, 3, pack_bits(a[..., 1] >> (8 - d), d), plte=plte)
    if kind == "p8_alpha":
        plte = rng.integers(0, 256, 3 * 256, dtype=np.uint8).tobytes()
        trns = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        return png_raw(w, h, 8, 3, [r.tobytes() for r in a[..., 2]], plte=plte, trns=trns)
    if kind == "g8_trns":
        return png_raw(w, h, 8, 0, [r.tobytes() for r in a[..., 0]], trns=b"\x00\x80")
    if kind == "rgb_trns":
        return png_raw(w, h, 8, 2, [r.tobytes() for r in a], trns=b"\x00\x10\x00\x20\x00\x30")
    if kind in ("la16", "rgba16"):
        ch = 2 if kind == "la16" else 4
        b = np.concatenate([a, a[..., :1]], -1)[..., :ch] if ch == 4 else a[..., :2]
        v = b.astype(np.uint16) * 257 ^ rng.integers(0, 256, b.shape, dtype=np.uint16)
        return png_raw(w, h, 16, 4 if ch == 2 else 6, [r.astype(">u2").tobytes() for r in v])
    if kind == "g16_small":  # 16-bit grey that stays below 256 (no clipping)
        v = (a[..., 0].astype(np.uint16) // 2)
        return png_raw(w, h, 16, 0, [r.astype(">u2").tobytes() for r in v])
    b = io.BytesIO()
    if kind == "jpg_L_prog":
        img.convert("L").save(b, "JPEG", quality=88, progressive=True)
    elif kind == "jpg_CMYK_prog":
        img.convert("CMYK").save(b, "JPEG", quality=90, progressive=True)
    elif kind == "jpg_exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90
        img.save(b, "JPEG", quality=90, exif=exif)
    elif kind == "jpg_opt":
        img.save(b, "JPEG", quality=75, optimize=True, subsampling=2)
    elif kind == "jpg_q100":
        img.save(b, "JPEG", quality=100, subsampling=0)
    elif kind == "png_RGB":
        img.save(b, "PNG")
    else:
        raise ValueError(kind)
    return b.getvalue()


EXTRA = ([(w, h, k) for (w, h), k in zip([(37, 29), (64, 33), (17, 70), (90, 48), (29, 41), (55, 80)],
                                          ["g1", "g2", "g4", "p1", "p2", "p4"])] +
         [(73, 51, "p8_alpha"), (44, 66, "g8_trns"), (66, 44, "rgb_trns"), (58, 47, "la16"), (47, 58, "rgba16"),
          (39, 52, "g16_small"), (96, 64, "jpg_L_prog"), (64, 96, "jpg_CMYK_prog"), (120, 80, "jpg_exif"),
          (81, 121, "jpg_opt"), (45, 45, "jpg_q100")] +
         # tall images around 2:1 and beyond: vertical pass first iff 2 * (w - out_w) < h - out_h
         [(w, h, "png_RGB") for w, h in [(64, 128), (64, 129), (64, 127), (50, 100), (50, 101), (49, 99), (97, 195),
                                         (96, 191), (40, 300), (33, 250), (100, 150), (120, 260)]] +
         [(w, h, "jpg_opt") for w, h in [(60, 121), (121, 60), (75, 160), (160, 75)]])


def main():
    rng = np.random.default_rng(1234)
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    cases = []  # (w, h, mode, kind)
    fixed = [(1, 1, "RGB", "png"), (3, 500, "RGB", "jpg"), (500, 3, "RGB", "png"), (2, 2, "RGB", "jpg"),
             (17, 33, "L", "jpg"), (64, 64, "CMYK", "jpg"), (129, 77, "CMYK", "jpg"), (50, 40, "RGBA", "png"),
             (41, 60, "LA", "png"), (70, 45, "RGB", "pal"), (45, 70, "RGB", "pal_trns"), (90, 61, "RGB", "png16"),
             (61, 90, "L", "grey16"), (83, 59, "RGB", "png_i"), (33, 17, "L", "png"), (700, 420, "RGB", "jpg"),
             (300, 640, "RGB", "jpg_prog"), (333, 333, "RGB", "jpg444"), (101, 257, "RGB", "jpg422")]
    cases += fixed
    modes = ["RGB"] * 6 + ["L", "RGBA", "CMYK"]
    kinds = {"RGB": ["jpg", "jpg_prog", "jpg444", "jpg422", "png", "pal", "pal_trns", "png_i", "png16"],
             "L": ["jpg", "png", "grey16"], "RGBA": ["png"], "CMYK": ["jpg"]}
    while len(cases) < 110:
        mode = modes[rng.integers(len(modes))]
        kind = kinds[mode][rng.integers(len(kinds[mode]))]
        w = int(rng.integers(5, 260))
        h = int(max(1, w * np.exp(rng.normal(0, 0.6))))
        cases.append((w, min(h, 400), mode, kind))
    big = {15: (336, 1), 16: (224, 0), 17: (336, 0), 18: (224, 1)}
    manifest = []
    procs = {}
    maxerr = 0.0
    items = []  # (file name, bytes, [(size, pad)])
    for i, (w, h, mode, kind) in enumerate(cases):
        img = content(rng, w, h, mode)
        data = interlaced_png(img) if kind == "png_i" else encode(img, kind, rng)
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        variants = [big[i]] if i in big else [(32, 0), (48, 1)] if i % 2 == 0 else [(48, 0), (32, 1)]
        items.append((f"img{i:03d}_{kind}_{mode}_{w}x{h}.{ext}", data, variants))
    rng2 = np.random.default_rng(4321)  # a stream of its own: adding extras leaves the cases above unchanged
    for j, (w, h, kind) in enumerate(EXTRA):
        data = extra_image(rng2, w, h, kind)
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        i = len(cases) + j
        variants = [(32, 0), (48, 0), (32, 1)] if kind == "png_RGB" else [(32, 0), (48, 1)] if i % 2 == 0 else [(48, 0), (32, 1)]
        items.append((f"img{i:03d}_{kind}_{w}x{h}.{ext}", data, variants))
    for name, data, variants in items:
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        rgb = Image.open(io.BytesIO(data)).convert("RGB")
        for size, pad in variants:
            x = expand2square(rgb, tuple(int(m * 255) for m in MEAN)) if pad else rgb
            u8 = u8_stage(x, size)
            if size not in procs:
                procs[size] = processor(size)
            # A fresh RGB image without info: transformers 5.x's convert_to_rgb composites onto white any RGB image
            # whose info carries "transparency" (kept by convert("RGB") from P/RGB PNGs with tRNS); the LLaVA
            # reference's transformers (4.31) and expand2square's new image do not, so we follow them.
            pv = np.asarray(procs[size](Image.fromarray(np.array(x)), return_tensors="np")["pixel_values"][0])
            ref = ((u8.astype(np.float64) / 255).astype(np.float32) - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
            err = float(np.abs(pv - ref).max())
            maxerr = max(maxerr, err)
            if err > 1e-6:
                sys.exit(f"{name} S={size} pad={pad}: uint8 stage does not reproduce the processor (err {err})")
            out = f"{name}.s{size}p{pad}.u8"
            with open(os.path.join(OUT, out), "wb") as f:
                f.write(u8.tobytes())
            manifest.append(f"{name} {size} {pad} {out}")
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(items)} images, {len(manifest)} cases, {total} bytes, max |processor - normalised u8| = {maxerr:.3g}")


if __name__ == "__main__":
    main()
