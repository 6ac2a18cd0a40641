//! Statement parameters: one column of a batch of rows as an array, written
//! straight from the received bytes in the array binary format (no UTF-8
//! re-validation, no copy into owned strings): a `text[]` of text values
//! (pgoutput, `::text` reads), or a typed array (`bigint[]`, ...) of values
//! already in their type's binary format (backfill reads, see
//! `backfill::keyset::binary_inputs`).

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use postgres_protocol::types::{ArrayDimension, array_to_sql};
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::change::Datum;

/// Column `col` of `rows` as an array parameter. Nulls and unchanged TOAST
/// markers become NULL elements. The values of one column are all text (for
/// a `text[]` parameter) or all binary (for an array of their type).
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
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let len = i32::try_from(self.rows.len())?;
        let element = match ty.kind() {
            Kind::Array(element) => element.oid(),
            _ => Type::TEXT.oid(),
        };
        array_to_sql(
            Some(ArrayDimension { len, lower_bound: 1 }),
            element,
            self.rows.iter().map(|row| row.get(self.col)),
            |value, buf| match value {
                Some(Datum::Text(bytes) | Datum::Binary(bytes)) => {
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
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}
