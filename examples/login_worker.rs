//! One replica whose request needs an interactive login: `OAuthRetryLayer` in wait mode
//! over a shared store (`SqliteStore` file, or `RedisStore` for a `redis://` URL), whose
//! handler prints the URL to open (`url=<url>`) and waits for the flow to complete —
//! wherever the callback lands. Prints `ok=1` when the request succeeded.
//!
//! Used by `tests/shared_flows.rs`, where another process completes the flow:
//!
//! ```text
//! cargo run --example login_worker -- <store.db | redis://…> <mcp url> <redirect uri> <tenant> <user>
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, RedisStore, SharedRecords, SqliteStore};
use tower_mcp_auth::testing::{ReqwestTransport, jsonrpc_request};
use tower_mcp_auth::{
    AuthHttpClient, Authorizer, OAuthRetryLayer, Principal, RefreshCoordinator, SilentRefreshLayer,
    UrlPolicy, layer::oauth_retry::AuthorizationPrompt,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, mcp, redirect, tenant, user] = &args[..] else {
        return Err("usage: login_worker <store> <mcp url> <redirect uri> <tenant> <user>".into());
    };
    let (credentials, records): (Arc<dyn CredentialStore>, Arc<dyn SharedRecords>) =
        if store.starts_with("redis://") {
            let redis = Arc::new(RedisStore::builder(store.as_str()).build()?);
            (redis.clone(), redis)
        } else {
            let sqlite = Arc::new(SqliteStore::open(store)?);
            (sqlite.clone(), sqlite)
        };
    let policy = UrlPolicy::default().allow_loopback_http();
    let authorizer = Authorizer::builder(mcp.as_str(), credentials.clone(), redirect.parse()?)
        .url_policy(policy)
        .shared_state(records)
        .build()?;
    let handler = |prompt: AuthorizationPrompt| async move {
        println!("url={}", prompt.url());
        std::io::stdout().flush()?;
        Ok::<(), BoxError>(())
    };
    let coordinator = RefreshCoordinator::builder(credentials)
        .http_client(AuthHttpClient::reqwest_with_policy(policy))
        .build();
    let client = OAuthRetryLayer::wait(authorizer.clone(), handler)
        .with_wait_timeout(Duration::from_secs(60))
        .layer(
            SilentRefreshLayer::new(coordinator, authorizer.bindings())
                .layer(ReqwestTransport::new()),
        );
    let mut request = jsonrpc_request(mcp, 1, "tools/list", json!({}));
    request
        .extensions_mut()
        .insert(Principal::new(tenant.as_str(), user.as_str()));
    let response = client.oneshot(request).await?;
    println!("ok={}", u8::from(response.status().is_success()));
    Ok(())
}
