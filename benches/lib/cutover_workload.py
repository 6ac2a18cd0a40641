#!/usr/bin/env python3
"""The write workload of benches/cutover_pause.sh: single-row INSERT
transactions at a fixed rate, across a write cutover.

  cutover_workload.py run --mode walshift|anchor --src PORT --tgt PORT \
      --role ROLE --rate N --workers N --warmup S --after S \
      --workdir DIR --results FILE --acks FILE [mode options] [-- CUTOVER CMD...]

Clients. WORKERS processes, each with two connections as the login role
ROLE (trust auth; a minimal PostgreSQL wire client below, the stdlib has
no driver): one to the source (old table public.usage_events), one to the
target (new table shadow.usage_events), both opened before the load
starts, as a warm connection pool would be. Each statement is its own
transaction (autocommit, simple query protocol):

  insert into <table> (org_id, event_type, quantity, amount_cents,
      occurred_at, payload) values (<org>, 'api_call', <q>, <a>,
      to_timestamp(<t>), '{"w": W, "n": N}') returning id

where every value is a function of the worker W, its write number N and
the write's intended time t (see expected_sql(), which the bench's content
check uses), so the check can tell each acknowledged write's row apart and
compare every column.

Schedule (open loop). Write N of worker W is due at t0 + (N + W/WORKERS) x
WORKERS / RATE: RATE writes/s in all, evenly spread. A worker issues a
due write at once when it is behind (it never skips one), so time spent
held, blocked or failing shows up as a backlog. The *wait* of a write is
its acknowledgement time minus its due time: everything the write waited,
including being held at the fence, queued behind earlier writes of its
worker, blocked on a lock, failed and retried.

Where a write goes:

  walshift  The parent process subscribes to Redis (SUBSCRIBE CHANNEL,
            then GET of the key CHANNEL; the highest `version` wins) and
            follows the decision's `write` field, as a well-behaved
            application does:
              "old"     write to the old table;
              "fenced"  hold every new write until `write` changes or
                        `fence_deadline` (RFC 3339) passes (without one:
                        10 s after the message); past the deadline a held
                        write goes to the old table;
              "new"     write to the new table on the target.
            After --warmup s it runs the cutover command given after `--`
            (e.g. walshift --config F cutover), each output line stamped
            with this process's clock; exit 2 (refused) is retried up to
            --cutover-tries times, 2 s apart. --after s after it saw
            "new" (or after the command failed) the load stops.
  anchor    No Redis. After --warmup s the parent applies the fence of
            pg_easy_replicate's switchover to the source:
              1. ALTER ROLE ROLE SET default_transaction_read_only = on
                 and pg_terminate_backend() of every session of ROLE
                 (the workers reconnect; their new sessions are read-only);
              2. waits until walshift has applied everything committed
                 before it: a barrier transaction (a no-op UPDATE of one
                 row of the old table, committed with synchronous_commit
                 = on, its WAL position read inside it), then
                 walshift.progress.applied_lsn of --migration >= that
                 position, polled every 2 ms on the target;
              3. moves the target's identity sequence to the source's
                 last value + --sequence-margin (as pg_easy_replicate
                 refreshes sequences);
              4. switches the workers to the new table (the step the
                 operator or a config push does after the switchover).
            The anchor's pause is 1 -> 4 on this process's clock. No
            final data check runs inside it (pg_easy_replicate has
            none), so it is a lower bound of what a checked anchor takes.

Failures (both modes, the same policy). A write that gets an error is not
acknowledged: it is counted as a failed transaction (once per write;
every failed attempt is also counted by SQLSTATE), put aside, and retried
later: an error with SQLSTATE 25006 (read_only_sql_transaction: the
fence trigger, or a read-only session in the anchor) once the client's
write side is "new"; any other error (57P01 session terminated, lost
connection, ...) after --retry-ms on the side of the moment. Its wait runs
until the retry is acknowledged. Writes still unacknowledged --grace s
after the load stopped are reported as given up.

Output:
  --acks FILE     one CSV line per acknowledged write: side,id,w,n,t
                  (side old|new; t the due time exactly as inserted)
  --results FILE  JSON: the figures (see summarize()); also printed
  --workdir DIR   per-worker logs, the cutover command's stamped output
                  (cutover_out.txt, one `t line`)

  cutover_workload.py get FILE KEY...   prints the JSON values at the dotted
                                        KEYs of FILE, space-separated
"""

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from controller_watch import RespConn  # noqa: E402
from slot_watch import Psql, percentile  # noqa: E402

OLD, FENCED, NEW = 0, 1, 2
SIDE = {OLD: "old", NEW: "new"}
READ_ONLY = "25006"  # read_only_sql_transaction: the fence trigger, a read-only session
LOST = "08006"       # connection lost (our code for a closed socket)


# --- a minimal PostgreSQL client (trust auth, simple query protocol) ---------

class PgError(Exception):
    def __init__(self, sqlstate, message, fatal=False):
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message
        self.fatal = fatal  # the connection is gone


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class Pg:
    """One connection; query() returns the first column of the first row."""

    def __init__(self, port, user, application_name):
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        except OSError as e:
            raise PgError(LOST, f"connect: {e}", fatal=True)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in (
            ("user", user), ("database", "postgres"), ("application_name", application_name))) + b"\0"
        self._send(struct.pack("!ii", 8 + len(params), 196608) + params)
        while True:
            kind, body = self._message()
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise SystemExit("cutover_workload: the server asks for a password; the bench clusters use trust")
            if kind == b"E":
                f = error_fields(body)
                self.close()
                raise PgError(f.get("C", "XX000"), f.get("M", ""), fatal=True)
            if kind == b"Z":
                return

    def _send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.close()
            raise PgError(LOST, f"send: {e}", fatal=True)

    def _message(self):
        buf = self.buf
        while True:
            if len(buf) >= 5:
                n = struct.unpack_from("!i", buf, 1)[0]
                if len(buf) >= 1 + n:
                    kind, body = bytes(buf[0:1]), bytes(buf[5:1 + n])
                    del buf[:1 + n]
                    return kind, body
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                self.close()
                raise PgError(LOST, f"recv: {e}", fatal=True)
            if not data:
                self.close()
                raise PgError(LOST, "the server closed the connection", fatal=True)
            buf += data

    def query(self, sql):
        q = sql.encode()
        self._send(b"Q" + struct.pack("!i", len(q) + 5) + q + b"\0")
        value, err = None, None
        while True:
            kind, body = self._message()
            if kind == b"D" and value is None:
                if struct.unpack_from("!h", body, 0)[0] > 0:
                    n = struct.unpack_from("!i", body, 2)[0]
                    value = body[6:6 + n].decode() if n >= 0 else None
            elif kind == b"E":
                f = error_fields(body)
                err = PgError(f.get("C", "XX000"), f.get("M", ""),
                              fatal=f.get("V", f.get("S")) in ("FATAL", "PANIC"))
                if err.fatal:  # the server closes the connection: no ReadyForQuery
                    self.close()
                    raise err
            elif kind == b"Z":
                if err:
                    raise err
                return value

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- what a write inserts ----------------------------------------------------

def insert_sql(table, w, n, t):
    return (f"insert into {table} (org_id, event_type, quantity, amount_cents, occurred_at, payload) "
            f"values ({1 + (w * 7919 + n) % 1000}, 'api_call', {n % 1000}.25, {n % 100000}, "
            f"to_timestamp({t}), '{{\"w\": {w}, \"n\": {n}}}') returning id")


def expected_sql(a):
    """The row write (w, n, t) inserts, as SQL over a table alias `a` with
    columns w, n, t (t: text): the same expressions as insert_sql()."""
    return (f"(1 + ({a}.w::bigint * 7919 + {a}.n) % 1000, 'api_call'::text, ({a}.n % 1000) + 0.25, "
            f"{a}.n % 100000, to_timestamp({a}.t::float8), jsonb_build_object('w', {a}.w, 'n', {a}.n))")


# --- a worker process ----------------------------------------------------------

class Shared:
    """State shared by the parent and the workers (fork)."""

    def __init__(self):
        self.mode = mp.RawValue("i", OLD)
        self.deadline = mp.RawValue("d", 0.0)   # fence_deadline (epoch s) while FENCED
        self.t0 = mp.RawValue("d", 0.0)         # schedule start; 0 until the load starts
        self.stop_at = mp.RawValue("d", 1e18)   # no write due at or after this is issued
        self.ready = mp.Value("i", 0)
        self.cond = mp.Condition()

    def set_mode(self, mode, deadline=0.0):
        with self.cond:
            self.deadline.value = deadline
            self.mode.value = mode
            self.cond.notify_all()


def worker(w, cfg, sh):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    ports = {OLD: cfg.src, NEW: cfg.tgt}
    tables = {OLD: "public.usage_events", NEW: "shadow.usage_events"}
    conns = {}
    acks = []       # (side, id, n, t_text, t_due, t_issue, t_ack, failures_before)
    fails = []      # (n, side, sqlstate, t, message)
    deferred = deque()  # [n, t_text, t_due, failures, wait_for_new, not_before]
    held = 0        # writes held at the fence
    expired = 0     # held writes released by fence_deadline
    hold = cfg.mode == "walshift"

    def conn(side):
        c = conns.get(side)
        if c is None:
            c = conns[side] = Pg(ports[side], cfg.role, f"bench_writer_{w}")
        return c

    for side in (OLD, NEW):
        conn(side)
    with sh.ready.get_lock():
        sh.ready.value += 1
    while sh.t0.value == 0.0:
        if sh.stop_at.value < 1e18:
            return
        time.sleep(0.002)
    t0 = sh.t0.value

    def side_now():
        nonlocal held, expired
        m = sh.mode.value
        if m == FENCED and hold:
            held += 1
            with sh.cond:
                while sh.mode.value == FENCED:
                    left = sh.deadline.value - time.time()
                    if left <= 0:
                        expired += 1
                        break
                    sh.cond.wait(min(left, 0.05))
            m = sh.mode.value
        return NEW if m == NEW else OLD

    def write(n, t_text, t_due, failures):
        side = side_now()
        t_issue = time.time()
        try:
            rid = conn(side).query(insert_sql(tables[side], w, n, t_text))
        except PgError as e:
            t = time.time()
            if e.fatal:
                conns.pop(side, None)
            fails.append((n, SIDE[side], e.sqlstate, t, e.message[:160]))
            deferred.append([n, t_text, t_due, failures + 1, e.sqlstate == READ_ONLY,
                             t + cfg.retry_ms / 1000])
            return
        acks.append((SIDE[side], int(rid), n, t_text, t_due, t_issue, time.time(), failures))

    def retry_deferred():
        if not deferred:
            return
        now = time.time()
        m = sh.mode.value
        due = []
        for item in list(deferred):
            # 25006 waits for write "new" (or, should that never come, 5 s).
            if (m == NEW if item[4] else now >= item[5]) or now >= item[5] + 5:
                due.append(item)
        for item in due:
            deferred.remove(item)
        for item in due:
            write(item[0], item[1], item[2], item[3])

    per = cfg.workers / cfg.rate
    n = 0
    while True:
        retry_deferred()
        t_due = t0 + (n + w / cfg.workers) * per
        if t_due >= sh.stop_at.value:
            break
        d = t_due - time.time()
        if d > 0:
            time.sleep(d)
        write(n, f"{t_due:.6f}", t_due, 0)
        n += 1
    grace = time.time() + cfg.grace
    while deferred and time.time() < grace:
        retry_deferred()
        if deferred:
            time.sleep(0.01)
    with open(os.path.join(cfg.workdir, f"worker_{w}.json"), "w") as out:
        json.dump({"w": w, "scheduled": n, "acks": acks, "fails": fails, "held": held,
                   "expired": expired, "given_up": [list(x[:4]) for x in deferred]}, out)
    for c in conns.values():
        c.close()


# --- the parent ------------------------------------------------------------------

def epoch(text):
    """RFC 3339 (walshift prints `2026-12-06T07:30:00.123456Z`) to epoch s."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                pass
    return None


class Follower:
    """Follows the published decision (walshift mode) and steers the workers."""

    def __init__(self, port, channel, sh, log):
        self.sh, self.log = sh, log
        self.version = -1
        self.decisions = []   # (t_received, decision)
        self.fenced = None    # (t_received, decision) of the first write "fenced"
        self.new = None       # (t_received, decision) of the first write "new"
        self.old_again = None  # write "old" after "fenced": the attempt aborted
        self.cond = threading.Condition()
        self.started = threading.Event()
        self.error = None
        self.sub = RespConn(port)
        self.sub.send("SUBSCRIBE", channel)
        first = self.sub.read()
        if not (isinstance(first[0], list) and first[0][0] == b"subscribe"):
            raise SystemExit(f"cutover_workload: SUBSCRIBE answered {first!r}")
        get = RespConn(port)
        get.send("GET", channel)
        cur = get.read()[0]
        get.sock.close()
        if isinstance(cur, bytes):
            self.on_value(time.time(), cur)
        self.sub.sock.settimeout(None)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        try:
            while True:
                for v in self.sub.read():
                    t = time.time()
                    if isinstance(v, list) and len(v) == 3 and v[0] == b"message":
                        self.on_value(t, v[2])
        except BaseException as e:  # SystemExit from RespConn when Redis goes away
            with self.cond:
                self.error = str(e)
                self.cond.notify_all()

    def on_value(self, t, raw):
        try:
            d = json.loads(raw)
        except ValueError:
            return
        with self.cond:
            if d.get("version", -1) <= self.version:
                return
            self.version = d.get("version", -1)
            self.decisions.append((t, d))
            write = d.get("write")
            if write == "fenced":
                deadline = epoch(d.get("fence_deadline")) or t + 10
                self.sh.set_mode(FENCED, deadline)
                if self.fenced is None:
                    self.fenced = (t, d)
            elif write == "new":
                self.sh.set_mode(NEW)
                if self.new is None:
                    self.new = (t, d)
            else:
                self.sh.set_mode(OLD)
                if self.fenced is not None and self.new is None and self.old_again is None:
                    self.old_again = (t, d)
            self.log.write(f"{t:.6f} {raw.decode() if isinstance(raw, bytes) else raw}\n")
            self.log.flush()
            self.cond.notify_all()

    def wait(self, pred, timeout):
        end = time.time() + timeout
        with self.cond:
            while not pred():
                left = end - time.time()
                if left <= 0 or self.error:
                    return pred()
                self.cond.wait(min(left, 0.1))
            return True


def run_cutover(cmd, out_path, tries):
    """Runs cmd until it does not answer 2 (refused), at most `tries` times.
    Returns [(t_start, t_end, rc)], the output stamped line by line."""
    runs = []
    with open(out_path, "w") as out:
        for i in range(tries):
            t_start = time.time()
            out.write(f"{t_start:.6f} # attempt {i + 1}: {' '.join(cmd)}\n")
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in p.stdout:
                out.write(f"{time.time():.6f} {line}")
                out.flush()
            rc = p.wait()
            t_end = time.time()
            out.write(f"{t_end:.6f} # exit {rc}\n")
            runs.append((t_start, t_end, rc))
            print(f"  cutover attempt {i + 1}: exit {rc} after {t_end - t_start:.3f} s", flush=True)
            if rc != 2:
                break
            time.sleep(2)
    return runs


def anchor_fence(cfg, sh):
    """pg_easy_replicate's switchover fence; returns its timeline."""
    src = Psql(cfg.src, quiet=True)
    tgt = Psql(cfg.tgt, quiet=True)
    try:
        src.row("set synchronous_commit = on; select 1")
        tl = {"t_fence": time.time()}
        killed = src.row(
            f"alter role {cfg.role} set default_transaction_read_only = on; "
            f"select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = '{cfg.role}'")[0]
        tl["t_terminated"] = time.time()
        tl["terminated_sessions"] = int(killed)
        # Barrier: a no-op update committed after every write of the role
        # (they were terminated and cannot write any more); the target has
        # applied everything before it once applied_lsn passes its position.
        barrier = src.row(
            "with u as (update public.usage_events set amount_cents = amount_cents "
            "where id = (select min(id) from public.usage_events) returning 1) "
            "select pg_current_wal_insert_lsn(), (select count(*) from u)")[0]
        tl["t_barrier"] = time.time()
        applied = (f"select coalesce((select applied_lsn >= '{barrier}'::pg_lsn from walshift.progress "
                   f"where migration = '{cfg.migration}'), false)")
        end = time.time() + 60
        while tgt.row(applied)[0] != "t":
            if time.time() > end:
                raise SystemExit(f"cutover_workload: the target did not apply the barrier {barrier} within 60 s")
            time.sleep(0.002)
        tl["t_drained"] = time.time()
        last = int(src.row("select coalesce(pg_sequence_last_value("
                           "pg_get_serial_sequence('public.usage_events', 'id')::regclass), 0)")[0])
        tgt.row(f"select setval(pg_get_serial_sequence('shadow.usage_events', 'id'), {last + cfg.sequence_margin})")
        tl["t_sequences"] = time.time()
        sh.set_mode(NEW)
        tl["t_switch"] = time.time()
        tl["barrier_lsn"] = barrier
        return tl
    finally:
        src.close()
        tgt.close()


def summarize(cfg, t0, window, workers, extra):
    acks, fails, given_up = [], [], []
    scheduled = held = expired = 0
    for d in workers:
        w = d["w"]
        scheduled += d["scheduled"]
        held += d["held"]
        expired += d["expired"]
        acks += [(w,) + tuple(a) for a in d["acks"]]
        fails += [(w,) + tuple(f) for f in d["fails"]]
        given_up += [[w] + g for g in d["given_up"]]
    # ack tuples: (w, side, id, n, t_text, t_due, t_issue, t_ack, failures_before)
    with open(cfg.acks, "w") as out:
        for a in acks:
            out.write(f"{a[1]},{a[2]},{a[0]},{a[3]},{a[4]}\n")
    waits = [a[7] - a[5] for a in acks]
    w_start, w_end = window
    in_fence = [a[7] - a[5] for a in acks if w_start is not None and w_end is not None
                and w_start <= a[5] <= w_end]
    before = [a[7] - a[5] for a in acks if w_start is None or a[5] < w_start]
    steady_from = t0 + 1.0
    steady_to = w_start if w_start is not None else max((a[7] for a in acks), default=t0)
    # Acknowledged (not due) in [t0 + 1 s, fence): a workload that falls
    # behind its schedule shows a lower rate here (and growing waits).
    steady = sum(1 for a in acks if steady_from <= a[7] < steady_to)
    failed_writes = {(f[0], f[1]) for f in fails}
    by_state = {}
    for f in fails:
        by_state[f[3]] = by_state.get(f[3], 0) + 1
    samples = {}
    for f in fails:
        samples.setdefault(f[3], f[5])
    old = [a for a in acks if a[1] == "old"]
    new = [a for a in acks if a[1] == "new"]
    last_old = max((a[7] for a in old), default=None)
    first_new = min((a[7] for a in new), default=None)
    end = max((a[7] for a in acks), default=t0)
    worst = max(acks, key=lambda a: a[7] - a[5], default=None)
    r = {
        "mode": cfg.mode,
        "workers": cfg.workers,
        "rate_target": cfg.rate,
        "rate_before_fence": steady / (steady_to - steady_from) if steady_to > steady_from else None,
        "rate_overall": len(acks) / (end - t0) if end > t0 else None,
        "scheduled": scheduled,
        "acked": len(acks),
        "acked_old": len(old),
        "acked_new": len(new),
        "given_up": len(given_up),
        "failed_writes": len(failed_writes),
        "failed_attempts": len(fails),
        "failed_by_sqlstate": by_state,
        "failure_samples": samples,
        "failed_writes_in_window": len({(f[0], f[1]) for f in fails
                                         if w_start is not None and w_end is not None
                                         and w_start <= f[4] <= w_end + 1.0}),
        "held_writes": held,
        "released_by_deadline": expired,
        "window_start": w_start,
        "window_end": w_end,
        "window_s": (w_end - w_start) if w_start is not None and w_end is not None else None,
        "wait_max": max(waits, default=None),
        "wait_max_write": {"w": worst[0], "n": worst[3], "side": worst[1], "due": worst[5],
                           "ack": worst[7], "failures": worst[8]} if worst else None,
        "wait_p50": percentile(waits, 0.5) if waits else None,
        "wait_p99": percentile(waits, 0.99) if waits else None,
        "fence_writes": len(in_fence),
        "fence_wait_p50": percentile(in_fence, 0.5) if in_fence else None,
        "fence_wait_p99": percentile(in_fence, 0.99) if in_fence else None,
        "fence_wait_max": max(in_fence, default=None),
        "before_wait_p99": percentile(before, 0.99) if before else None,
        "before_wait_max": max(before, default=None),
        "last_old_ack": last_old,
        "first_new_ack": first_new,
        "old_to_new_gap": (first_new - last_old) if last_old and first_new else None,
        "t0": t0,
    }
    r.update(extra)
    return r


def run(cfg):
    os.makedirs(cfg.workdir, exist_ok=True)
    sh = Shared()
    procs = [mp.Process(target=worker, args=(w, cfg, sh), daemon=True) for w in range(cfg.workers)]
    for p in procs:
        p.start()

    def stop_workers():
        sh.stop_at.value = 0.0
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()

    extra = {}
    follower = None
    try:
        end = time.time() + 30
        while sh.ready.value < cfg.workers:
            dead = [p for p in procs if p.exitcode is not None]
            if dead:
                raise SystemExit(f"cutover_workload: a worker exited ({dead[0].exitcode}) before the load started")
            if time.time() > end:
                raise SystemExit("cutover_workload: the workers did not connect within 30 s")
            time.sleep(0.01)
        if cfg.mode == "walshift":
            log = open(os.path.join(cfg.workdir, "decisions.txt"), "w")
            follower = Follower(cfg.redis_port, cfg.channel, sh, log)
            if sh.mode.value != OLD:
                raise SystemExit(f"cutover_workload: writes are not on old at the start: "
                                 f"{follower.decisions[-1:] if follower.decisions else 'no decision'}")
        t0 = time.time() + 0.05
        sh.t0.value = t0
        print(f"  load: {cfg.workers} workers, {cfg.rate:g} writes/s as {cfg.role}", flush=True)
        time.sleep(max(0.0, t0 + cfg.warmup - time.time()))

        if cfg.mode == "walshift":
            runs = run_cutover(cfg.cmd, os.path.join(cfg.workdir, "cutover_out.txt"), cfg.cutover_tries)
            extra["cutover_runs"] = [{"t_start": a, "t_end": b, "rc": c} for a, b, c in runs]
            extra["cutover_rc"] = runs[-1][2]
            if runs[-1][2] == 0:
                follower.wait(lambda: follower.new is not None, 10)
            with follower.cond:
                fenced, new, old_again = follower.fenced, follower.new, follower.old_again
            if fenced:
                t_seen, d = fenced
                t_decided = epoch(d.get("updated_at"))
                extra["fenced_seen"] = t_seen
                extra["fenced_decided"] = t_decided
                extra["fence_deadline"] = epoch(d.get("fence_deadline"))
                w_start = min(t_seen, t_decided) if t_decided else t_seen
            else:
                w_start = None
            if new:
                extra["new_seen"] = new[0]
                extra["new_decided"] = epoch(new[1].get("updated_at"))
                extra["new_decision"] = new[1]
            if old_again:
                extra["aborted_seen"] = old_again[0]
                extra["aborted_decision"] = old_again[1]
            w_end = new[0] if new else (old_again[0] if old_again else None)
            extra["client_pause"] = (w_end - w_start) if w_start and w_end else None
            extra["redis_error"] = follower.error
            if new:
                print(f"  write \"fenced\" seen -> \"new\" seen: {extra['client_pause']:.3f} s", flush=True)
            else:
                print(f"  write \"new\" never seen (last decision: "
                      f"{follower.decisions[-1][1] if follower.decisions else None})", flush=True)
        else:
            tl = anchor_fence(cfg, sh)
            extra.update(tl)
            w_start, w_end = tl["t_fence"], tl["t_switch"]
            extra["anchor_pause"] = w_end - w_start
            extra["anchor_drain"] = tl["t_drained"] - tl["t_terminated"]  # barrier + wait
            print(f"  anchor fence: read-only + terminate {tl['t_terminated'] - tl['t_fence']:.3f} s, "
                  f"drain {tl['t_drained'] - tl['t_terminated']:.3f} s, sequence "
                  f"{tl['t_sequences'] - tl['t_drained']:.3f} s: writes switched "
                  f"{extra['anchor_pause']:.3f} s after the fence", flush=True)
        time.sleep(cfg.after)
        sh.stop_at.value = time.time()
        for p in procs:
            p.join(timeout=cfg.grace + 30)
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"cutover_workload: worker exit codes {[p.exitcode for p in procs]}")
    finally:
        if any(p.is_alive() for p in procs):
            stop_workers()
    data = []
    for w in range(cfg.workers):
        with open(os.path.join(cfg.workdir, f"worker_{w}.json")) as f:
            data.append(json.load(f))
    r = summarize(cfg, t0, (w_start, w_end), data, extra)
    with open(cfg.results, "w") as out:
        json.dump(r, out, indent=1, sort_keys=True)
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    print(f"  writes: {r['acked']} acknowledged ({r['acked_old']} old, {r['acked_new']} new) of "
          f"{r['scheduled']} due; {f(r['rate_before_fence'], 0)} writes/s before the fence (target "
          f"{cfg.rate:g}); failed transactions {r['failed_writes']} (attempts by SQLSTATE "
          f"{r['failed_by_sqlstate'] or '{}'}); given up {r['given_up']}", flush=True)
    print(f"  wait: max {f(r['wait_max'])} s; writes due in the fence window ({r['fence_writes']}): "
          f"p50 {f(r['fence_wait_p50'])}  p99 {f(r['fence_wait_p99'])}  max {f(r['fence_wait_max'])} s; "
          f"before it: p99 {f(r['before_wait_p99'])}  max {f(r['before_wait_max'])} s", flush=True)


def get(args):
    with open(args.file) as f:
        d = json.load(f)
    out = []
    for key in args.keys:
        v = d
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        out.append("-" if v is None else (f"{v:.6g}" if isinstance(v, float) else
                                          json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list))
                                          else str(v)))
    print(" ".join(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd_name", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=("walshift", "anchor"), required=True)
    r.add_argument("--src", type=int, required=True)
    r.add_argument("--tgt", type=int, required=True)
    r.add_argument("--role", required=True)
    r.add_argument("--rate", type=float, default=5000)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--warmup", type=float, default=5)
    r.add_argument("--after", type=float, default=3)
    r.add_argument("--retry-ms", type=float, default=50)
    r.add_argument("--grace", type=float, default=10)
    r.add_argument("--workdir", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--acks", required=True)
    r.add_argument("--redis-port", type=int)
    r.add_argument("--channel")
    r.add_argument("--cutover-tries", type=int, default=5)
    r.add_argument("--migration")
    r.add_argument("--sequence-margin", type=int, default=1000)
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    g = sub.add_parser("get")
    g.add_argument("file")
    g.add_argument("keys", nargs="+")
    args = p.parse_args()
    if args.cmd_name == "get":
        return get(args)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if args.mode == "walshift" and not (args.cmd and args.redis_port and args.channel):
        p.error("--mode walshift needs --redis-port, --channel and the cutover command after --")
    if args.mode == "anchor" and not args.migration:
        p.error("--mode anchor needs --migration (whose applied_lsn is the drain)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    run(args)


if __name__ == "__main__":
    sys.exit(main())
