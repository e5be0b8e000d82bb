//! An [`AuthorizationHandler`] that plays the user's browser without a user.

use std::time::Duration;

use tower::BoxError;
use url::Url;

use crate::layer::oauth_retry::{AuthorizationHandler, AuthorizationPrompt};
use crate::oauth::callback::{AuthorizationCompleter, CallbackParams};
use crate::store::BoxFuture;

/// Follows an authorization URL like a browser whose user consents at once: requests
/// it without following redirects, reads the redirect back (`code`, `state`, `iss` or
/// `error`) from its `Location`, and hands that to the [`AuthorizationCompleter`], as
/// the callback endpoint would.
///
/// For authorization servers that consent automatically: the loopback
/// [`TestAuthServer`](crate::testing::TestAuthServer), the MCP conformance suite's
/// mock servers. It never contacts the redirect URI.
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_mcp_auth::{store::MemoryStore, Authorizer, OAuthRetryLayer};
/// use tower_mcp_auth::testing::HeadlessBrowser;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let authorizer = Authorizer::builder(
///     "http://127.0.0.1:8080/mcp",
///     Arc::new(MemoryStore::new()),
///     "http://localhost:3000/callback".parse()?,
/// )
/// .build()?;
/// let layer = OAuthRetryLayer::wait(authorizer.clone(), HeadlessBrowser::new(authorizer.completer()));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HeadlessBrowser {
    http: reqwest::Client,
    completer: AuthorizationCompleter,
}

impl HeadlessBrowser {
    /// A browser that completes flows through `completer`.
    pub fn new(completer: AuthorizationCompleter) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self { http, completer }
    }

    /// Visits `url` and completes the flow from the redirect back.
    ///
    /// # Errors
    ///
    /// When the server does not redirect, or the callback does not complete the flow.
    pub async fn visit(&self, url: &Url) -> Result<(), BoxError> {
        let response = self.http.get(url.as_str()).send().await?;
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .ok_or_else(|| {
                format!(
                    "authorization endpoint answered {} without a redirect",
                    response.status()
                )
            })?
            .to_str()?;
        let back = url.join(location)?;
        let params = CallbackParams::from_query(back.query().unwrap_or_default());
        self.completer.complete(&params).await?;
        Ok(())
    }
}

impl AuthorizationHandler for HeadlessBrowser {
    fn authorize(&self, prompt: AuthorizationPrompt) -> BoxFuture<'static, Result<(), BoxError>> {
        let browser = self.clone();
        Box::pin(async move { browser.visit(&prompt.flow.authorization_url).await })
    }
}
