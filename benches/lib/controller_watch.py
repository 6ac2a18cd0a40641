#!/usr/bin/env python3
"""Watch walshift's cutover controller through Redis, for benches/controller_gates.sh.

  controller_watch.py subscribe --port PORT --channel NAME

    A Redis subscriber (raw RESP over a socket; no client library needed).
    One connection SUBSCRIBEs to NAME; a second GETs the key NAME, then runs
    MONITOR. Prints, flushed, one line per event, each stamped with this
    process's wall clock right after the bytes were read from the socket:

      READY
      CUR <t> <json>                 the key's value at start (GET)
      MSG <t> <json>                 a message on the channel
      MON <t> <redis_time> <version> the script's PUBLISH as MONITOR shows
                                     it ([0 lua] "PUBLISH" ...), with the
                                     time Redis gives it

    It runs in its own process so that the stamps do not wait for another
    thread's work (the GIL).

  controller_watch.py rollback --src PORT --tgt PORT --redis-port PORT \
      --channel NAME --table SCHEMA.TABLE --walshift BIN --config FILE \
      --migration NAME --pid PID --read-new N --injections N --max-lag S \
      --bound S --load-out FILE --log FILE --results FILE -- LOAD...

    Starts `subscribe`, waits until the published decision is `shifting`
    at --read-new % (walshift backfills, verifies and advances first),
    starts the load (LOAD, e.g. pgbench -R ... -T 86400; stopped at the
    end), waits --warmup s, then --injections times:

      1. waits a random --settle-min..--settle-max s (so the lock falls at
         a random point of the controller's evaluation cycle);
      2. blocks the applier: a psql session on the target runs `begin;
         lock table TABLE in access exclusive mode` and, right after the
         lock is granted and in the same transaction, reads the server's
         clock_timestamp() (t_lock) and the newest `occurred_at` applied
         to TABLE (max over its 64 highest ids; the load writes
         occurred_at = clock_timestamp() on the source, same host);
      3. waits for the subscriber to receive a decision newer than the one
         before the lock with state `rolled_back` and read.new = 0
         (t_seen);
      4. releases the lock (rollback), waits until walshift.progress
         shows the source's insert position taken after the release (the
         target caught up), runs `walshift --config FILE resume` and waits
         for the subscriber to receive `shifting` at --read-new % again.

    The violation's onset is when the true lag (age of the oldest source
    commit not applied) passes --max-lag. Two estimates are reported:

      onset = newest applied occurred_at + max_lag: the oldest unapplied
        commit came after that row, so the true onset is no earlier and
        t_seen - onset is an upper bound of the true delay (by the gap
        between two inserts plus insert-to-commit time: milliseconds).
        The applier can be blocked before the lock is granted (its
        statement queues behind the lock request), and its last batch
        holds commits older than the lock, so this is the one checked.
      onset = t_lock + max_lag (the issue's wording).

    Every message received (not the initial GET) also gives a latency:
    receive time - updated_at (the decision's time, walshift's clock,
    same host, milliseconds, truncated); it includes storing the decision
    in the state schema and the Redis script. And, where MONITOR showed
    the script's PUBLISH: receive time - Redis's time of that PUBLISH.

    A rollback received outside an injection (between step 4's re-advance
    and the next lock) is counted as spontaneous; the bench resumes and
    goes on. Prints a line per injection and RESULT lines, also written
    to --results:

      RESULT rollback n missed min p50 p90 max over_bound     (newest-applied onset)
      RESULT rollback_lock n min p50 p90 max over_bound       (lock + max_lag onset)
      RESULT latency n p50 p99 max                            (decision -> subscriber, s)
      RESULT publish n p50 p99 max                            (PUBLISH -> subscriber, s)
      RESULT readvance n p50 max                              (resume started -> back at N %)
      RESULT spontaneous k
      RESULT reasons k_lag k_other
      RESULT lockwait p50 max                                 (lock requested -> granted)
      RESULT load_rate txn_per_s
"""

import argparse
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from slot_watch import Psql, alive, lsn, percentile  # noqa: E402


# --- RESP -------------------------------------------------------------------

class RespError(str):
    pass


INCOMPLETE = object()


def resp_parse(buf, pos):
    """One RESP value at buf[pos:]: (value, next_pos), or (INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return INCOMPLETE, pos
    kind, line, nxt = buf[pos:pos + 1], buf[pos + 1:end], end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), nxt
    if kind == b"-":
        return RespError(line.decode("utf-8", "replace")), nxt
    if kind == b":":
        return int(line), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return INCOMPLETE, pos
        return buf[nxt:nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            v, nxt = resp_parse(buf, nxt)
            if v is INCOMPLETE:
                return INCOMPLETE, pos
            items.append(v)
        return items, nxt
    raise SystemExit(f"controller_watch: unexpected RESP type {kind!r}")


class RespConn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def values(self):
        """Every complete value buffered so far."""
        got = []
        pos = 0
        while pos < len(self.buf):
            v, nxt = resp_parse(self.buf, pos)
            if v is INCOMPLETE:
                break
            got.append(v)
            pos = nxt
        self.buf = self.buf[pos:]
        return got

    def read(self):
        """Blocks for at least one value; returns all complete ones."""
        while True:
            got = self.values()
            if got:
                return got
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("controller_watch: Redis closed the connection")
            self.buf += data


MON_PUBLISH = re.compile(r'^(\d+\.\d+) \[\d+ lua\] "PUBLISH" ')
MON_VERSION = re.compile(r'\\"version\\":(\d+)')


def subscribe(args):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sub = RespConn(args.port)
    sub.send("SUBSCRIBE", args.channel)
    first = sub.read()
    if not (isinstance(first[0], list) and first[0][0] == b"subscribe"):
        raise SystemExit(f"controller_watch: SUBSCRIBE answered {first!r}")
    mon = RespConn(args.port)
    mon.send("GET", args.channel)
    (cur,) = mon.read()[:1]
    t = time.time()
    if isinstance(cur, bytes):
        print(f"CUR {t:.6f} {cur.decode()}", flush=True)
    mon.send("MONITOR")
    ok = mon.read()
    if ok[0] != "OK":
        raise SystemExit(f"controller_watch: MONITOR answered {ok!r}")
    print("READY", flush=True)
    sub.sock.settimeout(None)
    mon.sock.settimeout(None)
    conns = {sub.sock: sub, mon.sock: mon}
    while True:
        ready, _, _ = select.select(list(conns), [], [])
        for s in ready:
            data = s.recv(1 << 20)
            t = time.time()
            if not data:
                raise SystemExit("controller_watch: Redis closed the connection")
            c = conns[s]
            c.buf += data
            for v in c.values():
                if c is sub:
                    if isinstance(v, list) and len(v) == 3 and v[0] == b"message":
                        print(f"MSG {t:.6f} {v[2].decode()}", flush=True)
                elif isinstance(v, str):
                    m = MON_PUBLISH.match(v)
                    if m:
                        ver = MON_VERSION.search(v)
                        if ver:
                            print(f"MON {t:.6f} {m.group(1)} {ver.group(1)}", flush=True)


# --- the rollback measurement -------------------------------------------------

def updated_at(d):
    s = d.get("updated_at", "")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    return float("nan")


def read_new(d):
    try:
        return int(d["read"]["new"])
    except (KeyError, TypeError, ValueError):
        return -1


class Feed:
    """The subscriber process's lines, collected by a thread."""

    def __init__(self, port, channel):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "subscribe", "--port", str(port),
             "--channel", channel], stdout=subprocess.PIPE, text=True, bufsize=1)
        self.cond = threading.Condition()
        self.msgs = []      # (t, decision) for MSG lines
        self.current = None  # highest-version decision seen (CUR or MSG)
        self.mon = {}       # version -> redis time of the script's PUBLISH
        self.ready = False
        self.dead = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split(" ", 2)
            with self.cond:
                if parts[0] == "READY":
                    self.ready = True
                elif parts[0] in ("MSG", "CUR"):
                    try:
                        d = json.loads(parts[2])
                    except ValueError:
                        continue
                    if parts[0] == "MSG":
                        self.msgs.append((float(parts[1]), d))
                    if self.current is None or d.get("version", -1) > self.current.get("version", -1):
                        self.current = d
                elif parts[0] == "MON":
                    redis_t, version = parts[2].split(" ")
                    self.mon.setdefault(int(version), float(redis_t))
                self.cond.notify_all()
        with self.cond:
            self.dead = True
            self.cond.notify_all()

    def wait(self, pred, timeout, what, check=None):
        """Blocks until pred() (under the lock) is truthy; returns it."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                got = pred()
                if got:
                    return got
                if self.dead:
                    raise SystemExit("controller_watch: the subscriber died")
                if check:
                    check()
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def first_msg(self, start, pred):
        """The first message at index >= start matching pred, with its index."""
        for i in range(start, len(self.msgs)):
            if pred(self.msgs[i][1]):
                return i, self.msgs[i]
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def stats(values, qs):
    return [percentile(values, q) for q in qs]


def rollback(args):
    children = []
    feed = Feed(args.redis_port, args.channel)
    children.append(feed.stop)
    load = None
    tgt = Psql(args.tgt, quiet=True)
    src = Psql(args.src, quiet=True)
    locker = Psql(args.tgt, quiet=True)
    children += [tgt.close, src.close, locker.close]
    log = open(args.log, "w")

    def check_walshift():
        if args.pid and not alive(args.pid):
            raise SystemExit(f"controller_watch: walshift (pid {args.pid}) exited")

    def shifting(d):
        return d is not None and d.get("state") == "shifting" and read_new(d) == args.read_new

    def rolled_back(d):
        return d.get("state") == "rolled_back" and read_new(d) == 0

    try:
        if not feed.wait(lambda: feed.ready, 15, "subscriber ready"):
            raise SystemExit("controller_watch: the subscriber did not come up")
        t0 = time.time()
        if not feed.wait(lambda: shifting(feed.current), args.ready_timeout, "first shift", check_walshift):
            raise SystemExit(f"controller_watch: no `shifting` at {args.read_new} % within "
                             f"{args.ready_timeout} s; last decision: {feed.current}")
        print(f"  controller shifting at {args.read_new} % new {time.time() - t0:.1f} s after the "
              f"watch started (version {feed.current['version']})", flush=True)

        with open(args.load_out, "w") as out:
            load = subprocess.Popen(args.cmd, stdout=out, stderr=subprocess.STDOUT)
        children.insert(0, lambda: load.poll() is None and load.terminate())
        load_start = time.time()
        time.sleep(args.warmup)

        applied_sql = ("select coalesce((select applied_lsn from walshift.progress "
                       f"where migration = '{args.migration}'), '0/0')")

        def catch_up(timeout=60):
            t = time.time()
            end = lsn(src.row("select pg_current_wal_insert_lsn()")[0])
            while lsn(tgt.row(applied_sql)[0]) < end:
                check_walshift()
                if time.time() - t > timeout:
                    raise SystemExit(f"controller_watch: the target did not catch up within {timeout} s")
                time.sleep(0.02)
            return time.time() - t

        def resume():
            for attempt in range(10):
                r = subprocess.run([args.walshift, "--config", args.config, "--log-level", "warn", "resume"],
                                   capture_output=True, text=True, timeout=60)
                answer = (r.stdout.strip() or r.stderr.strip()).replace("\n", " ")
                log.write(f"resume rc={r.returncode}: {answer}\n")
                if r.returncode == 0:
                    return answer
                time.sleep(0.5)
            raise SystemExit(f"controller_watch: `walshift resume` kept failing: {answer}")

        def back_to_shifting(after_version, timeout=90):
            """Waits for shifting at N % with a version above after_version."""
            return feed.wait(lambda: (lambda c: c and c[1])(feed.first_msg(
                0, lambda d: d.get("version", -1) > after_version and shifting(d))),
                timeout, "re-advance", check_walshift)

        injections = []
        attributed = set()   # versions of rollbacks caused by an injection
        i = 0
        while i < args.injections:
            check_walshift()
            if load.poll() is not None:
                raise SystemExit(f"controller_watch: the load exited early ({load.returncode}); see {args.load_out}")
            time.sleep(random.uniform(args.settle_min, args.settle_max))
            with feed.cond:
                cur = feed.current
                start = len(feed.msgs)
            if not shifting(cur):
                # Not at N % without an injection: a spontaneous rollback
                # (or a state change) happened; recover and go on.
                if cur and cur.get("state") == "rolled_back" and cur["version"] not in attributed:
                    print(f"  spontaneous rollback (no injection): v{cur['version']}: {cur.get('reason')}", flush=True)
                    catch_up()
                    resume()
                if not back_to_shifting(cur["version"] if cur else -1):
                    raise SystemExit(f"controller_watch: not back at {args.read_new} %: {feed.current}")
                continue
            v0 = cur["version"]
            t_req = time.time()
            row = locker.row(
                f"begin; lock table {args.table} in access exclusive mode; "
                "select extract(epoch from clock_timestamp())::float8, "
                "(select extract(epoch from max(occurred_at))::float8 from "
                f"(select occurred_at from {args.table} order by id desc limit 64) s)")
            t_lock, newest = float(row[0]), float(row[1])
            hit = feed.wait(lambda: feed.first_msg(
                start, lambda d: d.get("version", -1) > v0 and rolled_back(d)), args.rollback_timeout,
                "rollback", check_walshift)
            t_release = time.time()
            locker.row("rollback; select 1")
            rec = {"i": i + 1, "t_req": t_req, "t_lock": t_lock, "newest": newest,
                   "t_release": t_release}
            if hit and hit[1][0] < t_lock:
                # Rolled back before the lock was even granted: not this
                # injection's doing. Count it as spontaneous and start over.
                d = hit[1][1]
                print(f"  spontaneous rollback (before the lock): v{d['version']}: {d.get('reason')}", flush=True)
                catch_up()
                resume()
                if not back_to_shifting(d["version"]):
                    raise SystemExit(f"controller_watch: not back at {args.read_new} %: {feed.current}")
                continue
            if hit:
                _, (t_seen, d) = hit
                attributed.add(d["version"])
                m = re.search(r"lag_seconds ([0-9.]+) s", d.get("reason", ""))
                rec.update(t_seen=t_seen, version=d["version"], reason=d.get("reason", ""),
                           lag_at_decision=float(m.group(1)) if m else float("nan"),
                           delay=t_seen - (newest + args.max_lag),
                           delay_lock=t_seen - (t_lock + args.max_lag))
            else:
                rec.update(t_seen=None, version=v0, reason="", delay=float("inf"), delay_lock=float("inf"))
            rec["catch_up"] = catch_up()
            t_resume = time.time()
            rec["resume_answer"] = resume()
            t_resumed = time.time()
            back = back_to_shifting(rec["version"])
            if not back:
                raise SystemExit(f"controller_watch: not back at {args.read_new} % within 90 s after "
                                 f"resume; last decision: {feed.current}")
            rec["resume_s"] = t_resumed - t_resume
            rec["readvance"] = back[0] - t_resume
            injections.append(rec)
            log.write(json.dumps(rec) + "\n")
            print(f"  #{rec['i']:<3} lock after {t_lock - t_req:.3f} s; rollback seen "
                  f"{rec['delay']:.3f} s after onset (newest applied + {args.max_lag:g} s), "
                  f"{rec['delay_lock']:.3f} s after lock + {args.max_lag:g} s"
                  f"{'' if rec.get('t_seen') else ' (MISSED)'}; lag at decision "
                  f"{rec.get('lag_at_decision', float('nan')):.2f} s; caught up "
                  f"{rec['catch_up']:.2f} s after release; {args.read_new} % again "
                  f"{rec['readvance']:.2f} s after `resume` started (which took {rec['resume_s']:.2f} s)", flush=True)
            i += 1

        load.send_signal(signal.SIGINT)
        try:
            load.wait(timeout=10)
        except subprocess.TimeoutExpired:
            load.kill()
        load_s = time.time() - load_start
        time.sleep(1)  # late messages
        feed.stop()
        with feed.cond:
            msgs = list(feed.msgs)
            mon = dict(feed.mon)
    finally:
        for stop in children:
            try:
                stop()
            except Exception:
                pass

    # Spontaneous rollbacks: every move into rolled_back (a message in that
    # state whose predecessor was not; a republish repeats the state with a
    # higher version) that no injection caused.
    spontaneous = []
    prev = None
    for t, d in sorted(msgs, key=lambda m: m[1].get("version", -1)):
        if rolled_back(d) and not (prev and rolled_back(prev)) and d["version"] not in attributed:
            spontaneous.append(d)
        prev = d

    lat = []
    pub = []
    for t, d in msgs:
        u = updated_at(d)
        lat.append(t - u)
        log.write(f"msg {t:.6f} v{d.get('version')} {d.get('state')} new={read_new(d)} "
                  f"decision_to_sub={t - u:.4f}"
                  + (f" publish_to_sub={t - mon[d['version']]:.6f}" if d.get("version") in mon else "")
                  + f" reason={d.get('reason')!r}\n")
        if d.get("version") in mon:
            pub.append(t - mon[d["version"]])
    log.close()

    results = []
    delays = [r["delay"] for r in injections]
    seen = [x for x in delays if x != float("inf")]
    over = sum(1 for x in delays if x > args.bound)
    results.append(["rollback", len(delays), len(delays) - len(seen)]
                   + [min(seen, default=float("nan"))] + stats(seen, (0.5, 0.9))
                   + [max(delays, default=float("nan")), over])
    dl = [r["delay_lock"] for r in injections]
    results.append(["rollback_lock", len(dl), min(dl, default=float("nan"))] + stats(dl, (0.5, 0.9))
                   + [max(dl, default=float("nan")), sum(1 for x in dl if x > args.bound)])
    results.append(["latency", len(lat)] + stats(lat, (0.5, 0.99)) + [max(lat, default=float("nan"))])
    results.append(["publish", len(pub)] + stats(pub, (0.5, 0.99)) + [max(pub, default=float("nan"))])
    rv = [r["readvance"] for r in injections]
    results.append(["readvance", len(rv), percentile(rv, 0.5), max(rv, default=float("nan"))])
    results.append(["spontaneous", len(spontaneous)])
    lag_reasons = sum(1 for r in injections if "lag_seconds" in r.get("reason", ""))
    results.append(["reasons", lag_reasons, len(injections) - lag_reasons])
    lw = [r["t_lock"] - r["t_req"] for r in injections]
    results.append(["lockwait", percentile(lw, 0.5), max(lw, default=float("nan"))])
    results.append(["load_seconds", load_s])
    with open(args.results, "w") as out:
        for r in results:
            line = "RESULT " + " ".join(x if isinstance(x, str) else f"{x:.6g}" for x in r)
            print(line)
            out.write(line + "\n")
        for s in spontaneous:
            out.write(f"SPONTANEOUS v{s.get('version')} {s.get('updated_at')} {s.get('reason')}\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--channel", required=True)
    r = sub.add_parser("rollback")
    r.add_argument("--src", required=True)
    r.add_argument("--tgt", required=True)
    r.add_argument("--redis-port", type=int, required=True)
    r.add_argument("--channel", required=True)
    r.add_argument("--table", required=True)
    r.add_argument("--walshift", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--migration", required=True)
    r.add_argument("--pid", type=int)
    r.add_argument("--read-new", type=int, required=True)
    r.add_argument("--injections", type=int, default=25)
    r.add_argument("--max-lag", type=float, required=True)
    r.add_argument("--bound", type=float, required=True)
    r.add_argument("--settle-min", type=float, default=1.0)
    r.add_argument("--settle-max", type=float, default=2.0)
    r.add_argument("--warmup", type=float, default=5)
    r.add_argument("--ready-timeout", type=float, default=180)
    r.add_argument("--rollback-timeout", type=float, default=30)
    r.add_argument("--load-out", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.mode == "subscribe":
        subscribe(args)
    else:
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            p.error("rollback needs a load command after --")
        # SIGTERM (the bench's cleanup) unwinds through the finally blocks,
        # which stop the load, the subscriber and the psql sessions.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
        rollback(args)


if __name__ == "__main__":
    sys.exit(main())
