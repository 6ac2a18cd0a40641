#!/usr/bin/env python3
"""Sampling and the summary of benches/soak.sh.

  soak_watch.py sample --pid PID --metrics-port PORT --src PORT \
      --tables T1,T2 --out CSV [--interval 1]

    Every --interval seconds (on a fixed schedule, so a slow sample does not
    shift the next) appends one CSV line until PID exits or SIGTERM:

      t            epoch seconds of the sample
      rss_kb       VmRSS of PID (/proc/PID/status)
      lag_s        walshift_replication_lag_seconds (scraped from /metrics;
                   the gauge is refreshed by the scrape itself); empty if
                   absent or NaN
      lag_bytes    walshift_replication_lag_bytes
      applied      walshift_apply_changes_total, summed over its labels
      source       n_tup_ins + n_tup_upd + n_tup_del of the tables on the
                   source (pg_stat_user_tables: rows actually changed)
      read_new     walshift_traffic_read_new_percent
      state        the walshift_controller_state label whose value is 1

  soak_watch.py report --csv CSV --load-start EPOCH --load-end EPOCH \
      --warmup S --window S --rate N --min-rate-pct P --rss-growth-max PCT \
      --lag-p99-max S --history JSON --verify-rc N --verify-json FILE \
      --compare TEXT --catchup-s S

    Prints the figures and one PASS/MISS line per target; exits 1 when a
    target is missed. RSS and lag are taken after the warm-up (samples from
    load-start + warmup to load-end); RSS growth compares the median of the
    last --window seconds with the median of the first --window seconds
    after the warm-up (both shortened to half of what is left when the run
    is too short, and said so).
"""

import argparse
import json
import math
import os
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from slot_watch import Psql, alive, percentile  # noqa: E402

FIELDS = ["t", "rss_kb", "lag_s", "lag_bytes", "applied", "source", "read_new", "state"]


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def scrape(port):
    """{name: value} of the sums over labels, plus 'state' (the state label set to 1)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception:
        return {}
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        name = key.split("{", 1)[0]
        if name == "walshift_controller_state":
            if v == 1 and 'state="' in key:
                out["state"] = key.split('state="', 1)[1].split('"', 1)[0]
            continue
        if math.isnan(v):
            continue
        out[name] = out.get(name, 0.0) + v
    return out


def sample(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    tables = ", ".join(f"'{t}'::regclass" for t in args.tables.split(","))
    src = Psql(args.src)
    sql = ("select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) from pg_stat_user_tables "
           f"where relid in ({tables})")
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))  # noqa: E731
    next_t = time.time()
    with open(args.out, "a", buffering=1) as out:
        if out.tell() == 0:
            out.write(",".join(FIELDS) + "\n")
        while not stop and alive(args.pid):
            t = time.time()
            m = scrape(args.metrics_port)
            row = {
                "t": f"{t:.3f}",
                "rss_kb": rss_kb(args.pid),
                "lag_s": m.get("walshift_replication_lag_seconds"),
                "lag_bytes": m.get("walshift_replication_lag_bytes"),
                "applied": m.get("walshift_apply_changes_total"),
                "source": int(src.row(sql)[0]),
                "read_new": m.get("walshift_traffic_read_new_percent"),
                "state": m.get("state", ""),
            }
            out.write(",".join(fmt(row[k]) if k != "t" else row[k] for k in FIELDS) + "\n")
            next_t += args.interval
            while next_t < time.time():  # a sample took longer than the interval
                next_t += args.interval
            time.sleep(max(0.0, next_t - time.time()))
    src.close()


def load_csv(path):
    rows = []
    with open(path) as f:
        header = f.readline().strip().split(",")
        for line in f:
            parts = line.rstrip("\n").split(",")
            if len(parts) != len(header):
                continue
            r = dict(zip(header, parts))
            for k in ("t", "rss_kb", "lag_s", "lag_bytes", "applied", "source", "read_new"):
                r[k] = float(r[k]) if r[k] != "" else None
            rows.append(r)
    return rows


def median(values):
    return percentile(values, 0.5)


def report(args):
    rows = load_csv(args.csv)
    missed = []

    def target(ok, line):
        print(f"{line}  {'PASS' if ok else 'MISS'}")
        if not ok:
            missed.append(line.split(":", 1)[0])

    t0, t1 = args.load_start, args.load_end
    duration = t1 - t0
    after = [r for r in rows if t0 + args.warmup <= r["t"] <= t1]
    during = [r for r in rows if t0 <= r["t"] <= t1]
    print(f"samples: {len(rows)} in all, {len(during)} during the load ({duration:.0f} s), "
          f"{len(after)} after the {args.warmup:.0f} s warm-up")

    # RSS
    rss = [r["rss_kb"] / 1024 for r in after if r["rss_kb"] is not None]
    left = (t1 - t0 - args.warmup)
    window = min(args.window, left / 2) if left > 0 else 0
    first = [r["rss_kb"] / 1024 for r in after if r["rss_kb"] is not None and r["t"] < t0 + args.warmup + window]
    last = [r["rss_kb"] / 1024 for r in after if r["rss_kb"] is not None and r["t"] >= t1 - window]
    if rss and first and last:
        growth = (median(last) - median(first)) / median(first) * 100
        note = "" if window >= args.window else f" (run too short for {args.window:.0f} s windows)"
        print(f"walshift RSS after warm-up: min {min(rss):.1f}  median {median(rss):.1f}  max {max(rss):.1f} MiB; "
              f"whole run max {max(r['rss_kb'] for r in rows if r['rss_kb'] is not None) / 1024:.1f} MiB")
        target(growth <= args.rss_growth_max,
               f"RSS growth: median of the last {window:.0f} s {median(last):.1f} MiB vs the first {window:.0f} s "
               f"after warm-up {median(first):.1f} MiB: {growth:+.1f} %{note}; target <= {args.rss_growth_max:g} %")
    else:
        target(False, "RSS growth: not enough samples after the warm-up")

    # lag
    lag = [r["lag_s"] for r in after if r["lag_s"] is not None]
    lag_all = [r["lag_s"] for r in during if r["lag_s"] is not None]
    lag_bytes = [r["lag_bytes"] for r in after if r["lag_bytes"] is not None]
    if lag:
        p99 = percentile(lag, 0.99)
        print(f"lag (walshift_replication_lag_seconds, 1 sample/s) after warm-up: p50 {median(lag):.3f}  "
              f"p99 {p99:.3f}  max {max(lag):.3f} s over {len(lag)} samples; during the warm-up max "
              f"{max(lag_all):.3f} s; lag bytes after warm-up p99 {percentile(lag_bytes, 0.99) / 1024:.0f} KiB")
        target(p99 <= args.lag_p99_max, f"lag p99: {p99:.3f} s; target <= {args.lag_p99_max:g} s")
    else:
        target(False, "lag p99: no lag samples after the warm-up")

    # rate
    src = [(r["t"], r["source"]) for r in during if r["source"] is not None]
    app = [(r["t"], r["applied"]) for r in during if r["applied"] is not None]
    if len(src) >= 2:
        rate = (src[-1][1] - src[0][1]) / (src[-1][0] - src[0][0])
        applied = (app[-1][1] - app[0][1]) / (app[-1][0] - app[0][0]) if len(app) >= 2 else float("nan")
        target(rate >= args.rate * args.min_rate_pct / 100,
               f"achieved rate: {rate:.0f} row changes/s on the source (pg_stat_user_tables; walshift applied "
               f"{applied:.0f}/s) for {args.rate:g} asked; target >= {args.min_rate_pct:g} % of it")
    else:
        target(False, "achieved rate: no source samples")
    print(f"catch-up after the load stopped: {args.catchup_s:.1f} s")

    # verify
    clean = args.verify_rc == 0
    detail = ""
    try:
        with open(args.verify_json) as f:
            v = json.load(f)
        tables = ", ".join(f"{t.get('target', '?')}: {t.get('counters', {}).get('rows', '?')} rows, "
                           f"{t.get('counters', {}).get('differences', '?')} differences"
                           for t in v.get("tables", []))
        detail = f" ({v.get('result')}, stream {v.get('stream')}; {tables})"
    except (OSError, ValueError):
        detail = " (no JSON report)"
    target(clean, f"divergence at the end: `walshift verify` exit {args.verify_rc}{detail}; independent count+hash "
                  f"compare: {args.compare}; target zero")
    if "differ" in args.compare:
        missed.append("independent compare")

    # shift
    reached = next((r["t"] for r in during if r["read_new"] == 100), None)
    final = during[-1]["read_new"] if during else None
    left_100 = sum(1 for a, b in zip(during, during[1:]) if a["read_new"] == 100 and b["read_new"] != 100)
    states = []
    for r in during:
        if r["state"] and (not states or states[-1] != r["state"]):
            states.append(r["state"])
    target(reached is not None and final == 100,
           f"shift to 100 % reads: {'reached ' + format(reached - t0, '.0f') + ' s into the load' if reached else 'never reached'}, "
           f"{final if final is None else int(final)} % at the end, left 100 % {left_100} times; states: {' -> '.join(states)}")

    # audit trail
    try:
        with open(args.history) as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        entries = None
        target(False, f"audit trail: unreadable ({e})")
    if entries is not None:
        decisions = [e for e in entries if e.get("kind") == "decision"]
        no_reason = [e for e in entries if not (e.get("reason") or "").strip()]
        no_gates = [e for e in decisions if not e.get("gates")]
        kinds = {}
        for e in entries:
            kinds[e.get("kind")] = kinds.get(e.get("kind"), 0) + 1
        print("decisions (walshift history):")
        for e in decisions:
            print(f"  {e.get('at')} {e.get('from_state')} -> {e.get('to_state')} read {e.get('read_new')} % "
                  f"v{e.get('version')}: {e.get('reason')}")
        target(decisions and not no_reason and not no_gates,
               f"audit trail: {len(entries)} entries ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
               f"{len(decisions)} decisions; without a reason: {len(no_reason)}; decisions without the gates' "
               f"values: {len(no_gates)}; target every decision explained")
    print(f"RESULT missed={len(missed)}")
    return 1 if missed else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--metrics-port", type=int, required=True)
    s.add_argument("--src", type=int, required=True)
    s.add_argument("--tables", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--interval", type=float, default=1.0)
    r = sub.add_parser("report")
    r.add_argument("--csv", required=True)
    r.add_argument("--load-start", type=float, required=True)
    r.add_argument("--load-end", type=float, required=True)
    r.add_argument("--warmup", type=float, default=120)
    r.add_argument("--window", type=float, default=300)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--min-rate-pct", type=float, default=95)
    r.add_argument("--rss-growth-max", type=float, default=10)
    r.add_argument("--lag-p99-max", type=float, default=1.0)
    r.add_argument("--history", required=True)
    r.add_argument("--verify-rc", type=int, required=True)
    r.add_argument("--verify-json", required=True)
    r.add_argument("--compare", required=True)
    r.add_argument("--catchup-s", type=float, required=True)
    args = p.parse_args()
    if args.cmd == "sample":
        return sample(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
