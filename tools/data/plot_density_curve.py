#!/usr/bin/python3
"""Draws bits per byte against mean activation density from the curve's figures.

    tools/data/plot_density_curve.py models/sotu-small/density-curve.json -o OUT.svg

The figures file is what tools/data/density_curve_figures.py writes: a list
of points, each with its `seqboat` figures (the C engine's `seqboat
perplexity` on the test split: bits_per_byte and per-layer act_rate). The
plot shows, against the mean over layers of the activation rate on test:
the models trained with a density target (one line through the points of a
target on the mean, the per-layer point apart), the control fine-tune, the
bundled model with only its inference-time act_bias raised, and the bounds
(mean rate 0.40, test bits per byte 1% above the bundled model's). A
self-contained SVG, no plotting library.
"""

import argparse
import json
import math
import os
import sys

W, H = 790, 470
LEFT, RIGHT, TOP, BOTTOM = 78, 225, 40, 62
COLOURS = {"trained": "#1f5fa8", "layer": "#c0392b", "control": "#333333",
           "act_bias": "#7f8c8d"}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mean(v):
    return sum(v) / len(v)


def label_of(p):
    """A point's label on the plot: the act_bias series by its bias alone."""
    if p["kind"] == "act_bias" and p.get("act_bias", 0):
        return "%+g" % p["act_bias"]
    return p.get("label", p["name"])


def nice_ticks(lo, hi, n=6):
    span = hi - lo
    step = 10 ** int(math.floor(math.log10(span / n)))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    t = step * int(lo / step)
    out = []
    while t <= hi + 1e-12:
        if t >= lo - 1e-12:
            out.append(round(t, 10))
        t += step
    return out


def plot(fig):
    pts = []
    for p in fig["points"]:
        s = p.get("seqboat", {}).get("test")
        if s:
            pts.append((p, mean(s["act_rate"]), s["bits_per_byte"]))
    if not pts:
        raise ValueError("no point has seqboat test figures")
    bound_x = fig["bounds"]["max_mean_act_rate"]
    bound_y = fig["bounds"]["max_test_bpb_seqboat"]
    ys = [y for _, _, y in pts] + [bound_y]
    x0, x1 = 0.0, 1.0
    pad = (max(ys) - min(ys)) * 0.08 or 0.01
    y0, y1 = min(ys) - pad, max(ys) + pad
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def X(x):
        return LEFT + (x - x0) / (x1 - x0) * pw

    def Y(y):
        return TOP + (y1 - y) / (y1 - y0) * ph

    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
         'font-family="sans-serif" font-size="12">' % (W, H, W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>'
         % (LEFT, esc(fig.get("title", "bits per byte against activation density")))]
    # allowed region and bounds
    o.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#eaf5ea"/>'
             % (X(x0), Y(bound_y), X(bound_x) - X(x0), Y(y0) - Y(bound_y)))
    o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#2e7d32" stroke-dasharray="5,4"/>'
             % (X(bound_x), TOP, X(bound_x), TOP + ph))
    o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#2e7d32" stroke-dasharray="5,4"/>'
             % (LEFT, Y(bound_y), LEFT + pw, Y(bound_y)))
    o.append('<text x="%.1f" y="%.1f" fill="#2e7d32" font-size="11">bounds: mean rate '
             '&#8804; %.2f,</text>' % (X(x0) + 6, Y(y0) - 20, bound_x))
    o.append('<text x="%.1f" y="%.1f" fill="#2e7d32" font-size="11">test &#8804; %.4f</text>'
             % (X(x0) + 6, Y(y0) - 7, bound_y))
    # axes and ticks
    o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>'
             % (LEFT, TOP, pw, ph))
    for t in nice_ticks(x0, x1, 10):
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#444"/>'
                 % (X(t), TOP + ph, X(t), TOP + ph + 5))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (X(t), TOP + ph + 19, t))
    for t in nice_ticks(y0, y1, 7):
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>'
                 % (LEFT, Y(t), LEFT + pw, Y(t)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%.3f</text>' % (LEFT - 6, Y(t) + 4, t))
    o.append('<text x="%.1f" y="%d" text-anchor="middle">mean activation rate over the layers, '
             'test split</text>' % (LEFT + pw / 2, H - 18))
    o.append('<text transform="translate(18,%.1f) rotate(-90)" text-anchor="middle">test bits per '
             'byte (seqboat perplexity)</text>' % (TOP + ph / 2))

    def series(kind):
        return sorted([(x, y, p) for p, x, y in pts if p["kind"] == kind], key=lambda t: t[0])

    for kind, dash in (("act_bias", "3,3"), ("trained", "")):
        s = series(kind)
        if kind == "trained":
            s = sorted(s + series("control"), key=lambda t: t[0])
        if len(s) > 1:
            o.append('<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>'
                     % (COLOURS[kind], ' stroke-dasharray="%s"' % dash if dash else "",
                        " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y, _ in s)))
    for p, x, y in pts:
        c = COLOURS[p["kind"]]
        if p["kind"] == "act_bias":
            o.append('<rect x="%.1f" y="%.1f" width="7" height="7" fill="white" stroke="%s" '
                     'stroke-width="1.5"/>' % (X(x) - 3.5, Y(y) - 3.5, c))
        elif p["kind"] == "layer":
            o.append('<path d="M%.1f,%.1f l5,8 l-10,0 z" fill="%s"/>' % (X(x), Y(y) - 5, c))
        else:
            o.append('<circle cx="%.1f" cy="%.1f" r="4.5" fill="%s"/>' % (X(x), Y(y), c))
        # labels: above right; the per-layer point above left; the act_bias
        # series below (the bundled model itself below right)
        dx, dy, anchor = 7, -6, "start"
        if p["kind"] == "layer":
            dx, anchor = -7, "end"
        elif p["kind"] == "act_bias":
            dx, dy, anchor = (7, 14, "start") if p.get("act_bias", 0) == 0 else (0, 17, "middle")
        o.append('<text x="%.1f" y="%.1f" font-size="11" fill="%s" text-anchor="%s">%s</text>'
                 % (X(x) + dx, Y(y) + dy, c, anchor, esc(label_of(p))))
    # legend
    lx, ly = LEFT + pw + 16, TOP + 10
    for kind, text in (("trained", "trained to a mean-rate target"),
                       ("layer", "trained to a per-layer target"),
                       ("control", "fine-tuned, no target"),
                       ("act_bias", "bundled model, act_bias raised")):
        if not any(p["kind"] == kind for p, _, _ in pts):
            continue
        c = COLOURS[kind]
        if kind == "act_bias":
            o.append('<rect x="%d" y="%d" width="7" height="7" fill="white" stroke="%s"/>'
                     % (lx, ly - 7, c))
        elif kind == "layer":
            o.append('<path d="M%d,%d l5,8 l-10,0 z" fill="%s"/>' % (lx + 4, ly - 8, c))
        else:
            o.append('<circle cx="%d" cy="%d" r="4.5" fill="%s"/>' % (lx + 4, ly - 3, c))
        o.append('<text x="%d" y="%d" font-size="11">%s</text>' % (lx + 14, ly, esc(text)))
        ly += 20
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figures", help="the curve's figures (JSON)")
    ap.add_argument("-o", "--output", required=True, help="SVG file to write")
    a = ap.parse_args(argv)
    try:
        with open(a.figures, encoding="utf-8") as f:
            fig = json.load(f)
        svg = plot(fig)
    except OSError as e:
        sys.stderr.write("plot_density_curve: %s: %s\n" % (a.figures, e.strerror or e))
        return 74
    except (ValueError, KeyError, TypeError) as e:
        sys.stderr.write("plot_density_curve: %s: not a figures file: %s\n" % (a.figures, e))
        return 65
    tmp = a.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(svg)
    os.replace(tmp, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
