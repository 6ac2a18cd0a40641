//! libpq connection strings (URL and key/value forms) with an injected
//! environment.
//!
//! Input: the connection string (UTF-8), then optionally a 0xFF byte (which
//! UTF-8 never contains) and `NAME=value` lines that make up the
//! environment (`PGHOST`, `PGPORT`, `USER`, ...), so the `PG*` fallbacks are
//! fuzzed too without reading the process environment. Values with a NUL
//! are dropped, as no real environment can hold one.
//!
//! Checks, beyond "never panics":
//! - `Display`/`Debug` of a parsed `ConnInfo` do not depend on the password;
//! - the redacted form (`postgres://user@host:port/dbname?sslmode=...`,
//!   what logs and messages show) parses back, with an empty environment,
//!   to the same host, port, user, database and sslmode;
//! - `with_application_name` clamps to Postgres's 63 bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use walshift::pg::conninfo::{ConnInfo, MAX_APPLICATION_NAME_BYTES};
use walshift::pg::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let (input, env_text) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(input), Ok(env_text)) = (std::str::from_utf8(input), std::str::from_utf8(env_text))
    else {
        return;
    };
    let vars: Vec<(&str, &str)> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(_, value)| !value.contains('\0'))
        .collect();
    let env =
        |name: &str| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());

    let info = match ConnInfo::parse_with_env(input, &env) {
        Ok(info) => info,
        Err(err) => {
            let _ = (err.to_string(), format!("{err:?}"));
            return;
        }
    };
    let _ = info.to_tokio_postgres();

    let other = ConnInfo { password: Some(Secret::new("another-password")), ..info.clone() };
    let none = ConnInfo { password: None, ..info.clone() };
    assert_eq!(info.to_string(), none.to_string(), "Display depends on the password");
    if info.password.is_some() {
        assert_eq!(format!("{info:?}"), format!("{other:?}"), "Debug depends on the password");
    }

    let redacted = info.redacted();
    match ConnInfo::parse_with_env(&redacted, &|_| None) {
        Ok(again) => {
            assert_eq!(
                (&again.host, again.port, &again.user, &again.dbname, again.ssl_mode),
                (&info.host, info.port, &info.user, &info.dbname, info.ssl_mode),
                "redacted form {redacted:?} names another database"
            );
        }
        Err(err) => panic!("redacted form {redacted:?} does not parse: {err}"),
    }

    let named = info.with_application_name(input);
    let name = named.application_name.unwrap_or_default();
    assert!(name.len() <= MAX_APPLICATION_NAME_BYTES && input.starts_with(&name));
});
