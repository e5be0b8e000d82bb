//! Interactive authorization flows whose state is persisted PENDING before their
//! authorization URL is handed to anyone (DESIGN invariant 7).
//!
//! LibreChat shipped a race where the OAuth callback arrived before the flow state was
//! stored. Here [`FlowStore::start_or_join`] returns only after the flow is findable by
//! its key and by its `state`, so a callback that arrives the instant the URL is shown
//! finds it. Concurrent starts for one key join the PENDING flow and get the same URL;
//! completion is first-wins.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::ops::compute::Op;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use tokio::sync::watch;
use url::Url;

use crate::binding::ServerBinding;
use crate::key::AuthKey;
use crate::oauth::flow_record::{self, RecordStatus};
use crate::store::SharedRecords;
use crate::token::{Generation, Secret};

/// What an authorization request asks for.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthorizationRequest {
    /// The resource, authorization server and client: what the tokens will be for and
    /// how the code is exchanged and later refreshed.
    pub binding: ServerBinding,
    /// The authorization endpoint.
    pub authorization_endpoint: Url,
    /// Where the authorization server sends the browser back.
    pub redirect_uri: Url,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// Whether the callback must carry `iss` (RFC 9207): the authorization server
    /// advertised `authorization_response_iss_parameter_supported`.
    pub require_iss: bool,
    /// The app's start endpoint ([`CallbackService`](crate::CallbackService)), if any:
    /// the browser is sent there (`?flow=<state>`), which sets the binding cookie and
    /// redirects to the authorization URL.
    pub start_endpoint: Option<Url>,
}

impl AuthorizationRequest {
    /// A request with no scopes.
    pub fn new(binding: ServerBinding, authorization_endpoint: Url, redirect_uri: Url) -> Self {
        Self {
            binding,
            authorization_endpoint,
            redirect_uri,
            scopes: Vec::new(),
            require_iss: false,
            start_endpoint: None,
        }
    }

    /// Sends browsers through `start_endpoint` (see [`PendingFlow::browser_url`]).
    pub fn with_start_endpoint(mut self, start_endpoint: Url) -> Self {
        self.start_endpoint = Some(start_endpoint);
        self
    }

    /// Requires the callback's `iss` parameter (RFC 9207 §2.4: when the server
    /// advertises it, a response without `iss` is refused).
    pub fn with_required_iss(mut self, required: bool) -> Self {
        self.require_iss = required;
        self
    }

    /// Asks for `scopes`.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// A persisted PENDING flow.
pub struct PendingFlow {
    /// What was asked for.
    pub request: AuthorizationRequest,
    /// The authorization URL (PKCE `S256`, `state`, `resource`, `scope`).
    pub authorization_url: Url,
    /// The `state` parameter, which the callback presents.
    pub state: Secret,
    /// The PKCE code verifier, for the code exchange.
    pub pkce_verifier: Secret,
    /// When the flow stops being joinable or completable.
    pub expires_at: SystemTime,
    /// The start link for this flow, when the request named a start endpoint.
    pub start_url: Option<Url>,
}

impl PendingFlow {
    /// The URL to open in the user's browser: the start link when there is a start
    /// endpoint (it sets the browser-binding cookie the callback requires), else the
    /// authorization URL itself.
    pub fn browser_url(&self) -> &Url {
        self.start_url.as_ref().unwrap_or(&self.authorization_url)
    }

    /// How long until the flow expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// Where a flow stands, for the callback endpoint's pages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowStatus {
    /// Waiting for its callback.
    Open,
    /// A callback is exchanging its code.
    Exchanging,
    /// Ended with this outcome.
    Ended(FlowOutcome),
    /// Expired without an outcome.
    Expired,
}

impl fmt::Debug for PendingFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingFlow")
            .field("request", &self.request)
            .field("state", &self.state)
            .field("pkce_verifier", &self.pkce_verifier)
            .field("expires_at", &self.expires_at)
            .field("start_url", &self.start_url.as_ref().map(Url::path))
            .finish_non_exhaustive()
    }
}

/// How a flow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowOutcome {
    /// Credentials were stored under this generation.
    Completed(Generation),
    /// The authorization server or user refused (`error=` on the callback), or the code
    /// exchange failed.
    Failed(String),
    /// The token endpoint rejected the client during the code exchange
    /// (`invalid_client` and the like): its registration should be dropped and the
    /// authorization run again with a new one.
    ClientRejected(String),
}

struct Flow {
    pending: Arc<PendingFlow>,
    outcome: watch::Sender<Option<FlowOutcome>>,
    /// Set by the one callback that exchanges the code.
    claimed: std::sync::atomic::AtomicBool,
    /// The flow's record, when the store is shared by replicas.
    shared: Option<SharedFlow>,
}

/// Where a flow's shared record lives.
#[derive(Clone)]
struct SharedFlow {
    records: Arc<dyn SharedRecords>,
    key: AuthKey,
    ttl: Duration,
}

impl SharedFlow {
    fn name(&self, pending: &PendingFlow) -> String {
        flow_record::flow_name(pending.state.expose())
    }

    /// The record's bytes and status.
    async fn read(&self, pending: &PendingFlow) -> Option<(Vec<u8>, RecordStatus)> {
        let bytes = match self.records.get_record(&self.name(pending)).await {
            Ok(bytes) => bytes?,
            Err(error) => {
                tracing::warn!(%error, "flow record unavailable");
                return None;
            }
        };
        let (_, _, status) = flow_record::decode(&bytes)?;
        Some((bytes, status))
    }

    /// Moves the record from a status `from` accepts to `to`; whether this call did.
    async fn transition(
        &self,
        pending: &PendingFlow,
        from: impl Fn(&RecordStatus) -> bool,
        to: RecordStatus,
    ) -> bool {
        let Some((bytes, status)) = self.read(pending).await else {
            return false;
        };
        if !from(&status) {
            return false;
        }
        let next = flow_record::encode(&self.key, pending, &to);
        self.records
            .compare_and_set_record(&self.name(pending), Some(&bytes), &next, self.ttl)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "flow record not updated");
                false
            })
    }
}

/// What publishing a new flow came to.
enum Published {
    /// Its record is shared: other replicas find, claim and complete it.
    Shared,
    /// No shared records (or they could not be written): the flow lives here alone.
    Local,
    /// Another replica published an open flow for the key first: join it.
    Theirs(Arc<Flow>),
}

/// How often a replica waiting on a shared flow looks for its outcome.
const RECORD_POLL: Duration = Duration::from_millis(100);

impl Flow {
    /// Records `outcome` locally if none is there yet; whether this call did.
    fn settle(&self, outcome: FlowOutcome) -> bool {
        self.outcome.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(outcome);
            true
        })
    }

    /// Takes over what other replicas did to the shared record (claimed, ended).
    async fn catch_up(&self) {
        let Some(shared) = &self.shared else { return };
        match shared.read(&self.pending).await {
            Some((_, RecordStatus::Ended(outcome))) => {
                self.settle(outcome);
            }
            Some((_, RecordStatus::Claimed)) => {
                self.claimed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            _ => {}
        }
    }

    fn is_open(&self) -> bool {
        self.outcome.borrow().is_none() && SystemTime::now() < self.pending.expires_at
    }
}

/// A caller's view of a flow it started or joined.
#[derive(Clone)]
pub struct FlowHandle {
    flow: Arc<Flow>,
    joined: bool,
}

impl fmt::Debug for FlowHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowHandle")
            .field("pending", &self.flow.pending)
            .field("joined", &self.joined)
            .finish()
    }
}

impl FlowHandle {
    /// The persisted flow.
    pub fn pending(&self) -> &Arc<PendingFlow> {
        &self.flow.pending
    }

    /// Whether this caller joined a flow someone else started.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Waits until the flow completes or fails (first outcome wins), or `None` once it
    /// has expired without one.
    ///
    /// With a shared store, the outcome may be written by another replica (the callback
    /// landed there): its record is polled too.
    pub async fn outcome(&self) -> Option<FlowOutcome> {
        let mut receiver = self.flow.outcome.subscribe();
        let expires_in = self.flow.pending.remaining();
        let Some(shared) = &self.flow.shared else {
            let wait = receiver.wait_for(Option::is_some);
            return match tokio::time::timeout(expires_in, wait).await {
                Ok(Ok(outcome)) => outcome.clone(),
                _ => None,
            };
        };
        let until = tokio::time::Instant::now() + expires_in;
        loop {
            if let Some(outcome) = receiver.borrow_and_update().clone() {
                return Some(outcome);
            }
            if let Some((_, RecordStatus::Ended(outcome))) = shared.read(&self.flow.pending).await {
                self.flow.settle(outcome.clone());
                return Some(outcome);
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return None;
            }
            let poll = (until - now).min(RECORD_POLL);
            let _ = tokio::time::timeout(poll, receiver.changed()).await;
        }
    }
}

/// Flow state, by key and by `state`, in moka with a TTL (default 15 minutes).
///
/// ```
/// use tower_mcp_auth::{AuthKey, AuthorizationRequest, FlowOutcome, FlowStore, Generation, Principal, ServerBinding};
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
        let bytes = records
            .get_record(&flow_record::flow_name(state))
            .await
            .ok()??;
        let (key, pending, status) = flow_record::decode(&bytes)?;
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
        let state = records
            .get_record(&flow_record::key_name(key))
            .await
            .ok()??;
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
        let record = flow_record::encode(key, pending, &RecordStatus::Open);
        let written = records
            .compare_and_set_record(
                &flow_record::flow_name(state),
                None,
                &record,
                self.remembered,
            )
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "flow record not written; the flow is local to this process");
            return Published::Local;
        }
        let name = flow_record::key_name(key);
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
    /// use tower_mcp_auth::{AuthKey, AuthorizationRequest, FlowStore, Principal, ServerBinding};
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
