//! Statement parameters: one column of a batch of rows as a `text[]`,
//! written straight from the pgoutput bytes in the array binary format (no
//! UTF-8 re-validation, no copy into owned strings).

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use postgres_protocol::types::{ArrayDimension, array_to_sql};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::change::Datum;

/// Column `col` of `rows` as a `text[]` parameter. Nulls and unchanged
/// TOAST markers become NULL elements.
#[derive(Debug)]
pub struct ColumnParam<'a> {
    rows: &'a [&'a [Datum]],
    col: usize,
}

impl<'a> ColumnParam<'a> {
    /// Column `col` of `rows`.
    pub fn new(rows: &'a [&'a [Datum]], col: usize) -> Self {
        ColumnParam { rows, col }
    }
}

impl ToSql for ColumnParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let len = i32::try_from(self.rows.len())?;
        array_to_sql(
            Some(ArrayDimension { len, lower_bound: 1 }),
            Type::TEXT.oid(),
            self.rows.iter().map(|row| row.get(self.col)),
            |value, buf| match value {
                Some(Datum::Text(bytes)) => {
                    buf.put_slice(bytes);
                    Ok(postgres_protocol::IsNull::No)
                }
                _ => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT_ARRAY
    }

    to_sql_checked!();
}
