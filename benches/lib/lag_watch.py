#!/usr/bin/env python3
"""Compare walshift's reported lag with the true lag, for benches/lag_accuracy.sh.

  lag_watch.py accuracy --src PORT --tgt PORT --metrics URL --table SCHEMA.TABLE \
      --steady S --blocked S --recover S --idle-wait S --idle S \
      --load-out FILE --samples FILE -- PGBENCH...

    Starts the load (PGBENCH, which must run longer than the three loaded
    phases), waits 3 s, then samples every 100 ms:

      reported  walshift_replication_lag_seconds from /metrics (urllib);
      true      now - the newest `written_at` applied to the target table,
                read on the target (max over its 64 highest ids). The load
                writes written_at = clock_timestamp() on the source (same
                host, same clock) in single-row transactions at a steady
                rate, so the oldest source commit not applied yet is the one
                right after that newest applied row: true lag is this figure
                (an upper bound by the gap between two writes, 0.5 ms at
                2,000 txn/s, plus insert-to-commit time).

    Phases: steady; blocked (a session on the target holds `lock table ...
    in access exclusive mode` for --blocked s while the load keeps writing;
    the target query runs with lock_timeout 30 ms and, when it cannot read
    the table, keeps the last figure: nothing can be applied to it while the
    lock is held); recover (after the release). Then the load is stopped
    and, after --idle-wait s, reported lag alone is sampled for --idle s.
    Prints per phase: samples, unknown (NaN/missing) samples, true lag
    max, error (reported - true) p50 / p99 of |error| / max |error| and the
    signed min/max, and `RESULT phase n nan max_true p50_abs p99_abs max_abs
    min_err max_err` lines; idle: `RESULT idle n nan p50 p99 max`.

  lag_watch.py scrape --base URL --every S --page-every S

    Scrapes /metrics every S and / and /status every page-every s until
    killed (the observability load of the overhead phase).
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from slot_watch import Psql, percentile  # noqa: E402


def reported_lag(url):
    """walshift_replication_lag_seconds, NaN if absent or unreadable."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("walshift_replication_lag_seconds"):
                    parts = line.split()
                    if parts[0] in ("walshift_replication_lag_seconds",) or parts[0].startswith(
                            "walshift_replication_lag_seconds{"):
                        return float(parts[1])
    except Exception:
        pass
    return float("nan")


def accuracy(args):
    tgt = Psql(args.tgt, quiet=True)
    locker = Psql(args.tgt, quiet=True)
    tgt.row("select set_config('lock_timeout', '30ms', false)")
    tgt.row(f"""create or replace function pg_temp.newest_applied() returns float8 language plpgsql as $f$
        begin
            return (select extract(epoch from max(written_at))::float8
                    from (select written_at from {args.table} order by id desc limit 64) s);
        exception when lock_not_available then
            return -1;
        end $f$; select 1""")
    samples = open(args.samples, "w")
    samples.write("phase t reported true newest_applied\n")
    last_newest = [None]

    def true_lag():
        v = tgt.row("select pg_temp.newest_applied()")[0]
        t = time.time()
        if v == "" or v is None:
            return t, float("nan")
        v = float(v)
        if v < 0:  # the table is locked: nothing applied since the last read
            v = last_newest[0] if last_newest[0] is not None else float("nan")
        last_newest[0] = v
        return t, t - v

    results = {}

    def run_phase(name, seconds, with_true=True):
        rows = []
        end = time.time() + seconds
        next_at = time.time()
        while time.time() < end:
            if with_true:
                t, tl = true_lag()
            else:
                t, tl = time.time(), float("nan")
            rep = reported_lag(args.metrics)
            rows.append((t, rep, tl))
            samples.write(f"{name} {t:.3f} {rep:.4f} {tl:.4f} {last_newest[0] or 0:.3f}\n")
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.time()))
        results[name] = rows

    with open(args.load_out, "w") as out:
        load = subprocess.Popen(args.cmd, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(3)
    run_phase("steady", args.steady)
    # Block the applier: take the lock (waits for an apply transaction in
    # progress, if any), hold it, release it.
    locker.row(f"begin; lock table {args.table} in access exclusive mode; select 1")
    t_lock = time.time()
    run_phase("blocked", args.blocked)
    locker.row("commit; select 1")
    t_unlock = time.time()
    run_phase("recover", args.recover)
    if load.poll() is not None:
        raise SystemExit(f"lag_watch: the load exited early ({load.returncode}); see {args.load_out}")
    load.send_signal(signal.SIGINT)
    load.wait()
    time.sleep(args.idle_wait)
    run_phase("idle", args.idle, with_true=False)
    samples.close()
    tgt.close()
    locker.close()

    print(f"  lock held {t_unlock - t_lock:.2f} s; samples every 0.1 s (in {args.samples})")
    print(f"  {'phase':<8} {'n':>4} {'unknown':>7} {'true max':>8}   "
          f"{'|err| p50':>9} {'p99':>6} {'max':>6}   {'err min':>7} {'err max':>7}   {'max, 1-sample slack':>9}")
    prev_true = float("nan")
    for name in ("steady", "blocked", "recover"):
        rows = results[name]
        nan = sum(1 for _, r, tl in rows if math.isnan(r) or math.isnan(tl))
        ok = [(r, tl) for _, r, tl in rows if not (math.isnan(r) or math.isnan(tl))]
        err = [r - tl for r, tl in ok]
        ab = [abs(e) for e in err]
        # The gauge is refreshed every 100 ms (heartbeat.rs PUBLISH_INTERVAL):
        # also the error against the true lag of this or the previous sample,
        # whichever is closer (a reading up to one sample old).
        stale = []
        for _, r, tl in rows:
            cands = [abs(r - x) for x in (tl, prev_true) if not math.isnan(x)]
            if cands and not math.isnan(r):
                stale.append(min(cands))
            prev_true = tl
        stats = [len(rows), nan, max((tl for _, tl in ok), default=float("nan")),
                 percentile(ab, 0.5), percentile(ab, 0.99), max(ab, default=float("nan")),
                 min(err, default=float("nan")), max(err, default=float("nan")),
                 max(stale, default=float("nan"))]
        print(f"  {name:<8} {stats[0]:>4} {stats[1]:>7} {stats[2]:>8.3f}   "
              f"{stats[3]:>9.3f} {stats[4]:>6.3f} {stats[5]:>6.3f}   {stats[6]:>7.3f} {stats[7]:>7.3f}"
              f"   {stats[8]:>9.3f}")
        print("RESULT " + name + " " + " ".join(f"{x:.6g}" for x in stats))
    rows = results["idle"]
    rep = [r for _, r, _ in rows if not math.isnan(r)]
    nan = len(rows) - len(rep)
    print(f"  idle     {len(rows):>4} {nan:>7}   reported p50 {percentile(rep, 0.5):.3f} "
          f"p99 {percentile(rep, 0.99):.3f} max {max(rep, default=float('nan')):.3f}")
    print(f"RESULT idle {len(rows)} {nan} {percentile(rep, 0.5):.6g} {percentile(rep, 0.99):.6g} "
          f"{max(rep, default=float('nan')):.6g}")


def scrape(args):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    next_page = time.time()
    next_at = time.time()
    while True:
        try:
            urllib.request.urlopen(args.base + "/metrics", timeout=2).read()
            if time.time() >= next_page:
                urllib.request.urlopen(args.base + "/", timeout=2).read()
                urllib.request.urlopen(args.base + "/status", timeout=2).read()
                next_page += args.page_every
        except Exception:
            pass
        next_at += args.every
        time.sleep(max(0.0, next_at - time.time()))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--src", required=True)
    a.add_argument("--tgt", required=True)
    a.add_argument("--metrics", required=True)
    a.add_argument("--table", required=True)
    a.add_argument("--steady", type=float, default=10)
    a.add_argument("--blocked", type=float, default=5)
    a.add_argument("--recover", type=float, default=15)
    a.add_argument("--idle-wait", type=float, default=5)
    a.add_argument("--idle", type=float, default=10)
    a.add_argument("--load-out", required=True)
    a.add_argument("--samples", required=True)
    a.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("scrape")
    s.add_argument("--base", required=True)
    s.add_argument("--every", type=float, default=0.1)
    s.add_argument("--page-every", type=float, default=2)
    args = p.parse_args()
    if args.mode == "accuracy":
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            p.error("accuracy needs a load command after --")
        accuracy(args)
    else:
        scrape(args)


if __name__ == "__main__":
    sys.exit(main())
