//! The once-a-second sweep over every pool: retire idle, aged and broken connections and open
//! connections up to `min_pool_size`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pools;

/// Runs the sweep forever (spawn it; it ends with the runtime).
pub async fn run(pools: Arc<Pools>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(&pools).await;
    }
}

/// One pass over all pools.
pub async fn sweep(pools: &Pools) {
    let now = Instant::now();
    for pool in pools.all() {
        let missing = pool.retire_idle(now);
        for _ in 0..missing {
            let pool = pool.clone();
            tokio::spawn(async move {
                let settings = pool.settings();
                let conn = pool.connect(&settings).await;
                pool.add_warm(conn);
            });
        }
    }
}
