//! One replica of an app sharing credentials through a `SqliteStore` file (or a
//! `RedisStore`, when the store argument is a `redis://` URL): `callers`
//! concurrent tasks call an MCP server as one user for `millis`, through
//! `SilentRefreshLayer` on a coordinator over the shared file. Prints
//! `ok=<n> failed=<m> redemptions=<r>` and exits 0 (non-zero on bad arguments).
//!
//! Used by `tests/multi_process.rs`, which starts several of these as real OS processes:
//!
//! ```text
//! cargo run --example replica_worker --features sqlite -- \
//!     <store.db | redis://…> <mcp url> <token endpoint> <client id> <tenant> <user> <callers> <millis> [redemption timeout ms]
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tower::{BoxError, Layer, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, RedisStore, SqliteStore};
use tower_mcp_auth::testing::{ReqwestTransport, jsonrpc_request};
use tower_mcp_auth::{
    AuthHttpClient, Principal, RefreshConfig, RefreshCoordinator, ServerBinding,
    SilentRefreshLayer, UrlPolicy,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, timeout) = match args.len() {
        9 => (&args[..8], Some(Duration::from_millis(args[8].parse()?))),
        _ => (&args[..], None),
    };
    let [
        store,
        mcp,
        token_endpoint,
        client_id,
        tenant,
        user,
        callers,
        millis,
    ] = args
    else {
        return Err("usage: replica_worker <store.db> <mcp url> <token endpoint> <client id> <tenant> <user> <callers> <millis> [timeout ms]".into());
    };
    let callers: usize = callers.parse()?;
    let run = Duration::from_millis(millis.parse()?);
    let store: Arc<dyn CredentialStore> = if store.starts_with("redis://") {
        Arc::new(RedisStore::builder(store.as_str()).build()?)
    } else {
        Arc::new(SqliteStore::open(store)?)
    };
    let coordinator = RefreshCoordinator::builder(store)
        // The loopback test servers: resolved addresses on loopback are allowed.
        .http_client(AuthHttpClient::reqwest_with_policy(
            UrlPolicy::default().allow_loopback_http(),
        ))
        .config(match timeout {
            Some(timeout) => RefreshConfig::default().with_timeout(timeout),
            None => RefreshConfig::default(),
        })
        .build();
    let binding = ServerBinding::public_client(mcp, token_endpoint, client_id.clone())?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(callers)
        .timeout(Duration::from_secs(30))
        .build()?;
    let client = SilentRefreshLayer::new(coordinator.clone(), binding)
        .layer(ReqwestTransport::from_client(http));
    let principal = Principal::new(tenant.as_str(), user.as_str());
    let until = tokio::time::Instant::now() + run;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, principal, mcp) = (client.clone(), principal.clone(), mcp.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while tokio::time::Instant::now() < until {
                    let mut request = jsonrpc_request(
                        &mcp,
                        1,
                        "tools/call",
                        json!({"name": "whoami", "arguments": {}}),
                    );
                    request.extensions_mut().insert(principal.clone());
                    match client.clone().oneshot(request).await {
                        Ok(response) if response.status().is_success() => ok += 1,
                        Ok(response) => {
                            eprintln!("HTTP {}", response.status());
                            failed += 1;
                        }
                        Err(error) => {
                            eprintln!("error: {error}");
                            failed += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await?;
        ok += o;
        failed += f;
    }
    println!(
        "ok={ok} failed={failed} redemptions={}",
        coordinator.stats().redemptions
    );
    Ok(())
}
