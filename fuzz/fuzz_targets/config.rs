//! The configuration file: TOML text → `${VAR}` interpolation →
//! `Config` → `validate_with_env` → `ValidatedConfig`, plus the reload
//! comparison (`fixed_keys_changed`).
//!
//! The environment is a fixed map (no process environment, no files), so a
//! finding replays the same way everywhere.
//!
//! Checks, beyond "never panics":
//! - error messages format (they compute line/column and key paths from
//!   spans, which is where off-by-one panics would hide);
//! - a text that validates compares equal to itself for reload
//!   (`fixed_keys_changed(text, text)` is empty).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use walshift::config::{Config, fixed_keys_changed};

const ENV: [(&str, &str); 6] = [
    ("PGPASSWORD", "hunter2"),
    ("HOST", "db.example.com"),
    ("PORT", "5432"),
    ("SCHEMA", "shadow"),
    ("EMPTY", ""),
    ("USER", "walshift"),
];

fn env(name: &str) -> Option<String> {
    ENV.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_str(text, Path::new("fuzz.toml"), &env) {
        Ok(config) => config,
        Err(err) => {
            let _ = (err.to_string(), format!("{err:?}"));
            return;
        }
    };
    let _ = format!("{config:?}");
    let validated = match config.validate_with_env(&env) {
        Ok(validated) => validated,
        Err(err) => {
            let _ = (err.to_string(), format!("{err:?}"));
            return;
        }
    };
    let _ = (format!("{validated:?}"), validated.reloadable());
    match fixed_keys_changed(text, text) {
        Ok(changed) => {
            assert!(changed.is_empty(), "a valid config differs from itself: {changed:?}")
        }
        Err(err) => panic!("a valid config does not parse for reload: {err}"),
    }
});
