//! The OAuth start and callback endpoints as a tower `Service`, with a browser binding.
//!
//! The user's browser opens the flow's start link (`<start path>?flow=…`, the URL that
//! [`OAuthRetryLayer`](crate::OAuthRetryLayer) hands out when the authorizer has a
//! [`start_url`](crate::oauth::AuthorizerBuilder::start_url)). The start endpoint sets a
//! signed, one-shot cookie bound to the flow ([`BrowserBinding`]) and redirects to the
//! authorization server. The callback acts only when that cookie is present and valid:
//! a forged or replayed callback (login CSRF) and a forged `error=` (which would fail
//! someone else's flow) change nothing.
//!
//! The cookie proves "this browser opened the start link", not "this browser belongs to
//! the flow's user": where a start link can reach another person (a chat platform, a
//! shared workspace), give the service a start check that compares the flow's
//! principal with the app's own session ([`CallbackService::with_start_check`]).

mod binding;
mod pages;

pub use binding::BrowserBinding;
pub use pages::{CallbackPage, CallbackPages, DefaultPages, escape_html};

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, header};

use crate::key::Principal;
use crate::oauth::callback::{AuthorizationCompleter, CallbackError, CallbackParams};
use crate::oauth::flow::{FlowOutcome, FlowStatus, PendingFlow};

/// The default path of the start endpoint.
pub const DEFAULT_START_PATH: &str = "/oauth/start";

/// Decides whether the browser that opened a start link may sign in for `principal`:
/// compare it with the app's session (its cookie is in the request's headers).
pub type StartCheck = Arc<dyn Fn(&http::request::Parts, &Principal) -> bool + Send + Sync>;

/// `GET <start path>?flow=…` and `GET <callback>?code&state[&iss][&error]`: the start
/// endpoint sets the flow's binding cookie and redirects to the authorization server;
/// the callback checks the cookie, completes the flow through an
/// [`AuthorizationCompleter`] (the code exchange runs in its own task, so a dropped
/// connection neither cancels nor strands it), answers a page and clears the cookie.
/// Never fails at the service level; every answer is an HTML page or a redirect.
///
/// A request to the start path (default [`DEFAULT_START_PATH`]) is a start; any other
/// is a callback, so mount the service at both paths ([`callback_router`] does).
///
/// ```
/// use std::sync::Arc;
/// use tower::ServiceExt;
/// use tower_mcp_auth::{store::MemoryStore, AuthHttpClient, oauth::AuthorizationCompleter, layer::callback::BrowserBinding, layer::callback::CallbackService, oauth::FlowStore, Principal};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let completer = AuthorizationCompleter::new(FlowStore::new(), Arc::new(MemoryStore::new()), AuthHttpClient::new());
/// let callback = CallbackService::new(completer, BrowserBinding::new(b"secret key"))
///     .with_app_name("Example Chat")
///     // Only the app user the flow is for may use its start link.
///     .with_start_check(|request: &http::request::Parts, principal: &Principal| {
///         request.headers.get("x-app-user").is_some_and(|user| user == principal.subject())
///     });
/// // A callback without the binding cookie changes nothing.
/// let request = http::Request::get("/oauth/callback?code=c&state=s").body(()).unwrap();
/// let response = callback.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 400);
/// # }
/// ```
#[derive(Clone)]
pub struct CallbackService {
    completer: AuthorizationCompleter,
    binding: BrowserBinding,
    start_path: Arc<str>,
    app_name: Arc<str>,
    start_check: Option<StartCheck>,
    pages: Arc<dyn CallbackPages>,
}

impl fmt::Debug for CallbackService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackService")
            .field("binding", &self.binding)
            .field("start_path", &self.start_path)
            .field("app_name", &self.app_name)
            .field("start_check", &self.start_check.is_some())
            .finish_non_exhaustive()
    }
}

impl CallbackService {
    /// A start and callback endpoint completing flows with `completer`, bound by
    /// `binding`, with the default pages.
    pub fn new(completer: AuthorizationCompleter, binding: BrowserBinding) -> Self {
        Self {
            completer,
            binding,
            start_path: Arc::from(DEFAULT_START_PATH),
            app_name: Arc::from("the app"),
            start_check: None,
            pages: Arc::new(DefaultPages),
        }
    }

    /// The path of the start endpoint (default [`DEFAULT_START_PATH`]); it must match
    /// the path of the authorizer's [`start_url`](crate::oauth::AuthorizerBuilder::start_url).
    pub fn with_start_path(mut self, path: impl Into<String>) -> Self {
        self.start_path = Arc::from(path.into());
        self
    }

    /// The app's name, shown on the pages.
    pub fn with_app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = Arc::from(name.into());
        self
    }

    /// Lets a start link be used only when `check` accepts the browser's request for the
    /// flow's principal, e.g. the app's session cookie names that user. Refused starts
    /// answer 403 and set nothing.
    pub fn with_start_check(
        mut self,
        check: impl Fn(&http::request::Parts, &Principal) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.start_check = Some(Arc::new(check));
        self
    }

    /// Replaces the pages.
    pub fn with_pages(mut self, pages: impl CallbackPages) -> Self {
        self.pages = Arc::new(pages);
        self
    }

    /// The path of the start endpoint.
    pub fn start_path(&self) -> &str {
        &self.start_path
    }

    fn page(&self, page: CallbackPage<'_>) -> Response<String> {
        let mut response = Response::new(self.pages.render(&page));
        *response.status_mut() = page.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    }

    /// The page for a flow that cannot be started or completed any more.
    fn settled_page(&self, status: Option<FlowStatus>) -> Response<String> {
        let app = &*self.app_name;
        self.page(match status {
            Some(FlowStatus::Ended(FlowOutcome::Completed(_))) => {
                CallbackPage::AlreadySignedIn { app }
            }
            Some(FlowStatus::Expired) => CallbackPage::Expired { app },
            Some(FlowStatus::Ended(_)) => CallbackPage::Failed { app },
            _ => CallbackPage::InvalidLink { app },
        })
    }

    async fn start(self, parts: http::request::Parts) -> Response<String> {
        let flow = parts
            .uri
            .query()
            .and_then(|query| {
                url::form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "flow")
                    .map(|(_, value)| value.into_owned())
            })
            .unwrap_or_default();
        let flows = self.completer.flows();
        let Some((key, pending)) = flows.find_by_state(&flow).await else {
            return self.settled_page(flows.status(&flow).await);
        };
        match &self.start_check {
            Some(check) if !check(&parts, key.principal()) => {
                tracing::warn!("start link opened by another user of the app; refused");
                return self.page(CallbackPage::NotYours {
                    app: &self.app_name,
                });
            }
            Some(_) => {}
            None => warn_once_without_start_check(),
        }
        let start = self.binding.start_response(&pending);
        let (parts, ()) = start.into_parts();
        Response::from_parts(parts, String::new())
    }

    async fn callback(self, parts: http::request::Parts) -> Response<String> {
        let app = &*self.app_name;
        let params = CallbackParams::from_query(parts.uri.query().unwrap_or(""));
        let Some(state) = params.state.clone() else {
            tracing::warn!("OAuth callback without a state parameter");
            return self.page(CallbackPage::InvalidLink { app });
        };
        let flows = self.completer.flows();
        // The cookie check first: an unbound request costs no flow lookup beyond the
        // page that tells how its flow stands.
        if !self.binding.verify_headers(&parts.headers, state.expose()) {
            tracing::warn!("OAuth callback without a valid browser binding; ignored");
            return self.settled_page(flows.status(state.expose()).await);
        }
        let pending: Option<Arc<PendingFlow>> = flows
            .find_by_state(state.expose())
            .await
            .map(|(_, pending)| pending);
        let outcome = self.completer.complete(&params).await;
        let server = pending
            .as_ref()
            .and_then(|p| p.request.binding.resource().host_str().map(str::to_owned))
            .unwrap_or_else(|| "the server".to_owned());
        let mut response = match &outcome {
            Ok(_) => self.page(CallbackPage::SignedIn {
                app,
                server: &server,
            }),
            Err(CallbackError::AlreadyCompleted(_)) => {
                self.page(CallbackPage::AlreadySignedIn { app })
            }
            Err(CallbackError::Expired) => self.page(CallbackPage::Expired { app }),
            Err(CallbackError::Denied { error, description }) => self.page(CallbackPage::Denied {
                app,
                error,
                description: description.as_deref(),
            }),
            Err(CallbackError::UnknownState | CallbackError::MissingState) => {
                self.page(CallbackPage::InvalidLink { app })
            }
            Err(error) => {
                tracing::warn!(%error, "OAuth callback failed");
                self.page(CallbackPage::Failed { app })
            }
        };
        // One-shot: the flow has ended, whatever the outcome.
        if let Some(clear) = pending.as_ref().and_then(|p| self.binding.clear_cookie(p)) {
            response.headers_mut().insert(header::SET_COOKIE, clear);
        }
        response
    }
}

fn warn_once_without_start_check() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "CallbackService has no start check: any browser that opens a start link signs in \
             for that flow's user; set with_start_check where links can reach other people"
        );
    }
}

impl<B> tower::Service<Request<B>> for CallbackService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, _) = request.into_parts();
        let this = self.clone();
        if parts.uri.path() == &*self.start_path {
            Box::pin(async move { Ok(this.start(parts).await) })
        } else {
            Box::pin(async move { Ok(this.callback(parts).await) })
        }
    }
}

/// An axum `Router` serving `service` at the callback `path` and at its start path
/// (feature `axum`).
///
/// ```
/// use std::sync::Arc;
/// use tower_mcp_auth::{layer::callback::callback_router, store::MemoryStore, AuthHttpClient, oauth::AuthorizationCompleter, layer::callback::BrowserBinding, layer::callback::CallbackService, oauth::FlowStore};
///
/// let completer = AuthorizationCompleter::new(FlowStore::new(), Arc::new(MemoryStore::new()), AuthHttpClient::new());
/// let service = CallbackService::new(completer, BrowserBinding::new(b"key")).with_start_path("/oauth/start");
/// let app: axum::Router = callback_router("/oauth/callback", service);
/// # drop(app);
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn callback_router(path: &str, service: CallbackService) -> axum::Router {
    let start = service.start_path().to_owned();
    axum::Router::new()
        .route_service(path, service.clone())
        .route_service(&start, service)
}
