// The application's own reqwest client, built the way its README says, beside the
// crate's: neither may panic, and the application's client still speaks TLS.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // What panicked ("No rustls crypto provider is configured") when the crate enabled
    // reqwest's `rustls-no-provider` feature.
    let client = reqwest::Client::new();
    // An https URL gets as far as the connection attempt (a closed loopback port), not
    // a "TLS not compiled in" builder error.
    let error = client
        .get("https://127.0.0.1:9/")
        .send()
        .await
        .expect_err("nothing listens on port 9");
    assert!(error.is_connect(), "not a connection error: {error:?}");
    let _crate_client = tower_mcp_auth::client::ReqwestService::new()
        .expect("the crate's own client builds beside the application's");
    println!(
        "{}: reqwest::Client::new() and the crate's client both work",
        env!("CARGO_PKG_NAME")
    );
}
