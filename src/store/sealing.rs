//! Secrets at rest: AES-256-GCM sealing of tokens, client secrets and flow records
//! before they reach SQLite or Redis, with key ids so keys can rotate.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::fault::StoreError;

/// The prefix of a sealed value: `sealed:v2:<key id>:<base64 nonce + ciphertext>`,
/// its associated data the field and the record's identity.
const PREFIX: &str = "sealed:v2:";
/// The first format, whose associated data was the field name alone: opened only by
/// the one-time migration ([`SealingKeys::reseal`]), never by a store.
const PREFIX_V1: &str = "sealed:v1:";

/// The longest key id.
const MAX_KEY_ID: usize = 64;

/// The record a sealed value belongs to, bound in as associated data: a value copied
/// into another record (another user's row, another field) does not open there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealContext<'a> {
    /// What the value is (`access_token`, `refresh_token`, or a record's name).
    pub(crate) field: &'a str,
    /// Whose it is: tenant, subject and binding id for credentials; empty for named
    /// records (their name is their identity).
    pub(crate) identity: &'a [&'a [u8]],
}

impl SealContext<'_> {
    fn associated_data(&self) -> [u8; 32] {
        crate::crypto::sha256_fields(
            [
                b"tower-mcp-auth sealed v2".as_slice(),
                self.field.as_bytes(),
            ]
            .into_iter()
            .chain(self.identity.iter().copied()),
        )
    }
}

/// A sealing key id that is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sealing key id `{0}` must be 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`")]
pub struct InvalidKeyId(String);

/// Keys that seal secrets at rest in a shared store (`SqliteStore`, `RedisStore`):
/// access and refresh tokens, and the flow and registration records (PKCE verifiers,
/// client secrets). Values are sealed with the current key and its id; any key given
/// with [`with_previous`](Self::with_previous) still opens older values, so keys rotate
/// without a migration. The field a value belongs to and the record's identity (tenant,
/// subject and binding of a credential; a record's name) are bound in as associated
/// data, so a sealed value copied into another user's row or another field does not
/// open. A store with keys refuses values that are not sealed: seal what an older
/// version or an unsealed store wrote with the store's `seal_existing` once.
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

fn key(id: &str, bytes: [u8; 32]) -> Result<Arc<(String, LessSafeKey)>, InvalidKeyId> {
    // Ids are single tokens in the sealed format, taken as they are: no two ids alike.
    let valid = !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(InvalidKeyId(id.to_owned()));
    }
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
        .unwrap_or_else(|_| unreachable!("AES-256 takes 32-byte keys"));
    Ok(Arc::new((id.to_owned(), LessSafeKey::new(unbound))))
}

/// A sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SealError(String);

impl SealingKeys {
    /// Seals with `bytes` (32 random bytes from your secret store) under `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`; see
    /// [`try_new`](Self::try_new) for ids from configuration.
    pub fn new(id: &str, bytes: [u8; 32]) -> Self {
        Self::try_new(id, bytes).unwrap_or_else(|error| panic!("{error}"))
    }

    /// As [`new`](Self::new), an invalid id an error.
    ///
    /// ```
    /// use tower_mcp_auth::store::SealingKeys;
    ///
    /// assert!(SealingKeys::try_new("2026-12", [7u8; 32]).is_ok());
    /// assert!(SealingKeys::try_new("a:b", [7u8; 32]).is_err());
    /// ```
    pub fn try_new(id: &str, bytes: [u8; 32]) -> Result<Self, InvalidKeyId> {
        Ok(Self {
            current: key(id, bytes)?,
            previous: Vec::new(),
            random: SystemRandom::new(),
        })
    }

    /// Also opens values sealed under an older key.
    ///
    /// # Panics
    ///
    /// As [`new`](Self::new); see [`try_with_previous`](Self::try_with_previous).
    pub fn with_previous(self, id: &str, bytes: [u8; 32]) -> Self {
        self.try_with_previous(id, bytes)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// As [`with_previous`](Self::with_previous), an invalid id an error.
    pub fn try_with_previous(mut self, id: &str, bytes: [u8; 32]) -> Result<Self, InvalidKeyId> {
        self.previous.push(key(id, bytes)?);
        Ok(self)
    }

    /// The id values are sealed under.
    pub fn current_id(&self) -> &str {
        &self.current.0
    }

    /// `plain` sealed for `context`.
    pub(crate) fn seal(
        &self,
        context: SealContext<'_>,
        plain: &[u8],
    ) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::new(SealError("no randomness for a nonce".into())))?;
        let mut sealed = plain.to_vec();
        self.current
            .1
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.associated_data()),
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

    /// The plain value of `stored`, sealed for `context`. Anything else is refused: a
    /// value in the clear (written before sealing, or planted) and one of the first
    /// format alike, until [`reseal`](Self::reseal) has run over the store.
    pub(crate) fn open(
        &self,
        context: SealContext<'_>,
        stored: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Err(StoreError::new(SealError(
                "a value in the store is not sealed (written before sealing was configured, or by an older version): run the store's one-time `seal_existing` (mcp-auth-proxy: `seal-store`)".into(),
            )));
        };
        self.open_body(rest, &context.associated_data())
    }

    fn open_body(&self, rest: &[u8], associated_data: &[u8]) -> Result<Vec<u8>, StoreError> {
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
            .open_in_place(nonce, Aad::from(associated_data), &mut buffer)
            .map_err(|_| {
                StoreError::new(SealError(format!(
                    "sealed value does not open under key {id} for this record (wrong key, tampered, or copied from another record)"
                )))
            })?;
        Ok(plain.to_vec())
    }

    /// The migration of one stored value: `Some(sealed)` for a value in the clear or
    /// in the first format (opened with its field alone as associated data), `None`
    /// for one already sealed in the current format.
    pub(crate) fn reseal(
        &self,
        context: SealContext<'_>,
        stored: &[u8],
    ) -> Result<Option<String>, StoreError> {
        if stored.starts_with(PREFIX.as_bytes()) {
            return Ok(None);
        }
        let plain = match stored.strip_prefix(PREFIX_V1.as_bytes()) {
            Some(rest) => self.open_body(rest, context.field.as_bytes())?,
            None => stored.to_vec(),
        };
        self.seal(context, &plain).map(Some)
    }
}

/// Sealing as a store applies it to a named record: with keys, seal; without, keep.
pub(crate) fn seal_bytes(
    keys: Option<&SealingKeys>,
    name: &str,
    plain: &[u8],
) -> Result<Vec<u8>, StoreError> {
    match keys {
        Some(keys) => keys
            .seal(
                SealContext {
                    field: name,
                    identity: &[],
                },
                plain,
            )
            .map(String::into_bytes),
        None => Ok(plain.to_vec()),
    }
}

/// A named record as stored, opened.
pub(crate) fn open_bytes(
    keys: Option<&SealingKeys>,
    name: &str,
    stored: &[u8],
) -> Result<Vec<u8>, StoreError> {
    match keys {
        Some(keys) => keys.open(
            SealContext {
                field: name,
                identity: &[],
            },
            stored,
        ),
        None if is_sealed(stored) => Err(sealed_without_keys()),
        None => Ok(stored.to_vec()),
    }
}

fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(PREFIX.as_bytes()) || stored.starts_with(PREFIX_V1.as_bytes())
}

/// `seal_existing` on a store built without keys.
pub(crate) fn no_keys() -> StoreError {
    StoreError::new(SealError(
        "sealing existing values needs sealing keys: build the store with them".into(),
    ))
}

fn sealed_without_keys() -> StoreError {
    StoreError::new(SealError(
        "value is sealed but no sealing keys are configured".into(),
    ))
}

fn seal_text(
    keys: &SealingKeys,
    field: &str,
    identity: &[&[u8]],
    plain: &str,
) -> Result<String, StoreError> {
    keys.seal(SealContext { field, identity }, plain.as_bytes())
}

fn open_text(
    keys: Option<&SealingKeys>,
    field: &str,
    identity: &[&[u8]],
    stored: &str,
) -> Result<String, StoreError> {
    match keys {
        Some(keys) => {
            String::from_utf8(keys.open(SealContext { field, identity }, stored.as_bytes())?)
                .map_err(|_| StoreError::new(SealError("sealed value is not text".into())))
        }
        None if is_sealed(stored.as_bytes()) => Err(sealed_without_keys()),
        None => Ok(stored.to_owned()),
    }
}

/// `tokens` of `key` with its access and refresh tokens sealed.
pub(crate) fn seal_token_set(
    keys: Option<&SealingKeys>,
    key: &crate::key::AuthKey,
    mut tokens: crate::token::TokenSet,
) -> Result<crate::token::TokenSet, StoreError> {
    use crate::token::Secret;
    let Some(keys) = keys else {
        return Ok(tokens);
    };
    let binding = key.binding();
    let identity = [
        key.principal().tenant().as_bytes(),
        key.principal().subject().as_bytes(),
        binding.as_bytes(),
    ];
    tokens.access_token = Secret::new(seal_text(
        keys,
        "access_token",
        &identity,
        tokens.access_token.expose(),
    )?);
    if let Some(refresh) = &tokens.refresh_token {
        tokens.refresh_token = Some(Secret::new(seal_text(
            keys,
            "refresh_token",
            &identity,
            refresh.expose(),
        )?));
    }
    Ok(tokens)
}

/// `tokens` of `key` as stored, opened.
pub(crate) fn open_token_set(
    keys: Option<&SealingKeys>,
    key: &crate::key::AuthKey,
    tokens: &crate::token::TokenSet,
) -> Result<crate::token::TokenSet, StoreError> {
    use crate::token::Secret;
    let binding = key.binding();
    let identity = [
        key.principal().tenant().as_bytes(),
        key.principal().subject().as_bytes(),
        binding.as_bytes(),
    ];
    let mut opened = tokens.clone();
    opened.access_token = Secret::new(open_text(
        keys,
        "access_token",
        &identity,
        tokens.access_token.expose(),
    )?);
    if let Some(refresh) = &tokens.refresh_token {
        opened.refresh_token = Some(Secret::new(open_text(
            keys,
            "refresh_token",
            &identity,
            refresh.expose(),
        )?));
    }
    Ok(opened)
}

/// What a store's `seal_existing` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Credentials (token sets) whose tokens were sealed now.
    pub credentials: u64,
    /// Records (flows, registrations) sealed now.
    pub records: u64,
    /// Values already sealed in the current format, left as they were.
    pub already_sealed: u64,
}

/// Logged once per store built without sealing keys.
pub(crate) fn warn_unsealed(store: &str) {
    tracing::warn!(
        store,
        "secrets (tokens, client secrets, PKCE verifiers) are stored unsealed; configure SealingKeys"
    );
}

#[cfg(test)]
mod tests;
