#!/usr/bin/env python3
"""Watch logical replication consumers from the outside, for the bench scripts.

Two positions are watched per consumer:

* slot: the source slot's confirmed_flush_lsn (what the consumer reported as
  flushed; what lets the source recycle WAL);
* applied: the source commit position the target has committed, read on the
  target with a query the caller gives (walshift.progress.applied_lsn for
  walshift, pg_replication_origin_status.remote_lsn for a subscription).

  slot_watch.py drain --src PORT --slot NAME --endpos LSN --t0 EPOCH \
      --target PORT --applied-sql SQL [--pid PID] [--interval 0.1] [--timeout 1800]

    Polls until the slot's confirmed_flush_lsn >= endpos. Prints one line
    `confirm_s applied_s final_applied_lsn`: seconds from t0 until the slot
    reached endpos, and until the target first showed the final applied
    position. Fails if --pid dies or the timeout passes.

  slot_watch.py lag --src PORT --consumer NAME SLOT TPORT SQL [--consumer ...] \
      [--sample 0.5] [--history 0.1] [--catchup-timeout 600] --out FILE -- CMD...

    Runs CMD (the load) while sampling. The source's insert LSN is recorded
    every --history seconds; every --sample seconds each consumer's slot and
    applied positions are read and turned into a lag in bytes and in
    seconds: the age of the oldest WAL the consumer has not covered, i.e. now
    minus the time the source's insert LSN passed the consumer's position
    (linear interpolation between history samples). After CMD exits it keeps
    sampling until every slot reaches the insert LSN at that moment (catch-up
    time). Prints a human table and `RESULT` lines for the caller.

Positions are read over one persistent psql session per cluster (psql -At,
one query per line), so sampling costs a round trip, not a process start.
"""

import argparse
import subprocess
import sys
import time


def lsn(text):
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Psql:
    """A persistent psql session answering single-row queries."""

    def __init__(self, port, quiet=False):
        """quiet: psql -q, so commands other than queries print nothing
        (end them with a query: `...; select 1`)."""
        self.port = port
        self.proc = subprocess.Popen(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
             "-U", "postgres", "-d", "postgres"] + (["-q"] if quiet else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def row(self, sql):
        self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"psql on port {self.port} died (query: {sql})")
        return line.rstrip("\n").split("|")

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except FileNotFoundError:
        return False
    return True


def slot_sql(slot):
    return ("select coalesce((select confirmed_flush_lsn from pg_replication_slots "
            f"where slot_name = '{slot}'), '0/0')")


def drain(args):
    src, tgt = Psql(args.src), Psql(args.target)
    end = lsn(args.endpos)
    applied = []  # (t, lsn)
    deadline = args.t0 + args.timeout
    confirm_s = None
    while True:
        confirmed = lsn(src.row(slot_sql(args.slot))[0])
        t = time.time()
        applied.append((t, lsn(tgt.row(args.applied_sql)[0])))
        if confirmed >= end:
            confirm_s = t - args.t0
            break
        if args.pid and not alive(args.pid):
            raise SystemExit(f"slot_watch: process {args.pid} exited before the slot reached {args.endpos}")
        if t > deadline:
            raise SystemExit(f"slot_watch: slot {args.slot} still at {confirmed:X} < {end:X} "
                             f"after {args.timeout} s")
        time.sleep(args.interval)
    final = applied[-1][1]
    applied_s = next(t for t, a in applied if a >= final) - args.t0
    src.close()
    tgt.close()
    print(f"{confirm_s:.3f} {applied_s:.3f} {final >> 32:X}/{final & 0xFFFFFFFF:X}")


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def lag_seconds(history, ts, pos):
    """Seconds since the source's insert LSN first exceeded pos, as of ts."""
    # history: [(t, insert_lsn)] with t <= ts, insert_lsn non-decreasing.
    if pos >= history[-1][1]:
        return 0.0
    # The last sample at or below pos, and the next one above it.
    i = len(history) - 1
    while i >= 0 and history[i][1] > pos:
        i -= 1
    if i < 0:
        return ts - history[0][0]  # older than the history: a lower bound
    (t0, l0), (t1, l1) = history[i], history[i + 1]
    crossed = t0 + (pos - l0) / (l1 - l0) * (t1 - t0)
    return max(0.0, ts - crossed)


def lag(args):
    src = Psql(args.src)
    consumers = [{"name": n, "slot": s, "tgt": Psql(p), "sql": q,
                  "slot_lag": [], "bytes": [], "applied_lag": [], "catchup": None}
                 for n, s, p, q in args.consumer]
    slot_cols = ", ".join(f"({slot_sql(c['slot'])})" for c in consumers)
    history = []

    def sample(full):
        # Insert LSN and the slots in one query, so they are consistent.
        row = src.row(f"select pg_current_wal_insert_lsn(), {slot_cols}")
        ts = time.time()
        history.append((ts, lsn(row[0])))
        if not full:
            return None
        out = []
        for c, confirmed in zip(consumers, row[1:]):
            applied = lsn(c["tgt"].row(c["sql"])[0])
            ta = time.time()
            out.append((c, ts, lsn(row[0]), lsn(confirmed), ta, applied))
        return out

    every = max(1, round(args.sample / args.history))
    # A little history before the load starts, so early lags interpolate.
    for _ in range(5):
        sample(False)
        time.sleep(args.history)
    with open(args.out, "w") as out:
        load = subprocess.Popen(args.cmd, stdout=out, stderr=subprocess.STDOUT)
    load_start = time.time()
    tick = 0
    next_at = time.time()
    while load.poll() is None:
        tick += 1
        got = sample(tick % every == 0)
        for c, ts, ins, confirmed, ta, applied in got or []:
            c["bytes"].append(max(0, ins - confirmed))
            c["slot_lag"].append(lag_seconds(history, ts, confirmed))
            c["applied_lag"].append(lag_seconds(history, ta, applied))
        next_at += args.history
        time.sleep(max(0.0, next_at - time.time()))
    load_end = time.time()
    if load.returncode != 0:
        raise SystemExit(f"slot_watch: the load exited with {load.returncode} (see {args.out})")
    end = lsn(src.row("select pg_current_wal_insert_lsn()")[0])
    # Flush the source's WAL up to there (see flush_wal in cluster.sh).
    src.row("select set_config('synchronous_commit', 'on', false)")
    src.row("select txid_current()")
    deadline = load_end + args.catchup_timeout
    while any(c["catchup"] is None for c in consumers):
        row = src.row(f"select {slot_cols}")
        t = time.time()
        for c, confirmed in zip(consumers, row):
            if c["catchup"] is None and lsn(confirmed) >= end:
                c["catchup"] = t - load_end
        if t > deadline:
            raise SystemExit(f"slot_watch: consumers did not catch up within {args.catchup_timeout} s")
        time.sleep(0.1)

    print(f"load ran {load_end - load_start:.1f} s; {len(consumers[0]['bytes'])} samples each, "
          f"every {args.history * every:.2f} s")
    print(f"{'consumer':<10} {'lag (s) from slot: p50 / p99 / max':>36}   "
          f"{'slot lag bytes: p50 / p99 / max':>34}   {'applied lag (s): p50 / p99 / max':>34}   catch-up")
    for c in consumers:
        s, b, a = c["slot_lag"], c["bytes"], c["applied_lag"]
        stats = [percentile(s, 0.5), percentile(s, 0.99), max(s),
                 percentile(b, 0.5), percentile(b, 0.99), max(b),
                 percentile(a, 0.5), percentile(a, 0.99), max(a), c["catchup"]]
        print(f"{c['name']:<10} {stats[0]:>14.3f} / {stats[1]:.3f} / {stats[2]:.3f}   "
              f"{stats[3]:>14.0f} / {stats[4]:.0f} / {stats[5]:.0f}   "
              f"{stats[6]:>14.3f} / {stats[7]:.3f} / {stats[8]:.3f}   {stats[9]:.2f} s")
        print("RESULT " + c["name"] + " " + " ".join(f"{x:.6g}" for x in stats))
    src.close()
    for c in consumers:
        c["tgt"].close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--src", required=True)
    d.add_argument("--slot", required=True)
    d.add_argument("--endpos", required=True)
    d.add_argument("--t0", type=float, required=True)
    d.add_argument("--target", required=True)
    d.add_argument("--applied-sql", required=True)
    d.add_argument("--pid", type=int)
    d.add_argument("--interval", type=float, default=0.1)
    d.add_argument("--timeout", type=float, default=1800)
    g = sub.add_parser("lag")
    g.add_argument("--src", required=True)
    g.add_argument("--consumer", nargs=4, action="append", required=True,
                   metavar=("NAME", "SLOT", "TARGET_PORT", "APPLIED_SQL"))
    g.add_argument("--sample", type=float, default=0.5)
    g.add_argument("--history", type=float, default=0.1)
    g.add_argument("--catchup-timeout", type=float, default=600)
    g.add_argument("--out", required=True)
    g.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.mode == "drain":
        drain(args)
    else:
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            p.error("lag needs a load command after --")
        lag(args)


if __name__ == "__main__":
    sys.exit(main())
