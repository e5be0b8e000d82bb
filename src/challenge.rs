//! `WWW-Authenticate` parsing: RFC 9110 §11.2 challenges, the RFC 6750 §3 Bearer
//! parameters and RFC 9728 §5.1 `resource_metadata`.
//!
//! A field may hold several challenges and a response several fields; parameter values
//! are tokens or quoted strings with backslash escapes; scheme and parameter names are
//! case-insensitive. Malformed input never panics: the parser keeps what it could read
//! and skips to the next comma, so the worst case is a bare challenge.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// One authentication challenge.
///
/// ```
/// use tower_mcp_auth::oauth::Challenge;
///
/// let challenges = Challenge::parse_all(r#"Basic realm="x", Bearer error="invalid_token", scope="a b""#);
/// assert_eq!(challenges.len(), 2);
/// assert_eq!(challenges[1].scheme(), "Bearer");
/// assert_eq!(challenges[1].param("SCOPE"), Some("a b"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
    token68: Option<String>,
}

impl Challenge {
    /// The auth scheme as sent.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// A parameter's value by name (case-insensitive); the first if repeated.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All parameters, names lower-cased, in order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The token68 form's value, if the challenge used it.
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }

    /// Every challenge in one field value.
    pub fn parse_all(field: &str) -> Vec<Challenge> {
        let mut challenges = Vec::new();
        Parser::new(field).challenges(&mut challenges);
        challenges
    }

    /// Every challenge in every `WWW-Authenticate` field of `headers` (fields that are
    /// not UTF-8 are skipped).
    pub fn from_headers(headers: &HeaderMap) -> Vec<Challenge> {
        let mut challenges = Vec::new();
        for value in headers.get_all(WWW_AUTHENTICATE) {
            if let Ok(field) = value.to_str() {
                Parser::new(field).challenges(&mut challenges);
            }
        }
        challenges
    }
}

/// The Bearer challenge of a response (RFC 6750 §3), with the MCP-relevant parameters.
///
/// ```
/// use tower_mcp_auth::oauth::BearerChallenge;
///
/// let mut headers = http::HeaderMap::new();
/// headers.append("www-authenticate", r#"Basic realm="legacy""#.parse().unwrap());
/// headers.append(
///     "www-authenticate",
///     r#"Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource""#
///         .parse()
///         .unwrap(),
/// );
/// let bearer = BearerChallenge::from_headers(&headers).unwrap();
/// assert_eq!(bearer.error.as_deref(), Some("insufficient_scope"));
/// assert_eq!(bearer.scopes().collect::<Vec<_>>(), ["files:read", "files:write"]);
/// assert!(bearer.resource_metadata.unwrap().ends_with("oauth-protected-resource"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BearerChallenge {
    /// `realm`.
    pub realm: Option<String>,
    /// `error` (`invalid_token`, `insufficient_scope`, ...).
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// `scope`, space separated.
    pub scope: Option<String>,
    /// `resource_metadata` (RFC 9728 §5.1): where the protected resource metadata is.
    pub resource_metadata: Option<String>,
}

impl BearerChallenge {
    /// The first Bearer challenge among `headers`' `WWW-Authenticate` fields.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        Challenge::from_headers(headers)
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
            .map(Self::from_challenge)
    }

    fn from_challenge(challenge: &Challenge) -> Self {
        let get = |name: &str| challenge.param(name).map(str::to_owned);
        Self {
            realm: get("realm"),
            error: get("error"),
            error_description: get("error_description"),
            scope: get("scope"),
            resource_metadata: get("resource_metadata"),
        }
    }

    /// The scopes of `scope`.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.iter().flat_map(|s| s.split_ascii_whitespace())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            s: text.as_bytes(),
            text,
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.text[start..self.i])
    }

    fn quoted(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let mut value = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => {
                    let escaped = self.peek()?;
                    self.i += 1;
                    value.push(escaped);
                }
                _ => value.push(b),
            }
        }
        None
    }

    /// At `token BWS "=" BWS (token / quoted-string)`: a parameter, not a new challenge
    /// nor a token68 with `=` padding?
    fn at_param(&mut self) -> bool {
        let start = self.i;
        let found = self.token().is_some() && {
            self.ows();
            self.peek() == Some(b'=') && {
                self.i += 1;
                self.ows();
                self.peek().is_some_and(|b| b == b'"' || is_tchar(b))
            }
        };
        self.i = start;
        found
    }

    /// Skips past the next top-level comma (quoted strings respected).
    fn skip_element(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => {
                    self.i += 1;
                    return;
                }
                b'"' => {
                    if self.quoted().is_none() {
                        self.i = self.s.len();
                    }
                }
                _ => self.i += 1,
            }
        }
    }

    fn challenges(&mut self, out: &mut Vec<Challenge>) {
        loop {
            while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
                self.i += 1;
            }
            if self.peek().is_none() {
                return;
            }
            let Some(scheme) = self.token() else {
                self.skip_element();
                continue;
            };
            let mut challenge = Challenge {
                scheme: scheme.to_owned(),
                params: Vec::new(),
                token68: None,
            };
            self.ows();
            self.rest_of_challenge(&mut challenge);
            out.push(challenge);
        }
    }

    /// Reads a token68 or `#auth-param` after the scheme, leaving the cursor at the next
    /// challenge (or the end).
    fn rest_of_challenge(&mut self, challenge: &mut Challenge) {
        if !self.at_param() {
            let start = self.i;
            while self.peek().is_some_and(is_token68_char) {
                self.i += 1;
            }
            if self.i > start {
                while self.peek() == Some(b'=') {
                    self.i += 1;
                }
                challenge.token68 = Some(self.text[start..self.i].to_owned());
                self.ows();
                if !matches!(self.peek(), None | Some(b',')) {
                    self.skip_element();
                }
            }
            return;
        }
        loop {
            if !self.at_param() {
                return;
            }
            let name = self.token().unwrap_or_default().to_ascii_lowercase();
            self.ows();
            self.i += 1; // the '=' `at_param` saw
            self.ows();
            let value = match self.peek() {
                Some(b'"') => self.quoted(),
                _ => self.token().map(str::to_owned),
            };
            match value {
                Some(value) => challenge.params.push((name, value)),
                None => {
                    self.skip_element();
                    continue;
                }
            }
            self.ows();
            match self.peek() {
                None => return,
                Some(b',') => {
                    // Empty list elements are allowed; then a parameter or a new challenge.
                    while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
                        self.i += 1;
                    }
                }
                Some(_) => self.skip_element(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn rfc_examples() {
        let parsed = Challenge::parse_all(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
        );
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].scheme(), "Newauth");
        assert_eq!(parsed[0].param("type"), Some("1"));
        assert_eq!(parsed[0].param("title"), Some(r#"Login to "apps""#));
        assert_eq!(parsed[1].param("realm"), Some("simple"));

        let bearer = Challenge::parse_all(
            r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        );
        assert_eq!(
            bearer[0].param("error_description"),
            Some("The access token expired")
        );

        let token68 = Challenge::parse_all("Negotiate YIIBzgYGKwYBBQUCoIIBwjCCAb6g==, Bearer");
        assert_eq!(token68[0].token68(), Some("YIIBzgYGKwYBBQUCoIIBwjCCAb6g=="));
        assert_eq!(token68[1].scheme(), "Bearer");
        assert!(token68[1].params().is_empty());
    }

    #[test]
    fn case_whitespace_and_empty_elements() {
        let parsed = Challenge::parse_all(" ,  bearer   ERROR = invalid_token ,, Scope=\"a\" ,");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].param("error"), Some("invalid_token"));
        assert_eq!(parsed[0].param("scope"), Some("a"));
    }

    #[test]
    fn malformed_input_yields_what_could_be_read() {
        for input in [
            "Bearer error=\"unterminated",
            "Bearer =x, Basic",
            "\"quoted\" scheme",
            "Bearer error=, scope=\"s\"",
            "Bearer a b c d",
            "Bearer error=\"x\\",
            "===",
            "Bearer realm=\"x\" junk, Basic realm=\"y\"",
        ] {
            let parsed = Challenge::parse_all(input);
            assert!(parsed.len() <= 3, "{input}: {parsed:?}");
        }
        let recovered = Challenge::parse_all("Bearer realm=\"x\" junk, Basic realm=\"y\"");
        assert_eq!(recovered.last().map(Challenge::scheme), Some("Basic"));
        let bare = Challenge::parse_all("Bearer error=\"unterminated");
        assert_eq!((bare[0].scheme(), bare[0].params().len()), ("Bearer", 0));
    }

    fn random_token(rng: &mut StdRng) -> String {
        const CHARS: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
        (0..rng.gen_range(1..8))
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect()
    }

    fn random_value(rng: &mut StdRng) -> String {
        const CHARS: &[u8] = b"ab ,=\"\\;:/xyz09";
        (0..rng.gen_range(0..10))
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect()
    }

    fn quote(value: &str) -> String {
        let escaped: String = value
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }

    #[test]
    fn property_serialized_challenges_parse_back() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for _ in 0..5_000 {
            let expected: Vec<Challenge> = (0..rng.gen_range(1..4))
                .map(|_| Challenge {
                    scheme: random_token(&mut rng),
                    params: (0..rng.gen_range(0..4))
                        .map(|_| {
                            (
                                random_token(&mut rng).to_ascii_lowercase(),
                                random_value(&mut rng),
                            )
                        })
                        .collect(),
                    token68: None,
                })
                .collect();
            let sep = |rng: &mut StdRng| [" ", "", "  ", "\t"][rng.gen_range(0..4)].to_owned();
            let field = expected
                .iter()
                .map(|c| {
                    let params: Vec<String> = c
                        .params
                        .iter()
                        .map(|(n, v)| {
                            let value =
                                match v.bytes().all(is_tchar) && !v.is_empty() && rng.gen_bool(0.5)
                                {
                                    true => v.clone(),
                                    false => quote(v),
                                };
                            format!("{n}{}={}{value}", sep(&mut rng), sep(&mut rng))
                        })
                        .collect();
                    format!(
                        "{} {}",
                        c.scheme,
                        params.join(&format!(",{}", sep(&mut rng)))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            assert_eq!(Challenge::parse_all(&field), expected, "{field}");
        }
    }

    #[test]
    fn property_random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        const ALPHABET: &[u8] = b"Bearer realm=\"\\, \t=abc_-~+/;";
        for _ in 0..50_000 {
            let input: String = (0..rng.gen_range(0..40))
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect();
            let parsed = Challenge::parse_all(&input);
            assert!(parsed.len() <= input.len());
        }
    }
}
