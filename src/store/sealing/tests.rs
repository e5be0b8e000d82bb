use super::*;

const ALICE: SealContext<'static> = SealContext {
    field: "refresh_token",
    identity: &[b"acme", b"alice", &[1; 32]],
};
const BOB: SealContext<'static> = SealContext {
    field: "refresh_token",
    identity: &[b"acme", b"bob", &[1; 32]],
};

#[test]
fn seal_open_rotate_and_refuse_tampering() {
    let old = SealingKeys::new("k1", [1; 32]);
    let sealed = old.seal(ALICE, b"rt-123").unwrap();
    assert!(!sealed.contains("rt-123"));
    assert_eq!(old.open(ALICE, sealed.as_bytes()).unwrap(), b"rt-123");
    // Rotated: new values under k2, old ones still open.
    let rotated = SealingKeys::new("k2", [2; 32]).with_previous("k1", [1; 32]);
    assert_eq!(rotated.open(ALICE, sealed.as_bytes()).unwrap(), b"rt-123");
    assert!(
        rotated
            .seal(ALICE, b"y")
            .unwrap()
            .starts_with("sealed:v2:k2:")
    );
    // Another field, another user, another key, a flipped byte: refused.
    let access = SealContext {
        field: "access_token",
        ..ALICE
    };
    assert!(old.open(access, sealed.as_bytes()).is_err());
    assert!(
        old.open(BOB, sealed.as_bytes()).is_err(),
        "Alice's value in Bob's row"
    );
    assert!(
        SealingKeys::new("k1", [9; 32])
            .open(ALICE, sealed.as_bytes())
            .is_err()
    );
    let mut tampered = sealed.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert!(old.open(ALICE, &tampered).is_err());
    // With keys, a value in the clear is refused, not served.
    assert!(old.open(ALICE, b"planted-in-the-clear").is_err());
    // A sealed value without keys is an error, not garbage.
    assert!(open_text(None, "refresh_token", ALICE.identity, &sealed).is_err());
}

#[test]
fn key_ids_are_unambiguous() {
    assert!(SealingKeys::try_new("a:b", [1; 32]).is_err());
    assert!(SealingKeys::try_new("", [1; 32]).is_err());
    assert!(SealingKeys::try_new(&"x".repeat(65), [1; 32]).is_err());
    assert!(SealingKeys::try_new("a_b", [1; 32]).is_ok());
    let keys = SealingKeys::new("2026-12.a", [1; 32]);
    assert!(keys.try_with_previous("bad id", [2; 32]).is_err());
}

#[test]
fn reseal_migrates_clear_and_first_format_values_once() {
    let keys = SealingKeys::new("k1", [1; 32]);
    // The first format: the field alone as associated data.
    let mut v1 = b"rt-old".to_vec();
    let nonce = [3u8; NONCE_LEN];
    keys.current
        .1
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(b"refresh_token"),
            &mut v1,
        )
        .unwrap();
    let mut body = nonce.to_vec();
    body.extend_from_slice(&v1);
    let v1 = format!("{PREFIX_V1}k1:{}", URL_SAFE_NO_PAD.encode(body));
    for (stored, plain) in [
        (v1.as_bytes(), b"rt-old".as_slice()),
        (b"rt-clear", b"rt-clear"),
    ] {
        let sealed = keys.reseal(ALICE, stored).unwrap().expect("migrated");
        assert_eq!(keys.open(ALICE, sealed.as_bytes()).unwrap(), plain);
        assert_eq!(keys.reseal(ALICE, sealed.as_bytes()).unwrap(), None, "once");
    }
}
