//! Two replicas of an app share one `SqliteStore` file (swap in `RedisStore` for
//! replicas on several machines): when the user's token expires, 2 x 64 concurrent
//! requests across both make one refresh between them, and the grant survives.
//!
//! ```text
//! cargo run --example shared_store
//! ```

use std::sync::Arc;

use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, SealingKeys, SqliteStore};
use tower_mcp_auth::testing::{
    ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request, read_jsonrpc,
};
use tower_mcp_auth::{AuthKey, Principal, RefreshCoordinator, ServerBinding, SilentRefreshLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The loopback authorization server rotates refresh tokens and revokes the grant
    // when one is used twice, like a production provider.
    let auth = TestAuthServer::start().await?;
    let mcp = TestMcpServer::start(&auth).await?;
    let binding = ServerBinding::public_client(&mcp.url(), &auth.token_endpoint(), "app")?;
    let alice = Principal::new("acme", "alice");

    let file =
        std::env::temp_dir().join(format!("tower-mcp-auth-example-{}.db", std::process::id()));
    // In production the 32 key bytes come from your secret store.
    let keys = || SealingKeys::new("example", [0x5a; 32]);

    // A login, expired already, stored once in the shared file.
    let mut login = auth.issue("app", "alice", Some("tools"));
    login.expires_at = Some(login.obtained_at);
    SqliteStore::open_sealed(&file, keys())?
        .compare_and_swap(&AuthKey::new(&alice, binding.id()), None, login)
        .await?;

    // Two replicas: each its own store handle, coordinator and HTTP client.
    let replicas: Vec<_> = (0..2)
        .map(|_| -> Result<_, BoxError> {
            let store = Arc::new(SqliteStore::open_sealed(&file, keys())?);
            Ok(
                SilentRefreshLayer::new(RefreshCoordinator::new(store), binding.clone())
                    .layer(ReqwestTransport::new()),
            )
        })
        .collect::<Result<_, _>>()?;

    let calls: Vec<_> = (0..128)
        .map(|i| {
            let (client, alice, url) = (replicas[i % 2].clone(), alice.clone(), mcp.url());
            tokio::spawn(async move {
                let mut request = jsonrpc_request(&url, 1, "tools/call", json!({"name": "whoami"}));
                request.extensions_mut().insert(alice);
                let response = client.oneshot(request).await?;
                Ok::<_, BoxError>(read_jsonrpc(&response)?["result"]["content"][0]["text"].clone())
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        if call.await?? == "alice" {
            ok += 1;
        }
    }
    let stats = auth.stats();
    println!(
        "2 replicas x 64 requests on an expired token: {ok}/128 ok, {} refresh(es), {} invalid_grant",
        stats.refresh_requests, stats.invalid_grants
    );
    let _ = std::fs::remove_file(&file);
    if ok != 128 || stats.refresh_requests != 1 || stats.invalid_grants != 0 {
        return Err("expected 128 ok, one refresh, no invalid_grant".into());
    }
    Ok(())
}
