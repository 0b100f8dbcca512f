#!/usr/bin/env python3
"""Markdown table of bench/compare.sh's results (figure, side, run, loadavg, JSON per line)."""
import json
import sys

# figure prefix -> rows: (label, JSON field, kind, target text, bound)
#   kind "ratio_min": met when mean(lib)/mean(raw) >= bound
#   kind "ratio_max": met when mean(lib)/mean(raw) <= bound
#   kind "plus_max":  met when mean(lib) <= mean(raw) + bound
#   kind "lib_max":   met when max(lib) <= bound (raw shown for reference)
#   kind "report":    no target
ROWS = {
    "register": [("registrations/s", "per_s", "ratio_min", ">= 0.9x raw", 0.9),
                 ("p50 ms", "p50_ms", "report", "", 0),
                 ("p99 ms", "p99_ms", "report", "", 0)],
    "watch": [("ack p50 ms", "ack_p50_ms", "report", "", 0),
              ("ack p99 ms", "ack_p99_ms", "plus_max", "<= raw + 0.1 ms", 0.1),
              ("ack p99.9 ms", "ack_p999_ms", "report", "", 0),
              ("send p50 ms", "send_p50_ms", "plus_max", "<= raw + 0.02 ms", 0.02),
              ("send p99 ms", "send_p99_ms", "report", "", 0),
              ("achieved puts/s", "achieved_rate_per_s", "report", "", 0)],
    "keepalive": [("CPU % of a core", "cpu_pct_of_core", "ratio_max", "<= 1.2x raw", 1.2),
                  ("us CPU per keepalive", "cpu_us_per_keepalive", "report", "", 0),
                  ("library threads", "threads_library", "lib_max", "<= 4", 4),
                  ("gRPC threads", "threads_grpc", "report", "", 0),
                  ("leases lost", "leases_lost", "lib_max", "0", 0)],
}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def mean(vs):
    vs = [v for v in vs if isinstance(v, (int, float))]
    return sum(vs) / len(vs) if vs else None


def main():
    path, runs = sys.argv[1], int(sys.argv[2])
    data = {}  # (figure, side) -> list of (json, load)
    order = []
    loads_of = {}
    for line in open(path):
        figure, side, _run, load, js = line.rstrip("\n").split("\t", 4)
        try:
            j = json.loads(js)
        except json.JSONDecodeError:
            j = {"error": "unparsable output"}
        if figure not in order:
            order.append(figure)
        data.setdefault((figure, side), []).append((j, load))
        loads_of.setdefault(figure, []).append(load)  # in run order: lib raw lib raw
    head = (["figure"] + [f"library run {i + 1}" for i in range(runs)] +
            [f"raw run {i + 1}" for i in range(runs)] + ["lib/raw (means)", "target", "met",
                                                          "loadavg (1 min) per run"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    errors = []
    for figure in order:
        kind_key = figure.split()[0]
        lib = data.get((figure, "library"), [])
        raw = data.get((figure, "raw"), [])
        for j, _ in lib + raw:
            if "error" in j:
                errors.append(f"{figure}: {j['error']}")
        loads = " ".join(loads_of.get(figure, []))
        for label, field, kind, target, bound in ROWS[kind_key]:
            lv = [j.get(field) for j, _ in lib] + [None] * (runs - len(lib))
            rv = [j.get(field) for j, _ in raw] + [None] * (runs - len(raw))
            lm, rm = mean(lv), mean(rv)
            ratio = lm / rm if lm is not None and rm else None
            met = ""
            if kind == "ratio_min" and ratio is not None:
                met = "yes" if ratio >= bound else "no"
            elif kind == "ratio_max" and ratio is not None:
                met = "yes" if ratio <= bound else "no"
            elif kind == "plus_max" and lm is not None and rm is not None:
                met = "yes" if lm <= rm + bound else "no"
            elif kind == "lib_max" and lm is not None:
                met = "yes" if max(v for v in lv if v is not None) <= bound else "no"
                if field == "threads_library":
                    rv = ["-"] * runs
            cells = ([f"{figure}: {label}"] + [fmt(v) for v in lv[:runs]] +
                     [fmt(v) for v in rv[:runs]] +
                     [f"{ratio:.2f}x" if ratio is not None else "-", target, met, loads])
            print("| " + " | ".join(cells) + " |")
    for e in errors:
        print(f"\nerror: {e}")


if __name__ == "__main__":
    main()
