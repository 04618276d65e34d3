//! A bounded cache of classifications keyed by query text, so a repeated query costs a hash
//! lookup instead of a parse.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use super::classify::{classify, Classification};
use super::normalize::{cache_key, cache_key_and_spans};
use std::borrow::Cow;

/// Classifications by query text (LRU).
pub struct QueryCache {
    map: Mutex<LruCache<Bytes, Arc<Classification>>>,
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that parsed.
    pub misses: AtomicU64,
}

impl QueryCache {
    /// A cache holding `capacity` classifications.
    pub fn new(capacity: usize) -> QueryCache {
        QueryCache {
            map: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("max(1)"),
            )),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The classification of `sql` (parsed on a miss, outside the lock). The cache key is the
    /// text with literal values replaced (see [`cache_key`]), so queries that differ only in
    /// their constants share one parse.
    pub fn classify(&self, sql: &Bytes) -> Arc<Classification> {
        self.lookup(sql, cache_key(sql))
    }

    /// Like [`QueryCache::classify`], also filling `spans` with the literal ranges of `sql`
    /// (found in the same pass over the text).
    pub fn classify_with_spans(
        &self,
        sql: &Bytes,
        spans: &mut Vec<std::ops::Range<usize>>,
    ) -> Arc<Classification> {
        spans.clear();
        self.lookup(sql, cache_key_and_spans(sql, spans))
    }

    fn lookup(&self, sql: &Bytes, key: Cow<'_, [u8]>) -> Arc<Classification> {
        if let Some(c) = self.map.lock().get(key.as_ref()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return c.clone();
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(sql);
        let c = Arc::new(classify(&text));
        let key = match key {
            // A copy: `sql` is a slice of a client's receive buffer, which a cache entry
            // would otherwise keep alive whole for as long as it stays cached.
            Cow::Borrowed(_) => Bytes::copy_from_slice(sql),
            Cow::Owned(v) => Bytes::from(v),
        };
        self.map.lock().put(key, c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_after_first_parse() {
        let cache = QueryCache::new(2);
        let q = Bytes::from_static(b"SELECT 1");
        assert!(!cache.classify(&q).write);
        assert!(!cache.classify(&q).write);
        assert_eq!(
            (
                cache.hits.load(Ordering::Relaxed),
                cache.misses.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
        // The key is a copy (no literals to strip, so the text is the key): a cached entry
        // must not keep the client's receive buffer alive.
        let buffer = Bytes::from(b"SELECT now()".to_vec());
        cache.classify(&buffer);
        let map = cache.map.lock();
        let (key, _) = map.iter().find(|(k, _)| &k[..] == b"SELECT now()").unwrap();
        assert_ne!(key.as_ptr(), buffer.as_ptr());
    }
}
