use super::*;

const GOOD: &str = r#"listen = "127.0.0.1:8080"

[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["127.0.0.1", "::1"]

[[upstream]]
name = "plain"
url = "http://127.0.0.1:3001/mcp"
auth = "none"

[[upstream]]
name = "keyed"
url = "https://mcp.example.com/mcp"
auth = "header"
header_name = "x-api-key"
header_value_env = "KEYED_SECRET"
"#;

fn env(name: &str) -> Option<String> {
    (name == "KEYED_SECRET").then(|| "s3cr3t".to_owned())
}

#[test]
fn a_good_file_parses_and_secrets_stay_out_of_debug() {
    let config = ProxyConfig::parse(GOOD, &env).unwrap();
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(
        config.store,
        StoreConfig::Sqlite("mcp-auth-proxy.db".into())
    );
    assert!(!format!("{config:?}").contains("s3cr3t"));
}

#[test]
fn every_error_names_its_line() {
    let cases = [
        (GOOD.replace("127.0.0.1:8080", "nowhere"), 1, "listen"),
        (
            GOOD.replace("mode = \"trusted-header\"", "mode = \"magic\""),
            4,
            "unknown mode",
        ),
        (
            GOOD.replace("\"::1\"", "\"not-an-ip\""),
            6,
            "not an IP address",
        ),
        (
            GOOD.replace("name = \"keyed\"", "name = \"plain\""),
            14,
            "used twice",
        ),
        (
            GOOD.replace("auth = \"none\"", "auth = \"kerberos\""),
            11,
            "unknown mode",
        ),
        (
            GOOD.replace("http://127.0.0.1:3001/mcp", "ftp://x"),
            10,
            "not an http(s) URL",
        ),
        (
            GOOD.replace("KEYED_SECRET", "MISSING_SECRET"),
            18,
            "is not set",
        ),
        (
            GOOD.replace("name = \"plain\"", "name = \"a/b\""),
            9,
            "letters, digits",
        ),
        (
            GOOD.replace("auth = \"none\"", "auth = \"none\"\nsurprise = 1"),
            12,
            "surprise",
        ),
        (GOOD.replace("listen = ", "listen = = "), 1, ""),
    ];
    for (text, line, needle) in cases {
        let error = ProxyConfig::parse(&text, &env).unwrap_err();
        assert_eq!(error.line, Some(line), "{error} in\n{text}");
        assert!(error.to_string().contains(needle), "{error}");
    }
    let jwt = GOOD.replace("mode = \"trusted-header\"", "mode = \"jwt\"");
    let error = ProxyConfig::parse(&jwt, &env).unwrap_err();
    assert_eq!(error.line, Some(3), "{error}");
    assert!(error.to_string().contains("`issuer`"), "{error}");
    let jwt = jwt.replace(
        "mode = \"jwt\"",
        "mode = \"jwt\"\nissuer = \"https://idp\"\naudience = \"gw\"\njwks_url = \"https://idp/jwks\"",
    );
    let config = ProxyConfig::parse(&jwt, &env).unwrap();
    assert!(matches!(config.identity, IdentityConfig::Jwt(_)));
    let oauth = GOOD.replace("auth = \"none\"", "auth = \"oauth\"");
    let error = ProxyConfig::parse(&oauth, &env).unwrap_err();
    assert_eq!(error.line, Some(11), "{error}");
    assert!(error.to_string().contains("public_url"), "{error}");
    let with_public = |extra: &str| {
        format!(
            "public_url = \"https://gw.example.com\"\ncookie_key_env = \"KEYED_SECRET\"\n{}",
            oauth.replace("auth = \"oauth\"", &format!("auth = \"oauth\"{extra}"))
        )
    };
    // KEYED_SECRET is 6 bytes: too short for a cookie key.
    let error = ProxyConfig::parse(&with_public(""), &env).unwrap_err();
    assert_eq!(error.line, Some(2), "{error}");
    assert!(error.to_string().contains("32 bytes"), "{error}");
    let long = |name: &str| (name == "KEYED_SECRET").then(|| "k".repeat(32));
    let config = ProxyConfig::parse(&with_public(""), &long).unwrap();
    assert!(matches!(
        config.upstreams[0].auth,
        UpstreamAuth::OAuth {
            pre_registered: None,
            wait: None,
            metadata_document: None
        }
    ));
    assert!(!format!("{config:?}").contains(&"k".repeat(32)));
    let error = ProxyConfig::parse(&with_public("\nclient_id = \"gw\""), &long).unwrap_err();
    assert_eq!(error.line, Some(14), "{error}");
    assert!(error.to_string().contains("issuer"), "{error}");
    let config = ProxyConfig::parse(
        &with_public("\nclient_metadata_url = \"https://gw.example.com/oauth/client.json\""),
        &long,
    )
    .unwrap();
    assert!(matches!(
        &config.upstreams[0].auth,
        UpstreamAuth::OAuth { metadata_document: Some(url), .. } if url.path() == "/oauth/client.json"
    ));
    let error = ProxyConfig::parse(
        &with_public("\nclient_metadata_url = \"http://gw.example.com/c.json\""),
        &long,
    )
    .unwrap_err();
    assert_eq!(error.line, Some(14), "{error}");
    let error = ProxyConfig::parse(
        &with_public("").replace("https://gw.example.com", "https://gw.example.com/sub"),
        &long,
    )
    .unwrap_err();
    assert_eq!(error.line, Some(1), "{error}");
    let error = ProxyConfig::parse("listen = \"127.0.0.1:1\"\n[identity]\nmode = \"trusted-header\"\nheader = \"x-user\"\ntrusted_sources = [\"127.0.0.1\"]\n", &env).unwrap_err();
    assert!(error.to_string().contains("no [[upstream]]"), "{error}");
}
