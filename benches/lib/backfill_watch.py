#!/usr/bin/env python3
"""Watch a table copy from the outside, for benches/backfill_vs_copy.sh.

  backfill_watch.py sync --port PORT --sub NAME [--interval 0.02] [--timeout 3600]

    Native initial sync: polls the subscription's table state
    (pg_subscription_rel.srsubstate, one row: the bench subscribes to one
    table) on the subscriber over one psql session until it is 'r' (ready).
    Prints `d f r` (epoch seconds at which 'd' (data copy), 'f' (copy done)
    and 'r' were first seen; a state that was never observed between two
    polls takes the time of the next observed one). Start it before CREATE
    SUBSCRIPTION: until the subscription exists it just polls.

  backfill_watch.py until --port PORT --sql SQL [--interval 0.02] [--timeout 3600]

    Polls SQL (one row, one boolean column) over one psql session until it
    returns true; prints the epoch seconds at which it first did (e.g. when
    walshift.backfill.completed_at became visible).

  backfill_watch.py lag --src PORT --target PORT --slot SLOT --applied-sql SQL
      --progress-sql SQL --load-ts-sql SQL --pid PID [--sample 0.15] [--history 0.05]
      [--stall-timeout 300] --out FILE -- CMD...

    Live lag while a backfill runs. Waits until --progress-sql (on the target;
    one row `started completed rows_copied pauses paused_reason`, started and
    completed as epoch seconds or empty) shows the backfill started, then
    runs CMD (the write load on the source) and samples, every --sample
    seconds, until it shows the backfill completed; then stops CMD (SIGINT,
    then SIGKILL) and prints the lags. Three lags are measured:

    * load: now minus the newest load timestamp applied on the target
      (--load-ts-sql returns it as epoch seconds; the load writes
      clock_timestamp() into every row it inserts), or minus the load's start
      while none has arrived;
    * applied: the age of the oldest source WAL the target's applied position
      (--applied-sql) does not cover, as slot_watch.py computes it from the
      source's insert-LSN history (recorded every --history seconds);
    * slot: the same for the slot's confirmed_flush_lsn.

    Fails if PID (walshift) dies, if the backfill makes no progress (rows
    copied) for --stall-timeout seconds, or if the load exits by itself.
    Prints a human summary and a `RESULT` line:
    RESULT load_start load_end samples  load p50 p99 max  applied p50 p99 max
           slot p50 p99 max  rows_at_load_start started completed pauses paused_samples
"""

import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from slot_watch import Psql, alive, lag_seconds, lsn, percentile, slot_sql  # noqa: E402


def sync(args):
    db = Psql(args.port)
    sql = ("select coalesce((select r.srsubstate from pg_subscription_rel r "
           "join pg_subscription s on s.oid = r.srsubid "
           f"where s.subname = '{args.sub}' limit 1), '-')")
    seen = {}
    order = "idfsr"  # the catalog states in order (w and c live in shared memory)
    deadline = time.time() + args.timeout
    while True:
        state = db.row(sql)[0]
        t = time.time()
        if state in order:
            # A state skipped between two polls counts as reached now.
            for s in order[: order.index(state) + 1]:
                seen.setdefault(s, t)
        if state == "r":
            break
        if t > deadline:
            raise SystemExit(f"backfill_watch: subscription {args.sub} not ready after "
                             f"{args.timeout} s (state {state})")
        time.sleep(args.interval)
    db.close()
    print(f"{seen['d']:.3f} {seen['f']:.3f} {seen['r']:.3f}")


def until(args):
    db = Psql(args.port)
    deadline = time.time() + args.timeout
    while db.row(args.sql)[0] != "t":
        if time.time() > deadline:
            raise SystemExit(f"backfill_watch: still false after {args.timeout} s: {args.sql}")
        time.sleep(args.interval)
    t = time.time()
    db.close()
    print(f"{t:.3f}")


def num(text):
    return float(text) if text not in ("", None) else None


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lag(args):
    src, tgt = Psql(args.src), Psql(args.target)

    def progress():
        row = tgt.row(args.progress_sql)
        if len(row) < 5:  # no backfill row yet
            return None, None, 0, 0, ""
        return num(row[0]), num(row[1]), int(row[2] or 0), int(row[3] or 0), row[4]

    def check_pid():
        if not alive(args.pid):
            raise SystemExit(f"backfill_watch: walshift (pid {args.pid}) exited")

    # 1. Wait for the backfill to start.
    deadline = time.time() + args.stall_timeout
    while True:
        started, completed, rows0, _, _ = progress()
        if started is not None:
            break
        check_pid()
        if time.time() > deadline:
            raise SystemExit(f"backfill_watch: the backfill did not start within {args.stall_timeout} s")
        time.sleep(0.05)

    # 2. The load, sampled until the backfill completes.
    history = []
    with open(args.out, "w") as out:
        load = subprocess.Popen(args.cmd, stdout=out, stderr=subprocess.STDOUT)
    load_start = time.time()
    every = max(1, round(args.sample / args.history))
    lags = {"load": [], "applied": [], "slot": []}
    paused_samples = 0
    last_rows, last_move = rows0, time.time()
    tick = 0
    next_at = time.time()
    slot_q = slot_sql(args.slot)
    try:
        while True:
            tick += 1
            row = src.row(f"select pg_current_wal_insert_lsn(), ({slot_q})")
            ts = time.time()
            history.append((ts, lsn(row[0])))
            if tick % every == 0:
                applied = lsn(tgt.row(args.applied_sql)[0])
                ta = time.time()
                newest = num(tgt.row(args.load_ts_sql)[0])
                tl = time.time()
                started, completed, rows, pauses, reason = progress()
                lags["load"].append(max(0.0, tl - (newest if newest is not None else load_start)))
                lags["applied"].append(lag_seconds(history, ta, applied))
                lags["slot"].append(lag_seconds(history, ts, lsn(row[1])))
                if reason:
                    paused_samples += 1
                if rows != last_rows:
                    last_rows, last_move = rows, tl
                if completed is not None:
                    break
                check_pid()
                if load.poll() is not None:
                    with open(args.out) as f:
                        tail = "".join(f.readlines()[-10:])
                    raise SystemExit(f"backfill_watch: the load exited with {load.returncode}; "
                                     f"the end of its output:\n{tail}")
                if tl - last_move > args.stall_timeout:
                    raise SystemExit(f"backfill_watch: no backfill progress for {args.stall_timeout} s "
                                     f"({rows} rows copied)")
            next_at += args.history
            time.sleep(max(0.0, next_at - time.time()))
    finally:
        stop(load)
    load_end = time.time()
    src.close()
    tgt.close()

    n = len(lags["load"])
    print(f"  load ran {load_end - load_start:.1f} s; {n} lag samples, every {args.history * every:.2f} s")
    stats = []
    for name, label in (("load", "newest load row on the target"),
                        ("applied", "applied position (walshift.progress)"),
                        ("slot", "slot confirmed_flush_lsn")):
        v = lags[name]
        s = [percentile(v, 0.5), percentile(v, 0.99), max(v) if v else float("nan")]
        stats += s
        print(f"  lag (s) from the {label:<38} p50 {s[0]:6.3f}  p99 {s[1]:6.3f}  max {s[2]:6.3f}")
    print("RESULT " + " ".join(f"{x:.6f}" if isinstance(x, float) else str(x) for x in
                               [load_start, load_end, n] + stats +
                               [rows0, started, completed, pauses, paused_samples]))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sync")
    s.add_argument("--port", required=True)
    s.add_argument("--sub", required=True)
    s.add_argument("--interval", type=float, default=0.02)
    s.add_argument("--timeout", type=float, default=3600)
    u = sub.add_parser("until")
    u.add_argument("--port", required=True)
    u.add_argument("--sql", required=True)
    u.add_argument("--interval", type=float, default=0.02)
    u.add_argument("--timeout", type=float, default=3600)
    g = sub.add_parser("lag")
    g.add_argument("--src", required=True)
    g.add_argument("--target", required=True)
    g.add_argument("--slot", required=True)
    g.add_argument("--applied-sql", required=True)
    g.add_argument("--progress-sql", required=True)
    g.add_argument("--load-ts-sql", required=True)
    g.add_argument("--pid", type=int, required=True)
    g.add_argument("--sample", type=float, default=0.15)
    g.add_argument("--history", type=float, default=0.05)
    g.add_argument("--stall-timeout", type=float, default=300)
    g.add_argument("--out", required=True)
    g.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.mode == "sync":
        sync(args)
    elif args.mode == "until":
        until(args)
    else:
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            p.error("lag needs a load command after --")
        lag(args)


if __name__ == "__main__":
    sys.exit(main())
