#!/usr/bin/env python3
"""Regenerates fuzz/seeds/ from the captured messages and the example configs.

    python3 fuzz/make_seeds.py

Seeds are committed; scripts/fuzz.sh copies them into fuzz/corpus/<target>/
(the working corpus, not committed) before each run.
"""

import hashlib
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "src" / "replication" / "testdata"
SEEDS = ROOT / "fuzz" / "seeds"


def fixture(name):
    """(lsn, payload) pairs of a `<lsn> <hex>` capture file."""
    out = []
    for line in (TESTDATA / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        lsn, hexdata = line.split(" ", 1)
        hi, lo = lsn.split("/")
        out.append(((int(hi, 16) << 32) | int(lo, 16), bytes.fromhex(hexdata)))
    return out


def write(target, name, data):
    path = SEEDS / target / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def frame(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def xlogdata(lsn, payload, wal_end=None):
    body = b"w" + struct.pack(">QQq", lsn, wal_end or lsn, 810_000_000_000_000) + payload
    return frame(b"d", body)


def keepalive(wal_end, reply):
    return frame(b"d", b"k" + struct.pack(">Qq?", wal_end, 810_000_000_000_000, reply))


def pgoutput(messages):
    seen = set()
    for i, (_, payload) in enumerate(messages):
        digest = hashlib.sha1(payload).hexdigest()[:12]
        if digest in seen:
            continue
        seen.add(digest)
        tag = chr(payload[0]) if payload[:1].isalpha() else "x"
        write("pgoutput", f"{tag}-{digest}", payload)


def replication_frame(v1, binary, usage):
    # First byte: chunk size selector for the reassembly check.
    def stream(name, selector, parts):
        write("replication_frame", name, bytes([selector]) + b"".join(parts))

    for n, start in enumerate(range(0, len(v1), 8)):
        window = v1[start : start + 8]
        parts = [xlogdata(lsn, payload) for lsn, payload in window]
        parts.insert(len(parts) // 2, keepalive(window[-1][0], n % 2 == 0))
        stream(f"v1-{n:02}", n * 7, parts)
    stream("binary", 3, [xlogdata(lsn, p) for lsn, p in binary])
    stream("usage-events", 63, [xlogdata(lsn, p) for lsn, p in usage[:40]])
    lsn, payload = v1[0]
    stream(
        "notices-and-done",
        0,
        [
            frame(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mslot advanced\0\0"),
            xlogdata(lsn, payload),
            frame(b"S", b"TimeZone\0UTC\0"),
            keepalive(lsn, True),
            frame(b"c", b""),
        ],
    )
    stream(
        "error-response",
        5,
        [
            xlogdata(lsn, payload),
            frame(b"E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to "
                  b"administrator command\0DdETAIL\0Hhint\0\0"),
        ],
    )
    stream("partial", 1, [xlogdata(lsn, payload)[:-3]])


CONNINFO = [
    "",
    "postgres://",
    "postgresql://localhost",
    "postgresql://localhost:5433",
    "postgresql://localhost/mydb",
    "postgresql://user@localhost",
    "postgresql://user:secret@localhost",
    "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
    "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
    "postgresql:///mydb?host=localhost&port=5433",
    "postgresql://[2001:db8::1234]/database",
    "postgresql://[fe80::1%25eth0]:5432/db",
    "postgresql:///dbname?host=/var/lib/postgresql",
    "postgresql://%2Fvar%2Flib%2Fpostgresql/dbname",
    "postgres://walshift:p%40ss%2Fw0rd@db.example.com:6432/app?sslmode=verify-full"
    "&sslrootcert=/etc/ssl/ca.pem&options=-c%20statement_timeout%3D5s",
    "postgres://u:pa/ss@h/db",
    "postgres://u:x@h:5432/db?hostaddr=10.0.0.1&sslcert=c.pem&sslkey=k.pem",
    "mysql://root@localhost/db",
    "host=localhost port=5432 dbname=mydb connect_timeout=10",
    "host = /var/run/postgresql user=walshift dbname='my db' password='it\\'s'",
    "hostaddr=::1 port=5433 sslmode=require application_name=walshift:reader",
    "host=a,b port=1,2",
    "dbname=x options='-c search_path=public' keepalives=1",
    b"user=u\xffPGHOST=db.internal\nPGPORT=6543\nPGSSLMODE=verify-ca\nPGPASSWORD=hunter2",
    b"\xffPGHOSTADDR=127.0.0.1\nPGCONNECT_TIMEOUT=1\nUSER=me\nPGAPPNAME=fuzz",
]


def conninfo():
    for i, text in enumerate(CONNINFO):
        write("conninfo", f"conninfo-{i:02}", text)


MINIMAL = """
[migration]
name = "billing"

[source]
url = "postgres://walshift:${PGPASSWORD}@${HOST}:${PORT}/app"

[[tables]]
source = "public.a"
target = "${SCHEMA}.a"
key = ["id"]
[tables.columns]
id = "id"
"Total $$" = "amount_cents / 100.0"
"""


def config():
    shutil.copy(ROOT / "config" / "walshift.example.toml", SEEDS / "config" / "example.toml")
    shutil.copy(ROOT / "config" / "dev.toml", SEEDS / "config" / "dev.toml")
    write("config", "minimal-interpolated.toml", MINIMAL)
    write("config", "bad-interpolation.toml", MINIMAL.replace("${HOST}", "${HOST"))
    write("config", "bad-type.toml", MINIMAL + "[apply]\nbatch_max_rows = \"many\"\n")
    # Nesting: the interpolation and key-path walks recurse over the tree.
    write("config", "deep.toml", "a = " + "[" * 200 + "]" * 200 + "\n" + "b." * 200 + "c = 1\n")


def main():
    for target in ["pgoutput", "replication_frame", "conninfo", "config"]:
        shutil.rmtree(SEEDS / target, ignore_errors=True)
        (SEEDS / target).mkdir(parents=True)
    v1 = fixture("pgoutput_v1.txt")
    binary = fixture("pgoutput_v1_binary.txt")
    usage = fixture("usage_events_v1.txt")
    # Every captured v1 message, and the usage-events stream's distinct
    # shapes (its first 60 messages cover begin/relation/insert/update/...).
    pgoutput(v1 + binary + usage[:60])
    replication_frame(v1, binary, usage)
    conninfo()
    config()


if __name__ == "__main__":
    main()
