//! Identity mode `jwt`: MCP clients bring bearer tokens, browsers sign in at the same
//! issuer through the gateway's own OpenID Connect login. A sign-in link works only in
//! the browser of the user it was made for (real Chromium, a loopback OpenID provider,
//! the real `mcp-auth-proxy` binary).

mod common;

use serde_json::{Value, json};
use tower_mcp_auth::testing::{TestAuthServer, TestMcpServer};

use common::gateway::{dir, free_port, http, start};
use common::oidc::OidcProvider;

fn config(port: u16, idp: &OidcProvider, upstream: &str, login: bool) -> String {
    let login = if login {
        "login_client_id = \"gateway-login\"\n"
    } else {
        ""
    };
    format!(
        r#"listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
cookie_key_env = "GATEWAY_COOKIE_KEY"
allow_loopback_http = true

[store]
sqlite = "gateway.db"

[identity]
mode = "jwt"
issuer = "{issuer}"
audience = "mcp-gateway"
jwks_url = "{jwks}"
{login}
[[upstream]]
name = "docs"
url = "{upstream}"
auth = "oauth"
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_url(),
    )
}

const KEY: [(&str, &str); 1] = [(
    "GATEWAY_COOKIE_KEY",
    "0123456789abcdef0123456789abcdef-test",
)];

/// What a page shows, roughly: tags dropped, whitespace folded.
fn text(dom: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn chromium(url: &str, name: &str) -> String {
    let url: url::Url = url.parse().unwrap();
    common::run_chromium(&url, name, "--dump-dom")
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// A `tools/call` with `subject`'s bearer token; the JSON-RPC answer.
async fn call_as(endpoint: &str, idp: &OidcProvider, subject: &str) -> Value {
    let response = http()
        .post(endpoint)
        .header(
            "authorization",
            format!("Bearer {}", idp.access_token(subject, "mcp-gateway")),
        )
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    common::gateway::message(&content_type, &response.text().await.unwrap())
}

/// The sign-in link in a "connect first" tool result.
fn link_in(answer: &Value, public: &str) -> String {
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let start = text
        .find(&format!("{public}/oauth/docs/start?flow="))
        .unwrap_or_else(|| panic!("no link in {text}"));
    text[start..]
        .split(|c: char| c.is_whitespace() || c == ')' || c == '"')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_a_sign_in_link_connects_only_the_user_it_was_made_for() {
    let idp = OidcProvider::start().await;
    let auth = TestAuthServer::start().await.unwrap();
    auth.set_consenting_user("mallory-at-docs");
    let mcp = TestMcpServer::start(&auth).await.unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let _proxy = start("jwt-login", &config(port, &idp, &mcp.url(), true), &KEY);
    let endpoint = format!("{public}/docs/mcp");

    // Mallory's MCP client gets a sign-in link and sends it to Bob.
    let answer = call_as(&endpoint, &idp, "mallory").await;
    let link = link_in(&answer, &public);

    // Bob, signed in at the identity provider, opens it: the gateway signs his browser
    // in, sees it is not Mallory's, and starts nothing.
    idp.set_user("bob");
    let page = text(&chromium(&link, "login-bob").await);
    assert!(page.contains("made for another account"), "Bob saw: {page}");
    assert_eq!(
        idp.authorizations(),
        ["bob"],
        "Bob's browser signed in at the gateway"
    );
    assert_eq!(
        auth.stats().authorization_requests,
        0,
        "nothing started upstream"
    );
    let answer = call_as(&endpoint, &idp, "mallory").await;
    assert_eq!(
        answer["result"]["isError"], true,
        "Mallory is still not connected: {answer}"
    );

    // Bob's browser can use the gateway's pages as himself.
    let page = text(&chromium(&format!("{public}/connections"), "login-bob-pages").await);
    assert!(page.contains("Signed in as bob"), "{page}");

    // Mallory's own browser: signed in as Mallory, the link proceeds to the upstream's
    // sign-in and back, and her next call reaches the upstream with her own token.
    idp.set_user("mallory");
    let page = text(&chromium(&link, "login-mallory").await);
    assert!(
        !page.contains("made for another account"),
        "Mallory saw: {page}"
    );
    assert_eq!(auth.stats().authorization_requests, 1, "{page}");
    let answer = call_as(&endpoint, &idp, "mallory").await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "mallory-at-docs",
        "{answer}"
    );
}

#[test]
fn check_refuses_oauth_upstreams_in_jwt_mode_without_a_browser_login() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let idp = runtime.block_on(OidcProvider::start());
    let dir = dir("jwt-check");
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        config(8080, &idp, "https://mcp.example.com/mcp", false),
    )
    .unwrap();
    let output = std::process::Command::new(common::gateway::BINARY)
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(KEY)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("login_client_id"), "{said}");

    // The login itself over plain http, off loopback: its cookie could not be `Secure`.
    let plain = config(8080, &idp, "https://mcp.example.com/mcp", true).replace(
        "public_url = \"http://127.0.0.1:8080\"",
        "public_url = \"http://gw.example.com\"",
    );
    std::fs::write(&path, plain).unwrap();
    let output = std::process::Command::new(common::gateway::BINARY)
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(KEY)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("must be https"), "{said}");
}
