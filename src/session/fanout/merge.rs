//! The merge itself: OFFSET and LIMIT over the merged rows, the sort columns read off the
//! first shard's RowDescription, and the k-way step that sends the smallest row waiting.

use std::cmp::Ordering;

use super::compare::Column;
use super::Part;
use crate::protocol::{server, Frame};
use crate::router::fanout::{Merge, SortColumn};
use crate::session::Session;

/// OFFSET and LIMIT over the merged rows.
pub(super) struct Window {
    pub offset: u64,
    pub limit: Option<u64>,
    pub skipped: u64,
    pub sent: u64,
}

impl Window {
    /// Whether the next merged row is sent.
    pub fn take(&mut self) -> bool {
        if self.skipped < self.offset {
            self.skipped += 1;
            return false;
        }
        if self.full() {
            return false;
        }
        self.sent += 1;
        true
    }

    pub fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }
}

impl Session {
    /// Sends, under ORDER BY, the smallest head row for as long as every shard still sending
    /// rows has one waiting. After an error or once the LIMIT is reached, heads are dropped.
    /// True when a head was taken.
    pub(super) fn emit_ordered(
        &mut self,
        parts: &mut [Part],
        columns: &[Column],
        window: &mut Window,
        failed: bool,
    ) -> Result<bool, String> {
        let mut taken = false;
        loop {
            if failed || window.full() {
                for p in parts.iter_mut() {
                    taken |= p.head.take().is_some();
                }
                return Ok(taken);
            }
            if parts.iter().any(|p| p.head.is_none() && !p.rows_done) {
                return Ok(taken);
            }
            let mut best: Option<usize> = None;
            for (i, p) in parts.iter().enumerate() {
                let Some(row) = &p.head else { continue };
                let better = match best
                    .and_then(|b| parts.get(b))
                    .and_then(|b| b.head.as_ref())
                {
                    None => true,
                    Some(current) => compare_rows(row, current, columns)? == Ordering::Less,
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(row) = best
                .and_then(|b| parts.get_mut(b))
                .and_then(|p| p.head.take())
            else {
                return Ok(taken);
            };
            taken = true;
            if window.take() {
                self.client_out.push(row.raw);
            }
        }
    }
}

/// The sort columns of the merge, from the first shard's RowDescription.
pub(super) fn sort_columns(description: &[u8], merge: &Merge) -> Result<Vec<Column>, String> {
    let fields = server::row_description(description).map_err(|e| e.to_string())?;
    merge
        .order
        .iter()
        .map(|key| {
            let index = match &key.column {
                SortColumn::Position(i) => *i,
                SortColumn::Name(name) => {
                    let mut hits = fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.name == name.as_bytes());
                    match (hits.next(), hits.next()) {
                        (Some((i, _)), None) => i,
                        _ => return Err(format!("ORDER BY {name} (not one output column)")),
                    }
                }
            };
            let field = fields
                .get(index)
                .ok_or_else(|| "ORDER BY a column the result does not have".to_string())?;
            Column::new(index, field.type_oid, field.format, key)
                .map_err(|t| format!("ORDER BY a column of type {t}"))
        })
        .collect()
}

/// Orders two DataRows by the sort columns.
fn compare_rows(a: &Frame, b: &Frame, columns: &[Column]) -> Result<Ordering, String> {
    for c in columns {
        let x = server::data_row_value(a.body(), c.index).map_err(|e| e.to_string())?;
        let y = server::data_row_value(b.body(), c.index).map_err(|e| e.to_string())?;
        match c.compare(x, y)? {
            Ordering::Equal => continue,
            other => return Ok(other),
        }
    }
    Ok(Ordering::Equal)
}
