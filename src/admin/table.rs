//! Result sets of the admin console: every column is text, as PgBouncer sends them, so psql
//! and pgbouncer_exporter-style scrapers read them alike.

use bytes::{BufMut, BytesMut};

/// A result set being built.
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty result with these columns.
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one value per column, in order).
    pub fn row(&mut self, values: Vec<String>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// RowDescription, DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            body.put_slice(c.as_bytes());
            body.put_u8(0);
            body.put_i32(0); // table oid
            body.put_i16(0); // column number
            body.put_u32(25); // text
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(0); // text format
        }
        frame(out, b'T', &body);
        for r in &self.rows {
            let mut body = BytesMut::new();
            body.put_i16(r.len() as i16);
            for v in r {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            frame(out, b'D', &body);
        }
        frame(out, b'C', b"SHOW\0");
    }
}

/// Appends one message.
pub fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}
