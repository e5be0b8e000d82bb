//! The pages the start and callback endpoints show, replaceable.

use http::StatusCode;

/// What the start or callback endpoint tells the user. Texts come from an
/// [`CallbackPages`] implementation; the status code does not (it is the endpoint's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallbackPage<'a> {
    /// The sign-in completed: `app` is now connected to `server`.
    SignedIn {
        /// The app's name.
        app: &'a str,
        /// The MCP server connected (its host).
        server: &'a str,
    },
    /// A reloaded or replayed success: nothing to do.
    AlreadySignedIn {
        /// The app's name.
        app: &'a str,
    },
    /// The sign-in took longer than the flow lives; start again.
    Expired {
        /// The app's name.
        app: &'a str,
    },
    /// The authorization server answered an error instead of a code.
    Denied {
        /// The app's name.
        app: &'a str,
        /// The OAuth error code (`access_denied`, `invalid_scope`, `server_error`,
        /// `temporarily_unavailable`, ...).
        error: &'a str,
        /// The server's description, if any.
        description: Option<&'a str>,
    },
    /// The code could not be exchanged (or an earlier attempt of this sign-in failed).
    Failed {
        /// The app's name.
        app: &'a str,
    },
    /// The link is not valid in this browser: no binding cookie (opened elsewhere, or
    /// cookies blocked), or no such sign-in.
    InvalidLink {
        /// The app's name.
        app: &'a str,
    },
    /// The start link belongs to another user of the app than the one signed in here.
    NotYours {
        /// The app's name.
        app: &'a str,
    },
}

impl CallbackPage<'_> {
    /// The status the endpoint answers with this page.
    pub fn status(&self) -> StatusCode {
        match self {
            CallbackPage::SignedIn { .. } | CallbackPage::AlreadySignedIn { .. } => StatusCode::OK,
            CallbackPage::Expired { .. } => StatusCode::GONE,
            CallbackPage::Denied { error, .. } => match *error {
                "access_denied" => StatusCode::FORBIDDEN,
                "server_error" => StatusCode::BAD_GATEWAY,
                "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            },
            CallbackPage::Failed { .. } => StatusCode::BAD_GATEWAY,
            CallbackPage::InvalidLink { .. } => StatusCode::BAD_REQUEST,
            CallbackPage::NotYours { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// Renders the endpoints' pages as HTML. Replace it to match your app; escape what you
/// insert ([`escape_html`]): the error description comes from the authorization server.
///
/// ```
/// use tower_mcp_auth::{layer::callback::CallbackPage, layer::callback::CallbackPages, layer::callback::escape_html};
///
/// struct Plain;
///
/// impl CallbackPages for Plain {
///     fn render(&self, page: &CallbackPage<'_>) -> String {
///         match page {
///             CallbackPage::SignedIn { app, server } => {
///                 format!("<p>{} is connected to {}.</p>", escape_html(app), escape_html(server))
///             }
///             _ => "<p>Something went wrong; please try again.</p>".to_owned(),
///         }
///     }
/// }
/// assert!(Plain.render(&CallbackPage::SignedIn { app: "A&B", server: "mcp.example.com" }).contains("A&amp;B"));
/// ```
pub trait CallbackPages: Send + Sync + 'static {
    /// The HTML document for `page`.
    fn render(&self, page: &CallbackPage<'_>) -> String;
}

/// The built-in pages: short, plain HTML, every inserted value escaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPages;

impl CallbackPages for DefaultPages {
    fn render(&self, page: &CallbackPage<'_>) -> String {
        let (title, body) = match *page {
            CallbackPage::SignedIn { app, server } => (
                "Signed in".to_owned(),
                format!(
                    "<p><strong>{}</strong> is now connected to <strong>{}</strong>.</p><p>You can close this window.</p>",
                    escape_html(app),
                    escape_html(server)
                ),
            ),
            CallbackPage::AlreadySignedIn { app } => (
                "Already signed in".to_owned(),
                format!(
                    "<p>You are already signed in to {}. You can close this window.</p>",
                    escape_html(app)
                ),
            ),
            CallbackPage::Expired { app } => (
                "Sign-in expired".to_owned(),
                format!(
                    "<p>This sign-in link has expired. Start the sign-in again from {}.</p>",
                    escape_html(app)
                ),
            ),
            CallbackPage::Denied {
                app,
                error,
                description,
            } => {
                let (title, text) = match error {
                    "access_denied" => (
                        "Sign-in cancelled",
                        "Access was not granted. If that was not your intention, start the sign-in again",
                    ),
                    "invalid_scope" => (
                        "Sign-in refused",
                        "The server does not offer the access that was asked for. Contact the app's administrator, or start the sign-in again",
                    ),
                    "server_error" => (
                        "Sign-in failed",
                        "The sign-in server had an error. Try again in a moment",
                    ),
                    "temporarily_unavailable" => (
                        "Sign-in unavailable",
                        "The sign-in server is busy or down for maintenance. Try again later",
                    ),
                    _ => (
                        "Sign-in failed",
                        "The sign-in server refused the request. Start the sign-in again",
                    ),
                };
                let detail = description
                    .map(|d| format!("<p><small>{}</small></p>", escape_html(d)))
                    .unwrap_or_default();
                (
                    title.to_owned(),
                    format!(
                        "<p>{text} from {}.</p><p><small>Error: <code>{}</code></small></p>{detail}",
                        escape_html(app),
                        escape_html(error)
                    ),
                )
            }
            CallbackPage::Failed { app } => (
                "Sign-in failed".to_owned(),
                format!(
                    "<p>The sign-in could not be completed. Start it again from {}.</p>",
                    escape_html(app)
                ),
            ),
            CallbackPage::InvalidLink { app } => (
                "Link not valid here".to_owned(),
                format!(
                    "<p>This sign-in link is not valid in this browser. Start the sign-in again from {} in this browser.</p>",
                    escape_html(app)
                ),
            ),
            CallbackPage::NotYours { app } => (
                "Not your sign-in link".to_owned(),
                format!(
                    "<p>This sign-in link was made for another account. Sign in to {} and start the sign-in there.</p>",
                    escape_html(app)
                ),
            ),
        };
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}code{{background:#eee;padding:0 .2rem}}</style></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        )
    }
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
///
/// ```
/// assert_eq!(tower_mcp_auth::layer::callback::escape_html("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
/// ```
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
