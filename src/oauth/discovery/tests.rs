use super::*;

fn urls(list: Vec<Url>) -> Vec<String> {
    list.into_iter().map(String::from).collect()
}

#[test]
fn protected_resource_candidates_insert_the_path() {
    let server: Url = "https://mcp.example.com/public/mcp?x=1".parse().unwrap();
    assert_eq!(
        urls(protected_resource_metadata_urls(&server)),
        [
            "https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp",
            "https://mcp.example.com/.well-known/oauth-protected-resource",
        ]
    );
    let root: Url = "https://mcp.example.com/".parse().unwrap();
    assert_eq!(protected_resource_metadata_urls(&root).len(), 1);
}

#[test]
fn authorization_server_candidates_follow_the_2025_11_25_order() {
    let with_path: Url = "https://auth.example.com/tenant1".parse().unwrap();
    assert_eq!(
        urls(authorization_server_metadata_urls(&with_path)),
        [
            "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
            "https://auth.example.com/.well-known/openid-configuration/tenant1",
            "https://auth.example.com/tenant1/.well-known/openid-configuration",
        ]
    );
    let root: Url = "https://auth.example.com".parse().unwrap();
    assert_eq!(
        urls(authorization_server_metadata_urls(&root)),
        [
            "https://auth.example.com/.well-known/oauth-authorization-server",
            "https://auth.example.com/.well-known/openid-configuration",
        ]
    );
}

#[test]
fn resource_identity_allows_the_origin_level_resource() {
    let server: Url = "https://mcp.example.com/mcp".parse().unwrap();
    assert!(resource_matches("https://mcp.example.com/mcp", &server));
    assert!(resource_matches("https://mcp.example.com/mcp/", &server));
    assert!(resource_matches("https://mcp.example.com", &server));
    assert!(!resource_matches("https://mcp.example.com/other", &server));
    assert!(!resource_matches("https://mcp.example.com/mc", &server));
    assert!(!resource_matches("https://evil.example.com/mcp", &server));
    assert!(!resource_matches("not a url", &server));
}
