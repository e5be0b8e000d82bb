//! Each session's standalone stream, opened upstream by the gateway itself as soon as
//! the session exists.
//!
//! A client opens its GET stream and posts `tools/call` at once, and the two reach the
//! upstream on different connections. Where the POST wins, a server that sends its
//! sampling or elicitation request on the standalone stream finds none open yet: the
//! request waits for a replay that may never come. The gateway's extra hop makes the
//! GET the slower of the two more often. So when an upstream creates a session, the
//! gateway opens the session's GET stream itself and leaves its body unread (what the
//! server sends waits in the connection, in order), and the owner's first GET gets that
//! stream. A stream nobody claims within [`UNCLAIMED_FOR`] is closed; a GET that
//! resumes (`Last-Event-ID`) closes it and goes upstream as sent.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_mcp_auth::{Principal, ReplayBody};

use super::super::telemetry;
use super::Upstream;
use super::forward::to_client;

/// How long an early stream waits for its session's first GET.
pub(super) const UNCLAIMED_FOR: Duration = Duration::from_secs(5);

/// How long an unclaimed early GET may wait for the upstream's answer (a server may
/// hold its headers until the first event).
const UNANSWERED_FOR: Duration = Duration::from_secs(30);

/// Upstream name and session id.
type Key = (String, String);

struct Slot {
    owner: Principal,
    /// The upstream's answer to the early GET, once it came (`None`: refused or failed).
    stream: oneshot::Receiver<Option<Response>>,
}

/// How many sessions [`EarlyStreams::opened_here`] remembers (the oldest go first).
const REMEMBERED_SESSIONS: u64 = 100_000;

/// The early streams of this process's sessions, each until its owner claims it or
/// [`UNCLAIMED_FOR`] passes.
#[derive(Clone)]
pub(crate) struct EarlyStreams {
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
    /// Sessions this process opened an early stream for, claimed or not: a 409 on their
    /// GET is the upstream's own answer (the client has a stream already), not another
    /// replica's unclaimed early stream worth waiting out.
    opened: moka::sync::Cache<Key, ()>,
}

impl Default for EarlyStreams {
    fn default() -> Self {
        Self {
            slots: Arc::default(),
            opened: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED_SESSIONS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl EarlyStreams {
    /// Opens `session`'s standalone stream on `upstream` for `owner`, whose request
    /// created the session (`extensions`: its principal and any OBO assertion).
    pub(super) fn open(
        &self,
        name: &str,
        upstream: &Upstream,
        uri: http::Uri,
        session: &str,
        owner: Principal,
        extensions: http::Extensions,
    ) {
        let mut request = http::Request::new(ReplayBody::empty());
        let Ok(session_header) = http::HeaderValue::from_str(session) else {
            return;
        };
        *request.uri_mut() = uri;
        *request.extensions_mut() = extensions;
        let headers = request.headers_mut();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert("mcp-session-id", session_header);

        let key = (name.to_owned(), session.to_owned());
        let (mut sender, stream) = oneshot::channel();
        self.lock().insert(key.clone(), Slot { owner, stream });
        self.opened.insert(key.clone(), ());
        let service = upstream.service.clone();
        let slots = self.clone();
        let watched = (self.clone(), key.clone());
        let early = async move {
            let mut call = std::pin::pin!(service.oneshot(request));
            let mut deadline = std::pin::pin!(tokio::time::sleep(UNANSWERED_FOR));
            let mut waited = false;
            let result = loop {
                tokio::select! {
                    result = &mut call => break result,
                    // Closed (a resuming GET, the session's end): nobody will read it.
                    () = sender.closed() => return,
                    () = &mut deadline, if !waited => {
                        waited = true;
                        if slots.lock().remove(&key).is_some() {
                            return;
                        }
                    }
                }
            };
            let answer = match result {
                Ok(response)
                    if response.status().is_success()
                        && response
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.starts_with("text/event-stream")) =>
                {
                    Some(to_client(&key.0, response))
                }
                // No standalone stream there (405), or not now: the client's own GET
                // goes upstream as it would without the gateway.
                Ok(response) => {
                    tracing::debug!(upstream = %key.0, status = %response.status(), "no early standalone stream");
                    telemetry::early_stream(&key.0, "refused");
                    None
                }
                Err(error) => {
                    tracing::debug!(upstream = %key.0, %error, "early standalone stream failed");
                    telemetry::early_stream(&key.0, "refused");
                    None
                }
            };
            // Claimed already and dropped by a resuming GET: the stream closes here.
            let _ = sender.send(answer);
            tokio::time::sleep(UNCLAIMED_FOR).await;
            if slots.lock().remove(&key).is_some() {
                tracing::debug!(upstream = %key.0, "early standalone stream unclaimed; closed");
                telemetry::early_stream(&key.0, "unclaimed");
            }
        };
        tokio::spawn(async move {
            if AssertUnwindSafe(early).catch_unwind().await.is_err() {
                // The slot goes with it: the owner's GET then goes upstream itself.
                let (slots, key) = watched;
                slots.lock().remove(&key);
                tracing::error!(upstream = %key.0, "early standalone stream task panicked");
                telemetry::early_stream(&key.0, "failed");
            }
        });
    }

    /// Whether this process opened `session`'s early stream (remembered for the
    /// session's life, up to [`REMEMBERED_SESSIONS`] sessions).
    pub(super) fn opened_here(&self, name: &str, session: &str) -> bool {
        // `get`, not `contains_key`: a look keeps a live session remembered.
        self.opened
            .get(&(name.to_owned(), session.to_owned()))
            .is_some()
    }

    /// The early stream of `session` for its owner's GET, waiting for the upstream's
    /// answer if it has not come yet; `None` when there is none (never opened, refused
    /// upstream, claimed, expired) or `principal` is not its owner.
    pub(super) async fn claim(
        &self,
        name: &str,
        session: &str,
        principal: &Principal,
    ) -> Option<Response> {
        let slot = self.lock().remove(&(name.to_owned(), session.to_owned()))?;
        if slot.owner != *principal {
            return None;
        }
        let stream = slot.stream.await.ok().flatten()?;
        telemetry::early_stream(name, "claimed");
        Some(stream)
    }

    /// Closes `session`'s early stream, if any: the session ended, or a GET resumes.
    pub(super) fn close(&self, name: &str, session: &str) {
        self.lock().remove(&(name.to_owned(), session.to_owned()));
    }

    /// Forgets `session` altogether: it ended.
    pub(super) fn end(&self, name: &str, session: &str) {
        let key = (name.to_owned(), session.to_owned());
        self.lock().remove(&key);
        self.opened.invalidate(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}
