//! Identifiers in SQL text: the only place they are quoted.
//!
//! Every schema, table, column, slot or publication name that ends up inside
//! SQL text is an [`Ident`], whose `Display` *always* double-quotes through
//! [`postgres_protocol::escape::escape_identifier`] (libpq's
//! `PQescapeIdentifier`). There is no way to splice a name unquoted, so a
//! name can never change the shape of a statement, whatever it contains
//! (`x"; drop table y; --` becomes the single identifier
//! `"x""; drop table y; --"`). Values never go into SQL text at all: they are
//! bind parameters. Catalog lookups take the *raw* name as a bind parameter
//! (`where nspname = $1`), through [`Ident::as_str`] / [`QualifiedName::raw_schema`].
//!
//! [`QualifiedName::parse`] reads table names the way an operator writes them
//! in the config, with Postgres's own rules
//! (<https://www.postgresql.org/docs/current/sql-syntax-lexical.html#SQL-SYNTAX-IDENTIFIERS>):
//! unquoted parts are folded to lower case (ASCII only, as Postgres does in
//! UTF-8 databases), quoted parts keep their case and use `""` for a literal
//! quote. The schema is required: a bare table name would depend on the
//! `search_path` of whichever session happens to run the statement.
//!
//! Names longer than 63 bytes (`NAMEDATALEN - 1`) are rejected rather than
//! silently truncated as Postgres would, so the name in the config is the
//! name in the catalog.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use postgres_protocol::escape::escape_identifier;

/// Longest identifier Postgres keeps without truncating (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A SQL identifier (schema, table, column, slot, publication name).
///
/// Built from any string; `Display` always quotes it, so it is safe to splice
/// into SQL text. Use [`Ident::as_str`] for the raw name (bind parameters,
/// catalog lookups, log fields).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Wraps a raw (unquoted, case-exact) name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The raw name, exactly as stored in the catalog.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw name.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The name quoted only when it needs it (`usage_events`, `"Usage Events"`),
    /// for messages, logs and metric labels. Not for SQL: use `Display`.
    pub fn readable(&self) -> Cow<'_, str> {
        if is_plain(&self.0) {
            Cow::Borrowed(&self.0)
        } else {
            Cow::Owned(escape_identifier(&self.0))
        }
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_identifier(&self.0))
    }
}

impl From<&str> for Ident {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for Ident {
    fn from(name: String) -> Self {
        Self(name)
    }
}

/// A schema-qualified relation name; `Display` is `"schema"."name"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    schema: Ident,
    name: Ident,
}

/// Why a table name from the config could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but whitespace.
    #[error("empty name; expected schema.table")]
    Empty,
    /// A single part: the schema is missing.
    #[error("not schema-qualified; write schema.table, e.g. public.{name}")]
    NotQualified {
        /// The table part, as written.
        name: String,
    },
    /// `a.b.c`.
    #[error("too many dots; expected schema.table (database-qualified names are not supported)")]
    TooManyParts,
    /// `"abc` without the closing quote.
    #[error("unterminated quoted identifier starting at byte {offset}")]
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// `""`.
    #[error("zero-length quoted identifier at byte {offset}")]
    EmptyQuoted {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// A character that cannot appear there (outside quotes).
    #[error(
        "unexpected character {ch:?} at byte {offset} (quote the name with \"...\" if it contains it)"
    )]
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        offset: usize,
    },
    /// A dot with no identifier after it.
    #[error("missing identifier after '.' at byte {offset}")]
    MissingPart {
        /// Byte offset of the dot.
        offset: usize,
    },
    /// Longer than [`MAX_IDENTIFIER_BYTES`].
    #[error(
        "identifier starting at byte {offset} is {len} bytes long; postgres would truncate it to {MAX_IDENTIFIER_BYTES}"
    )]
    TooLong {
        /// Byte offset where the identifier starts.
        offset: usize,
        /// Its length in bytes (after unquoting).
        len: usize,
    },
}

impl QualifiedName {
    /// From raw (unquoted, case-exact) parts.
    pub fn new(schema: impl Into<Ident>, name: impl Into<Ident>) -> Self {
        Self { schema: schema.into(), name: name.into() }
    }

    /// Parses `schema.table` as written in the config (see the module doc).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let mut parts = parse_parts(text)?;
        match parts.len() {
            0 => Err(NameError::Empty),
            1 => Err(NameError::NotQualified { name: parts.remove(0) }),
            2 => {
                let name = parts.pop().unwrap_or_default();
                let schema = parts.pop().unwrap_or_default();
                Ok(Self::new(schema, name))
            }
            _ => Err(NameError::TooManyParts),
        }
    }

    /// The schema as an identifier (quotes when displayed).
    pub fn schema(&self) -> &Ident {
        &self.schema
    }

    /// The relation as an identifier (quotes when displayed).
    pub fn name(&self) -> &Ident {
        &self.name
    }

    /// The raw schema name, for catalog lookups with bind parameters.
    pub fn raw_schema(&self) -> &str {
        self.schema.as_str()
    }

    /// The raw relation name, for catalog lookups with bind parameters.
    pub fn raw_name(&self) -> &str {
        self.name.as_str()
    }

    /// `schema.table`, quoting only the parts that need it, for messages,
    /// logs and metric labels. [`QualifiedName::parse`] reads it back to the
    /// same name. Not for SQL: use `Display`.
    pub fn readable(&self) -> String {
        format!("{}.{}", self.schema.readable(), self.name.readable())
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl FromStr for QualifiedName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A name that reads back unchanged without quotes, in the config and in
/// SQL: lower-case ASCII letters, digits, `_` and `$`, not starting with a
/// digit or `$`, and not a keyword SQL needs quoted (`user`, `order`).
fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !is_keyword(name)
}

/// Keywords that cannot be used as a column or table name without quotes:
/// every keyword Postgres does not class as unreserved (reserved,
/// `col_name` and `type_func_name` keywords, `pg_get_keywords()` with
/// `catcode <> 'U'`, PostgreSQL 15 plus the ones 16 and 17 added). Sorted,
/// for binary search. Postgres's own `quote_identifier` quotes the same set.
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// Whether `word` (any case) is a keyword that SQL needs quoted when it is
/// meant as a name: `user` alone is `current_user`, `order` a syntax error.
pub fn is_keyword(word: &str) -> bool {
    word.len() <= 20 && KEYWORDS.binary_search(&word.to_ascii_lowercase().as_str()).is_ok()
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_continue(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Splits dotted identifiers, unquoting and case-folding each part.
fn parse_parts(text: &str) -> Result<Vec<String>, NameError> {
    let mut parts = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut after_dot: Option<usize> = None;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, first)) = chars.peek() else {
            return match after_dot {
                Some(offset) => Err(NameError::MissingPart { offset }),
                None => Ok(parts),
            };
        };
        let part = if first == '"' {
            chars.next();
            let mut part = String::new();
            loop {
                match chars.next() {
                    None => return Err(NameError::UnterminatedQuote { offset: start }),
                    Some((_, '"')) => {
                        if chars.next_if(|(_, c)| *c == '"').is_some() {
                            part.push('"');
                        } else {
                            break;
                        }
                    }
                    Some((_, c)) => part.push(c),
                }
            }
            if part.is_empty() {
                return Err(NameError::EmptyQuoted { offset: start });
            }
            part
        } else if is_ident_start(first) {
            let mut part = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| is_ident_continue(*c)) {
                part.push(c.to_ascii_lowercase());
            }
            part
        } else if first == '.' {
            return Err(NameError::MissingPart { offset: after_dot.unwrap_or(start) });
        } else {
            return Err(NameError::UnexpectedChar { ch: first, offset: start });
        };
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(NameError::TooLong { offset: start, len: part.len() });
        }
        parts.push(part);
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Ok(parts),
            Some((offset, '.')) => after_dot = Some(offset),
            Some((offset, ch)) => return Err(NameError::UnexpectedChar { ch, offset }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qn(text: &str) -> QualifiedName {
        QualifiedName::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn ident_always_quotes() {
        assert_eq!(Ident::new("users").to_string(), r#""users""#);
        assert_eq!(Ident::new("Users").to_string(), r#""Users""#);
        assert_eq!(Ident::new("my table").to_string(), r#""my table""#);
        assert_eq!(Ident::new(r#"a"b"#).to_string(), r#""a""b""#);
        assert_eq!(Ident::new("").to_string(), r#""""#);
        assert_eq!(Ident::new(r"back\slash").to_string(), r#""back\slash""#);
    }

    #[test]
    fn ident_injection_attempt_stays_one_identifier() {
        let evil = r#"x"; drop table y; --"#;
        let ident = Ident::new(evil);
        assert_eq!(ident.to_string(), r#""x""; drop table y; --""#);
        assert_eq!(ident.as_str(), evil);
        // The quoted form reads back to exactly the same single name.
        let back = QualifiedName::parse(&format!("public.{ident}")).unwrap();
        assert_eq!(back.raw_name(), evil);
        assert_eq!(back.to_string(), r#""public"."x""; drop table y; --""#);
    }

    #[test]
    fn parse_unquoted_folds_to_lower_case() {
        let name = qn("public.usage_events");
        assert_eq!(name.raw_schema(), "public");
        assert_eq!(name.raw_name(), "usage_events");
        assert_eq!(name.to_string(), r#""public"."usage_events""#);

        let name = qn("Public.Usage_Events");
        assert_eq!((name.raw_schema(), name.raw_name()), ("public", "usage_events"));
        let name = qn("  billing_new . t$1  ");
        assert_eq!((name.raw_schema(), name.raw_name()), ("billing_new", "t$1"));
        // Non-ASCII letters are identifier characters and are not folded.
        let name = qn("s.Éte");
        assert_eq!(name.raw_name(), "Éte");
    }

    #[test]
    fn parse_quoted_keeps_case_and_escapes() {
        let name = qn(r#"billing_new."Usage Events""#);
        assert_eq!((name.raw_schema(), name.raw_name()), ("billing_new", "Usage Events"));
        assert_eq!(name.to_string(), r#""billing_new"."Usage Events""#);

        let name = qn(r#""my.schema"."t""#);
        assert_eq!((name.raw_schema(), name.raw_name()), ("my.schema", "t"));

        let name = qn(r#""a""b"."c d""#);
        assert_eq!((name.raw_schema(), name.raw_name()), (r#"a"b"#, "c d"));
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("   ", NameError::Empty),
            ("usage_events", NameError::NotQualified { name: "usage_events".into() }),
            (r#""Usage""#, NameError::NotQualified { name: "Usage".into() }),
            ("db.public.t", NameError::TooManyParts),
            (r#"public."t"#, NameError::UnterminatedQuote { offset: 7 }),
            (r#"public."""#, NameError::EmptyQuoted { offset: 7 }),
            ("public.", NameError::MissingPart { offset: 6 }),
            (".t", NameError::MissingPart { offset: 0 }),
            ("public..t", NameError::MissingPart { offset: 6 }),
            ("public.1t", NameError::UnexpectedChar { ch: '1', offset: 7 }),
            ("public.t-1", NameError::UnexpectedChar { ch: '-', offset: 8 }),
            ("public.my table", NameError::UnexpectedChar { ch: 't', offset: 10 }),
            (r#"public.x"; drop table y; --"#, NameError::UnexpectedChar { ch: '"', offset: 8 }),
            ("public.t; drop table y", NameError::UnexpectedChar { ch: ';', offset: 8 }),
        ];
        for (text, expected) in cases {
            assert_eq!(QualifiedName::parse(text).as_ref(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn parse_rejects_names_postgres_would_truncate() {
        let ok = format!("s.{}", "a".repeat(63));
        assert_eq!(qn(&ok).raw_name().len(), 63);
        let long = format!("s.{}", "a".repeat(64));
        assert_eq!(QualifiedName::parse(&long), Err(NameError::TooLong { offset: 2, len: 64 }));
        // Multi-byte characters count in bytes, as NAMEDATALEN does.
        let long = format!("s.\"{}\"", "é".repeat(32));
        assert!(matches!(QualifiedName::parse(&long), Err(NameError::TooLong { len: 64, .. })));
    }

    #[test]
    fn error_messages() {
        let err = QualifiedName::parse("usage_events").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not schema-qualified; write schema.table, e.g. public.usage_events"
        );
        let err = QualifiedName::parse("a.b.c").unwrap_err();
        assert!(err.to_string().starts_with("too many dots"), "{err}");
    }

    #[test]
    fn readable_quotes_only_when_needed_and_round_trips() {
        for text in [
            "public.usage_events",
            r#"billing_new."Usage Events""#,
            r#""my.schema".t"#,
            r#"s."1abc""#,
            r#"s."x""; drop table y; --""#,
            "s._a$1",
        ] {
            let name = qn(text);
            assert_eq!(name.readable(), text);
            assert_eq!(qn(&name.readable()), name);
            assert_eq!(qn(&name.to_string()), name);
        }
    }

    #[test]
    fn readable_quotes_keywords_so_messages_are_valid_sql() {
        assert!(KEYWORDS.windows(2).all(|w| w[0] < w[1]), "KEYWORDS must stay sorted");
        for (raw, readable) in [
            (("public", "user"), r#"public."user""#),
            (("order", "select"), r#""order"."select""#),
            (("public", "users"), "public.users"),
            // Unreserved keywords need no quotes.
            (("public", "name"), "public.name"),
            (("public", "Order"), r#"public."Order""#),
        ] {
            let name = QualifiedName::new(raw.0, raw.1);
            assert_eq!(name.readable(), readable);
            assert_eq!(qn(readable), name);
        }
        assert!(is_keyword("USER") && is_keyword("select") && !is_keyword("usage_events"));
        assert_eq!(Ident::new("end").readable(), r#""end""#);
    }

    #[test]
    fn random_names_round_trip_through_display() {
        let alphabet: Vec<char> = "aZ_ .\"';-\\$é0\t".chars().collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(1..12);
            let raw: String = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            let name = QualifiedName::new("s", raw.as_str());
            assert_eq!(qn(&name.to_string()), name, "{raw:?}");
            assert_eq!(qn(&name.readable()), name, "{raw:?}");
        }
    }
}
