//! Production HTTP clients as tower services: the innermost service of a layer stack.
//!
//! * [`ReqwestService`] (feature `reqwest`, on by default): reqwest 0.13 as a
//!   `Service<http::Request<B>>` for any request body `B`, answering
//!   `http::Response<reqwest::Body>`. Both directions stream: a request body is never
//!   collected, an SSE response is read event by event.
//! * [`hyper_client`]: hyper-util's pooled legacy client over rustls, for apps that
//!   already run on hyper and do not want reqwest in their tree.
//!
//! Both use rustls with aws-lc-rs (reqwest's default provider) and the platform's certificate
//! roots, take connect and read timeouts from [`HttpClientConfig`], and have **no
//! overall timeout** by default: an SSE stream may stay open for hours. Neither follows
//! redirects (a bearer token must not be replayed to another URL).
//!
//! ```
//! use tower_mcp_auth::client::{HttpClientConfig, ReqwestService};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), tower_mcp_auth::client::ClientBuildError> {
//! let http = ReqwestService::with_config(
//!     &HttpClientConfig::new().connect_timeout(Duration::from_secs(5)),
//! )?;
//! # drop(http);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::BoxError;

use crate::url_policy::UrlPolicy;

/// The default connect timeout of the production clients: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeouts and address policy of [`ReqwestService`] and [`hyper_client`].
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_auth::client::HttpClientConfig;
///
/// let config = HttpClientConfig::new()
///     .connect_timeout(Duration::from_secs(3))
///     .read_timeout(Duration::from_secs(300));
/// # drop(config);
/// ```
#[derive(Clone, Debug)]
pub struct HttpClientConfig {
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    url_policy: Option<UrlPolicy>,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClientConfig {
    /// Connect timeout 10 s, no read timeout, no address filtering.
    pub fn new() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: None,
            url_policy: None,
        }
    }

    /// The time allowed to open a connection (TCP and TLS).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest silence allowed between two reads of a response (reqwest only; an
    /// SSE server that sends keep-alive comments stays within it). Off by default.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Checks every address a host name resolves to against `policy` at connect time,
    /// so a name that resolves (or rebinds) to a refused address is never connected to.
    pub fn url_policy(mut self, policy: UrlPolicy) -> Self {
        self.url_policy = Some(policy);
        self
    }
}

/// Why a production client could not be built (no TLS roots on this machine, say).
#[derive(Debug, thiserror::Error)]
#[error("HTTP client unavailable: {0}")]
pub struct ClientBuildError(#[source] BoxError);

impl ClientBuildError {
    /// Wraps the cause.
    pub fn new(source: BoxError) -> Self {
        Self(source)
    }
}

/// The rustls configuration both clients use: aws-lc-rs as the crypto provider, the
/// platform's verifier and roots, TLS 1.2 and 1.3. No ALPN protocols: each client
/// adds those it speaks (hyper-rustls refuses a configuration that has them).
///
/// ```
/// let config = tower_mcp_auth::client::tls_config().expect("TLS roots");
/// assert!(config.alpn_protocols.is_empty());
/// ```
pub fn tls_config() -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError(e.into()))?
        .with_platform_verifier()
        .map_err(|e| ClientBuildError(e.into()))?
        .with_no_client_auth();
    Ok(config)
}

/// The system resolver, optionally keeping only the addresses a [`UrlPolicy`] allows
/// (none left is an error: fail closed). Serves both reqwest and hyper.
#[derive(Clone, Debug, Default)]
pub struct PolicyResolver {
    policy: Option<UrlPolicy>,
}

impl PolicyResolver {
    /// Resolves with the system resolver and filters through `policy`.
    pub fn new(policy: UrlPolicy) -> Self {
        Self {
            policy: Some(policy),
        }
    }

    async fn lookup(self, host: String) -> Result<Vec<SocketAddr>, BoxError> {
        let resolved: Vec<SocketAddr> =
            tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        match self.policy {
            Some(policy) => crate::url_policy::filter_addresses(&policy, &host, resolved),
            None => Ok(resolved),
        }
    }
}

#[cfg(feature = "reqwest")]
impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.clone().lookup(name.as_str().to_owned());
        Box::pin(async move {
            let addresses = lookup.await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let lookup = self.clone().lookup(name.as_str().to_owned());
        Box::pin(async move { Ok(lookup.await?.into_iter()) })
    }
}

/// The connector of [`hyper_client`]: HTTPS (or plain HTTP) over the policy resolver.
pub type HyperConnector = hyper_rustls::HttpsConnector<
    hyper_util::client::legacy::connect::HttpConnector<PolicyResolver>,
>;

/// hyper-util's pooled client as built by [`hyper_client`]; a
/// `Service<http::Request<B>>` answering `http::Response<hyper::body::Incoming>`.
pub type HyperClient<B> = hyper_util::client::legacy::Client<HyperConnector, B>;

/// A hyper-util legacy client over rustls (HTTP/1.1 and HTTP/2, `http` and `https`
/// URLs), with `config`'s connect timeout and address policy.
///
/// ```
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower_mcp_auth::client::{hyper_client, HttpClientConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mcp_auth::client::ClientBuildError> {
/// let client = hyper_client::<Full<Bytes>>(&HttpClientConfig::new())?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
pub fn hyper_client<B>(config: &HttpClientConfig) -> Result<HyperClient<B>, ClientBuildError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http =
        hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(PolicyResolver {
            policy: config.url_policy,
        });
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

#[cfg(feature = "reqwest")]
pub use reqwest_service::{ReqwestFuture, ReqwestService};

#[cfg(feature = "reqwest")]
mod reqwest_service {
    use super::*;
    use bytes::Bytes;
    use http_body::Body;
    use std::fmt;

    /// reqwest 0.13 as a tower service for any request body, streaming both ways.
    ///
    /// A [`ReplayBody`](crate::ReplayBody) holding its bytes is sent as one buffer with
    /// its length (reqwest may send such a request again by itself after an HTTP/2
    /// refusal, which the server did not process); other request bodies are streamed,
    /// their `Content-Length` kept when known. Responses come back as
    /// `http::Response<reqwest::Body>`, read as the server sends them.
    /// No redirects, no overall timeout; connect and read timeouts from
    /// [`HttpClientConfig`].
    ///
    /// ```no_run
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mcp_auth::client::ReqwestService;
    ///
    /// # async fn run() -> Result<(), tower::BoxError> {
    /// let http = ReqwestService::new()?;
    /// let request = http::Request::post("https://mcp.example.com/mcp")
    ///     .header("content-type", "application/json")
    ///     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))?;
    /// let response = http.oneshot(request).await?;
    /// println!("{}", response.status());
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Clone)]
    pub struct ReqwestService {
        client: reqwest::Client,
    }

    impl fmt::Debug for ReqwestService {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ReqwestService").finish_non_exhaustive()
        }
    }

    impl ReqwestService {
        /// The defaults of [`HttpClientConfig::new`].
        pub fn new() -> Result<Self, ClientBuildError> {
            Self::with_config(&HttpClientConfig::new())
        }

        /// A client with `config`'s timeouts and address policy.
        pub fn with_config(config: &HttpClientConfig) -> Result<Self, ClientBuildError> {
            let mut builder = Self::builder()?
                .connect_timeout(config.connect_timeout)
                .dns_resolver(Arc::new(PolicyResolver {
                    policy: config.url_policy,
                }));
            if let Some(read) = config.read_timeout {
                builder = builder.read_timeout(read);
            }
            let client = builder.build().map_err(|e| ClientBuildError(e.into()))?;
            Ok(Self { client })
        }

        /// Wraps a client you configured (built from [`builder`](Self::builder), or
        /// with a crypto provider of your own).
        pub fn from_client(client: reqwest::Client) -> Self {
            Self { client }
        }

        /// A `reqwest::ClientBuilder` with this crate's TLS ([`tls_config`]),
        /// redirects off and **no proxy from the environment**, to configure further.
        ///
        /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are ignored: a proxy resolves names
        /// itself, so the [`UrlPolicy`] that refuses internal addresses would never see
        /// them. To go through a proxy, add `.proxy(...)` to this builder knowingly: the
        /// policy then checks the proxy's address only, and the proxy must enforce its
        /// own egress rules.
        ///
        /// ```
        /// let client = tower_mcp_auth::client::ReqwestService::builder()
        ///     .expect("TLS roots")
        ///     .build()
        ///     .expect("client");
        /// # drop(client);
        /// ```
        pub fn builder() -> Result<reqwest::ClientBuilder, ClientBuildError> {
            let mut tls = tls_config()?;
            // reqwest uses a preconfigured TLS configuration as it is.
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy())
        }

        /// The reqwest client inside.
        pub fn client(&self) -> &reqwest::Client {
            &self.client
        }
    }

    /// The future of [`ReqwestService`]'s response.
    pub struct ReqwestFuture {
        inner: Pin<
            Box<dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send>,
        >,
    }

    impl fmt::Debug for ReqwestFuture {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ReqwestFuture").finish_non_exhaustive()
        }
    }

    impl Future for ReqwestFuture {
        type Output = Result<http::Response<reqwest::Body>, reqwest::Error>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.inner.as_mut().poll(cx)
        }
    }

    impl<B> tower::Service<http::Request<B>> for ReqwestService
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        type Response = http::Response<reqwest::Body>;
        type Error = reqwest::Error;
        type Future = ReqwestFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            // reqwest's pool admits every request.
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<B>) -> Self::Future {
            let (mut parts, body) = request.into_parts();
            // Bytes already in memory (the layers' replayable body) go as they are: one
            // buffer with its length, no stream wrapped around them.
            if let Some(bytes) = (&body as &dyn std::any::Any)
                .downcast_ref::<crate::ReplayBody>()
                .and_then(crate::ReplayBody::as_bytes)
            {
                let body = reqwest::Body::from(bytes.clone());
                return self.send(http::Request::from_parts(parts, body));
            }
            let body = match body.size_hint().exact() {
                Some(0) => reqwest::Body::from(Bytes::new()),
                length => {
                    if let Some(length) = length {
                        // A streamed body loses its size; keep it so the request is
                        // sent with a length instead of chunked.
                        parts
                            .headers
                            .entry(http::header::CONTENT_LENGTH)
                            .or_insert_with(|| length.into());
                    }
                    reqwest::Body::wrap_stream(http_body_util::BodyDataStream::new(body))
                }
            };
            self.send(http::Request::from_parts(parts, body))
        }
    }

    impl ReqwestService {
        fn send(&self, request: http::Request<reqwest::Body>) -> ReqwestFuture {
            let client = self.client.clone();
            ReqwestFuture {
                inner: Box::pin(async move {
                    let request = reqwest::Request::try_from(request)?;
                    let response = client.execute(request).await?;
                    Ok(http::Response::from(response))
                }),
            }
        }
    }
}
