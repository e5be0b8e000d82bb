//! Completing an interactive authorization from its callback.
//!
//! Credentials are stored (compare-and-swap, new generation) before the flow is
//! completed and its waiters wake; exactly one callback per flow exchanges the code
//! (duplicates, forged, stale or replayed `state`s exchange nothing and change
//! nothing); the RFC 9207 `iss` parameter must name the flow's issuer.
//!
//! The browser binding (a signed one-shot cookie proving the callback comes from the
//! browser that started the flow) belongs to the HTTP callback endpoint in front of this.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::fault::{ReauthReason, StoreError};
use crate::http_client::AuthHttpClient;
use crate::key::AuthKey;
use crate::oauth::flow::{FlowOutcome, FlowStatus, FlowStore, PendingFlow};
use crate::oauth::grants;
use crate::store::{CredentialStore, Swap};
use crate::token::{Generation, Secret, TokenSet};

/// The query of the authorization server's redirect back (RFC 6749 §4.1.2, RFC 9207).
/// `code` and `state` are kept as [`Secret`]s.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<Secret>,
    /// The flow's `state`.
    pub state: Option<Secret>,
    /// The issuer (RFC 9207).
    pub iss: Option<String>,
    /// An error code instead of a code (`access_denied`, ...).
    pub error: Option<String>,
    /// The authorization server's description of the error, if any.
    pub error_description: Option<String>,
}

impl CallbackParams {
    /// Parses a callback's query string.
    ///
    /// ```
    /// use tower_mcp_auth::oauth::CallbackParams;
    ///
    /// let params = CallbackParams::from_query("code=abc&state=xyz&iss=https%3A%2F%2Fauth.example.com");
    /// assert_eq!(params.code.unwrap().expose(), "abc");
    /// assert_eq!(params.iss.as_deref(), Some("https://auth.example.com"));
    /// ```
    pub fn from_query(query: &str) -> Self {
        let mut params = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "code" => params.code = Some(Secret::new(value.as_ref())),
                "state" => params.state = Some(Secret::new(value.as_ref())),
                "iss" => params.iss = Some(value.into_owned()),
                "error" => params.error = Some(value.into_owned()),
                "error_description" => params.error_description = Some(value.into_owned()),
                _ => {}
            }
        }
        params
    }
}

/// Why a callback did not complete a flow.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The callback carries no `state` parameter (not a redirect back from an
    /// authorization request of this client). Nothing was changed.
    #[error("callback without a state parameter")]
    MissingState,
    /// No flow has this `state` (unknown, forged, or forgotten). Nothing was changed.
    #[error("no authorization flow for this state")]
    UnknownState,
    /// The flow of this `state` expired before its callback.
    #[error("the authorization flow expired")]
    Expired,
    /// The flow of this `state` already completed (a reloaded or replayed callback):
    /// the credentials of this generation are stored. Nothing was changed.
    #[error("already signed in ({0})")]
    AlreadyCompleted(Generation),
    /// The flow of this `state` already failed, for this reason. Nothing was changed.
    #[error("the authorization already failed: {0}")]
    AlreadyFailed(String),
    /// The authorization server advertises RFC 9207 `iss` and the callback has none.
    #[error("callback without the iss parameter its authorization server promises")]
    IssuerMissing,
    /// `iss` names another issuer than the flow's (RFC 9207 mix-up defence).
    #[error("callback issuer {found} is not the flow's issuer {expected}")]
    IssuerMismatch {
        /// The flow's issuer.
        expected: String,
        /// The callback's `iss`.
        found: String,
    },
    /// The authorization server returned an error instead of a code (`access_denied`,
    /// `invalid_scope`, `server_error`, `temporarily_unavailable`, ...).
    #[error(
        "authorization server answered {error}{}",
        description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    Denied {
        /// The OAuth error code.
        error: String,
        /// Its description, if the server gave one.
        description: Option<String>,
    },
    /// Neither a code nor an error.
    #[error("callback without a code")]
    MissingCode,
    /// Exchanging the code failed.
    #[error("code exchange failed: {0}")]
    Exchange(Error),
    /// Storing the credentials failed.
    #[error("storing credentials failed: {0}")]
    Store(StoreError),
}

/// Turns callbacks into stored credentials and completed flows.
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{store::MemoryStore, AuthHttpClient, oauth::AuthorizationCompleter, oauth::CallbackError, oauth::CallbackParams, oauth::FlowStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let completer = AuthorizationCompleter::new(FlowStore::new(), Arc::new(MemoryStore::new()), AuthHttpClient::new());
/// let forged = CallbackParams::from_query("code=c&state=made-up");
/// assert!(matches!(completer.complete(&forged).await, Err(CallbackError::UnknownState)));
/// # }
/// ```
#[derive(Clone)]
pub struct AuthorizationCompleter {
    flows: FlowStore,
    store: Arc<dyn CredentialStore>,
    http: AuthHttpClient,
}

impl fmt::Debug for AuthorizationCompleter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCompleter")
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

impl AuthorizationCompleter {
    /// Completes flows of `flows`, storing credentials in `store`.
    pub fn new(flows: FlowStore, store: Arc<dyn CredentialStore>, http: AuthHttpClient) -> Self {
        Self { flows, store, http }
    }

    /// The flows it completes.
    pub fn flows(&self) -> &FlowStore {
        &self.flows
    }

    /// Handles one callback. The code exchange and the write of the credentials run in
    /// their own task: a browser connection that drops mid-exchange neither cancels
    /// nor strands the flow, and a panic inside fails the flow instead of leaving it
    /// claimed.
    ///
    /// A callback for a flow another callback is exchanging waits for that exchange and
    /// reports its outcome; one for an ended flow reports how it ended
    /// ([`CallbackError::AlreadyCompleted`], [`CallbackError::AlreadyFailed`]).
    pub async fn complete(&self, params: &CallbackParams) -> Result<Arc<TokenSet>, CallbackError> {
        let state = params.state.as_ref().ok_or(CallbackError::MissingState)?;
        let Some((key, pending)) = self.flows.claim(state.expose()).await else {
            return Err(self.settled(state.expose()).await);
        };
        let (this, params, state) = (self.clone(), params.clone(), state.clone());
        let task = tokio::spawn(async move {
            let outcome = crate::limits::catch_panic(this.finish(&key, &pending, &params))
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("code exchange panicked; failing the flow");
                    Err(CallbackError::Exchange(Error::transient(
                        crate::fault::TransientReason::Panicked,
                        None,
                    )))
                });
            let label = match &outcome {
                Ok(_) => "completed",
                Err(CallbackError::Exchange(Error::ReauthRequired {
                    reason: ReauthReason::ClientRejected { .. },
                    ..
                })) => "client_rejected",
                Err(_) => "failed",
            };
            crate::metrics::count_with(crate::metrics::FLOWS_COMPLETED, "outcome", label);
            if let Err(error) = &outcome {
                let ended = match error {
                    CallbackError::Exchange(Error::ReauthRequired {
                        reason: ReauthReason::ClientRejected { code },
                        ..
                    }) => FlowOutcome::ClientRejected(code.clone()),
                    other => FlowOutcome::Failed(other.to_string()),
                };
                this.flows.complete(state.expose(), ended).await;
            }
            outcome
        });
        task.await.unwrap_or_else(|_| {
            Err(CallbackError::Exchange(Error::transient(
                crate::fault::TransientReason::Abandoned,
                None,
            )))
        })
    }

    /// Why a callback for `state` cannot claim its flow, once the flow has settled.
    async fn settled(&self, state: &str) -> CallbackError {
        let ended = |outcome| match outcome {
            FlowOutcome::Completed(generation) => CallbackError::AlreadyCompleted(generation),
            FlowOutcome::Failed(reason) | FlowOutcome::ClientRejected(reason) => {
                CallbackError::AlreadyFailed(reason)
            }
        };
        match self.flows.status(state).await {
            None | Some(FlowStatus::Open) => CallbackError::UnknownState,
            Some(FlowStatus::Expired) => CallbackError::Expired,
            Some(FlowStatus::Ended(outcome)) => ended(outcome),
            // Another callback (a retry of this one) is exchanging: report its outcome.
            Some(FlowStatus::Exchanging) => match self.flows.outcome(state).await {
                Some(outcome) => ended(outcome),
                None => CallbackError::Expired,
            },
        }
    }

    /// Checks the callback against the claimed flow, exchanges the code and stores the
    /// credentials; completes the flow on success (the caller fails it otherwise).
    async fn finish(
        &self,
        key: &AuthKey,
        pending: &PendingFlow,
        params: &CallbackParams,
    ) -> Result<Arc<TokenSet>, CallbackError> {
        let binding = &pending.request.binding;
        // RFC 9207 §2.4: issuers compare as exact strings; a server that promises `iss`
        // must send it.
        match (binding.issuer(), params.iss.as_deref()) {
            (Some(expected), Some(found)) if expected != found => {
                return Err(CallbackError::IssuerMismatch {
                    expected: expected.to_owned(),
                    found: found.to_owned(),
                });
            }
            (_, None) if pending.request.require_iss => return Err(CallbackError::IssuerMissing),
            _ => {}
        }
        if let Some(error) = &params.error {
            return Err(CallbackError::Denied {
                error: printable(error, 100),
                description: params
                    .error_description
                    .as_deref()
                    .map(|d| printable(d, 500)),
            });
        }
        let Some(code) = &params.code else {
            return Err(CallbackError::MissingCode);
        };
        let granted = grants::exchange_code(
            &self.http,
            binding,
            code.expose(),
            &pending.pkce_verifier,
            &pending.request.redirect_uri,
        )
        .await
        .map_err(|error| CallbackError::Exchange(error.into()))?;
        let tokens = granted.into_token_set(None);
        let state = pending.state.expose();
        // The interactive login wins over whatever is stored: retry the swap against
        // the current generation until it lands.
        for _ in 0..8 {
            let current = self
                .store
                .load(key)
                .await
                .map_err(CallbackError::Store)?
                .map(|t| t.generation);
            match self
                .store
                .compare_and_swap(key, current, tokens.clone())
                .await
                .map_err(CallbackError::Store)?
            {
                Swap::Stored(stored) => {
                    self.flows
                        .complete(state, FlowOutcome::Completed(stored.generation))
                        .await;
                    return Ok(stored);
                }
                Swap::Conflict(_) => continue,
            }
        }
        Err(CallbackError::Store(StoreError::new(
            std::io::Error::other("credential store kept changing during the login"),
        )))
    }
}

/// Server-chosen text, shown to the user and logged: kept short, and without control
/// characters (no forged log lines, no terminal escapes).
fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_shows_the_servers_description_without_control_characters() {
        let denied = CallbackError::Denied {
            error: printable("access_denied", 100),
            description: Some(printable("no\n2026-12-02 INFO forged\u{1b}[31m", 500)),
        };
        assert_eq!(
            denied.to_string(),
            "authorization server answered access_denied (no2026-12-02 INFO forged[31m)"
        );
        let bare = CallbackError::Denied {
            error: "server_error".into(),
            description: None,
        };
        assert_eq!(
            bare.to_string(),
            "authorization server answered server_error"
        );
    }
}
