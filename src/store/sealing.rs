//! Secrets at rest: AES-256-GCM sealing of tokens, client secrets and flow records
//! before they reach SQLite or Redis, with key ids so keys can rotate.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::StoreError;

/// The prefix of a sealed value: `sealed:v1:<key id>:<base64 nonce + ciphertext>`.
const PREFIX: &str = "sealed:v1:";

/// Keys that seal secrets at rest in a shared store (`SqliteStore`, `RedisStore`):
/// access and refresh tokens, and the flow and registration records (PKCE verifiers,
/// client secrets). Values are sealed with the current key and its id; any key given
/// with [`with_previous`](Self::with_previous) still opens older values, so keys rotate
/// without a migration. The field a value belongs to is bound in as associated data,
/// so sealed values cannot be swapped between fields.
///
/// ```
/// use tower_mcp_auth::store::SealingKeys;
///
/// let current = SealingKeys::new("2026-12", [7u8; 32]).with_previous("2026-06", [3u8; 32]);
/// assert!(!format!("{current:?}").contains("7, 7"), "keys never in Debug");
/// ```
#[derive(Clone)]
pub struct SealingKeys {
    current: Arc<(String, LessSafeKey)>,
    previous: Vec<Arc<(String, LessSafeKey)>>,
    random: SystemRandom,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKeys")
            .field("current", &self.current.0)
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|k| k.0.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn key(id: &str, bytes: [u8; 32]) -> Arc<(String, LessSafeKey)> {
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
        .unwrap_or_else(|_| unreachable!("AES-256 takes 32-byte keys"));
    // Ids are single tokens in the sealed format.
    let id = id.replace(':', "_");
    Arc::new((id, LessSafeKey::new(unbound)))
}

/// A sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SealError(String);

impl SealingKeys {
    /// Seals with `bytes` (32 random bytes from your secret store) under `id`.
    pub fn new(id: &str, bytes: [u8; 32]) -> Self {
        Self {
            current: key(id, bytes),
            previous: Vec::new(),
            random: SystemRandom::new(),
        }
    }

    /// Also opens values sealed under an older key.
    pub fn with_previous(mut self, id: &str, bytes: [u8; 32]) -> Self {
        self.previous.push(key(id, bytes));
        self
    }

    /// `plain` sealed for `field`.
    pub(crate) fn seal(&self, field: &str, plain: &[u8]) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::new(SealError("no randomness for a nonce".into())))?;
        let mut sealed = plain.to_vec();
        self.current
            .1
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::new(SealError("sealing failed".into())))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            self.current.0,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// The plain value of `stored` for `field`: opened if sealed, as it is if it was
    /// written before sealing was configured.
    pub(crate) fn open(&self, field: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(stored.to_vec());
        };
        let rest = std::str::from_utf8(rest)
            .map_err(|_| StoreError::new(SealError("malformed sealed value".into())))?;
        let (id, body) = rest
            .split_once(':')
            .ok_or_else(|| StoreError::new(SealError("malformed sealed value".into())))?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.0 == id)
            .ok_or_else(|| {
                StoreError::new(SealError(format!("sealed under unknown key id {id}")))
            })?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StoreError::new(SealError("malformed sealed value".into())))?;
        if raw.len() < NONCE_LEN {
            return Err(StoreError::new(SealError("malformed sealed value".into())));
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| StoreError::new(SealError("malformed nonce".into())))?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .1
            .open_in_place(nonce, Aad::from(field.as_bytes()), &mut buffer)
            .map_err(|_| {
                StoreError::new(SealError(format!(
                    "sealed value does not open under key {id} (wrong key or tampered)"
                )))
            })?;
        Ok(plain.to_vec())
    }
}

/// Sealing as a store applies it: with keys, seal; without, keep as it is.
pub(crate) fn seal_text(
    keys: Option<&SealingKeys>,
    field: &str,
    plain: &str,
) -> Result<String, StoreError> {
    match keys {
        Some(keys) => keys.seal(field, plain.as_bytes()),
        None => Ok(plain.to_owned()),
    }
}

pub(crate) fn open_text(
    keys: Option<&SealingKeys>,
    field: &str,
    stored: &str,
) -> Result<String, StoreError> {
    match keys {
        Some(keys) => String::from_utf8(keys.open(field, stored.as_bytes())?)
            .map_err(|_| StoreError::new(SealError("sealed value is not text".into()))),
        None if stored.starts_with(PREFIX) => Err(StoreError::new(SealError(
            "value is sealed but no sealing keys are configured".into(),
        ))),
        None => Ok(stored.to_owned()),
    }
}

pub(crate) fn seal_bytes(
    keys: Option<&SealingKeys>,
    field: &str,
    plain: &[u8],
) -> Result<Vec<u8>, StoreError> {
    match keys {
        Some(keys) => keys.seal(field, plain).map(String::into_bytes),
        None => Ok(plain.to_vec()),
    }
}

pub(crate) fn open_bytes(
    keys: Option<&SealingKeys>,
    field: &str,
    stored: &[u8],
) -> Result<Vec<u8>, StoreError> {
    match keys {
        Some(keys) => keys.open(field, stored),
        None if stored.starts_with(PREFIX.as_bytes()) => Err(StoreError::new(SealError(
            "value is sealed but no sealing keys are configured".into(),
        ))),
        None => Ok(stored.to_vec()),
    }
}

/// `tokens` with its access and refresh tokens sealed.
pub(crate) fn seal_token_set(
    keys: Option<&SealingKeys>,
    mut tokens: crate::token::TokenSet,
) -> Result<crate::token::TokenSet, StoreError> {
    use crate::token::Secret;
    if keys.is_none() {
        return Ok(tokens);
    }
    tokens.access_token = Secret::new(seal_text(
        keys,
        "access_token",
        tokens.access_token.expose(),
    )?);
    if let Some(refresh) = &tokens.refresh_token {
        tokens.refresh_token = Some(Secret::new(seal_text(
            keys,
            "refresh_token",
            refresh.expose(),
        )?));
    }
    Ok(tokens)
}

/// `tokens` as stored, opened.
pub(crate) fn open_token_set(
    keys: Option<&SealingKeys>,
    tokens: &crate::token::TokenSet,
) -> Result<crate::token::TokenSet, StoreError> {
    use crate::token::Secret;
    let mut opened = tokens.clone();
    opened.access_token = Secret::new(open_text(
        keys,
        "access_token",
        tokens.access_token.expose(),
    )?);
    if let Some(refresh) = &tokens.refresh_token {
        opened.refresh_token = Some(Secret::new(open_text(
            keys,
            "refresh_token",
            refresh.expose(),
        )?));
    }
    Ok(opened)
}

/// Logged once per store built without sealing keys.
pub(crate) fn warn_unsealed(store: &str) {
    tracing::warn!(
        store,
        "secrets (tokens, client secrets, PKCE verifiers) are stored unsealed; configure SealingKeys"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_refuse_tampering() {
        let old = SealingKeys::new("k1", [1; 32]);
        let sealed = old.seal("refresh_token", b"rt-123").unwrap();
        assert!(!sealed.contains("rt-123"));
        assert_eq!(
            old.open("refresh_token", sealed.as_bytes()).unwrap(),
            b"rt-123"
        );
        // Rotated: new values under k2, old ones still open.
        let rotated = SealingKeys::new("k2", [2; 32]).with_previous("k1", [1; 32]);
        assert_eq!(
            rotated.open("refresh_token", sealed.as_bytes()).unwrap(),
            b"rt-123"
        );
        assert!(
            rotated
                .seal("x", b"y")
                .unwrap()
                .starts_with("sealed:v1:k2:")
        );
        // Another field, another key, a flipped byte: refused.
        assert!(old.open("access_token", sealed.as_bytes()).is_err());
        assert!(
            SealingKeys::new("k1", [9; 32])
                .open("refresh_token", sealed.as_bytes())
                .is_err()
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(old.open("refresh_token", &tampered).is_err());
        // Values written before sealing was configured still read.
        assert_eq!(old.open("f", b"plain").unwrap(), b"plain");
        // A sealed value without keys is an error, not garbage.
        assert!(open_text(None, "f", &sealed).is_err());
    }
}
