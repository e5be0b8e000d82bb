use super::*;

fn binding(resource: &str) -> ServerBinding {
    ServerBinding::public_client(resource, "https://as.example/token", "c").unwrap()
}

/// A binding for `https://mcp.example.com/mcp` with client id `id`.
fn client(id: &str) -> ServerBinding {
    ServerBinding::public_client(
        "https://mcp.example.com/mcp",
        "https://as.example/token",
        id,
    )
    .unwrap()
}

#[test]
fn a_full_slot_refuses_new_tenants_and_keeps_the_others() {
    let slot = BindingSlot::new("https://mcp.example.com/mcp")
        .unwrap()
        .with_max_tenants(2);
    slot.set("a", client("a")).unwrap();
    slot.set("b", client("b")).unwrap();
    assert!(slot.set("intruder", client("x")).is_err());
    slot.set("a", client("a2")).unwrap();
    assert_eq!(slot.get("a").unwrap().client_id(), "a2");
    assert_eq!(slot.get("b").unwrap().client_id(), "b");
    assert!(slot.get("intruder").is_none());
}

#[test]
fn a_tenants_own_binding_overrides_the_fixed_one_for_that_tenant_only() {
    let slot = BindingSlot::fixed(client("shared"));
    assert_eq!(slot.get("a").unwrap().client_id(), "shared");
    slot.set("a", client("own")).unwrap();
    assert_eq!(slot.get("a").unwrap().client_id(), "own");
    assert_eq!(slot.get("b").unwrap().client_id(), "shared");
}

#[test]
fn covers_paths_at_segment_boundaries() {
    let b = binding("https://mcp.example/mcp");
    for ok in [
        "https://mcp.example/mcp",
        "https://mcp.example:443/mcp/x",
        "https://MCP.example/mcp?x=1",
    ] {
        assert!(b.covers(&ok.parse().unwrap()), "{ok}");
    }
    for no in [
        "https://mcp.example/mcpx",
        "http://mcp.example/mcp",
        "https://mcp.example:8443/mcp",
        "https://other.example/mcp",
        "/mcp",
    ] {
        assert!(!b.covers(&no.parse().unwrap()), "{no}");
    }
    assert!(binding("https://mcp.example").covers(&"https://mcp.example/any".parse().unwrap()));
}

/// The exact-text fast path and the parsing path agree, ports and IPv6 included.
#[test]
fn covers_the_same_origin_however_it_is_spelled() {
    for (resource, same, other) in [
        (
            "http://127.0.0.1:8080/mcp",
            ["http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp/x"],
            ["http://127.0.0.1:8081/mcp", "http://127.0.0.1/mcp"],
        ),
        (
            "http://[::1]:9000/mcp",
            ["http://[::1]:9000/mcp", "http://[::1]:9000/mcp?q"],
            ["http://[::1]:9001/mcp", "http://[::2]:9000/mcp"],
        ),
        (
            "https://mcp.example/mcp",
            ["https://mcp.example/mcp", "https://Mcp.Example:443/mcp"],
            ["https://mcp.example:444/mcp", "https://u@mcp.example/mcp"],
        ),
    ] {
        let b = binding(resource);
        for ok in same {
            assert!(b.covers(&ok.parse().unwrap()), "{resource} covers {ok}");
        }
        for no in other {
            assert!(
                !b.covers(&no.parse().unwrap()),
                "{resource} does not cover {no}"
            );
        }
        let exact = format!("{}/../admin", resource.trim_end_matches("/mcp"));
        assert!(!b.covers(&exact.parse().unwrap()), "{exact}");
    }
}

/// A principal finds its tenant's binding by the hash it carries, as a lookup by
/// name does; other tenants (even ones whose names share a prefix) fall back.
#[test]
fn a_principal_finds_its_tenants_binding_by_its_hash() {
    let slot = BindingSlot::fixed(client("shared"));
    for tenant in ["a", "ab", "acme", ""] {
        slot.set(tenant, client(&format!("own-{tenant}"))).unwrap();
    }
    for tenant in ["a", "ab", "acme", ""] {
        let principal = crate::Principal::new(tenant, "user");
        let by_hash = slot.for_principal(&principal).unwrap();
        assert_eq!(by_hash.client_id(), format!("own-{tenant}"));
        assert_eq!(slot.get(tenant).unwrap().client_id(), by_hash.client_id());
    }
    let stranger = crate::Principal::new("abc", "user");
    assert_eq!(slot.for_principal(&stranger).unwrap().client_id(), "shared");
    // Setting a tenant again replaces its binding and takes no second place.
    slot.set("a", client("again")).unwrap();
    assert_eq!(slot.get("a").unwrap().client_id(), "again");
    assert!(format!("{slot:?}").contains("tenants: 4"));
}

#[test]
fn identity_changes_with_issuer_and_client() {
    let a = binding("https://mcp.example/mcp");
    let b = a.clone().with_issuer("https://as.example");
    let c =
        ServerBinding::public_client("https://mcp.example/mcp", "https://as.example/token", "d")
            .unwrap();
    assert_ne!(a.id(), b.id());
    assert_ne!(a.id(), c.id());
    assert_eq!(a.id(), binding("https://mcp.example/mcp").id());
}

#[test]
fn rejects_non_http_urls() {
    assert!(ServerBinding::public_client("ftp://x/", "https://a/t", "c").is_err());
    assert!(ServerBinding::public_client("https://x/", "not a url", "c").is_err());
}
