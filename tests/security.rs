//! Security, end to end (docs/security.md): a whole migration with the
//! least privileges over TLS to Postgres (`verify-full`) and Redis
//! (`rediss://`, CA verified, an ACL user); no secret in any output of a
//! run, its failures included; Redis TLS and credential failures; the
//! HTTP listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

use crate::backfill::WAIT;
use crate::observability::{http_get, instance_addr};
use crate::support::cli::{RunProcess, Walshift, expect_exit_2};
use crate::support::pg::{Auth, ClusterOptions, PgCluster, TestDb};
use crate::support::redis::{RedisServer, Reply, key_prefix};
use crate::support::wait::wait_until;

/// The secure cluster's superuser (the harness's own; walshift never sees
/// it except in the failure-path test's source URL).
const ADMIN_USER: &str = "ws_admin";
const ADMIN_SECRET: &str = "admin-Secret-91aa0c";
/// Passwords of walshift's roles and Redis user: distinctive, so a leak is
/// found by a plain substring search.
const SOURCE_SECRET: &str = "src-Secret-7f3a9c";
const TARGET_SECRET: &str = "tgt-Secret-2b8e41";
const REDIS_SECRET: &str = "redis-Secret-d05c77";
/// Every secret a test's output is searched for.
const SECRETS: [&str; 4] = [ADMIN_SECRET, SOURCE_SECRET, TARGET_SECRET, REDIS_SECRET];

/// A cluster of the test's own (slot creation waits for every transaction
/// in the cluster, so tests that set up slots at the same time are kept
/// apart): SCRAM passwords, TLS only (`hostssl`), a CA of its own.
fn secure_cluster() -> PgCluster {
    PgCluster::start(ClusterOptions {
        auth: Auth::Scram { user: ADMIN_USER.into(), password: ADMIN_SECRET.into() },
        require_tls: true,
        ..ClusterOptions::default()
    })
}

/// `url` with `sslmode=verify-full` against the cluster's CA.
fn verify_full(cluster: &PgCluster, url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=verify-full&sslrootcert={}", cluster.ca_cert_path().display())
}

/// Everything a test saw walshift print or store, searched for secrets.
#[derive(Default)]
struct Transcript(Vec<(String, String)>);

impl Transcript {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    /// Adds both streams of a finished command.
    fn output(&mut self, what: &str, out: &std::process::Output) {
        self.add(format!("{what} stdout"), String::from_utf8_lossy(&out.stdout));
        self.add(format!("{what} stderr"), String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a command, records its output, returns it.
    async fn run(&mut self, ws: &Walshift, args: &[&str]) -> std::process::Output {
        let out = ws.run(args).await;
        self.output(&format!("walshift {}", args.join(" ")), &out);
        out
    }

    /// Runs a command that must succeed; records and returns its stdout.
    async fn run_ok(&mut self, ws: &Walshift, args: &[&str]) -> String {
        let out = self.run(ws, args).await;
        assert!(
            out.status.success(),
            "walshift {args:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// No secret anywhere (in at least `min_bytes` of output).
    fn assert_no_secret(&self, min_bytes: usize) {
        let mut bytes = 0;
        for (what, text) in &self.0 {
            bytes += text.len();
            for secret in SECRETS {
                assert!(!text.contains(secret), "a secret leaked into {what}:\n{text}");
            }
        }
        if std::env::var_os("WALSHIFT_TEST_PRINT_TRANSCRIPT").is_some() {
            for (what, text) in &self.0 {
                eprintln!("==== {what}\n{text}");
            }
        }
        assert!(bytes >= min_bytes, "too little output searched ({bytes} bytes): is it captured?");
    }
}

/// Waits until `run`'s log satisfies `found`; panics with the log if it
/// does not within [`WAIT`].
async fn wait_log<T>(run: &RunProcess, what: &str, found: impl Fn(&str) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = run.stderr();
        if let Some(t) = found(&log) {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `method path` and returns the status code, head and body.
async fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<Vec<u8>, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// Every row of every table of walshift's state schema, as JSON lines.
async fn state_rows(c: &Client) -> String {
    let tables = c
        .query(
            "select quote_ident(table_name) from information_schema.tables \
             where table_schema = 'walshift' order by 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = String::new();
    for t in tables {
        let table: String = t.get(0);
        for row in c
            .query(&format!("select row_to_json(x)::text from walshift.{table} x"), &[])
            .await
            .unwrap()
        {
            out.push_str(&row.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

/// `(id, v)` of every row of `table`.
async fn rows(c: &Client, table: &str) -> BTreeMap<i64, String> {
    c.query(&format!("select id, v from {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The ACL rule of walshift's Redis user: its password, its key prefix
/// and channel, and only the commands docs/security.md lists.
fn redis_user(prefix: &str) -> Vec<String> {
    let mut rule: Vec<String> = vec![
        "walshift".into(),
        "on".into(),
        format!(">{REDIS_SECRET}"),
        "resetkeys".into(),
        format!("~{prefix}*"),
        "resetchannels".into(),
        format!("&{prefix}*"),
    ];
    for command in ["ping", "get", "set", "incr", "pexpire", "del", "publish", "subscribe"] {
        rule.push(format!("+{command}"));
    }
    rule.extend(["+unsubscribe", "+evalsha", "+eval", "+script|load"].map(String::from));
    rule
}

/// The whole migration, setup to teardown, as a source role with only
/// REPLICATION, SELECT and EXECUTE on the owner's fence function and a
/// target role with DML on the shadow table and the state schema an
/// administrator created for it; Postgres over `verify-full`, Redis over
/// `rediss://` with a CA and an ACL user. No secret appears in any output,
/// status, HTTP answer, metric, state row or Redis value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_migration_over_tls_leaks_no_secret() {
    let cluster = &secure_cluster();
    let db = TestDb::new(cluster).await;
    let (owner, src, tgt) =
        (format!("{}_own", db.name()), format!("{}_src", db.name()), format!("{}_tgt", db.name()));
    db.execute(&format!(
        "create role {owner} nologin; \
         grant create on database {dbname} to {owner}; \
         create role {src} login replication password '{SOURCE_SECRET}'; \
         create role {tgt} login password '{TARGET_SECRET}'; \
         grant create on schema public to {owner}; \
         set role {owner}; \
         create table public.t (id bigint generated by default as identity primary key, v text); \
         insert into t (v) select 'v' || g from generate_series(1, 300) g; \
         reset role; \
         create schema shadow; \
         create table shadow.t (id bigint generated by default as identity primary key, v text); \
         grant usage on schema shadow to {tgt}; \
         grant select, insert, update, delete, truncate on shadow.t to {tgt}; \
         grant select, update on sequence shadow.t_id_seq to {tgt}; \
         create schema walshift authorization {tgt};",
        dbname = db.name()
    ))
    .await;
    let prefix = key_prefix();
    let redis = RedisServer::start_tls(&[redis_user(&prefix)]);
    let redis_url = format!("{}/0", redis.url_as("walshift", REDIS_SECRET));
    let toml = format!(
        "[migration]\nname = \"test\"\n\n\
         [source]\nurl = \"{source}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\
         status_interval_ms = 100\nheartbeat_interval_ms = 200\n\n\
         [target]\nurl = \"{target}\"\n\n\
         [[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n\n\
         [verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 60\n\n\
         [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\ntls_ca_file = \"{ca}\"\n\n\
         [traffic]\nread_new_percent = 100\nstages = [100]\n\n\
         [cutover]\nevaluate_interval_ms = 200\nfailure_threshold = 3\nlease_ttl_ms = 3000\n\
         min_soak_seconds = 0\n",
        source = verify_full(cluster, &db.url_as(&src, SOURCE_SECRET)),
        target = verify_full(cluster, &db.url_as(&tgt, TARGET_SECRET)),
        slot = db.slot_name(),
        publication = db.publication_name(),
        ca = redis.ca_cert_path().display(),
    );
    let ws = Walshift::with_config(&toml);
    let mut seen = Transcript::default();
    let admin = db.client().await;

    // Without the owner's statements, setup refuses, names the owner and
    // creates nothing.
    let out = seen.run(&ws, &["setup"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("does not exist and role {src} may not create it")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("(owner {owner})")), "{stderr}");
    assert!(stderr.contains("--print-owner-sql"), "{stderr}");
    let objects = db.walshift_objects().await;
    assert!(!objects.slot && !objects.publication, "{objects:?}");

    // The owner runs the generated statements.
    let sql = seen.run_ok(&ws, &["setup", "--print-owner-sql"]).await;
    for needle in [
        "create publication",
        &format!("grant select on table \"public\".\"t\" to \"{src}\""),
        "grant select on sequence public.t_id_seq",
        "security definer set search_path = pg_catalog, pg_temp",
        &format!(
            "grant execute on function \"public\".\"walshift_fence_test\"(text, bigint) to \"{src}\""
        ),
    ] {
        assert!(sql.contains(needle), "{needle:?} not in:\n{sql}");
    }
    admin.batch_execute(&format!("set role {owner}; {sql}; reset role")).await.unwrap();

    let out = seen.run_ok(&ws, &["setup"]).await;
    assert!(out.contains(&format!("publication {}: exists", db.publication_name())), "{out}");
    let out = seen.run(&ws, &["setup"]).await;
    assert!(out.status.success(), "setup twice");
    seen.run_ok(&ws, &["backfill"]).await;
    seen.run_ok(&ws, &["verify"]).await;

    // The controller over rediss://, reads to 100 %; a change streams.
    let run = ws.spawn_run();
    let key = format!("{prefix}traffic");
    let watch = ws.spawn_json_lines(&["traffic", "watch"]);
    admin.batch_execute("insert into t (v) values ('during the run')").await.unwrap();
    wait_until("reads at 100 % on new, published over TLS", WAIT, async || {
        match redis.command(&["GET", &key]) {
            Reply::Bulk(Some(v)) => {
                let d: serde_json::Value = serde_json::from_slice(&v).unwrap();
                (d["read"]["new"] == 100).then_some(())
            }
            _ => None,
        }
    })
    .await;
    wait_until("traffic watch (the ACL user, subscribed) to print it", WAIT, async || {
        watch.lines().iter().any(|d| d["read"]["new"] == 100).then_some(())
    })
    .await;
    wait_until("every precondition of the write cutover", WAIT, async || {
        let out = ws.run(&["cutover", "--dry-run"]).await;
        (out.status.code() == Some(0)).then_some(())
    })
    .await;
    seen.run_ok(&ws, &["cutover", "--dry-run"]).await;
    let addr = instance_addr(&admin).await;
    for path in ["/status", "/", "/metrics", "/readyz", "/healthz"] {
        let (code, body) = http_get(&addr, path).await;
        assert!(code == 200 || path == "/readyz", "GET {path}: {code} {body}");
        seen.add(format!("GET {path}"), body);
    }
    seen.run_ok(&ws, &["status"]).await;
    seen.run_ok(&ws, &["status", "--json"]).await;

    // Without EXECUTE on the owner's function the cutover is refused before
    // anything is announced; with it, the old tables are fenced through it.
    let function = "\"public\".\"walshift_fence_test\"(text, bigint)";
    admin
        .batch_execute(&format!("revoke execute on function {function} from {src}"))
        .await
        .unwrap();
    let out = seen.run(&ws, &["cutover"]).await;
    let stdout =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("role {src} may not fence public.t (owner {owner})")),
        "{stdout}"
    );
    admin.batch_execute(&format!("grant execute on function {function} to {src}")).await.unwrap();
    let dry = seen.run_ok(&ws, &["cutover", "--dry-run"]).await;
    assert!(
        dry.contains("through the owner's function(s) \"public\".\"walshift_fence_test\""),
        "{dry}"
    );
    let out = seen.run_ok(&ws, &["cutover"]).await;
    assert!(out.contains("cut over"), "{out}");
    let err = admin.execute("insert into t (v) values ('late')", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("25006"), "{err:?}");
    assert_eq!(rows(&admin, "public.t").await, rows(&admin, "shadow.t").await);
    let (code, log) = run.stop().await;
    seen.add("walshift run (log)", log);
    assert_eq!(code, Some(0));
    let (_, lines, watch_log) = watch.stop().await;
    seen.add("traffic watch stdout", serde_json::to_string(&lines).unwrap());
    seen.add("traffic watch stderr", watch_log);
    seen.run_ok(&ws, &["status"]).await;
    seen.run_ok(&ws, &["history", "--json"]).await;
    seen.add("walshift.* rows", state_rows(&admin).await);
    if let Reply::Bulk(Some(v)) = redis.command(&["GET", &key]) {
        seen.add("the Redis decision", String::from_utf8_lossy(&v));
    }

    // Teardown: the slot and the state go; the owner's publication and
    // functions stay (named), the fence goes through the owner's function.
    let out = seen.run_ok(&ws, &["teardown", "--yes", "--drop-fence"]).await;
    assert!(out.contains(&format!("belongs to role {owner}")), "{out}");
    let after = db.walshift_objects().await;
    assert!(!after.slot && after.publication && !after.state_schema, "{after:?}");
    let triggers: i64 = admin
        .query_one("select count(*) from pg_trigger where tgname = 'walshift_fence'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    admin.execute("insert into t (v) values ('writable again')", &[]).await.unwrap();
    seen.assert_no_secret(50_000);
}

/// Failures leak no secret either: a wrong password, an unreachable host,
/// a bad config (Postgres); a wrong CA and a wrong password (Redis), which
/// `run` treats as it treats an unreachable Redis (standby, the reason
/// logged, same exit code) and `traffic route` answers from the state
/// schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leak_no_secret_and_redis_tls_is_verified() {
    let cluster = &secure_cluster();
    let db = TestDb::new(cluster).await;
    db.execute(
        "create table t (id bigint primary key, v text); insert into t values (1, 'a'); \
         create schema shadow; create table shadow.t (id bigint primary key, v text);",
    )
    .await;
    let prefix = key_prefix();
    let redis = RedisServer::start_tls(&[redis_user(&prefix)]);
    let good_source = verify_full(cluster, &db.url());
    let config = |source: &str, redis_url: &str, ca: &std::path::Path| {
        Walshift::with_config(&format!(
            "[migration]\nname = \"test\"\n\n[source]\nurl = \"{source}\"\nslot = \"{}\"\n\
             publication = \"{}\"\n\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n\n\
             [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\ntls_ca_file = \"{}\"\n",
            db.slot_name(),
            db.publication_name(),
            ca.display()
        ))
    };
    let good_redis = redis.url_as("walshift", REDIS_SECRET);
    let mut seen = Transcript::default();
    let ws = config(&good_source, &good_redis, redis.ca_cert_path());
    seen.run_ok(&ws, &["setup"]).await;

    // Postgres: wrong password, unreachable host, bad config.
    let wrong = verify_full(cluster, &db.url_as(ADMIN_USER, &format!("{SOURCE_SECRET}x")));
    let unreachable = format!("postgres://{ADMIN_USER}:{ADMIN_SECRET}@127.0.0.1:1/x");
    let bad = format!("postgres://{ADMIN_USER}:{ADMIN_SECRET}@127.0.0.1/x?sslmode=sometimes");
    let cases: [(&str, &str, Option<i32>); 3] = [
        (&wrong, "password authentication failed", None),
        (&unreachable, "cannot connect", None),
        (&bad, "source.url", Some(2)),
    ];
    for (url, expected, code) in cases {
        let bad_ws = config(url, &good_redis, redis.ca_cert_path());
        for args in [&["setup"][..], &["status"][..]] {
            let out = seen.run(&bad_ws, args).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} with {expected}: {stderr}");
            assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
            if let Some(code) = code {
                assert_eq!(out.status.code(), Some(code), "{stderr}");
            }
        }
    }

    // Redis: a wrong CA, a wrong password, nothing listening. `run` waits
    // as a standby in each case, saying why, and stops the same way.
    let closed = format!("rediss://walshift:{REDIS_SECRET}@localhost:1/0");
    let wrong_password = redis.url_as("walshift", &format!("{REDIS_SECRET}x"));
    let redis_cases: [(&str, &std::path::Path, &str); 3] = [
        (&good_redis, redis.other_ca_cert_path(), "TLS handshake failed: invalid peer certificate"),
        (&wrong_password, redis.ca_cert_path(), "authentication failed"),
        (&closed, redis.ca_cert_path(), "standby: Redis unreachable"),
    ];
    let mut codes = Vec::new();
    for (url, ca, expected) in redis_cases {
        let bad_ws = config(&good_source, url, ca);
        let run: RunProcess = bad_ws.spawn_run();
        wait_log(&run, expected, |log| {
            (log.contains(expected) && log.contains("standby: Redis unreachable")).then_some(())
        })
        .await;
        let (code, log) = run.stop().await;
        seen.add(format!("run with {expected}"), log);
        codes.push(code);
        let out = seen.run(&bad_ws, &["traffic", "route", "user-1"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(expected) || url == closed, "{expected:?} not in {stderr}");
    }
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "exit codes differ: {codes:?}");
    // A missing CA file is bad input, named by its key.
    let bad_ws = config(&good_source, &good_redis, std::path::Path::new("/nonexistent/ca.pem"));
    let stderr =
        expect_exit_2(&bad_ws, &["run"], &["redis.tls_ca_file: cannot use /nonexistent/ca.pem"])
            .await;
    seen.add("run with a missing CA file", stderr);
    seen.assert_no_secret(2_000);
}

/// The HTTP listener: loopback by default; another address works but is
/// logged as a warning; every method but GET and HEAD is refused (405,
/// `allow: GET, HEAD`) on every path, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_is_read_only_and_warns_off_loopback() {
    let default: SocketAddr = walshift::config::DEFAULT_METRICS_LISTEN.parse().unwrap();
    assert!(default.ip().is_loopback(), "default listen {default}");
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id bigint primary key, v text); insert into t values (1, 'a');")
        .await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    let text = ws.config_text().replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    std::fs::write(ws.config_path(), text).unwrap();
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let port = wait_log(&run, "the warning about a non-loopback listener", |log| {
        let line = log.lines().find(|l| l.contains("is not a loopback address"))?;
        let at = line.find("metrics.listen 0.0.0.0:")? + "metrics.listen 0.0.0.0:".len();
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok()
    })
    .await;
    let addr = format!("127.0.0.1:{port}");
    let before = wait_until("the metrics to be exported", WAIT, async || {
        let text = http_get(&addr, "/metrics").await.1;
        text.contains("walshift_errors_total").then_some(text)
    })
    .await;
    for path in ["/metrics", "/healthz", "/readyz", "/status", "/", "/index.html", "/nope"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let (code, head, body) = http(&addr, method, path).await;
            assert_eq!(code, 405, "{method} {path}: {head}\n{body}");
            assert!(head.to_lowercase().contains("allow: get, head"), "{method} {path}: {head}");
        }
        let (code, _, _) = http(&addr, "HEAD", path).await;
        assert!(code != 405, "HEAD {path}");
    }
    let (code, body) = http_get(&addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let after = http_get(&addr, "/metrics").await.1;
    let series = |text: &str, name: &str| {
        let mut lines: Vec<String> =
            text.lines().filter(|l| l.starts_with(name)).map(str::to_owned).collect();
        lines.sort();
        lines
    };
    for name in ["walshift_config_reloads_total", "walshift_errors_total"] {
        assert_eq!(series(&before, name), series(&after, name), "{name} changed");
    }
    let c = db.client().await;
    let commands: i64 = c
        .query_one("select count(*) from walshift.commands", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(commands, 0);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

/// `setup` with a publication it cannot use (other tables, some
/// operations, a row filter, FOR ALL TABLES), owned by the tables' owner,
/// or a state schema it may not create: exit 2, the difference and the
/// owner's statements named, nothing created.
#[tokio::test]
async fn setup_refuses_a_publication_or_state_schema_it_cannot_use() {
    let db = TestDb::new(PgCluster::shared()).await;
    let (owner, src) = (format!("{}_own", db.name()), format!("{}_src", db.name()));
    db.execute(&format!(
        "create role {owner} nologin; create role {src} login replication; \
         grant create on database {dbname} to {owner}; grant create on schema public to {owner}; \
         set role {owner}; \
         create table t (id int primary key, v text); create table other (id int primary key); \
         reset role; grant select on t, other to {src}; \
         create schema shadow; create table shadow.t (id int primary key, v text);",
        dbname = db.name()
    ))
    .await;
    let source = format!("postgres://{src}@{}/{}", db.cluster().host_port(), db.name());
    let publication = db.publication_name();
    let config = |target: &str| {
        Walshift::with_config(&format!(
            "[migration]\nname = \"test\"\n\n[source]\nurl = \"{source}\"\nslot = \"{}\"\n\
             publication = \"{publication}\"\n\n[target]\nurl = \"{target}\"\n\n\
             [[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
            db.slot_name()
        ))
    };
    let ws = config(&db.url());
    let quoted = format!("\"{publication}\"");
    let cases = [
        (
            "for table other",
            vec![
                format!("publication {publication} exists but does not publish public.t"),
                "also publishes public.other, which no [[tables]] entry maps".to_owned(),
                format!("it belongs to role {owner}, so walshift (role {src}) cannot change it"),
                format!("{owner} must run: alter publication {quoted} set table \"public\".\"t\""),
            ],
        ),
        (
            "for table t with (publish = 'insert, update')",
            vec![
                "does not publish delete, truncate".to_owned(),
                format!(
                    "alter publication {quoted} set (publish = 'insert, update, delete, truncate')"
                ),
            ],
        ),
        ("for table t where (id > 0)", vec!["with a row filter (where (id > 0))".to_owned()]),
    ];
    for (definition, expected) in &cases {
        db.execute(&format!(
            "set role {owner}; create publication {quoted} {definition}; reset role"
        ))
        .await;
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let stderr = expect_exit_2(&ws, &["setup"], &expected).await;
        assert!(stderr.contains("nothing was created"), "{stderr}");
        let objects = db.walshift_objects().await;
        assert!(!objects.slot && !objects.state_schema, "{definition}: {objects:?}");
        db.execute(&format!("drop publication {quoted}")).await;
    }
    // Owned by a superuser, FOR ALL TABLES.
    db.execute(&format!("create publication {quoted} for all tables")).await;
    expect_exit_2(
        &ws,
        &["setup"],
        &["publishes every table (FOR ALL TABLES)", "must run: drop publication"],
    )
    .await;
    db.execute(&format!("drop publication {quoted}")).await;

    // A usable publication of the owner, but a target role that may not
    // create the state schema.
    db.execute(&format!("set role {owner}; create publication {quoted} for table t; reset role"))
        .await;
    let as_src = config(&source);
    expect_exit_2(
        &as_src,
        &["setup"],
        &[&format!(
            "target.url: role {src} may not create walshift's state schema walshift (no CREATE \
             on database {db}): have an administrator run: create schema walshift authorization \
             {src}",
            db = db.name()
        )],
    )
    .await;
    let objects = db.walshift_objects().await;
    assert!(!objects.slot && !objects.state_schema && objects.publication, "{objects:?}");
    db.execute(&format!(
        "drop publication {quoted}; drop owned by {owner}; drop owned by {src}; \
         drop role {owner}; drop role {src};"
    ))
    .await;
}
