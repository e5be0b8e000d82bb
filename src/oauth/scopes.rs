//! Which scopes an authorization asks for, bounded whatever a server lists.

use crate::challenge::BearerChallenge;
use crate::oauth::discovery::{AuthorizationServerMetadata, ProtectedResourceMetadata};

/// The scope that asks for a refresh token (OpenID Connect Core §11, SEP-2207).
const OFFLINE_ACCESS: &str = "offline_access";

/// The scopes to ask for: the challenge's, else the resource's `scopes_supported`, else
/// none; plus `previous` (step-up asks for the union); plus `offline_access` when the
/// authorization server lists it and anything is asked for at all (asking for nothing
/// leaves the choice to the server, and `offline_access` alone would narrow it).
pub(crate) fn select_scopes<'a>(
    challenge: Option<&BearerChallenge>,
    resource: Option<&ProtectedResourceMetadata>,
    metadata: &AuthorizationServerMetadata,
    previous: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut scopes = ScopeSet::default();
    previous.for_each(|scope| scopes.add(scope));
    let challenged: Vec<&str> = challenge.map(|c| c.scopes().collect()).unwrap_or_default();
    if !challenged.is_empty() {
        challenged.into_iter().for_each(|scope| scopes.add(scope));
    } else if let Some(supported) = resource.and_then(|r| r.scopes_supported.as_ref()) {
        supported.iter().for_each(|scope| scopes.add(scope));
    }
    let offline = metadata
        .scopes_supported
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| s == OFFLINE_ACCESS));
    if offline && !scopes.list.is_empty() {
        scopes.add(OFFLINE_ACCESS);
    }
    if scopes.dropped > 0 {
        tracing::warn!(
            dropped = scopes.dropped,
            "more scopes than an authorization request carries; the rest were left out"
        );
    }
    scopes.list
}

/// Scope selection over untrusted documents, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_scopes(
    resource: Option<&ProtectedResourceMetadata>,
    issuer: Option<&AuthorizationServerMetadata>,
) -> Vec<String> {
    let fallback = AuthorizationServerMetadata {
        issuer: String::new(),
        authorization_endpoint: None,
        token_endpoint: None,
        registration_endpoint: None,
        scopes_supported: Some(vec![OFFLINE_ACCESS.to_owned()]),
        grant_types_supported: None,
        code_challenge_methods_supported: None,
        token_endpoint_auth_methods_supported: None,
        client_id_metadata_document_supported: None,
        authorization_response_iss_parameter_supported: None,
        revocation_endpoint: None,
    };
    let previous = issuer
        .and_then(|i| i.scopes_supported.as_deref())
        .unwrap_or_default();
    select_scopes(
        None,
        resource,
        issuer.unwrap_or(&fallback),
        previous.iter().map(String::as_str),
    )
}

/// The most scopes one authorization request asks for.
const MAX_SCOPES: usize = 256;
/// The most bytes of scope one authorization request carries.
const MAX_SCOPE_BYTES: usize = 8 * 1024;

/// Scopes in first-seen order, de-duplicated through a set (linear, whatever a server
/// lists) and capped in number and total size: a hostile server listing 80,000 scopes
/// costs a bounded amount of work.
#[derive(Default)]
struct ScopeSet {
    list: Vec<String>,
    seen: std::collections::HashSet<String>,
    bytes: usize,
    dropped: usize,
}

impl ScopeSet {
    fn add(&mut self, scope: &str) {
        if scope.is_empty() || self.seen.contains(scope) {
            return;
        }
        let offline = scope == OFFLINE_ACCESS;
        // `offline_access` always fits: it is added last and only once.
        if !offline
            && (self.list.len() >= MAX_SCOPES || self.bytes + scope.len() + 1 > MAX_SCOPE_BYTES)
        {
            self.dropped += 1;
            return;
        }
        self.bytes += scope.len() + 1;
        self.seen.insert(scope.to_owned());
        self.list.push(scope.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(scopes: Option<&[&str]>) -> AuthorizationServerMetadata {
        serde_json::from_value(serde_json::json!({
            "issuer": "https://as.example",
            "scopes_supported": scopes,
        }))
        .unwrap()
    }

    fn resource(scopes: Option<&[&str]>) -> ProtectedResourceMetadata {
        serde_json::from_value(serde_json::json!({
            "resource": "https://mcp.example/mcp",
            "authorization_servers": ["https://as.example"],
            "scopes_supported": scopes,
        }))
        .unwrap()
    }

    fn challenge(header: &str) -> BearerChallenge {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::WWW_AUTHENTICATE, header.parse().unwrap());
        BearerChallenge::from_headers(&headers).unwrap()
    }

    #[test]
    fn the_challenge_wins_then_scopes_supported_then_nothing() {
        let prm = resource(Some(&["mcp:basic", "mcp:read"]));
        let none = metadata(None);
        let c = challenge(r#"Bearer scope="mcp:write""#);
        let empty = std::iter::empty();
        assert_eq!(
            select_scopes(Some(&c), Some(&prm), &none, empty),
            ["mcp:write"]
        );
        let bare = challenge("Bearer");
        assert_eq!(
            select_scopes(Some(&bare), Some(&prm), &none, std::iter::empty()),
            ["mcp:basic", "mcp:read"]
        );
        let undefined = resource(None);
        assert!(select_scopes(Some(&bare), Some(&undefined), &none, std::iter::empty()).is_empty());
    }

    #[test]
    fn step_up_asks_for_the_union() {
        let c = challenge(r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write""#);
        let previous = ["mcp:basic", "mcp:read"].into_iter();
        assert_eq!(
            select_scopes(Some(&c), None, &metadata(None), previous),
            ["mcp:basic", "mcp:read", "mcp:write"]
        );
    }

    #[test]
    fn a_hostile_scope_list_is_capped_and_linear() {
        let many: Vec<String> = (0..80_000).map(|i| format!("scope-{i}")).collect();
        let prm = ProtectedResourceMetadata {
            scopes_supported: Some(many),
            ..resource(None)
        };
        let scopes = select_scopes(None, Some(&prm), &metadata(None), std::iter::empty());
        assert_eq!(scopes.len(), MAX_SCOPES);
        assert!(scopes.iter().map(|s| s.len() + 1).sum::<usize>() <= MAX_SCOPE_BYTES);
    }

    #[test]
    fn offline_access_only_when_listed_and_something_is_asked() {
        let prm = resource(Some(&["mcp:basic"]));
        let listed = metadata(Some(&["mcp:basic", "offline_access"]));
        assert_eq!(
            select_scopes(None, Some(&prm), &listed, std::iter::empty()),
            ["mcp:basic", "offline_access"]
        );
        let unlisted = metadata(Some(&["mcp:basic"]));
        assert_eq!(
            select_scopes(None, Some(&prm), &unlisted, std::iter::empty()),
            ["mcp:basic"]
        );
        assert!(select_scopes(None, None, &listed, std::iter::empty()).is_empty());
    }
}
