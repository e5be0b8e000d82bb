//! What the examples that run replicas as processes share (`replica_worker`, and
//! `chaos_soak`'s workers): the store named on the command line and a replica's client
//! stack over it.

use std::sync::Arc;
use std::time::Duration;

use tower::{BoxError, Layer};
use tower_mcp_auth::store::{CredentialStore, RedisStore, SqliteStore};
use tower_mcp_auth::testing::ReqwestTransport;
use tower_mcp_auth::{
    AuthHttpClient, RefreshConfig, RefreshCoordinator, ServerBinding, SilentRefresh,
    SilentRefreshLayer, UrlPolicy,
};

/// The shared store named by `store`: a `redis://` URL, or else a SQLite file.
pub fn shared_store(store: &str) -> Result<Arc<dyn CredentialStore>, BoxError> {
    Ok(if store.starts_with("redis://") {
        Arc::new(RedisStore::builder(store).build()?)
    } else {
        Arc::new(SqliteStore::open(store)?)
    })
}

/// A replica's client: `SilentRefreshLayer` on a coordinator over `store` (`config`'s
/// redemption settings; the loopback authorization server's addresses allowed), over
/// reqwest with a connection per caller kept and a 30 s timeout per call.
pub fn replica_client(
    store: Arc<dyn CredentialStore>,
    binding: ServerBinding,
    callers: usize,
    config: RefreshConfig,
) -> Result<(SilentRefresh<ReqwestTransport>, RefreshCoordinator), BoxError> {
    let coordinator = RefreshCoordinator::builder(store)
        .http_client(AuthHttpClient::reqwest_with_policy(
            UrlPolicy::default().allow_loopback_http(),
        ))
        .config(config)
        .build();
    let http = tower_mcp_auth::client::ReqwestService::builder()?
        .pool_max_idle_per_host(callers)
        .timeout(Duration::from_secs(30))
        .build()?;
    let client = SilentRefreshLayer::new(coordinator.clone(), binding)
        .layer(ReqwestTransport::from_client(http));
    Ok((client, coordinator))
}
