//! The demo's output on stderr: lines that stay (events, decisions) and a
//! status line that a terminal redraws in place. Elsewhere (a pipe, a log
//! file) status lines are printed at most every [`PIPE_STATUS_EVERY`], so
//! a captured run stays readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a status line is printed when stderr is not a terminal.
pub const PIPE_STATUS_EVERY: Duration = Duration::from_secs(5);

/// stderr, with an optional status line at the bottom.
#[derive(Debug)]
pub struct Console {
    started: Instant,
    terminal: bool,
    /// A status line is on screen (terminal only).
    status_shown: bool,
    last_status: Option<Instant>,
}

impl Console {
    /// A console whose event lines count time from `started`.
    pub fn new(started: Instant) -> Console {
        Console {
            started,
            terminal: std::io::stderr().is_terminal(),
            status_shown: false,
            last_status: None,
        }
    }

    /// Prints `text` as a line of its own, as it is.
    pub fn line(&mut self, text: &str) {
        self.clear_status();
        eprintln!("{text}");
    }

    /// Prints an event, prefixed with the time since the demo started.
    pub fn event(&mut self, text: &str) {
        let at = self.started.elapsed().as_secs_f64();
        self.line(&format!("  [{at:5.1} s] {text}"));
    }

    /// Prints a continuation of the last event, aligned under its text.
    pub fn detail(&mut self, text: &str) {
        self.line(&format!("             {text}"));
    }

    /// Shows `text` as the status line: redrawn in place on a terminal;
    /// elsewhere printed when `always` or when the last one is older than
    /// [`PIPE_STATUS_EVERY`].
    pub fn status(&mut self, text: &str, always: bool) {
        if self.terminal {
            eprint!("\r\x1b[2K  {text}");
            self.status_shown = true;
        } else {
            let due = self.last_status.is_none_or(|at| at.elapsed() >= PIPE_STATUS_EVERY);
            if !(always || due) {
                return;
            }
            eprintln!("  {text}");
            self.last_status = Some(Instant::now());
        }
        let _ = std::io::stderr().flush();
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            eprint!("\r\x1b[2K");
            self.status_shown = false;
        }
    }
}
