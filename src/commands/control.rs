//! Commands that talk to the controller: `resume` and `rollback` (asked of
//! the running leader through `walshift.commands`, never over HTTP),
//! `history` (the audit trail), `traffic route` and `traffic watch` (what
//! Redis publishes).

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::config::ValidatedConfig;
use crate::error::Error;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::state::controller::{self as stored, AuditEntry};
use crate::traffic::bucket::{self, Side};
use crate::traffic::decision::Decision;
use crate::traffic::redis::TrafficRedis;

/// How long `resume` / `rollback` wait for the leader's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `user@host` of whoever runs the command.
pub fn requester() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_uid)
        .unwrap_or_else(|| "unknown".into());
    let host = crate::state::instance::host_name();
    format!("{user}@{host}")
}

/// The name of this process's user from `/etc/passwd` (no `$USER` under
/// cron or systemd).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid =
        status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut fields = l.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// Asks the running leader to carry out `command`; returns its answer.
/// Refused (exit 2) when no leader runs or the leader refuses; exit 1 when
/// it does not answer in time (the request is then withdrawn).
pub async fn ask_leader(
    cfg: &ValidatedConfig,
    command: &str,
    args: &serde_json::Value,
) -> Result<String, Error> {
    ask_leader_with(cfg, command, args, |_| Ok(())).await
}

/// `walshift cutover [--dry-run]`: asks the leader and prints each step
/// (the leader's `cutover` audit entries) as it happens, then the answer.
pub async fn cutover(
    cfg: &ValidatedConfig,
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let answer =
        ask_leader_with(cfg, "cutover", &serde_json::json!({ "dry_run": dry_run }), |line| {
            writeln!(out, "{line}").and_then(|()| out.flush()).map_err(Error::Output)
        })
        .await?;
    writeln!(out, "{answer}").map_err(Error::Output)
}

/// [`ask_leader`], calling `progress` with each `cutover` audit line the
/// leader writes while it works on the command.
pub async fn ask_leader_with(
    cfg: &ValidatedConfig,
    command: &str,
    args: &serde_json::Value,
    mut progress: impl FnMut(String) -> Result<(), Error>,
) -> Result<String, Error> {
    let target = client::connect(&cfg.target.url, command, SessionLimits::ADMIN).await?;
    crate::pg::migrate::check(&target).await?;
    let row = stored::load(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the controller state"))?;
    let alive_within =
        (cfg.cutover.lease_ttl + 2 * cfg.cutover.evaluate_interval).as_secs_f64() + 2.0;
    let no_leader = |why: String| {
        Error::Precondition(format!(
            "no running walshift run leads migration {} ({why}): start `walshift run` with [redis] url \
             set, then ask again; nothing was changed",
            cfg.migration_name
        ))
    };
    let Some(row) = row else {
        return Err(no_leader("the controller has never run".into()));
    };
    match row.leader_seen_age_seconds {
        Some(age) if age <= alive_within => {}
        Some(age) => return Err(no_leader(format!("its leader was last seen {age:.0} s ago"))),
        None => return Err(no_leader("no leader recorded".into())),
    }
    let mut seen = stored::last_audit_id(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the audit trail"))?;
    let id =
        stored::request(&target, &cfg.migration_name, command, &args.to_string(), &requester())
            .await
            .map_err(Error::sql("queueing the command"))?;
    let started = Instant::now();
    loop {
        for a in stored::audit_since(&target, &cfg.migration_name, seen, "cutover")
            .await
            .map_err(Error::sql("reading the audit trail"))?
        {
            seen = seen.max(a.id);
            progress(format!("{} {}", a.at, a.reason))?;
        }
        if let Some(answer) = stored::answer_of(&target, id)
            .await
            .map_err(Error::sql("reading the leader's answer"))?
        {
            return match (answer.ok, answer.failed) {
                (true, _) => Ok(answer.answer),
                (false, true) => Err(Error::Failed(answer.answer)),
                (false, false) => Err(Error::Precondition(answer.answer)),
            };
        }
        if started.elapsed() >= ANSWER_TIMEOUT {
            let withdrawn = stored::withdraw(&target, id)
                .await
                .map_err(Error::sql("withdrawing the command"))?;
            if withdrawn {
                return Err(Error::Internal(format!(
                    "the leader did not answer within {} s; the request was withdrawn and nothing \
                     was changed",
                    ANSWER_TIMEOUT.as_secs()
                )));
            }
            // Picked up (a write cutover runs): wait for its end.
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One audit entry on one line.
pub fn history_line(a: &AuditEntry) -> String {
    let states = match (&a.from_state, &a.to_state) {
        (Some(f), Some(t)) if f != t => format!("{f} -> {t}"),
        (_, Some(t)) => t.clone(),
        _ => "-".into(),
    };
    let read = a.read_new.map(|r| format!(" read {r}% new")).unwrap_or_default();
    let version = a.version.map(|v| format!(" v{v}")).unwrap_or_default();
    let actor = a.actor.as_deref().map(|x| format!(" [{x}]")).unwrap_or_default();
    format!("{} {:<9} {states}{read}{version}: {}{actor}", a.at, a.kind, a.reason)
}

/// `walshift history`.
pub async fn history(
    cfg: &ValidatedConfig,
    limit: i64,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let target = client::connect(&cfg.target.url, "history", SessionLimits::ADMIN).await?;
    crate::pg::migrate::check(&target).await?;
    let entries = stored::history(&target, &cfg.migration_name, limit)
        .await
        .map_err(Error::sql("reading the audit trail"))?;
    if json {
        let text = serde_json::to_string_pretty(&entries)
            .map_err(|e| Error::Internal(format!("cannot render the history: {e}")))?;
        writeln!(out, "{text}").map_err(Error::Output)?;
    } else if entries.is_empty() {
        writeln!(
            out,
            "no decisions yet: the controller has not run for migration {}",
            cfg.migration_name
        )
        .map_err(Error::Output)?;
    } else {
        for a in &entries {
            writeln!(out, "{}", history_line(a)).map_err(Error::Output)?;
        }
    }
    Ok(())
}

/// Where a decision came from.
fn decision_source(cfg: &ValidatedConfig) -> Result<TrafficRedis, Error> {
    if cfg.redis.url.is_none() {
        return Err(Error::Precondition(
            "redis.url is not set: walshift publishes no traffic decision without it".into(),
        ));
    }
    TrafficRedis::new(&cfg.redis).map_err(|e| Error::Precondition(e.to_string()))
}

/// `walshift traffic route <KEY>`: the side `key` goes to under the
/// published weights.
pub async fn route(cfg: &ValidatedConfig, key: &str, out: &mut impl Write) -> Result<Side, Error> {
    let redis = decision_source(cfg)?;
    let (decision, from) = match redis.current().await {
        Ok(Some(text)) => (Decision::parse(&text), "Redis"),
        Ok(None) => (None, "Redis"),
        Err(e) => {
            // Redis down: the state schema has the authoritative copy.
            let target = client::connect(&cfg.target.url, "route", SessionLimits::ADMIN).await?;
            crate::pg::migrate::check(&target).await?;
            let row = stored::load(&target, &cfg.migration_name)
                .await
                .map_err(Error::sql("reading the controller state"))?;
            tracing::warn!(error = %e, "Redis unreachable; using the decision stored in the state schema");
            (row.and_then(|r| Decision::parse(&r.decision)), "the state schema (Redis unreachable)")
        }
    };
    let (salt, percent, version) = match &decision {
        Some(d) => (d.bucketing.salt.clone(), d.read.new, Some(d.version)),
        None => (cfg.traffic.salt.clone(), 0, None),
    };
    let side = bucket::side(&salt, key, percent);
    let b = bucket::bucket(&salt, key);
    let basis = match version {
        Some(v) => format!("decision version {v} from {from}: {percent} % new"),
        None => "no decision published yet: every request goes to old".into(),
    };
    writeln!(
        out,
        "{key}: {side} (bucket {b} of {}; new below {}; {basis})",
        bucket::BUCKETS,
        u64::from(percent) * 100
    )
    .map_err(Error::Output)?;
    Ok(side)
}

/// `walshift traffic watch`: prints the current decision, then each one
/// published, until interrupted. Re-reads the key after every
/// (re)subscribe, since pub/sub drops what is sent while disconnected.
pub async fn watch(
    cfg: &ValidatedConfig,
    mut shutdown: Shutdown,
    out: &mut impl Write,
) -> Result<(), Error> {
    let redis = decision_source(cfg)?;
    let client = crate::traffic::redis::client(&cfg.redis)
        .map_err(|e| Error::Precondition(e.to_string()))?;
    let channel = redis.traffic_key().to_owned();
    let mut last_version = i64::MIN;
    let mut backoff = Duration::from_millis(200);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            p = subscribed => p,
            () = shutdown.wait() => return Ok(()),
        };
        match pubsub {
            Ok(pubsub) => {
                backoff = Duration::from_millis(200);
                // Subscribed first, then read: nothing falls in between.
                if let Ok(Some(text)) = redis.current().await {
                    print_decision(&text, &mut last_version, out)?;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let text: String = msg.get_payload().unwrap_or_default();
                                print_decision(&text, &mut last_version, out)?;
                            }
                            None => break,
                        },
                        () = shutdown.wait() => return Ok(()),
                    }
                }
                tracing::warn!("subscription lost; re-subscribing");
            }
            Err(e) => {
                let error = crate::traffic::redis::describe(&e);
                tracing::warn!(error = %error, "cannot subscribe; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn print_decision(text: &str, last: &mut i64, out: &mut impl Write) -> Result<(), Error> {
    // Versions only grow; an older or repeated one (seen by both the read
    // and the channel) is skipped.
    if let Some(d) = Decision::parse(text) {
        if d.version <= *last {
            return Ok(());
        }
        *last = d.version;
    }
    writeln!(out, "{text}").map_err(Error::Output)?;
    out.flush().map_err(Error::Output)
}
