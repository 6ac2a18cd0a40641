//! Failed preconditions, collected so that every problem of a run is
//! reported at once (exit code 2, nothing created). Plain data: every layer
//! can produce them without depending on the top-level error.

use std::fmt;

/// One failed precondition: what was checked and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The config key or object concerned, e.g. `tables[0].source` or `source`.
    pub subject: String,
    /// What is wrong and, when the operator can act, how to fix it.
    pub problem: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

/// Every failed precondition of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailures(pub Vec<CheckFailure>);

impl fmt::Display for CheckFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} check(s) failed, nothing was created or changed", self.0.len())?;
        for failure in &self.0 {
            write!(f, "\n  - {failure}")?;
        }
        Ok(())
    }
}
