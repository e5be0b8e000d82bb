//! Discovery against the loopback fixtures.

use serde_json::json;
use tower::ServiceExt;
use tower_mcp_auth::testing::{ReqwestTransport, TestAuthServer, TestMcpServer, jsonrpc_request};
use tower_mcp_auth::{
    AuthHttpClient, UrlPolicy, error::UrlRefused, oauth::BearerChallenge, oauth::Discovery,
    oauth::DiscoveryError,
};
use url::Url;

fn loopback_discovery() -> Discovery {
    Discovery::new(
        AuthHttpClient::reqwest(),
        UrlPolicy::default().allow_loopback_http(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_401_challenge_to_the_token_endpoint() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    // An unauthenticated call: the server's 401 names its metadata.
    let response = ReqwestTransport::new()
        .oneshot(jsonrpc_request(&mcp.url(), 1, "tools/list", json!({})))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = BearerChallenge::from_headers(response.headers()).expect("Bearer challenge");

    let discovery = loopback_discovery();
    let server: Url = mcp.url().parse().unwrap();
    let resource = discovery
        .protected_resource(&server, Some(&challenge))
        .await
        .unwrap();
    assert_eq!(resource.resource, mcp.url());
    assert_eq!(resource.authorization_servers, [auth.issuer()]);

    let issuer: Url = resource.authorization_servers[0].parse().unwrap();
    let metadata = discovery.authorization_server(&issuer).await.unwrap();
    assert_eq!(
        metadata.token_endpoint.as_deref(),
        Some(auth.token_endpoint().as_str())
    );
    assert_eq!(metadata.supports_s256(), Some(true));

    // Cached: no second fetch.
    discovery.authorization_server(&issuer).await.unwrap();
    assert_eq!(auth.stats().metadata_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_challenge_the_well_known_path_is_tried() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let resource = loopback_discovery()
        .protected_resource(&mcp.url().parse().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(resource.resource, mcp.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_document_for_another_issuer_is_refused() {
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_metadata_issuer("https://evil.example.com");
    let error = loopback_discovery()
        .authorization_server(&auth.issuer().parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::IssuerMismatch { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_hints_and_blocked_addresses_are_refused() {
    let auth = TestAuthServer::start().await.unwrap();
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let server: Url = mcp.url().parse().unwrap();
    let hostile = BearerChallenge::from_headers(&{
        let mut headers = http::HeaderMap::new();
        let hint = format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            auth.issuer()
        );
        headers.insert("www-authenticate", hint.parse().unwrap());
        headers
    })
    .unwrap();
    let error = loopback_discovery()
        .protected_resource(&server, Some(&hostile))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::CrossOriginMetadata(_)),
        "{error}"
    );

    // The default policy refuses plain http and loopback altogether.
    let strict = Discovery::new(AuthHttpClient::reqwest(), UrlPolicy::default());
    let error = strict.protected_resource(&server, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            DiscoveryError::Refused(UrlRefused::InternalAddress(_))
        ),
        "{error}"
    );
}
