//! Interactive authorization flows whose state is persisted PENDING before their
//! authorization URL is handed to anyone (docs/architecture.md: flow state before the URL).
//!
//! LibreChat shipped a race where the OAuth callback arrived before the flow state was
//! stored. Here [`FlowStore::start_or_join`] returns only after the flow is findable by
//! its key and by its `state`, so a callback that arrives the instant the URL is shown
//! finds it. Concurrent starts for one key join the PENDING flow and get the same URL;
//! completion is first-wins.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use url::Url;

use crate::binding::ServerBinding;
use crate::key::AuthKey;
use crate::store::SharedRecords;
use crate::token::{Generation, Secret};
use record::RecordStatus;

pub(crate) mod record;
mod store;

pub use store::FlowStore;

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
    /// The app's start endpoint ([`CallbackService`](crate::layer::callback::CallbackService)), if any:
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
        record::flow_name(pending.state.expose())
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
        let (_, _, status) = record::decode(&bytes)?;
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
        let next = record::encode(&self.key, pending, &to);
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
