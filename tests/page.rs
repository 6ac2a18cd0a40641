//! The live status page (`/`), rendered by a real headless Chromium against a
//! running `walshift run`: after its script fetched `/status`, the DOM shows
//! the live figures (lag, the lag chart, backfill and verification per
//! table), and a screenshot is kept as a test artifact
//! (`target/test-artifacts/status-page.png`).
//!
//! Chromium is required, not optional: `scripts/test.sh` (and so CI)
//! installs it; without it this test fails saying so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::backfill::WAIT;
use crate::support::cli::Walshift;
use crate::support::pg::{PgCluster, TestDb};
use crate::support::redis::{RedisServer, key_prefix};
use crate::support::wait::wait_until;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest one Chromium run may take.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The browser, or a failure saying how to install it.
fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "headless Chromium is required for the status page test and {CHROMIUM} does not exist: \
         run `bash scripts/test.sh`, which installs it (or `apt-get install -y chromium`)"
    );
    CHROMIUM
}

/// Runs headless Chromium on `url` with `args` (in a fresh profile, removed
/// afterwards); returns its stdout.
async fn headless(url: &str, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "walshift-chromium-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&profile).expect("create the Chromium profile directory");
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(CHROMIUM_TIMEOUT, cmd.output()).await;
    let _ = std::fs::remove_dir_all(&profile);
    let out = out
        .unwrap_or_else(|_| panic!("chromium {args:?} {url} did not finish within 60 s"))
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} {url} failed with {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// reading the dumped DOM (Chromium's serialization: attributes in double
// quotes, text with `&amp;`, `&lt;`, `&gt;` and `&nbsp;` escaped)

/// From the tag holding `marker` to the first `</tag>` after it.
fn element<'a>(dom: &'a str, marker: &str, tag: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..=at].rfind('<')?;
    let end = at + dom[at..].find(&format!("</{tag}>"))?;
    Some(&dom[start..end])
}

/// The element's opening tag.
fn open_tag(fragment: &str) -> &str {
    fragment.find('>').map_or(fragment, |i| &fragment[..=i])
}

/// The text of an HTML fragment: tags dropped, entities decoded, whitespace
/// collapsed.
fn text(fragment: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in fragment.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text of the element with `id`.
fn by_id(dom: &str, id: &str, tag: &str) -> Result<String, String> {
    element(dom, &format!("id=\"{id}\""), tag)
        .map(text)
        .ok_or_else(|| format!("no <{tag} id=\"{id}\"> in the page"))
}

/// The table row whose class starts with `class` and whose `data-table` is
/// `table`.
fn row<'a>(dom: &'a str, class: &str, table: &str) -> Option<&'a str> {
    let attr = format!("data-table=\"{table}\"");
    let class = format!("class=\"{class}");
    dom.match_indices("<tr ")
        .filter_map(|(i, _)| element(&dom[i..], "<tr ", "tr"))
        .find(|tr| open_tag(tr).contains(&attr) && open_tag(tr).contains(&class))
}

/// `12.34 s`: digits, an optional fraction, `s`.
fn is_seconds(text: &str) -> bool {
    let Some(number) = text.strip_suffix('s').map(str::trim_end) else { return false };
    let mut parts = number.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && parts.next().is_none_or(|f| digits(Some(f))) && parts.next().is_none()
}

/// Whether the DOM shows every live figure the test expects; else the first
/// that is missing.
fn shows_live_figures(dom: &str, table: &str) -> Result<(), String> {
    let expect = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    let migration = by_id(dom, "migration", "span")?;
    expect(migration == "test", format!("migration {migration:?}, expected \"test\""))?;
    let banner = element(dom, "id=\"error\"", "div").ok_or("no error banner element")?;
    expect(
        open_tag(banner).contains("hidden"),
        format!("the error banner shows: {}", text(banner)),
    )?;
    let ready = by_id(dom, "ready", "b")?;
    let reason = by_id(dom, "not-ready-reason", "span")?;
    expect(ready == "ready", format!("readiness {ready:?} ({reason}), expected \"ready\""))?;
    let stream = by_id(dom, "stream", "b")?;
    expect(stream == "connected", format!("stream {stream:?}, expected \"connected\""))?;
    let lag = by_id(dom, "lag-seconds", "div")?;
    expect(is_seconds(&lag), format!("lag-seconds {lag:?}, expected a number of seconds"))?;
    let bytes = by_id(dom, "lag-bytes", "div")?;
    expect(bytes.ends_with('B'), format!("lag-bytes {bytes:?}, expected a size"))?;
    let slot = by_id(dom, "slot-active", "dd")?;
    expect(slot == "yes", format!("slot active {slot:?}, expected \"yes\""))?;
    let chart = element(dom, "id=\"chart\"", "div").ok_or("no chart element")?;
    expect(
        chart.contains("<svg") && chart.contains("<path") && chart.contains("seconds line"),
        format!("the chart has no line yet: {chart}"),
    )?;
    let backfill =
        row(dom, "backfill", table).ok_or_else(|| format!("no backfill row for {table}"))?;
    let backfill = text(backfill);
    expect(
        backfill.contains("complete") && backfill.contains("100%"),
        format!("backfill row {backfill:?}, expected complete and 100%"),
    )?;
    let verify =
        row(dom, "verify", table).ok_or_else(|| format!("no verification row for {table}"))?;
    let verify = text(verify);
    expect(verify.contains("clean"), format!("verification row {verify:?}, expected clean"))?;
    Ok(())
}

/// The screenshot kept for people to look at.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page.png")
}

// ---------------------------------------------------------------------------

/// Headless Chromium loads `/` of a running `walshift run` whose backfill
/// is complete and whose periodic verification passed: the page's script
/// fetched `/status` and rendered the migration, readiness, lag as numbers,
/// the lag chart, the table's backfill (complete, 100%) and verification
/// (clean); a screenshot is written to `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_live_figures_in_a_browser() {
    chromium();
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table accounts (id bigint primary key, name text not null, balance bigint);
         insert into accounts select g, 'account ' || g, g * 7 from generate_series(1, 3000) g;
         analyze accounts;
         create schema shadow;
         create table shadow.accounts (id bigint primary key, name text not null, balance bigint);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.accounts\"\ntarget = \"shadow.accounts\"\n",
        &format!(
            "[verify]\ninterval_seconds = 1\n\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n\n\
             [traffic]\nread_new_percent = 10\nstages = [10, 100]\n\n[cutover]\nevaluate_interval_ms = 200\n\
             min_soak_seconds = 0\n",
            RedisServer::shared().url(),
            key_prefix()
        ),
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    wait_until("the backfill to complete and a verification pass to finish", WAIT, async || {
        let done = c
            .query_one(
                "select exists (select 1 from walshift.backfill where completed_at is not null) \
                 and exists (select 1 from walshift.verify_tables where last_result is not null)",
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, bool>(0));
        done.then_some(())
    })
    .await;
    // Some changes through the stream too, so the lag figures move.
    c.batch_execute("update accounts set balance = balance + 1 where id % 100 = 0").await.unwrap();
    let addr = wait_until("the run to register its HTTP address", WAIT, async || {
        c.query_opt("select http_addr from walshift.instances", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0))
    })
    .await;
    let url = format!("http://{addr}/");

    // The DOM after the script ran; polled, since readiness and the first
    // lag samples may trail the state the test waited for.
    let started = Instant::now();
    let mut attempts = 0;
    let dom = loop {
        attempts += 1;
        let dom = headless(&url, &["--dump-dom"]).await;
        match shows_live_figures(&dom, "shadow.accounts") {
            Ok(()) => break dom,
            Err(why) if started.elapsed() < WAIT => {
                eprintln!("status page, attempt {attempts}: {why}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => panic!(
                "after {attempts} attempts in {:?} the page does not show the live figures: \
                 {why}\nDOM:\n{dom}\nrun log:\n{}",
                started.elapsed(),
                run.stderr()
            ),
        }
    };
    assert!(!dom.contains("loading…"), "the page still shows its loading state:\n{dom}");
    // The controller's section: the split it published and its gates.
    loop {
        match shows_cutover(&dom_now(&url).await) {
            Ok(()) => break,
            Err(why) if started.elapsed() < WAIT * 2 => {
                eprintln!("status page: {why}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => {
                panic!("the page does not show the cutover: {why}\nrun log:\n{}", run.stderr())
            }
        }
    }

    // The screenshot, for people.
    let png = screenshot_path();
    std::fs::create_dir_all(png.parent().unwrap()).expect("create target/test-artifacts");
    let _ = std::fs::remove_file(&png);
    headless(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,1600",
            "--hide-scrollbars",
        ],
    )
    .await;
    let size = std::fs::metadata(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()))
        .len();
    assert!(size > 10 * 1024, "the screenshot {} has only {size} bytes", png.display());

    // The write cutover: reads to 100 %, then `walshift cutover`; the page
    // shows the attempt and its figures.
    let config = ws.config_text().replace("read_new_percent = 10\n", "read_new_percent = 100\n");
    std::fs::write(ws.config_path(), config).unwrap();
    wait_until("the cutover to be allowed", WAIT, async || {
        (ws.run(&["cutover", "--dry-run"]).await.status.code() == Some(0)).then_some(())
    })
    .await;
    ws.run_ok(&["cutover"]).await;
    loop {
        let dom = dom_now(&url).await;
        let shown = by_id(&dom, "write-cutover", "dl").map(|f| text(&f));
        match shown {
            Ok(t) if t.contains("cut_over") && t.contains("write pause") && t.contains(" ms") => {
                break;
            }
            other if started.elapsed() < WAIT * 3 => {
                eprintln!("status page, write cutover: {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("the page does not show the write cutover: {other:?}"),
        }
    }

    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

async fn dom_now(url: &str) -> String {
    headless(url, &["--dump-dom"]).await
}

/// The cutover section is visible, with the split (10 % on new), every gate
/// and a recent decision.
fn shows_cutover(dom: &str) -> Result<(), String> {
    let section = element(dom, "id=\"cutover-section\"", "section").ok_or("no cutover section")?;
    if open_tag(section).contains("hidden") {
        return Err("the cutover section is hidden".into());
    }
    let traffic = text(&by_id(dom, "traffic", "dl")?);
    for needle in ["state", "shifting", "reads on new", "10 %", "reads on old", "90 %"] {
        if !traffic.contains(needle) {
            return Err(format!("traffic lacks {needle:?}: {traffic}"));
        }
    }
    let gates = text(&by_id(dom, "gates", "table")?);
    for gate in ["backfill", "lag_seconds", "lag_bytes", "verification", "redis", "soak", "pass"] {
        if !gates.contains(gate) {
            return Err(format!("gates lack {gate:?}: {gates}"));
        }
    }
    let decisions = text(&by_id(dom, "decisions", "table")?);
    if !decisions.contains("advanced to 10 %") {
        return Err(format!("recent decisions lack the shift: {decisions}"));
    }
    Ok(())
}

#[test]
fn reads_the_dumped_dom() {
    let dom = "<div id=\"lag-seconds\" class=\"value\">0.12 s</div>\
               <table><tr class=\"backfill complete\" data-table=\"s.t\"><td>s.t</td>\
               <td><span>complete</span></td><td>100%</td></tr>\
               <tr class=\"verify\" data-table=\"s.t\"><td>a &amp;&lt;b&gt;</td></tr></table>";
    assert_eq!(by_id(dom, "lag-seconds", "div").unwrap(), "0.12 s");
    assert_eq!(text(row(dom, "backfill", "s.t").unwrap()), "s.t complete 100%");
    assert_eq!(text(row(dom, "verify", "s.t").unwrap()), "a &<b>");
    assert!(row(dom, "verify", "s.u").is_none());
    for ok in ["0.12 s", "3 s", "12.5s"] {
        assert!(is_seconds(ok), "{ok}");
    }
    for bad in ["unknown", "s", ".5 s", "1. s", "1.2.3 s", "–"] {
        assert!(!is_seconds(bad), "{bad}");
    }
}
