//! Where flows live: by key and by `state`, in this process or shared through the store's records.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::ops::compute::Op;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use tokio::sync::watch;

use super::{
    AuthorizationRequest, Flow, FlowHandle, FlowOutcome, FlowStatus, PendingFlow, Published,
    SharedFlow,
};
use crate::key::AuthKey;
use crate::oauth::flow::record::{self, RecordStatus};
use crate::store::SharedRecords;
use crate::token::Secret;

/// Flow state, by key and by `state`, in moka with a TTL (default 15 minutes).
///
/// ```
/// use tower_mcp_auth::{AuthKey, oauth::AuthorizationRequest, oauth::FlowOutcome, oauth::FlowStore, store::Generation, Principal, ServerBinding};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let binding = ServerBinding::public_client("https://mcp.example.com/mcp", "https://auth.example.com/token", "c")?;
/// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
/// let request = AuthorizationRequest::new(
///     binding,
///     "https://auth.example.com/authorize".parse()?,
///     "https://app.example.com/oauth/callback".parse()?,
/// );
/// let flows = FlowStore::new();
/// let flow = flows.start_or_join(&key, request.clone()).await;
/// // Already findable by the callback, before anyone saw the URL:
/// let state = flow.pending().state.expose().to_owned();
/// assert!(flows.find_by_state(&state).await.is_some());
/// // A second start joins it.
/// assert!(flows.start_or_join(&key, request).await.joined());
/// assert!(flows.complete(&state, FlowOutcome::Completed(Generation(7))).await);
/// assert_eq!(flow.outcome().await, Some(FlowOutcome::Completed(Generation(7))));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct FlowStore {
    by_key: moka::future::Cache<AuthKey, Arc<Flow>>,
    by_state: moka::future::Cache<String, (AuthKey, Arc<Flow>)>,
    ttl: Duration,
    remembered: Duration,
    records: Option<Arc<dyn SharedRecords>>,
}

impl fmt::Debug for FlowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowStore")
            .field("ttl", &self.ttl)
            .field("shared", &self.records.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for FlowStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowStore {
    /// A store whose flows live 15 minutes.
    pub fn new() -> Self {
        Self::with_ttl(Duration::from_secs(15 * 60))
    }

    /// A store whose flows live `ttl`. Ended and expired flows are remembered a while
    /// longer (another `ttl`, at least a minute), so a late or reloaded callback is
    /// told how its flow ended instead of "unknown".
    pub fn with_ttl(ttl: Duration) -> Self {
        let remembered = crate::limits::clamp(
            ttl.saturating_mul(2)
                .max(ttl.saturating_add(Duration::from_secs(60))),
        );
        Self {
            by_key: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(remembered)
                .build(),
            by_state: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(remembered)
                .build(),
            ttl,
            remembered,
            records: None,
        }
    }

    /// A store whose flows are also [`SharedRecords`] (a `SqliteStore` or `RedisStore`
    /// that the replicas share), living 15 minutes: a flow started on one replica is
    /// found, claimed, completed and awaited on any other, and survives restarts. If the
    /// records cannot be reached, flows work in this process alone (a warning is logged).
    pub fn shared(records: Arc<dyn SharedRecords>) -> Self {
        Self::shared_with_ttl(records, Duration::from_secs(15 * 60))
    }

    /// As [`shared`](Self::shared), with flows living `ttl`.
    pub fn shared_with_ttl(records: Arc<dyn SharedRecords>, ttl: Duration) -> Self {
        Self {
            records: Some(records),
            ..Self::with_ttl(ttl)
        }
    }

    fn shared_part(&self, key: &AuthKey) -> Option<SharedFlow> {
        self.records.as_ref().map(|records| SharedFlow {
            records: records.clone(),
            key: key.clone(),
            ttl: self.remembered,
        })
    }

    /// The flow of `state` from the shared records, made local (cached here).
    async fn load_shared(&self, state: &str) -> Option<(AuthKey, Arc<Flow>)> {
        let records = self.records.as_ref()?;
        let bytes = records.get_record(&record::flow_name(state)).await.ok()??;
        let (key, pending, status) = record::decode(&bytes)?;
        let flow = Arc::new(Flow {
            pending: Arc::new(pending),
            outcome: watch::channel(match &status {
                RecordStatus::Ended(outcome) => Some(outcome.clone()),
                _ => None,
            })
            .0,
            claimed: std::sync::atomic::AtomicBool::new(status != RecordStatus::Open),
            shared: self.shared_part(&key),
        });
        self.by_state
            .insert(state.to_owned(), (key.clone(), flow.clone()))
            .await;
        Some((key, flow))
    }

    /// The local flow of `state`, or the shared one made local.
    async fn flow(&self, state: &str) -> Option<(AuthKey, Arc<Flow>)> {
        match self.by_state.get(state).await {
            Some(found) => Some(found),
            None => self.load_shared(state).await,
        }
    }

    /// The open flow of `key` another replica published, made local.
    async fn shared_open_flow(&self, key: &AuthKey) -> Option<Arc<Flow>> {
        let records = self.records.as_ref()?;
        let state = records.get_record(&record::key_name(key)).await.ok()??;
        self.open_shared(key, &state).await
    }

    /// The flow of `state` (as named in `key`'s record) if it is `key`'s and still open.
    async fn open_shared(&self, key: &AuthKey, state: &[u8]) -> Option<Arc<Flow>> {
        let state = std::str::from_utf8(state).ok()?;
        let (found_key, flow) = self.load_shared(state).await?;
        // A claimed flow (its code being exchanged) is joined too, as a local one is:
        // its outcome is moments away, and a new flow would ask the user who just
        // consented to consent again.
        (found_key == *key && flow.is_open()).then_some(flow)
    }

    /// Writes `pending`'s record, then names it the open flow of `key` unless another
    /// replica published one meanwhile (to join).
    async fn publish(&self, key: &AuthKey, pending: &PendingFlow) -> Published {
        let Some(records) = self.records.as_ref() else {
            return Published::Local;
        };
        let state = pending.state.expose();
        let record = record::encode(key, pending, &RecordStatus::Open);
        let written = records
            .compare_and_set_record(&record::flow_name(state), None, &record, self.remembered)
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "flow record not written; the flow is local to this process");
            return Published::Local;
        }
        let name = record::key_name(key);
        let previous = records.get_record(&name).await.ok().flatten();
        // Another process may have named its flow since this one looked: an open one is
        // joined, never replaced (the compare-and-set below only guards the write).
        if let Some(previous) = &previous
            && let Some(theirs) = self.open_shared(key, previous).await
        {
            return Published::Theirs(theirs);
        }
        let named = records
            .compare_and_set_record(&name, previous.as_deref(), state.as_bytes(), self.ttl)
            .await
            .unwrap_or(false);
        if !named && let Some(theirs) = self.shared_open_flow(key).await {
            return Published::Theirs(theirs);
        }
        Published::Shared
    }

    /// Starts a flow for `key`, or joins the open one. When this returns, the flow is
    /// stored and findable by its `state`: only then may its URL be shown.
    pub async fn start_or_join(&self, key: &AuthKey, request: AuthorizationRequest) -> FlowHandle {
        // Building a candidate is cheap (random PKCE pair and state, a URL); it is thrown
        // away when an open flow exists.
        let candidate = new_flow(request, self.ttl);
        let mut joined = None;
        let mut started = None;
        self.by_key
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let current = current.map(|entry| entry.into_value());
                let (joined, started) = (&mut joined, &mut started);
                async move {
                    if let Some(flow) = current.filter(|flow| flow.is_open()) {
                        *joined = Some(flow);
                        return Op::Nop;
                    }
                    // Another replica's open flow for this key is joined like a local one.
                    if let Some(theirs) = self.shared_open_flow(key).await {
                        *joined = Some(theirs.clone());
                        return Op::Put(theirs);
                    }
                    let flow = match self.publish(key, &candidate.pending).await {
                        Published::Theirs(theirs) => {
                            *joined = Some(theirs.clone());
                            return Op::Put(theirs);
                        }
                        // Only a published flow is claimed and completed through its record.
                        Published::Shared => Arc::new(Flow {
                            shared: self.shared_part(key),
                            ..candidate
                        }),
                        Published::Local => Arc::new(candidate),
                    };
                    let state = flow.pending.state.expose().to_owned();
                    self.by_state
                        .insert(state, (key.clone(), flow.clone()))
                        .await;
                    *started = Some(flow.clone());
                    Op::Put(flow)
                }
            })
            .await;
        match (joined, started) {
            (Some(flow), _) => FlowHandle { flow, joined: true },
            (None, Some(flow)) => FlowHandle {
                flow,
                joined: false,
            },
            (None, None) => unreachable!("the compute closure either joins or starts a flow"),
        }
    }

    /// The open flow of `key`, started here or (with shared records) by another
    /// process: e.g. to learn whether the process serving its redirect URI is alive.
    ///
    /// ```
    /// use tower_mcp_auth::{AuthKey, oauth::AuthorizationRequest, oauth::FlowStore, Principal, ServerBinding};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let binding = ServerBinding::public_client(
    ///     "https://mcp.example.com/mcp", "https://auth.example.com/token", "client-1")?;
    /// let key = AuthKey::new(&Principal::new("acme", "alice"), binding.id());
    /// let flows = FlowStore::new();
    /// assert!(flows.open_flow(&key).await.is_none());
    /// let request = AuthorizationRequest::new(
    ///     binding,
    ///     "https://auth.example.com/authorize".parse()?,
    ///     "http://127.0.0.1:8765/callback".parse()?,
    /// );
    /// flows.start_or_join(&key, request).await;
    /// let open = flows.open_flow(&key).await.expect("the flow just started");
    /// assert_eq!(open.request.redirect_uri.port(), Some(8765));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_flow(&self, key: &AuthKey) -> Option<Arc<PendingFlow>> {
        if let Some(flow) = self.by_key.get(key).await {
            flow.catch_up().await;
            if flow.is_open() {
                return Some(flow.pending.clone());
            }
        }
        Some(self.shared_open_flow(key).await?.pending.clone())
    }

    /// The open flow a callback's `state` belongs to, with its key (tenant included).
    pub async fn find_by_state(&self, state: &str) -> Option<(AuthKey, Arc<PendingFlow>)> {
        let (key, flow) = self.flow(state).await?;
        flow.catch_up().await;
        flow.is_open().then(|| (key, flow.pending.clone()))
    }

    /// Where the flow of `state` stands; `None` for a state this store never issued (or
    /// has forgotten, past its TTL).
    pub async fn status(&self, state: &str) -> Option<FlowStatus> {
        let (_, flow) = self.flow(state).await?;
        flow.catch_up().await;
        let ended = flow.outcome.borrow().clone();
        Some(match ended {
            Some(outcome) => FlowStatus::Ended(outcome),
            None if SystemTime::now() >= flow.pending.expires_at => FlowStatus::Expired,
            None if flow.claimed.load(std::sync::atomic::Ordering::SeqCst) => {
                FlowStatus::Exchanging
            }
            None => FlowStatus::Open,
        })
    }

    /// Waits for the outcome of the flow of `state` (bounded by its expiry).
    pub async fn outcome(&self, state: &str) -> Option<FlowOutcome> {
        let (_, flow) = self.flow(state).await?;
        FlowHandle { flow, joined: true }.outcome().await
    }

    /// Claims the open flow of `state` for the one callback that may exchange its code:
    /// `None` for unknown, expired, completed or already claimed flows.
    ///
    /// With a shared store the claim is the record's (open to claimed, compare-and-set):
    /// one callback across all replicas.
    pub async fn claim(&self, state: &str) -> Option<(AuthKey, Arc<PendingFlow>)> {
        let (key, flow) = self.flow(state).await?;
        let first = !flow.claimed.swap(true, std::sync::atomic::Ordering::SeqCst);
        if !(first && flow.is_open()) {
            return None;
        }
        if let Some(shared) = &flow.shared
            && !shared
                .transition(
                    &flow.pending,
                    |status| *status == RecordStatus::Open,
                    RecordStatus::Claimed,
                )
                .await
        {
            return None;
        }
        Some((key, flow.pending.clone()))
    }

    /// Ends the flow of `state` with `outcome` if it is still open. Returns whether this
    /// call decided it (first wins); waiters wake with the outcome.
    pub async fn complete(&self, state: &str, outcome: FlowOutcome) -> bool {
        let Some((_, flow)) = self.flow(state).await else {
            return false;
        };
        if SystemTime::now() >= flow.pending.expires_at {
            return false;
        }
        if let Some(shared) = &flow.shared {
            let decided = shared
                .transition(
                    &flow.pending,
                    |status| !matches!(status, RecordStatus::Ended(_)),
                    RecordStatus::Ended(outcome.clone()),
                )
                .await;
            if !decided {
                // Another replica ended it first (or the record is gone): adopt theirs.
                if let Some((_, RecordStatus::Ended(theirs))) = shared.read(&flow.pending).await {
                    flow.settle(theirs);
                }
                return false;
            }
        }
        flow.settle(outcome)
    }
}

fn new_flow(request: AuthorizationRequest, ttl: Duration) -> Flow {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = BasicClient::new(ClientId::new(request.binding.client_id().to_owned()))
        .set_auth_uri(AuthUrl::from_url(request.authorization_endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(request.redirect_uri.clone()));
    let (authorization_url, state) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scopes(request.scopes.iter().cloned().map(Scope::new))
        .add_extra_param("resource", request.binding.resource().as_str().to_owned())
        .url();
    let start_url = request.start_endpoint.clone().map(|mut start| {
        start
            .query_pairs_mut()
            .append_pair("flow", state.secret().as_str());
        start
    });
    Flow {
        pending: Arc::new(PendingFlow {
            request,
            authorization_url,
            start_url,
            state: Secret::new(state.secret().as_str()),
            pkce_verifier: Secret::new(verifier.secret().as_str()),
            expires_at: crate::limits::system_after(SystemTime::now(), ttl),
        }),
        outcome: watch::channel(None).0,
        claimed: std::sync::atomic::AtomicBool::new(false),
        shared: None,
    }
}
