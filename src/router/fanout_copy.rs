//! `COPY table TO STDOUT` of a sharded table, across shards: every shard copies its own
//! rows and the client gets one COPY, as from one database holding them all (rows in no
//! particular order, as a table's are): one CopyOutResponse, every shard's rows, one header
//! line (CSV or text `HEADER`) or one binary file header and trailer, one CopyDone and
//! `COPY n` counting every shard's rows. `COPY (query) TO` and `COPY ... TO 'file'` keep the
//! one-shard rule.

use pg_query::protobuf;
use pg_query::NodeEnum;

use super::fanout::Shape;

/// How a COPY TO's stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOut {
    /// `FORMAT binary`: each shard's stream opens with the file header and ends with the
    /// trailer, which the client gets once.
    pub binary: bool,
    /// `HEADER`: each shard's first row is the header line, which the client gets once.
    pub header: bool,
}

/// The shape of `COPY ... TO STDOUT` of a table (`None` for anything else).
pub fn shape(c: &protobuf::CopyStmt) -> Option<Shape> {
    if c.is_from || c.relation.is_none() || c.query.is_some() || !c.filename.is_empty() {
        return None;
    }
    let mut out = CopyOut::default();
    for o in &c.options {
        let Some(NodeEnum::DefElem(d)) = o.node.as_ref() else {
            continue;
        };
        let arg = d.arg.as_deref().and_then(|a| a.node.as_ref());
        let text = match arg {
            Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
            Some(NodeEnum::Boolean(b)) => Some(b.boolval.to_string()),
            Some(NodeEnum::Integer(i)) => Some(i.ival.to_string()),
            _ => None,
        };
        match d.defname.as_str() {
            "format" => out.binary = text.as_deref() == Some("binary"),
            // `HEADER` alone is true; Postgres takes true/false/on/off/1/0 (`match` is
            // only for COPY FROM).
            "header" => {
                out.header = !matches!(text.as_deref(), Some("false" | "off" | "0"));
            }
            _ => {}
        }
    }
    Some(Shape::CopyOut(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(sql: &str) -> Option<Shape> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::default()).unwrap();
        match parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
        {
            Some(NodeEnum::CopyStmt(c)) => shape(c),
            _ => panic!("{sql}"),
        }
    }

    #[test]
    fn copy_to_stdout_of_a_table_is_framed_by_its_options() {
        let copy = |binary, header| Some(Shape::CopyOut(CopyOut { binary, header }));
        assert_eq!(of("COPY children TO STDOUT"), copy(false, false));
        assert_eq!(
            of("COPY children (id, name) TO STDOUT WITH CSV HEADER"),
            copy(false, true)
        );
        assert_eq!(
            of("COPY children TO STDOUT (FORMAT csv, HEADER false)"),
            copy(false, false)
        );
        assert_eq!(
            of("COPY children TO STDOUT (FORMAT binary)"),
            copy(true, false)
        );
        assert_eq!(
            of("COPY children TO STDOUT (FORMAT text, HEADER)"),
            copy(false, true)
        );
        assert_eq!(of("COPY (SELECT 1) TO STDOUT"), None);
        assert_eq!(of("COPY children TO '/tmp/x'"), None);
        assert_eq!(of("COPY children FROM STDIN"), None);
    }
}
