//! The bridge's command line: what to reach, how to sign in, and secrets taken from the
//! environment, never from the command line.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, header};

use tower_mcp_auth::Secret;

/// How long a request waits for the user to sign in.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

/// How the sign-in link reaches the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Browser {
    /// The system browser (`xdg-open`, `open`).
    System,
    /// A program given the link as its last argument.
    Command(Vec<String>),
    /// Printed to stderr only.
    Print,
}

/// A client registered beforehand (`--client-id`), used instead of dynamic registration.
#[derive(Debug, Clone)]
pub struct BridgeClient {
    /// The client id.
    pub client_id: String,
    /// The client secret (read from the variable `--client-secret-env` names); `None`
    /// for a public client.
    pub client_secret: Option<Secret>,
    /// The authorization server the client belongs to (`--issuer`, required with a
    /// secret: the secret goes to no other); `None` (a public client only): the one
    /// the server's protected resource metadata names, looked up at start and pinned
    /// in the store on first use. As written on the command line: issuers compare
    /// exactly.
    pub issuer: Option<String>,
}

/// What `mcp-auth-proxy stdio` was asked to do.
///
/// Secrets never appear on the command line: `--client-secret-env` names a variable,
/// and `${NAME}` in a `--header` value is replaced by the variable `NAME`.
///
/// ```
/// use mcp_auth_proxy::bridge::{BridgeOptions, Browser};
///
/// let env = |name: &str| (name == "EXAMPLE_API_KEY").then(|| "k3y".to_owned());
/// let options = BridgeOptions::parse_with_env(&[
///     "https://mcp.example.com/mcp".into(),
///     "--no-browser".into(),
///     "--scope".into(),
///     "files:read files:write".into(),
///     "--header".into(),
///     "X-Api-Key: ${EXAMPLE_API_KEY}".into(),
/// ], env)
/// .unwrap();
/// assert_eq!(options.browser, Browser::Print);
/// assert_eq!(options.scopes, ["files:read", "files:write"]);
/// assert_eq!(options.headers[0].1, "k3y");
/// assert!(!format!("{options:?}").contains("k3y"), "header values stay out of Debug");
/// ```
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The remote MCP endpoint.
    pub server: url::Url,
    /// The SQLite file shared by every copy of the bridge for this user.
    pub store: PathBuf,
    /// How the sign-in link reaches the user.
    pub browser: Browser,
    /// Lets the server and its authorization server be plain `http` on loopback
    /// (development and tests).
    pub allow_loopback_http: bool,
    /// Scopes requested besides those the server asks for (`--scope`, repeatable).
    pub scopes: Vec<String>,
    /// A pre-registered client (`--client-id`).
    pub client: Option<BridgeClient>,
    /// Headers sent with every request (`--header`), values marked sensitive. With an
    /// `Authorization` header among them the bridge does no OAuth.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long a request waits for the user to sign in (`--sign-in-timeout SECONDS`,
    /// default 300).
    pub sign_in_timeout: Duration,
}

impl BridgeOptions {
    /// Parses `<server-url> [--store PATH] [--browser-command 'CMD ARGS'] [--no-browser]
    /// [--scope SCOPES]... [--client-id ID [--client-secret-env VAR] [--issuer URL]]
    /// [--header 'Name: value']... [--sign-in-timeout SECONDS] [--allow-loopback-http]`,
    /// reading secrets from the process environment.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        Self::parse_with_env(args, |name| std::env::var(name).ok())
    }

    /// [`parse`](Self::parse) with variables looked up by `env`.
    pub fn parse_with_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut server = None;
        let mut store = None;
        let mut browser = Browser::System;
        let mut allow_loopback_http = false;
        let mut scopes = Vec::new();
        let mut client_id = None;
        let mut secret_variable = None;
        let mut issuer = None;
        let mut headers = Vec::new();
        let mut sign_in_timeout = SIGN_IN_TIMEOUT;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |what: &str| {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs {what}"))
            };
            match arg.as_str() {
                "--store" => store = Some(PathBuf::from(value("a path")?)),
                "--browser-command" => {
                    let words = command_words(&value("a command")?)?;
                    if words.is_empty() {
                        return Err("--browser-command is empty".into());
                    }
                    browser = Browser::Command(words);
                }
                "--no-browser" => browser = Browser::Print,
                "--allow-loopback-http" => allow_loopback_http = true,
                "--scope" => scopes.extend(value("scopes")?.split_whitespace().map(str::to_owned)),
                "--client-id" => client_id = Some(value("a client id")?),
                "--client-secret-env" => secret_variable = Some(value("a variable name")?),
                "--issuer" => {
                    // Kept as written: issuers compare exactly (RFC 8414 §3.3), and a
                    // parsed URL would gain a trailing slash.
                    let text = value("a URL")?;
                    http_url(&text)?;
                    issuer = Some(text);
                }
                "--header" => headers.push(header_arg(&value("'Name: value'")?, &env)?),
                "--sign-in-timeout" => {
                    let seconds = value("seconds")?;
                    sign_in_timeout = seconds
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            format!("--sign-in-timeout: `{seconds}` is not 1..3600 seconds")
                        })?;
                }
                other if other.starts_with("--") => return Err(format!("unknown option {other}")),
                url => server = Some(http_url(url)?),
            }
        }
        if client_id.is_some() && secret_variable.is_some() && issuer.is_none() {
            // Without it the secret would go to whatever authorization server the MCP
            // server names, a hostile server's own included.
            return Err("--client-secret-env needs --issuer: the client secret is sent only to the authorization server you name".into());
        }
        let client = match (client_id, secret_variable, issuer) {
            (Some(client_id), variable, issuer) => Some(BridgeClient {
                client_id,
                client_secret: match variable {
                    None => None,
                    Some(name) => Some(Secret::new(
                        env(&name).filter(|v| !v.is_empty()).ok_or_else(|| {
                            format!("--client-secret-env: the variable {name} is not set")
                        })?,
                    )),
                },
                issuer,
            }),
            (None, None, None) => None,
            (None, _, _) => {
                return Err("--client-secret-env and --issuer go with --client-id".into());
            }
        };
        Ok(Self {
            server: server.ok_or("the server URL is missing")?,
            store: store.unwrap_or_else(default_store),
            browser,
            allow_loopback_http,
            scopes,
            client,
            headers,
            sign_in_timeout,
        })
    }

    /// Whether an `Authorization` header was given: the bridge then does no OAuth.
    pub(super) fn static_authorization(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name == header::AUTHORIZATION)
    }
}

fn http_url(text: &str) -> Result<url::Url, String> {
    url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| format!("`{text}` is not an http(s) URL"))
}

/// `Name: value`, with each `${VAR}` in the value replaced by that variable.
fn header_arg(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(HeaderName, HeaderValue), String> {
    let (name, template) = text
        .split_once(':')
        .ok_or_else(|| format!("--header `{text}`: expected `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("--header: `{}` is not a header name", name.trim()))?;
    let mut value = String::new();
    let mut rest = template.trim();
    while let Some(at) = rest.find("${") {
        value.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| format!("--header {name}: unclosed `${{`"))?;
        let variable = &rest[at + 2..at + end];
        value.push_str(
            &env(variable)
                .ok_or_else(|| format!("--header {name}: the variable {variable} is not set"))?,
        );
        rest = &rest[at + end + 1..];
    }
    value.push_str(rest);
    // The value comes from the environment: it never reaches an error message.
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| format!("--header {name}: the value is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// `$XDG_DATA_HOME/mcp-auth-proxy/credentials.db` (or `~/.local/share/...`; on macOS
/// `~/Library/Application Support/...`): one file per user, whatever the version.
fn default_store() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let base = if cfg!(target_os = "macos") {
        home.join("Library/Application Support")
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local/share"))
    };
    base.join("mcp-auth-proxy").join("credentials.db")
}

/// Splits a command line into words as a POSIX shell does for quoting (no expansion):
/// `'single'` quotes keep everything, `"double"` quotes keep all but `\"` and `\\`,
/// a backslash outside quotes keeps the next character. `open -a 'Google Chrome'` is
/// three words; a path with spaces can be quoted.
fn command_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let quoted = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => quoted.push(c),
                        None => return Err("--browser-command has an unclosed ' quote".into()),
                    }
                }
            }
            '"' => {
                let quoted = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => quoted.push(c),
                            Some(c) => quoted.extend(['\\', c]),
                            None => return Err("--browser-command has an unclosed \" quote".into()),
                        },
                        Some(c) => quoted.push(c),
                        None => return Err("--browser-command has an unclosed \" quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("--browser-command ends with a lone backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BridgeOptions, String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        BridgeOptions::parse_with_env(&args, |name| {
            (name == "SECRET").then(|| "s3cr3t-value".to_owned())
        })
    }

    #[test]
    fn options_read_secrets_from_the_environment_and_keep_them_out_of_debug() {
        let options = parse(&[
            "https://mcp.example.com/mcp",
            "--client-id",
            "desktop",
            "--client-secret-env",
            "SECRET",
            "--issuer",
            "https://as.example.com",
            "--header",
            "Authorization: Bearer ${SECRET}",
            "--sign-in-timeout",
            "30",
        ])
        .unwrap();
        let client = options.client.as_ref().unwrap();
        assert_eq!(client.client_id, "desktop");
        assert_eq!(
            client.client_secret.as_ref().unwrap().expose(),
            "s3cr3t-value"
        );
        assert_eq!(options.headers[0].1, "Bearer s3cr3t-value");
        assert!(options.static_authorization());
        assert_eq!(options.sign_in_timeout, Duration::from_secs(30));
        assert!(!format!("{options:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_options_are_refused_with_what_is_wrong() {
        let url = "https://mcp.example.com/mcp";
        for (args, expected) in [
            (
                vec![url, "--header", "X-Key: ${MISSING}"],
                "MISSING is not set",
            ),
            (vec![url, "--header", "no colon"], "expected `Name: value`"),
            (vec![url, "--header", "X-Key: ${OPEN"], "unclosed"),
            (
                vec![url, "--client-secret-env", "SECRET"],
                "go with --client-id",
            ),
            (
                vec![
                    url,
                    "--client-id",
                    "x",
                    "--client-secret-env",
                    "NOPE",
                    "--issuer",
                    "https://as.example.com",
                ],
                "NOPE is not set",
            ),
            (
                vec![url, "--client-id", "x", "--client-secret-env", "SECRET"],
                "--client-secret-env needs --issuer",
            ),
            (vec![url, "--sign-in-timeout", "0"], "not 1..3600"),
            (vec![url, "--issuer", "ftp://x"], "not an http(s) URL"),
            (vec![url, "--scope"], "--scope needs scopes"),
            (vec!["--no-browser"], "server URL is missing"),
            (vec![url, "--frobnicate"], "unknown option"),
        ] {
            let error = parse(&args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn browser_commands_split_like_a_shell_without_expansion() {
        let words = |line: &str| command_words(line).unwrap();
        assert_eq!(words("xdg-open"), ["xdg-open"]);
        assert_eq!(
            words("  open  -a 'Google Chrome' "),
            ["open", "-a", "Google Chrome"]
        );
        assert_eq!(
            words(r#""/opt/My Browser/bin" --new-window"#),
            ["/opt/My Browser/bin", "--new-window"]
        );
        assert_eq!(words(r"/opt/My\ Browser/bin"), ["/opt/My Browser/bin"]);
        assert_eq!(words(r#"say "a \"b\" \c" ''"#), ["say", r#"a "b" \c"#, ""]);
        assert_eq!(words("no$HOME~"), ["no$HOME~"], "nothing is expanded");
        assert!(words("").is_empty());
        for unclosed in ["open 'x", "open \"x", "open x\\"] {
            assert!(command_words(unclosed).is_err(), "{unclosed}");
        }
        let options = parse(&[
            "https://mcp.example.com/mcp",
            "--browser-command",
            "open -a 'Google Chrome'",
        ])
        .unwrap();
        assert!(
            matches!(&options.browser, Browser::Command(words) if words == &["open", "-a", "Google Chrome"])
        );
        assert!(
            parse(&[
                "https://mcp.example.com/mcp",
                "--browser-command",
                "open 'x"
            ])
            .is_err()
        );
    }
}
