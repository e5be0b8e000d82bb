//! A chaos soak: replicas as real OS processes share one store (Redis or SQLite) and
//! call an MCP server as one user with rotating, 5-second tokens, while their world
//! breaks around them:
//!
//! * every few seconds a random replica that is not redeeming is SIGKILLed and started
//!   again;
//! * every third redemption, its replica is killed midway (it holds the refresh lease),
//!   but never the one that takes over from a killed holder: each dead holder costs the
//!   others one lease TTL (2.5 s), and the bound on a call's time is per dead holder;
//! * the token endpoint answers a 500 or resets the connection (a TCP proxy in front of
//!   it drops a request's connection with a RST before the server reads it);
//! * Redis (append-only file, fsync on every write) is killed and restarted once.
//!
//! The authorization server is the crate's loopback fixture: refresh tokens rotate, and
//! presenting a rotated one again is reuse, which revokes the whole grant.
//!
//! It prints calls ok and failed by cause, redemptions at the server, `invalid_grant`
//! split into avoidable ones and those where the server redeemed a killed holder's
//! request it could no longer answer (no client can close that window without the
//! server's help: see `docs/security.md`), the longest any call took, and credentials
//! lost. It exits non-zero on an avoidable `invalid_grant`, a lost credential or a call
//! slower than the bound (3 s).
//!
//! ```text
//! cargo run --release --example chaos_soak -- --seconds 600 --replicas 4 --store redis
//! cargo run --release --example chaos_soak -- --seconds 600 --replicas 4 --store sqlite
//! ```
//!
//! (`chaos_soak worker …` is one replica; the soak starts them itself.)

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tower::{BoxError, ServiceExt};
use tower_mcp_auth::store::{CredentialStore, Swap};
use tower_mcp_auth::testing::{Fault, TestAuthServer, TestMcpServer};
use tower_mcp_auth::{AuthKey, Error, Principal, RefreshConfig, ServerBinding};

mod replica;

const CLIENT_ID: &str = "chaos-client";
/// The longest a call may take, a dead lease holder's takeover included.
const STALL_BOUND: Duration = Duration::from_secs(3);
const TOKEN_LIFETIME: Duration = Duration::from_secs(5);
/// The token endpoint's think time: a kill lands inside a redemption, not after it.
const TOKEN_LATENCY: Duration = Duration::from_millis(250);
const KILL_EVERY: Duration = Duration::from_secs(3);
/// How long after killing a lease holder no other holder is killed: the lease's TTL
/// (2.5 s) and a redemption.
const DEAD_HOLDER_GAP: Duration = Duration::from_secs(4);
const FAULT_EVERY: Duration = Duration::from_secs(4);
/// How often a worker reports its calls.
const TICK: Duration = Duration::from_millis(250);

fn principal() -> Principal {
    Principal::new("acme", "alice")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker(&args[1..]).await;
    }
    let mut options = Options {
        seconds: 60,
        replicas: 4,
        callers: 8,
        store: "redis".into(),
        events: None,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => options.seconds = value.parse()?,
            "--replicas" => options.replicas = value.parse()?,
            "--callers" => options.callers = value.parse()?,
            "--events" => options.events = Some(value.into()),
            "--store" if value == "redis" || value == "sqlite" => options.store = value.clone(),
            _ => {
                return Err(
                    "usage: chaos_soak [--seconds N] [--replicas R] [--callers C] [--store redis|sqlite] [--events FILE]"
                        .into(),
                );
            }
        }
    }
    let report = soak(&options).await?;
    println!("{report}");
    if let Some(path) = &options.events {
        let lines: String = report
            .events
            .iter()
            .map(|(at, what)| format!("{:.3} {what}\n", at.as_secs_f64()))
            .collect();
        std::fs::write(path, lines)?;
    }
    if report.passed() {
        Ok(())
    } else {
        Err("the chaos soak failed (see above)".into())
    }
}

struct Options {
    seconds: u64,
    replicas: usize,
    callers: usize,
    store: String,
    /// A file for every event of the run, one per line.
    events: Option<std::path::PathBuf>,
}

// ---------------------------------------------------------------- the soak (parent)

#[derive(Default)]
struct Report {
    label: String,
    ok: u64,
    failed: BTreeMap<String, u64>,
    longest_call: Duration,
    /// Calls slower than 1 s and than 2 s.
    over_1s: u64,
    over_2s: u64,
    redemptions: u64,
    invalid_grants: u64,
    reuse_detected: u64,
    avoidable: u64,
    redeemed_for_the_dead: u64,
    relogins: u64,
    kills: u64,
    holder_kills: u64,
    faults_5xx: u64,
    resets: u64,
    redis_restarts: u64,
    lost: u64,
    token_lifetimes: u64,
    /// What happened when (since the start): kills, faults, restarts, reuse.
    events: Vec<(Duration, String)>,
    /// When the slowest call ended.
    longest_call_at: Duration,
    started: Option<Instant>,
}

impl Report {
    fn event(&mut self, what: String) {
        let at = self.started.map(|s| s.elapsed()).unwrap_or_default();
        self.events.push((at, what));
    }
}

impl Report {
    fn passed(&self) -> bool {
        // Failures the faults explain (a revoked grant, a refresh that met a 500 or a
        // reset, Redis restarting) are reported; any other kind fails the soak.
        let unexplained = self
            .failed
            .keys()
            .any(|cause| !matches!(cause.as_str(), "reauth" | "transient" | "store"));
        self.ok > 0
            && !unexplained
            && self.avoidable == 0
            && self.lost == 0
            && self.longest_call <= STALL_BOUND
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: u64 = self.failed.values().sum();
        writeln!(f, "chaos soak: {}", self.label)?;
        writeln!(
            f,
            "  calls ok {}  failed {failed} {:?}",
            self.ok, self.failed
        )?;
        writeln!(
            f,
            "  redemptions at the server {} over {} token lifetimes; invalid_grant {} (reuse detected {}): avoidable {}, the server redeemed for a killed holder {}",
            self.redemptions,
            self.token_lifetimes,
            self.invalid_grants,
            self.reuse_detected,
            self.avoidable,
            self.redeemed_for_the_dead
        )?;
        writeln!(
            f,
            "  faults: {} replicas killed ({} while redeeming), {} token-endpoint 500s, {} resets, {} Redis restarts; {} sign-ins again after a revoked grant",
            self.kills,
            self.holder_kills,
            self.faults_5xx,
            self.resets,
            self.redis_restarts,
            self.relogins
        )?;
        writeln!(
            f,
            "  longest call {:.2} s (bound {} s); calls over 1 s {}, over 2 s {}; credentials lost {}",
            self.longest_call.as_secs_f64(),
            STALL_BOUND.as_secs(),
            self.over_1s,
            self.over_2s,
            self.lost
        )?;
        // What came before the slowest call: the cause of a stall, when there is one.
        let end = self.longest_call_at;
        let from = end.saturating_sub(self.longest_call + Duration::from_secs(3));
        writeln!(
            f,
            "  before the longest call (it ended at {:.2} s):",
            end.as_secs_f64()
        )?;
        for (at, what) in self
            .events
            .iter()
            .filter(|(at, _)| *at >= from && *at <= end)
        {
            writeln!(f, "    {:>8.2} s  {what}", at.as_secs_f64())?;
        }
        // What came before each reuse no death explains: its cause, when there is one.
        for (reuse_at, _) in self
            .events
            .iter()
            .filter(|(_, what)| what.starts_with(UNEXPLAINED_REUSE))
        {
            let from = reuse_at.saturating_sub(REUSE_WITHIN);
            writeln!(f, "  before the reuse at {:.2} s:", reuse_at.as_secs_f64())?;
            for (at, what) in self
                .events
                .iter()
                .filter(|(at, _)| *at >= from && at <= reuse_at)
            {
                writeln!(f, "    {:>8.2} s  {what}", at.as_secs_f64())?;
            }
        }
        write!(f, "  {}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

/// A `redis-server` with an append-only file fsynced on every write, in `dir`.
struct Redis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl Redis {
    async fn start(dir: std::path::PathBuf) -> Result<Self, BoxError> {
        let port = free_port();
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.restart().await?;
        Ok(redis)
    }

    async fn restart(&mut self) -> Result<(), BoxError> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server must be installed: {e}"))?;
        self.child = Some(child);
        for _ in 0..400 {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut pong = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut pong).await.is_ok()
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("redis-server did not start".into())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A TCP proxy in front of the authorization server that, while `resets` is above 0,
/// answers the next request's bytes with a RST instead of passing them on.
async fn reset_proxy(upstream: std::net::SocketAddr, resets: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let resets = resets.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
                loop {
                    tokio::select! {
                        read = client.read(&mut up) => {
                            let Ok(n @ 1..) = read else { return };
                            let reset = resets
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                .is_ok();
                            if reset {
                                let _ = client.set_zero_linger();
                                return;
                            }
                            if server.write_all(&up[..n]).await.is_err() {
                                return;
                            }
                        }
                        read = server.read(&mut down) => {
                            let Ok(n @ 1..) = read else { return };
                            if client.write_all(&down[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// One replica's process, and what it said.
struct Replica {
    child: tokio::process::Child,
    /// It reported a redemption and has not reported calls since.
    /// When it last reported a redemption's start, with the server's successful
    /// refreshes and the stored generation then (before the server could answer it).
    redeeming_since: Option<Instant>,
    redeeming_from: Option<(u64, u64)>,
}

impl Replica {
    /// Whether it may hold the refresh lease now (its redemption takes about
    /// `TOKEN_LATENCY`).
    fn may_hold_the_lease(&self) -> bool {
        self.redeeming_since
            .is_some_and(|since| since.elapsed() < TOKEN_LATENCY * 3)
    }
}

enum Line {
    Redeeming(usize),
    Tick(String),
}

async fn soak(options: &Options) -> Result<Report, BoxError> {
    let dir = std::env::temp_dir().join(format!("chaos-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let auth = TestAuthServer::start().await?;
    auth.set_rotation(true);
    auth.set_access_token_lifetime(TOKEN_LIFETIME);
    auth.set_latency(TOKEN_LATENCY);
    let mcp = TestMcpServer::start(&auth).await?;
    let resets = Arc::new(AtomicU64::new(0));
    let proxy = reset_proxy(auth.addr(), resets.clone()).await;
    let token_endpoint = auth
        .token_endpoint()
        .replace(&auth.addr().port().to_string(), &proxy.to_string());

    let mut redis = None;
    let store_arg = if options.store == "redis" {
        let server = Redis::start(dir.clone()).await?;
        let url = format!("redis://127.0.0.1:{}/0", server.port);
        redis = Some(server);
        url
    } else {
        dir.join("credentials.db").display().to_string()
    };
    let store = replica::shared_store(&store_arg)?;
    let binding = ServerBinding::public_client(&mcp.url(), &token_endpoint, CLIENT_ID)?;
    let key = AuthKey::new(&principal(), binding.id());
    let seeded = auth.issue(CLIENT_ID, "alice", Some("tools"));
    let mut generation = match store.compare_and_swap(&key, None, seeded).await? {
        Swap::Stored(stored) => stored.generation.0,
        Swap::Conflict(_) => return Err("a fresh store holds credentials".into()),
    };

    let (lines, mut heard) = mpsc::unbounded_channel();
    let spawn = |index: usize| -> Result<Replica, BoxError> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .args([&store_arg, &mcp.url(), &token_endpoint, CLIENT_ID])
            .arg(options.callers.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let line = match line.strip_prefix("tick") {
                    Some(tick) => Line::Tick(tick.to_owned()),
                    None if line == "redeeming" => Line::Redeeming(index),
                    None => continue,
                };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Replica {
            child,
            redeeming_since: None,
            redeeming_from: None,
        })
    };
    let mut replicas = (0..options.replicas)
        .map(spawn)
        .collect::<Result<Vec<_>, _>>()?;

    let mut report = Report {
        label: format!(
            "{} s, {} replicas x {} callers on {}",
            options.seconds, options.replicas, options.callers, options.store
        ),
        ..Report::default()
    };
    let started = Instant::now();
    report.started = Some(started);
    let until = started + Duration::from_secs(options.seconds);
    let mut next_kill = started + KILL_EVERY;
    let mut next_fault = started + FAULT_EVERY;
    let mut redis_restart_at =
        (options.store == "redis").then(|| started + Duration::from_secs(options.seconds) / 2);
    // Every third redemption a replica reports, its process is killed mid-way.
    let mut redemptions_heard = 0u64;
    let mut last_holder_kill: Option<Instant> = None;
    // Kills whose victim may have been answered: looked at until its answer is due.
    let mut ledger = Ledger::default();
    let mut monitor = tokio::time::interval(Duration::from_millis(50));
    let mut rng = rand::thread_rng();
    while Instant::now() < until {
        tokio::select! {
            Some(line) = heard.recv() => match line {
                Line::Redeeming(index) => {
                    replicas[index].redeeming_since = Some(Instant::now());
                    replicas[index].redeeming_from = load_generation(&store, &key)
                        .await
                        .map(|generation| (auth.stats().refresh_successes, generation));
                    redemptions_heard += 1;
                    report.event(format!("replica {index} redeeming"));
                    // Every third redemption is killed midway, but never the one that
                    // takes over from a killed holder: each dead holder costs the others
                    // one lease TTL, and the bound is per dead holder.
                    let takeover = last_holder_kill
                        .is_some_and(|at: Instant| at.elapsed() < DEAD_HOLDER_GAP);
                    if redemptions_heard.is_multiple_of(3) && !takeover {
                        // Somewhere inside its redemption: before the server answers
                        // (it thinks for TOKEN_LATENCY) or just after.
                        let delay = rng.gen_range(0..TOKEN_LATENCY.as_millis() as u64 + 50);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        report.holder_kills += 1;
                        last_holder_kill = Some(Instant::now());
                        kill(&mut replicas, index, &spawn, &mut ledger, &mut report).await?;
                    }
                }
                Line::Tick(tick) => {
                    let slowest = report.longest_call;
                    tally(&tick, &mut report);
                    if report.longest_call > slowest {
                        report.longest_call_at = started.elapsed();
                    }
                }
            },
            _ = monitor.tick() => {
                let now = Instant::now();
                if now >= next_kill {
                    next_kill = now + KILL_EVERY;
                    // A crash of a replica that is not redeeming (holders die above).
                    let bystanders: Vec<usize> = (0..replicas.len())
                        .filter(|i| !replicas[*i].may_hold_the_lease())
                        .collect();
                    if !bystanders.is_empty() {
                        let index = bystanders[rng.gen_range(0..bystanders.len())];
                        kill(&mut replicas, index, &spawn, &mut ledger, &mut report).await?;
                    }
                }
                if now >= next_fault {
                    next_fault = now + FAULT_EVERY;
                    if rng.gen_bool(0.5) {
                        auth.fail_next(Fault::ServerError, 1);
                        report.faults_5xx += 1;
                        report.event("the token endpoint's next answer: 500".into());
                    } else {
                        resets.fetch_add(1, Ordering::SeqCst);
                        report.resets += 1;
                        report.event("the token endpoint's next request: reset".into());
                    }
                }
                if let (Some(at), Some(server)) = (redis_restart_at, redis.as_mut())
                    && now >= at
                {
                    redis_restart_at = None;
                    report.event("Redis killed".into());
                    server.kill().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    server.restart().await?;
                    report.redis_restarts += 1;
                    report.event("Redis back".into());
                }
                ledger.settle(&auth, &store, &key, &mut report).await?;
                match store.load(&key).await {
                    Ok(Some(tokens)) if tokens.generation.0 >= generation => {
                        generation = tokens.generation.0;
                    }
                    Ok(Some(tokens)) => {
                        eprintln!("generation went back: {generation} -> {}", tokens.generation.0);
                        report.lost += 1;
                        generation = tokens.generation.0;
                    }
                    Ok(None) => {
                        eprintln!("the store lost the credentials");
                        report.lost += 1;
                    }
                    Err(error) if error.wiped().is_some() => {
                        eprintln!("the store was wiped: {error}");
                        report.lost += 1;
                    }
                    // Unreachable for a moment (Redis restarting): nothing lost.
                    Err(_) => {}
                }
            }
        }
    }
    for replica in &mut replicas {
        let _ = replica.child.kill().await;
    }
    // A reuse answered after the last look is classified too, and a death's answer
    // still due is looked for.
    tokio::time::sleep(ANSWERED_WITHIN).await;
    ledger.settle(&auth, &store, &key, &mut report).await?;
    let stats = auth.stats();
    report.invalid_grants = stats.invalid_grants;
    // Every `invalid_grant` that is not a reuse presented a dead token: avoidable.
    report.avoidable += stats.invalid_grants.saturating_sub(stats.reuse_detected);
    report.redemptions = stats.refresh_requests;
    report.token_lifetimes = started.elapsed().as_secs() / TOKEN_LIFETIME.as_secs();
    if let Some(mut server) = redis {
        server.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// SIGKILLs replica `index` and starts it again; remembers what the server had
/// answered, to tell later whether it redeemed for the dead process.
async fn kill(
    replicas: &mut [Replica],
    index: usize,
    spawn: &impl Fn(usize) -> Result<Replica, BoxError>,
    ledger: &mut Ledger,
    report: &mut Report,
) -> Result<(), BoxError> {
    // Counted from the redemption's start: the server may answer it just before the
    // kill, while the holder has not stored the answer yet.
    let redeeming = replicas[index].may_hold_the_lease();
    let from = replicas[index].redeeming_from;
    let _ = replicas[index].child.kill().await;
    report.kills += 1;
    report.event(format!(
        "replica {index} killed{}",
        if redeeming { " while redeeming" } else { "" }
    ));
    if redeeming && let Some((successes, generation)) = from {
        ledger
            .to_check
            .push((Instant::now(), successes, generation));
    }
    replicas[index] = spawn(index)?;
    Ok(())
}

/// Which `invalid_grant`s a killed holder explains.
#[derive(Default)]
struct Ledger {
    /// Kills of a redeeming replica, not yet checked: when, the server's successful
    /// refreshes then, and the generation stored then.
    to_check: Vec<(Instant, u64, u64)>,
    /// Generations the server redeemed for a killed holder that never stored the
    /// answer, and when: the next redemption of that generation is reuse.
    redeemed_for_the_dead: Vec<(Instant, u64)>,
    reuse_seen: u64,
}

/// How long after a holder's death the reuse it causes may come: the lease's TTL, a
/// redemption and some slack.
const REUSE_WITHIN: Duration = Duration::from_secs(6);

/// The event of a refresh token reuse that no killed holder explains.
const UNEXPLAINED_REUSE: &str = "refresh token reuse no killed holder explains";

/// How long after a holder's death the server's answer to it is looked for. Nobody else
/// can redeem before the dead holder's lease expires (its TTL, 2.5 s, less the 0.5 s
/// since its last renewal at most), so a success the server counts by then is the dead
/// holder's. Looked for until then, not at one instant: on a loaded machine the server
/// may answer well after its 250 ms.
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);

impl Ledger {
    async fn settle(
        &mut self,
        auth: &TestAuthServer,
        store: &Arc<dyn CredentialStore>,
        key: &AuthKey,
        report: &mut Report,
    ) -> Result<(), BoxError> {
        // A killed holder's redemption that the server carried out while the store kept
        // the generation the holder was redeeming: the rotated token died with it.
        for (at, successes, generation) in std::mem::take(&mut self.to_check) {
            let answered = auth.stats().refresh_successes > successes;
            if !answered {
                if at.elapsed() < ANSWERED_WITHIN {
                    self.to_check.push((at, successes, generation));
                }
                continue;
            }
            let stored = load_generation(store, key).await;
            let dead = self
                .redeemed_for_the_dead
                .iter()
                .any(|(_, g)| *g == generation);
            if stored == Some(generation) && !dead {
                self.redeemed_for_the_dead.push((at, generation));
            }
        }
        self.redeemed_for_the_dead
            .retain(|(at, _)| at.elapsed() < REUSE_WITHIN);
        let reuse = auth.stats().reuse_detected;
        if reuse == self.reuse_seen {
            return Ok(());
        }
        for _ in self.reuse_seen..reuse {
            report.reuse_detected += 1;
            // Explained by the oldest recent death that has not explained one yet.
            if self.redeemed_for_the_dead.is_empty() {
                report.avoidable += 1;
                report.event(UNEXPLAINED_REUSE.into());
            } else {
                self.redeemed_for_the_dead.remove(0);
                report.redeemed_for_the_dead += 1;
            }
        }
        self.reuse_seen = reuse;
        // The grant is revoked: the user signs in again.
        report.event("refresh token reuse: the grant is revoked".into());
        sign_in_again(auth, store, key).await?;
        report.relogins += 1;
        report.event("signed in again".into());
        Ok(())
    }
}

async fn load_generation(store: &Arc<dyn CredentialStore>, key: &AuthKey) -> Option<u64> {
    store
        .load(key)
        .await
        .ok()
        .flatten()
        .map(|tokens| tokens.generation.0)
}

/// A new grant for the user, written over whatever the store holds.
async fn sign_in_again(
    auth: &TestAuthServer,
    store: &Arc<dyn CredentialStore>,
    key: &AuthKey,
) -> Result<(), BoxError> {
    // The store may be unreachable for a moment (Redis restarting): tried for 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let current = store.load(key).await?.map(|tokens| tokens.generation);
            let tokens = auth.issue(CLIENT_ID, "alice", Some("tools"));
            store.compare_and_swap(key, current, tokens).await
        };
        match attempt.await {
            Ok(Swap::Stored(_)) => return Ok(()),
            Ok(Swap::Conflict(_)) => {}
            Err(error) if Instant::now() > deadline => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Adds a worker's `tick` line (`ok=N max_ms=M oldest_ms=O <cause>=N …`) to the report.
fn tally(tick: &str, report: &mut Report) {
    for field in tick.split_whitespace() {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match name {
            "ok" => report.ok += value,
            // A call that ended, or one still waiting (its process may die before it
            // ends): either way a caller waited this long.
            "max_ms" | "oldest_ms" => {
                report.longest_call = report.longest_call.max(Duration::from_millis(value));
            }
            "over_1s" => report.over_1s += value,
            "over_2s" => report.over_2s += value,
            cause => *report.failed.entry(cause.to_owned()).or_default() += value,
        }
    }
}

// ---------------------------------------------------------------- one replica (worker)

/// `worker <store> <mcp url> <token endpoint> <client id> <callers>`: calls forever,
/// printing `tick ok=N max_ms=M oldest_ms=O <cause>=N …` every [`TICK`] and `redeeming` when its
/// coordinator starts a redemption.
async fn worker(args: &[String]) -> Result<(), BoxError> {
    let [store, mcp, token_endpoint, client_id, callers] = args else {
        return Err(
            "usage: chaos_soak worker <store> <mcp url> <token endpoint> <client id> <callers>"
                .into(),
        );
    };
    let callers: usize = callers.parse()?;
    let binding = ServerBinding::public_client(mcp, token_endpoint, client_id.clone())?;
    let (client, coordinator) = replica::replica_client(
        replica::shared_store(store)?,
        binding,
        callers,
        RefreshConfig::default(),
    )?;
    let tally = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    // Each caller's call in flight: when it began (ms since `epoch`, 0 for none). A call
    // still waiting when this process is killed is seen by the ticks before.
    let epoch = Instant::now();
    let in_flight: Arc<Vec<AtomicU64>> =
        Arc::new((0..callers).map(|_| AtomicU64::new(0)).collect());
    for caller in 0..callers {
        let (client, mcp, tally) = (client.clone(), mcp.clone(), tally.clone());
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            loop {
                let mut request = tower_mcp_auth::testing::jsonrpc_request(
                    &mcp,
                    1,
                    "tools/call",
                    json!({"name": "whoami", "arguments": {}}),
                );
                request.extensions_mut().insert(principal());
                let started = Instant::now();
                let since_epoch = started.duration_since(epoch).as_millis() as u64;
                in_flight[caller].store(since_epoch.max(1), Ordering::Relaxed);
                let outcome = match client.clone().oneshot(request).await {
                    Ok(response) if response.status().is_success() => "ok".to_owned(),
                    Ok(response) => format!("http_{}", response.status().as_u16()),
                    Err(error) => match Error::find(error.as_ref()) {
                        Some(Error::ReauthRequired { .. }) => "reauth".into(),
                        Some(Error::Transient { .. }) => "transient".into(),
                        Some(Error::Store(_)) => "store".into(),
                        _ => "other".into(),
                    },
                };
                let took = started.elapsed().as_millis() as u64;
                in_flight[caller].store(0, Ordering::Relaxed);
                {
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    *tally.entry(outcome).or_default() += 1;
                    let max = tally.entry("max_ms".into()).or_default();
                    *max = (*max).max(took);
                    for (over, name) in [(1000, "over_1s"), (2000, "over_2s")] {
                        if took > over {
                            *tally.entry(name.into()).or_default() += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let mut redemptions = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    let mut last_tick = Instant::now();
    loop {
        ticks.tick().await;
        let now = coordinator.stats().redemptions;
        let mut out = String::new();
        if now > redemptions {
            redemptions = now;
            out.push_str("redeeming\n");
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let taken = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
            out.push_str("tick");
            for (name, value) in taken {
                out.push_str(&format!(" {name}={value}"));
            }
            let now = epoch.elapsed().as_millis() as u64;
            let oldest = in_flight
                .iter()
                .map(|began| began.load(Ordering::Relaxed))
                .filter(|began| *began > 0)
                .map(|began| now.saturating_sub(began))
                .max()
                .unwrap_or(0);
            out.push_str(&format!(" oldest_ms={oldest}"));
            out.push('\n');
        }
        if !out.is_empty() {
            let mut stdout = tokio::io::stdout();
            stdout.write_all(out.as_bytes()).await?;
            stdout.flush().await?;
        }
    }
}
