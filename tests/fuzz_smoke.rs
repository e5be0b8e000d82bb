//! A deterministic smoke run of the fuzz targets (`fuzz/`, `tower_mcp_auth::fuzzing`):
//! a fixed seed, a bounded number of inputs per target (and a time bound), mutations of
//! realistic inputs with the hostile values the security review used (huge and negative
//! numbers, dot segments, embedded IPv4, unbalanced quotes). No input may panic.
//!
//! Coverage-guided fuzzing runs with `cargo fuzz run <target>` in `fuzz/` (nightly).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tower_mcp_auth::fuzzing::TARGETS;

/// Inputs per target, and the time any one target may take (whichever comes first).
const INPUTS: usize = 20_000;
const TIME_PER_TARGET: Duration = Duration::from_secs(8);

/// splitmix64: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const HOSTILE: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "-1",
    "-9223372036854775809",
    "1e309",
    "0.5",
    "NaN",
    "null",
    "\"\"",
    "[]",
    "{}",
    "..",
    "%2e%2e",
    "%2F",
    "\\",
    "@",
    ":99999",
    ":",
    "[::ffff:127.0.0.1]",
    "[64:ff9b::a9fe:a9fe]",
    "0.0.0.0",
    "\"",
    ",",
    "=",
    ";",
    "\u{0}",
    "\u{ff}",
    "é",
    "\n",
    " ",
];

fn seeds(target: &str) -> Vec<String> {
    let huge = "18446744073709551615";
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    match target {
        "www_authenticate" => owned(&[
            r#"Bearer realm="mcp", error="insufficient_scope", scope="a b c", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource""#,
            r#"Basic realm="x", Bearer error="invalid_token", error_description="expired""#,
            "Bearer",
            "Negotiate abc==, Bearer scope=\"\\\"quoted\\\"\"",
        ]),
        "callback" => owned(&[
            "code=abc&state=xyz&iss=https%3A%2F%2Fauth.example.com\ntower_mcp_auth_flow=abc.def; other=é",
            "error=access_denied&state=s\n",
            "state=&code=\nname=value; tower_mcp_auth_flow=",
        ]),
        "url_policy" => owned(&[
            "https://mcp.example.com/mcp/../admin",
            "https://mcp.example.com:443/mcp/x",
            "http://127.0.0.1:8080/mcp",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2001:0:a9fe:a9fe::1]/",
            "https://user@mcp.example.com/mcp",
            "169.254.169.254",
            "::ffff:10.0.0.1",
        ]),
        "metadata" => vec![
            r#"{"resource":"https://mcp.example.com/mcp","authorization_servers":["https://as.example"],"scopes_supported":["a","b","a"]}"#.into(),
            r#"{"issuer":"https://as.example","authorization_endpoint":"https://as.example/a","token_endpoint":"https://as.example/t","code_challenge_methods_supported":["S256"],"scopes_supported":["offline_access","x"],"authorization_response_iss_parameter_supported":true}"#.into(),
            format!(
                r#"{{"resource":"https://mcp.example.com","authorization_servers":[],"scopes_supported":[{}]}}"#,
                (0..2_000).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>().join(",")
            ),
        ],
        "registration_response" => owned(&[
            r#"{"client_id":"abc","client_secret":"s","token_endpoint_auth_method":"client_secret_basic"}"#,
            r#"{"client_id":"abc","token_endpoint_auth_method":"client_secret_post"}"#,
            r#"{"client_id":"abc"}"#,
        ]),
        "token_response" => vec![
            format!(r#"{{"access_token":"a","token_type":"bearer","expires_in":{huge},"refresh_token":"r","scope":"x y"}}"#),
            r#"{"access_token":"a","token_type":"Bearer","expires_in":3600}"#.into(),
            r#"{"access_token":"a","token_type":"N_A","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#.into(),
            "120".into(),
            "Wed, 21 Oct 2015 07:28:00 GMT".into(),
        ],
        "assertion" => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            [huge, "9223372036854775808", "-1", "1e300", "2000000000", "\"x\""]
                .iter()
                .map(|exp| format!("eyJhbGciOiJub25lIn0.{}.sig", b64.encode(format!(r#"{{"sub":"a","exp":{exp}}}"#))))
                .collect()
        }
        other => panic!("no seeds for {other}"),
    }
}

fn mutate(rng: &mut Rng, seeds: &[String]) -> Vec<u8> {
    let seed = seeds[rng.below(seeds.len())].as_bytes();
    let mut data = seed.to_vec();
    match rng.below(6) {
        0 => (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
        1 => {
            for _ in 0..=rng.below(8) {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            data
        }
        2 | 3 => {
            // A hostile token at a random place, replacing a random run.
            let token = HOSTILE[rng.below(HOSTILE.len())].as_bytes();
            let at = rng.below(data.len() + 1);
            let cut = (at + rng.below(12)).min(data.len());
            data.splice(at..cut, token.iter().copied());
            data
        }
        4 => {
            data.truncate(rng.below(data.len() + 1));
            data
        }
        _ => {
            let other = seeds[rng.below(seeds.len())].as_bytes();
            let at = rng.below(data.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&other[rng.below(other.len() + 1)..]);
            data
        }
    }
}

#[test]
fn no_fuzz_target_panics_on_the_smoke_corpus() {
    // Panics are caught and reported below; keep the default hook from printing each.
    std::panic::set_hook(Box::new(|_| {}));
    let mut summary = Vec::new();
    for (index, (name, target)) in TARGETS.iter().enumerate() {
        let seeds = seeds(name);
        let mut rng = Rng(0x5eed_0000 + index as u64);
        let started = Instant::now();
        let mut inputs = 0;
        let mut panics = Vec::new();
        let exact = seeds.iter().map(|s| s.as_bytes().to_vec());
        let mutated = std::iter::from_fn(|| Some(mutate(&mut rng, &seeds)));
        for data in exact.chain(mutated).take(INPUTS) {
            if started.elapsed() > TIME_PER_TARGET {
                break;
            }
            inputs += 1;
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                panics.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
        summary.push((name, inputs, panics));
    }
    let _ = std::panic::take_hook();
    for (name, inputs, panics) in &summary {
        println!(
            "fuzz smoke: {name}: {inputs} inputs, {} panics",
            panics.len()
        );
    }
    let failures: Vec<_> = summary
        .iter()
        .filter(|(_, _, panics)| !panics.is_empty())
        .map(|(name, _, panics)| format!("{name}: {:?}", &panics[..panics.len().min(3)]))
        .collect();
    assert!(failures.is_empty(), "panicking inputs: {failures:#?}");
    assert!(
        summary.iter().all(|(_, inputs, _)| *inputs >= 1_000),
        "every target ran at least 1,000 inputs: {:?}",
        summary.iter().map(|(n, i, _)| (n, i)).collect::<Vec<_>>()
    );
}
