//! One replica of an app sharing credentials through a `SqliteStore` file (or a
//! `RedisStore`, when the store argument is a `redis://` URL): `callers`
//! concurrent tasks call an MCP server as one user for `millis`, through
//! `SilentRefreshLayer` on a coordinator over the shared file. Prints
//! `ok=<n> failed=<m> redemptions=<r>` and exits 0 (non-zero on bad arguments).
//!
//! With `<millis>` written `storm@<unix ms>`, each caller makes one call at that instant
//! instead (a storm across processes), and the latencies are printed too
//! (`latencies_us=<a>,<b>,…`). The store `memory|<access>|<refresh>` is a `MemoryStore`
//! of this process alone, seeded with those (expired) tokens: today's behaviour of
//! replicas without a shared store, for the `replica_contention` bench.
//!
//! Used by `tests/multi_process.rs`, which starts several of these as real OS processes:
//!
//! ```text
//! cargo run --example replica_worker --features sqlite -- \
//!     <store.db | redis://…> <mcp url> <token endpoint> <client id> <tenant> <user> <callers> <millis> [redemption timeout ms]
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tower::{BoxError, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, MemoryStore};
use tower_mcp_auth::testing::{ReqwestTransport, jsonrpc_request};
use tower_mcp_auth::{
    AuthKey, Principal, RefreshConfig, RefreshCoordinator, Secret, ServerBinding, SilentRefresh,
    TokenSet,
};

mod replica;

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
    let storm_at = millis
        .strip_prefix("storm@")
        .map(str::parse::<u64>)
        .transpose()?;
    let run = match storm_at {
        Some(_) => Duration::ZERO,
        None => Duration::from_millis(millis.parse()?),
    };
    let binding = ServerBinding::public_client(mcp, token_endpoint, client_id.clone())?;
    let principal = Principal::new(tenant.as_str(), user.as_str());
    let store: Arc<dyn CredentialStore> = if let Some(seed) = store.strip_prefix("memory|") {
        let (access, refresh) = seed.split_once('|').ok_or("memory|<access>|<refresh>")?;
        let memory = MemoryStore::new();
        let mut tokens = TokenSet::new(Secret::new(access))
            .with_refresh_token(Secret::new(refresh))
            .with_scope("tools");
        tokens.expires_at = Some(tokens.obtained_at);
        memory
            .compare_and_swap(&AuthKey::new(&principal, binding.id()), None, tokens)
            .await?;
        Arc::new(memory)
    } else {
        replica::shared_store(store)?
    };
    let (client, coordinator) = replica::replica_client(
        store,
        binding,
        callers,
        match timeout {
            Some(timeout) => RefreshConfig::default().with_timeout(timeout),
            None => RefreshConfig::default(),
        },
    )?;
    if let Some(at) = storm_at {
        return storm(client, principal, mcp.clone(), callers, at, &coordinator).await;
    }
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

/// One call per caller, all at the wall-clock instant `at` (unix ms).
async fn storm(
    client: SilentRefresh<ReqwestTransport>,
    principal: Principal,
    mcp: String,
    callers: usize,
    at: u64,
    coordinator: &RefreshCoordinator,
) -> Result<(), BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
    let calls: Vec<_> = (0..callers)
        .map(|_| {
            let (client, principal, mcp) = (client.clone(), principal.clone(), mcp.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut request = jsonrpc_request(
                    &mcp,
                    1,
                    "tools/call",
                    json!({"name": "whoami", "arguments": {}}),
                );
                request.extensions_mut().insert(principal);
                let ok = matches!(client.oneshot(request).await, Ok(r) if r.status().is_success());
                (ok, started.elapsed().as_micros())
            })
        })
        .collect();
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    for call in calls {
        let (success, micros) = call.await?;
        if success {
            ok += 1;
        } else {
            failed += 1;
        }
        latencies.push(micros.to_string());
    }
    println!(
        "ok={ok} failed={failed} redemptions={} latencies_us={}",
        coordinator.stats().redemptions,
        latencies.join(",")
    );
    Ok(())
}
