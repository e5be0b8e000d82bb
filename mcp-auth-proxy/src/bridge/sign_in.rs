//! Signing in from a stdio bridge: the loopback listener, the browser, the OAuth layers
//! on the shared SQLite file, and giving up sign-ins nobody can finish.

use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::BoxError;

use super::options::{BridgeOptions, Browser};
use tower_mcp_auth::store::{CredentialStore, SharedRecords, SqliteStore};
use tower_mcp_auth::{
    AuthHttpClient, Authorizer, Error, OAuthRetryLayer, Principal, RefreshConfig,
    RefreshCoordinator, Secret, SilentRefreshLayer, UrlPolicy, binding::ClientAuthMethod,
    layer::callback::BrowserBinding, layer::callback::CallbackService,
    layer::oauth_retry::AuthorizationPrompt, oauth::AuthorizationCause, oauth::Discovery,
    oauth::PreRegisteredClient,
};

/// How long one refresh-token redemption may take.
const REDEMPTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a starting copy waits for its binding before it serves the client.
const RESTORE_WITHIN: Duration = Duration::from_secs(5);

/// The sign-in this copy opened in the browser, so a request that waited it out in
/// vain can abandon it: the next request then opens the browser again instead of
/// joining a flow whose page the user closed.
#[derive(Clone)]
pub(super) struct SignIn {
    authorizer: Authorizer,
    opened: Arc<Mutex<Option<Secret>>>,
}

/// Why a sign-in another copy opened was given up: that copy exited, and the browser
/// would come back to a port nobody listens on. Requests waiting on it start anew.
const ORPHANED: &str = "the copy of the bridge that opened this sign-in exited";

/// How often a copy checks that the copy serving the open sign-in's callback is alive.
const ORPHAN_CHECK: Duration = Duration::from_secs(1);

impl SignIn {
    /// Fails the open sign-in when the copy whose loopback listener its redirect URI
    /// names has died (killed mid-login): the browser could never come back, and every
    /// copy waiting on it would wait out its sign-in timeout.
    async fn watch_for_orphans(self, own_port: u16) {
        let user = Principal::new("local", "user");
        loop {
            tokio::time::sleep(ORPHAN_CHECK).await;
            let Some(flow) = self.authorizer.open_flow(&user).await else {
                continue;
            };
            // Only a bridge's own kind of flow: a loopback listener on another port.
            let redirect = &flow.request.redirect_uri;
            let Some(port) = redirect.port() else {
                continue;
            };
            if redirect.host_str() != Some("127.0.0.1") || port == own_port {
                continue;
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await;
            // Refused (nobody listens) is proof; a slow answer is not.
            if matches!(probe, Ok(Err(_))) {
                tracing::warn!(
                    port,
                    "the copy serving the open sign-in is gone; starting anew"
                );
                self.authorizer.fail_flow(&flow.state, ORPHANED).await;
            }
        }
    }

    pub(super) async fn abandon(&self) {
        let state = self.opened.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(state) = state {
            self.authorizer
                .fail_flow(&state, "the sign-in was not completed in time")
                .await;
        }
    }
}

/// The OAuth layers: `OAuthRetryLayer` (wait mode, sign-in through the loopback
/// listener) and `SilentRefreshLayer`, on the SQLite file every copy shares.
pub(super) async fn oauth_layers(
    options: &BridgeOptions,
) -> Result<(OAuthRetryLayer, SilentRefreshLayer, SignIn), BoxError> {
    if let Some(dir) = options.store.parent() {
        private_dir(dir)?;
    }
    let store = Arc::new(sealed_store(&options.store).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let policy = if options.allow_loopback_http {
        UrlPolicy::default().allow_loopback_http()
    } else {
        UrlPolicy::default()
    };
    let credentials: Arc<dyn CredentialStore> = store.clone();
    let records: Arc<dyn SharedRecords> = store;
    let pins = records.clone();
    let mut builder = Authorizer::builder(
        options.server.as_str(),
        credentials.clone(),
        format!("http://127.0.0.1:{port}/callback").parse()?,
    )
    .client_name("mcp-auth-proxy stdio")
    .start_url(format!("http://127.0.0.1:{port}/start").parse()?)
    .url_policy(policy)
    .shared_state(records)
    .scopes(options.scopes.iter().cloned());
    if let Some(client) = &options.client {
        let issuer = match &client.issuer {
            Some(issuer) => issuer.clone(),
            None => {
                let discovered = authorization_server_of(&options.server, policy).await?;
                pin_issuer(&*pins, &options.server, &discovered).await?;
                discovered
            }
        };
        let registered = PreRegisteredClient::new(issuer, client.client_id.clone());
        builder = builder.pre_registered(match &client.client_secret {
            Some(secret) => {
                registered.with_secret(secret.clone(), ClientAuthMethod::ClientSecretBasic)
            }
            None => registered,
        });
    }
    let authorizer = builder.build()?;
    let key = crate::crypto::random_bytes::<32>();
    let callback = CallbackService::new(
        authorizer.completer(),
        BrowserBinding::new(&key).insecure_cookies(),
    )
    .with_start_path("/start")
    .with_app_name("mcp-auth-proxy")
    // The link is in the browser command's argv, which every local user can read: it
    // starts a sign-in only for a browser of the user the bridge runs as.
    .with_start_check(move |request, _| {
        request
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .is_some_and(|peer| local_peer::same_user(peer.0, port))
    });
    let app = tower_mcp_auth::layer::callback::callback_router("/callback", callback);
    tokio::spawn(async move {
        // Without the listener no sign-in can come back: say so where the user looks.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the sign-in callback listener stopped");
        }
    });

    let sign_in = SignIn {
        authorizer: authorizer.clone(),
        opened: Arc::default(),
    };
    let watch = sign_in.clone().watch_for_orphans(port);
    tokio::spawn(async move {
        if AssertUnwindSafe(watch).catch_unwind().await.is_err() {
            tracing::error!("the watch for orphaned sign-ins panicked; it no longer runs");
        }
    });
    let browser = options.browser.clone();
    let opened = sign_in.opened.clone();
    let handler = move |prompt: AuthorizationPrompt| {
        let browser = browser.clone();
        *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(prompt.flow.state.clone());
        async move { open(&browser, prompt.url().as_str()).await }
    };
    let oauth = OAuthRetryLayer::wait(authorizer.clone(), handler)
        .with_wait_timeout(options.sign_in_timeout)
        .with_default_principal(Principal::new("local", "user"));
    // A desktop user waits for a redemption at most 10 s (the default is 30 s); a copy
    // killed while redeeming blocks the others for the lease's 2.5 s only.
    let refresh = RefreshCoordinator::builder(credentials)
        .config(RefreshConfig::default().with_timeout(REDEMPTION_TIMEOUT))
        .build();
    let silent = SilentRefreshLayer::new(refresh, authorizer.bindings())
        .with_default_principal(Principal::new("local", "user"));
    // The binding (discovery, the stored client registration) before the first
    // request, so a copy started with stored credentials sends them at once instead of
    // collecting a 401 first. Bounded: a server that is slow or down must not hold up
    // the session; without the binding, the first 401 makes it as before.
    // In a task of its own: past the wait it still finishes (a registration the server
    // made is stored, not lost with a dropped future).
    let binder = authorizer.clone();
    let restore = tokio::spawn(async move {
        let cause = AuthorizationCause::challenge(None);
        binder
            .restore_binding(&Principal::new("local", "user"), &cause)
            .await
    });
    match tokio::time::timeout(RESTORE_WITHIN, restore).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::debug!(%error, "no binding before the first request"),
        Ok(Err(error)) => tracing::warn!(%error, "the binding task failed"),
        Err(_) => {
            tracing::debug!("no binding within {RESTORE_WITHIN:?}; the first request makes it")
        }
    }
    Ok((oauth, silent, sign_in))
}

/// Creates `dir` (and its missing parents) readable by its owner only (0700).
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The store, sealed by default with a key kept in a file of its own beside it
/// (`<store>.key`, 0600, made on first use): a copy of the database alone (a backup, a
/// synced folder) holds no usable token. A store that predates the key is sealed once
/// when the key is made.
async fn sealed_store(path: &std::path::Path) -> Result<SqliteStore, BoxError> {
    let key_path = path.with_extension("key");
    let existed = path.exists();
    let (key, made) = match std::fs::read_to_string(&key_path) {
        Ok(text) => (text, false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Written whole under a name of its own, then linked into place: a copy
            // starting at the same moment sees no key or the whole key, never half.
            let key = crate::crypto::hex(&crate::crypto::random_bytes::<32>());
            let draft = key_path.with_extension(format!(
                "key.{}-{}",
                std::process::id(),
                crate::crypto::hex(&crate::crypto::random_bytes::<4>())
            ));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&draft)?;
            std::io::Write::write_all(&mut file, key.as_bytes())?;
            file.sync_all()?;
            drop(file);
            let linked = std::fs::hard_link(&draft, &key_path);
            let _ = std::fs::remove_file(&draft);
            match linked {
                Ok(()) => (key, true),
                // Another copy made it first: use that one.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    (std::fs::read_to_string(&key_path)?, false)
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(error) => return Err(error.into()),
    };
    let bytes: [u8; 32] = (0..32)
        .map(|i| {
            key.trim()
                .get(2 * i..2 * i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            format!(
                "{} is not a sealing key (64 hex digits)",
                key_path.display()
            )
        })?;
    let store = SqliteStore::open_sealed(
        path,
        tower_mcp_auth::store::SealingKeys::new("bridge", bytes),
    )?;
    // Cheap when everything is sealed already; and a copy that died between making the
    // key and sealing leaves nothing unsealed behind for the next start.
    if existed || !made {
        let report = store.seal_existing().await?;
        if report.credentials + report.records > 0 {
            tracing::info!(
                credentials = report.credentials,
                records = report.records,
                "the store held values written before its sealing key: sealed them"
            );
        }
    }
    Ok(store)
}

/// The one authorization server `server`'s protected resource metadata names: where a
/// `--client-id` given without `--issuer` belongs.
async fn authorization_server_of(server: &url::Url, policy: UrlPolicy) -> Result<String, BoxError> {
    let discovery = Discovery::new(AuthHttpClient::with_policy(policy), policy);
    let metadata = discovery
        .protected_resource(server, None)
        .await
        .map_err(|error| {
            format!("cannot learn the server's authorization server ({error}); pass --issuer")
        })?;
    match metadata.authorization_servers.as_slice() {
        [issuer] => Ok(issuer.clone()),
        several => Err(format!(
            "the server names {} authorization servers; pass --issuer with the one --client-id belongs to",
            several.len()
        )
        .into()),
    }
}

/// Pins the authorization server a `--client-id` without `--issuer` was first used
/// with: a server whose metadata later names another is refused, so the client id (and
/// the user's sign-in) never follow it to a server the user did not first accept.
async fn pin_issuer(
    records: &dyn SharedRecords,
    server: &url::Url,
    issuer: &str,
) -> Result<(), BoxError> {
    // Ten years: a pin is for as long as the store is.
    const PIN_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
    let name = format!(
        "bridge-issuer/{}",
        crate::crypto::hex(&crate::crypto::sha256(&[server.as_str().as_bytes()]))
    );
    if records
        .compare_and_set_record(&name, None, issuer.as_bytes(), PIN_TTL)
        .await?
    {
        return Ok(());
    }
    match records.get_record(&name).await? {
        Some(pinned) if pinned == issuer.as_bytes() => Ok(()),
        Some(pinned) => Err(format!(
            "the server now names the authorization server {issuer}, but this store was first used with {}; \
             if the change is genuine, pass --issuer {issuer} (or use a new --store)",
            String::from_utf8_lossy(&pinned)
        )
        .into()),
        None => Err("the authorization server pin could not be read back".into()),
    }
}

/// Hands the sign-in link to the user.
async fn open(browser: &Browser, url: &str) -> Result<(), BoxError> {
    eprintln!("mcp-auth-proxy: sign in at {url}");
    let (program, args): (&str, Vec<&str>) = match browser {
        Browser::Print => return Ok(()),
        Browser::System if cfg!(target_os = "macos") => ("open", vec![]),
        Browser::System => ("xdg-open", vec![]),
        Browser::Command(words) => (
            words[0].as_str(),
            words[1..].iter().map(String::as_str).collect(),
        ),
    };
    let status = tokio::process::Command::new(program)
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if !status.success() {
        return Err(format!("{program} failed: {status}").into());
    }
    Ok(())
}

pub(super) fn orphaned(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(Error::find(error), Some(Error::AuthorizationFailed { reason }) if reason == ORPHANED)
}

/// Who is on the other end of a loopback connection.
mod local_peer {
    use std::net::{IpAddr, SocketAddr};

    /// Whether the process that connected from `peer` to our listener on `port` runs as
    /// the same user as this one. Linux: the connecting socket's owner from
    /// `/proc/net/tcp{,6}`; unknown there (gone, or another namespace) is refused.
    /// Elsewhere the check cannot be made and passes (the link then works for any local
    /// user who reads it, as it did before).
    #[cfg(target_os = "linux")]
    pub(super) fn same_user(peer: SocketAddr, port: u16) -> bool {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to this process's effective user.
        let ours = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        match (owner(peer, port), ours) {
            (Some(uid), Some(ours)) => uid == ours,
            _ => {
                tracing::warn!(%peer, "sign-in link opened by a connection whose owner is unknown; refused");
                false
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn same_user(_peer: SocketAddr, _port: u16) -> bool {
        true
    }

    /// The uid owning the socket whose local address is `peer` and whose remote port
    /// is `port`.
    #[cfg(target_os = "linux")]
    fn owner(peer: SocketAddr, port: u16) -> Option<u32> {
        let table = match peer.ip() {
            IpAddr::V4(_) => "/proc/net/tcp",
            IpAddr::V6(_) => "/proc/net/tcp6",
        };
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
            (parse(local)? == peer && parse(remote)?.port() == port).then(|| uid.parse().ok())?
        })
    }

    /// `0100007F:1F90`: the address as the kernel prints it (32-bit words in host
    /// order), the port big-endian hex.
    #[cfg(target_os = "linux")]
    fn parse(field: &str) -> Option<SocketAddr> {
        let (address, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let words: Vec<u32> = (0..address.len() / 8)
            .map(|i| u32::from_str_radix(address.get(8 * i..8 * i + 8)?, 16).ok())
            .collect::<Option<_>>()?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => {
                let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
                // A v4 client on a dual-stack socket appears v4-mapped.
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[test]
        fn a_connection_of_this_process_is_this_users() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_server_side, peer) = listener.accept().unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(same_user(peer, port));
            assert_eq!(
                parse("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            // Nobody connected from there.
            assert!(!same_user("127.0.0.1:1".parse().unwrap(), port));
        }
    }
}
