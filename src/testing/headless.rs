//! An [`AuthorizationHandler`] that plays the user's browser without a user.

use std::collections::HashMap;
use std::time::Duration;

use tower::BoxError;
use url::Url;

use crate::layer::oauth_retry::{AuthorizationHandler, AuthorizationPrompt};
use crate::oauth::callback::{AuthorizationCompleter, CallbackParams};
use crate::store::BoxFuture;

/// Plays a browser whose user consents at once: follows redirects from the URL it is
/// given (a start link or an authorization URL), keeping cookies per host as a browser
/// does (consent pages with cookie-bound hops work), until the redirect comes back to the
/// flow's redirect URI. There it hands the parameters to the
/// [`AuthorizationCompleter`], as the callback endpoint would, or — made with
/// [`through_callback`](Self::through_callback) — requests the redirect URI itself, with
/// its cookies, so that a running [`CallbackService`](crate::layer::callback::CallbackService) completes
/// the flow.
///
/// For authorization servers that consent without a form: the loopback
/// [`TestAuthServer`](crate::testing::TestAuthServer) (with or without its interaction
/// page), the MCP conformance suite's mock servers.
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_mcp_auth::{store::MemoryStore, Authorizer, OAuthRetryLayer, UrlPolicy};
/// use tower_mcp_auth::testing::HeadlessBrowser;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let authorizer = Authorizer::builder(
///     "http://127.0.0.1:8080/mcp",
///     Arc::new(MemoryStore::new()),
///     "http://localhost:3000/callback".parse()?,
/// )
/// .url_policy(UrlPolicy::default().allow_loopback_http())
/// .build()?;
/// let layer = OAuthRetryLayer::wait(authorizer.clone(), HeadlessBrowser::new(authorizer.completer()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HeadlessBrowser {
    http: reqwest::Client,
    /// Finds the flow's redirect URI and, unless `through_callback`, completes it.
    completer: Option<AuthorizationCompleter>,
    /// The redirect URI, when the flows live in another process.
    redirect_uri: Option<Url>,
    through_callback: bool,
    headers: http::HeaderMap,
}

/// Most redirects followed before giving up (browsers allow about 20).
const MAX_HOPS: usize = 20;

impl HeadlessBrowser {
    /// A browser that completes flows through `completer`.
    pub fn new(completer: AuthorizationCompleter) -> Self {
        Self::with_completer(Some(completer))
    }

    /// A browser for flows of another process (a gateway, a bridge): it follows the
    /// link until the redirect comes back to `redirect_uri`, and requests that URL
    /// itself with its cookies, as a browser would.
    ///
    /// ```
    /// use tower_mcp_auth::testing::HeadlessBrowser;
    ///
    /// let browser = HeadlessBrowser::for_redirect_uri(
    ///     "http://127.0.0.1:8080/oauth/docs/callback".parse().unwrap(),
    /// );
    /// # drop(browser);
    /// ```
    pub fn for_redirect_uri(redirect_uri: Url) -> Self {
        let mut browser = Self::with_completer(None);
        browser.redirect_uri = Some(redirect_uri);
        browser.through_callback = true;
        browser
    }

    fn with_completer(completer: Option<AuthorizationCompleter>) -> Self {
        let http = crate::client::ReqwestService::builder()
            .expect("TLS roots")
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            completer,
            redirect_uri: None,
            through_callback: false,
            headers: http::HeaderMap::new(),
        }
    }

    /// Sends this header with every request, like the app's session a real browser
    /// holds (for a [`CallbackService`](crate::layer::callback::CallbackService) start check).
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Requests the redirect URI itself (with the cookies the start link set) instead
    /// of calling the completer: for a running callback endpoint.
    pub fn through_callback(mut self) -> Self {
        self.through_callback = true;
        self
    }

    /// Visits `url` (a start link or an authorization URL) and follows it back to the
    /// flow's redirect URI.
    ///
    /// # Errors
    ///
    /// When `url` names no open flow, a server stops redirecting (a form to fill in),
    /// the redirects do not end, or the callback does not complete the flow.
    pub async fn visit(&self, url: &Url) -> Result<(), BoxError> {
        let redirect_uri = match (&self.redirect_uri, &self.completer) {
            (Some(uri), _) => uri.clone(),
            (None, Some(completer)) => {
                let state = url
                    .query_pairs()
                    .find(|(name, _)| name == "state" || name == "flow")
                    .map(|(_, value)| value.into_owned())
                    .ok_or_else(|| {
                        format!("{} carries no state or flow parameter", redacted(url))
                    })?;
                let (_, pending) = completer
                    .flows()
                    .find_by_state(&state)
                    .await
                    .ok_or("no open authorization flow for the URL's state")?;
                pending.request.redirect_uri.clone()
            }
            (None, None) => return Err("a browser needs a completer or a redirect URI".into()),
        };
        let redirect_uri = &redirect_uri;
        let mut jar: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut current = url.clone();
        for _ in 0..MAX_HOPS {
            let response = self.get(&current, &jar).await?;
            keep_cookies(&mut jar, &current, response.headers());
            let Some(location) = response.headers().get(http::header::LOCATION) else {
                return Err(format!(
                    "{} answered {} without redirecting back to the client",
                    redacted(&current),
                    response.status()
                )
                .into());
            };
            let next = current.join(location.to_str()?)?;
            if next.origin() == redirect_uri.origin() && next.path() == redirect_uri.path() {
                return self.back(&next, &jar).await;
            }
            current = next;
        }
        Err(format!("more than {MAX_HOPS} redirects").into())
    }

    async fn get(
        &self,
        url: &Url,
        jar: &HashMap<String, Vec<(String, String)>>,
    ) -> Result<reqwest::Response, BoxError> {
        let mut request = self.http.get(url.as_str()).headers(self.headers.clone());
        if let Some(cookies) = jar.get(&host_key(url)).filter(|c| !c.is_empty()) {
            let header = cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(http::header::COOKIE, header);
        }
        Ok(request.send().await?)
    }

    /// Arrived at the redirect URI.
    async fn back(
        &self,
        url: &Url,
        jar: &HashMap<String, Vec<(String, String)>>,
    ) -> Result<(), BoxError> {
        if self.through_callback {
            let response = self.get(url, jar).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            return Err(format!("the callback endpoint answered {status}").into());
        }
        let params = CallbackParams::from_query(url.query().unwrap_or_default());
        let completer = self
            .completer
            .as_ref()
            .ok_or("a browser needs a completer or a redirect URI")?;
        completer.complete(&params).await?;
        Ok(())
    }
}

/// Cookies are per host (they ignore ports and schemes; paths are not modelled here).
fn host_key(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_ascii_lowercase()
}

fn keep_cookies(
    jar: &mut HashMap<String, Vec<(String, String)>>,
    url: &Url,
    headers: &http::HeaderMap,
) {
    let cookies = jar.entry(host_key(url)).or_default();
    for value in headers.get_all(http::header::SET_COOKIE) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let mut attributes = text.split(';');
        let Some((name, value)) = attributes.next().and_then(|pair| pair.split_once('=')) else {
            continue;
        };
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        cookies.retain(|(existing, _)| *existing != name);
        let removed = attributes.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        if !removed {
            cookies.push((name, value));
        }
    }
}

/// A URL for error messages: no query (it carries the flow's state).
fn redacted(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

impl AuthorizationHandler for HeadlessBrowser {
    fn authorize(&self, prompt: AuthorizationPrompt) -> BoxFuture<'static, Result<(), BoxError>> {
        let browser = self.clone();
        Box::pin(async move { browser.visit(prompt.url()).await })
    }
}
