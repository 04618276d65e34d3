//! The session's memo of statement classifications: the steps that look at a statement
//! (BEGIN holding, shard choice, role choice, write tracking, SET usher.*) each ask it, and
//! only the first asks the process-wide [`QueryCache`] (a lexing pass for its key and a
//! shared lock). A few recent texts are kept, so a client repeating its statements (prepared
//! ones above all) skips the shared cache from its second transaction on.
//!
//! A classification depends on the text alone, so entries never go stale.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::router::cache::QueryCache;
use crate::router::Classification;

/// Texts remembered per session.
const ENTRIES: usize = 8;

struct Entry {
    sql: Bytes,
    class: Arc<Classification>,
    /// Literal ranges of `sql`, once a caller asked for them.
    spans: Option<Vec<Range<usize>>>,
}

/// Recent classifications of one session (interior mutability: the routing steps that read
/// it take `&Session`).
#[derive(Default)]
pub(super) struct Memo {
    entries: RefCell<Vec<Entry>>,
    /// Where the next new entry goes once full (round robin).
    next: std::cell::Cell<usize>,
}

impl Memo {
    fn matches(e: &Entry, sql: &Bytes) -> bool {
        (e.sql.as_ptr() == sql.as_ptr() && e.sql.len() == sql.len()) || e.sql == *sql
    }

    fn insert(&self, entry: Entry) {
        let mut entries = self.entries.borrow_mut();
        if entries.len() < ENTRIES {
            entries.push(entry);
        } else {
            let i = self.next.get() % ENTRIES;
            if let Some(slot) = entries.get_mut(i) {
                *slot = entry;
            }
            self.next.set(i + 1);
        }
    }

    /// The classification of `sql`, from the memo or else the shared cache.
    pub(super) fn classify(&self, cache: &QueryCache, sql: &Bytes) -> Arc<Classification> {
        let found = self
            .entries
            .borrow()
            .iter()
            .find(|e| Self::matches(e, sql))
            .map(|e| e.class.clone());
        if let Some(class) = found {
            return class;
        }
        let class = cache.classify(sql);
        self.insert(Entry {
            sql: Bytes::copy_from_slice(sql),
            class: class.clone(),
            spans: None,
        });
        class
    }

    /// Like [`Memo::classify`], also filling `spans` with the literal ranges of `sql`.
    pub(super) fn classify_with_spans(
        &self,
        cache: &QueryCache,
        sql: &Bytes,
        spans: &mut Vec<Range<usize>>,
    ) -> Arc<Classification> {
        let mut entries = self.entries.borrow_mut();
        if let Some(entry) = entries.iter_mut().find(|e| Self::matches(e, sql)) {
            if let Some(known) = &entry.spans {
                spans.clone_from(known);
                return entry.class.clone();
            }
            let class = cache.classify_with_spans(sql, spans);
            entry.spans = Some(spans.clone());
            return class;
        }
        drop(entries);
        let class = cache.classify_with_spans(sql, spans);
        self.insert(Entry {
            sql: Bytes::copy_from_slice(sql),
            class: class.clone(),
            spans: Some(spans.clone()),
        });
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn lookups(c: &QueryCache) -> u64 {
        c.hits.load(Ordering::Relaxed) + c.misses.load(Ordering::Relaxed)
    }

    #[test]
    fn one_shared_lookup_per_text() {
        let cache = QueryCache::new(100);
        let memo = Memo::default();
        let q = Bytes::from_static(b"UPDATE t SET v = 1 WHERE id = 2");
        assert!(memo.classify(&cache, &q).write);
        // The same text again, as a copy (another frame): still from the memo.
        let copy = Bytes::copy_from_slice(&q);
        assert!(memo.classify(&cache, &copy).write);
        let mut spans = Vec::new();
        memo.classify_with_spans(&cache, &q, &mut spans);
        let first = spans.clone();
        memo.classify_with_spans(&cache, &copy, &mut spans);
        assert_eq!(spans, first);
        assert_eq!(spans.len(), 2);
        // classify, then the spans once: two shared lookups for four asks.
        assert_eq!(lookups(&cache), 2);
        // The memo keeps its own copy, not a slice pinning the client's receive buffer.
        assert_ne!(memo.entries.borrow()[0].sql.as_ptr(), q.as_ptr());
    }

    #[test]
    fn keeps_a_few_recent_texts() {
        let cache = QueryCache::new(100);
        let memo = Memo::default();
        let texts: Vec<Bytes> = (0..ENTRIES + 3)
            .map(|i| Bytes::from(format!("SELECT {i} FROM t{i}")))
            .collect();
        for t in &texts {
            memo.classify(&cache, t);
        }
        let before = lookups(&cache);
        memo.classify(&cache, texts.last().unwrap());
        assert_eq!(lookups(&cache), before, "a recent text is remembered");
        memo.classify(&cache, &texts[0]);
        assert_eq!(lookups(&cache), before + 1, "the oldest was replaced");
    }
}
