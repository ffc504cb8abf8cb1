//! Keeps the gateway config in Redis equal to PostgreSQL's current version.
//!
//! PostgreSQL is the record (`gateway_config_versions`); Redis holds the copy the proxies read
//! (`<prefix>gateway:config`). A Redis restart without persistence, a flush or an eviction
//! loses that copy, and a proxy started then would run its file's `[gateway]` while the rest
//! of the fleet runs the current version. So while the admin API serves, it checks every
//! [`SYNC_INTERVAL`] (and once at start) and writes the current version to Redis whenever Redis
//! lacks it or holds an older one, announcing the repair on `<prefix>gateway:config:changed`
//! like a `PUT` does.
//!
//! The document written is the newest config version plus the live rules, composed like every
//! other writer composes it ([`crate::gateway_doc`]).
//!
//! The check and the write are one script in Redis, so a `PUT` that wrote a newer version
//! between our read of PostgreSQL and our write is never overwritten. A Redis version newer
//! than PostgreSQL's is left alone: a `PUT` writes Redis just before it commits. Before the
//! first `PUT` there is nothing to write (proxies use their file's `[gateway]`).

use std::time::Duration;

use redis::Script;
use tokio_postgres::IsolationLevel;

use crate::{gateway_doc, state::AppState};

/// How often Redis's copy is checked.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Set the config and announce it, unless Redis already holds this version or a newer one.
/// `KEYS[1]` the config; `ARGV[1]` the document, `ARGV[2]` its version, `ARGV[3]` the channel
/// (a channel is not a key: on a Redis Cluster a script's keys must share one slot, and classic
/// `PUBLISH` reaches the subscribers of every node).
/// Returns 1 when it wrote, 0 when Redis was current. An unreadable document counts as absent.
pub const REPAIR_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and tonumber(doc.version) and tonumber(doc.version) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
";

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// PostgreSQL holds no version yet.
    NothingStored,
    /// Redis already held this version (or a newer one).
    Current(u64),
    /// Redis lacked the config or held an older one; this version was written and announced.
    Repaired(u64),
}

/// Compare Redis's copy with PostgreSQL's current version once, repairing Redis if needed.
/// The document written is the one every writer publishes: the newest config version plus
/// the live rules ([`crate::gateway_doc`]), read in one snapshot.
pub async fn sync_once(state: &AppState, script: &Script) -> Result<Synced, String> {
    let mut conn = state.db().await.map_err(|e| e.to_string())?;
    let tx = conn
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let published = gateway_doc::load(&tx).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    drop(conn);
    let Some(published) = published else {
        return Ok(Synced::NothingStored);
    };
    gateway_doc::record_metrics(state, &published);
    let version = published.version;
    let keys = state.keys();
    let mut redis = state.redis();
    let mut call = script.prepare_invoke();
    call.key(keys.gateway_config())
        .arg(published.json.as_str())
        .arg(version)
        .arg(keys.gateway_config_changed());
    let wrote: i64 = state
        .redis_timeout(call.invoke_async(&mut redis))
        .await
        .map_err(|e| e.to_string())?;
    Ok(if wrote == 1 {
        Synced::Repaired(version)
    } else {
        Synced::Current(version)
    })
}

/// Check at start and every [`SYNC_INTERVAL`], for as long as the future is polled (the server
/// runs it beside its listener). Failures are logged once per outage and retried next time.
pub async fn run(state: AppState) {
    let script = Script::new(REPAIR_SCRIPT);
    let mut failing = false;
    let mut ticks = tokio::time::interval(SYNC_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sync_once(&state, &script).await {
            Ok(result) => {
                if failing {
                    tracing::info!("gateway config sync: working again");
                    failing = false;
                }
                if let Synced::Repaired(version) = result {
                    tracing::info!(
                        gateway.version = version,
                        "gateway config sync: Redis lacked the current version; restored and announced"
                    );
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "gateway config sync: check failed; retrying");
                    failing = true;
                }
            }
        }
    }
}
