use super::*;

#[test]
fn loopback_redirect_uris_are_keyed_without_their_port() {
    let key = |uri: &str| redirect_key(&uri.parse().unwrap());
    assert_eq!(
        key("http://127.0.0.1:4711/callback"),
        key("http://127.0.0.1:5000/callback")
    );
    assert_eq!(key("http://[::1]:4711/cb"), key("http://[::1]/cb"));
    // Anything else keeps its port: another port may be another app.
    assert_ne!(
        key("https://app.example.com:8443/cb"),
        key("https://app.example.com/cb")
    );
    assert_ne!(
        key("http://localhost:4711/cb"),
        key("http://localhost:5000/cb")
    );
    assert_ne!(key("https://127.0.0.1:1/cb"), key("https://127.0.0.1:2/cb"));
}
