//! "Connect first", in the protocol: the answer to a JSON-RPC request the gateway cannot
//! forward because the user has not signed in to the upstream yet.
//!
//! MCP 2025-11-25 gives servers an error for exactly this, `-32042`
//! (URLElicitationRequiredError): clients that declared URL elicitation in `initialize`
//! show the user the link, and retry once the user is done. Other clients get a
//! JSON-RPC error whose message holds the link, and for `tools/call` a tool result with
//! `isError` (which models read and relay to the user, where an error may be hidden).

use http::StatusCode;
use serde_json::{Value, json};

/// The error code of URLElicitationRequiredError (MCP 2025-11-25).
pub(crate) const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The error code for "authorization required" to clients without URL elicitation
/// (the implementation-defined server error range of JSON-RPC).
pub(crate) const AUTHORIZATION_REQUIRED: i64 = -32001;

/// What the gateway needs to know of a POSTed JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    /// The request id; `None` for notifications and responses.
    pub(crate) id: Option<Value>,
    /// The method, for requests and notifications.
    pub(crate) method: Option<String>,
    /// For `initialize`: whether the client declared URL-mode elicitation.
    pub(crate) declares_url_elicitation: bool,
}

impl Message {
    /// Reads a single JSON-RPC message; `None` for anything else (batches, not JSON).
    pub(crate) fn parse(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        let method = object.get("method")?.as_str().map(str::to_owned);
        let id = object.get("id").filter(|id| !id.is_null()).cloned();
        let declares_url_elicitation = method.as_deref() == Some("initialize")
            && object
                .get("params")
                .and_then(|p| p.get("capabilities"))
                .and_then(|c| c.get("elicitation"))
                .and_then(|e| e.get("url"))
                .is_some_and(Value::is_object);
        Some(Self {
            id,
            method,
            declares_url_elicitation,
        })
    }

    pub(crate) fn is_initialize(&self) -> bool {
        self.method.as_deref() == Some("initialize")
    }
}

/// The answer that sends the user to `url` to connect `upstream`: the status and the
/// JSON body.
pub(crate) fn answer(
    upstream: &str,
    url: &str,
    message: Option<&Message>,
    url_elicitation: bool,
    elicitation_id: &str,
) -> (StatusCode, Value) {
    let text = format!(
        "Connect your account for `{upstream}` first: open {url} and sign in, then try again."
    );
    let Some((id, method)) = message.and_then(|m| Some((m.id.clone()?, m.method.as_deref())))
    else {
        // A notification, a GET stream or something unreadable: nobody to answer in
        // JSON-RPC; the status says it and the body carries the link.
        return (
            StatusCode::FORBIDDEN,
            json!({"jsonrpc": "2.0", "id": null, "error": {
                "code": AUTHORIZATION_REQUIRED, "message": text, "data": {"url": url}}}),
        );
    };
    let body = if url_elicitation {
        json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": URL_ELICITATION_REQUIRED,
            "message": format!("This request needs your account for `{upstream}`."),
            "data": {"elicitations": [{
                "mode": "url",
                "elicitationId": elicitation_id,
                "url": url,
                "message": format!("Sign in to `{upstream}` to continue."),
            }]},
        }})
    } else if method == Some("tools/call") {
        json!({"jsonrpc": "2.0", "id": id, "result": {
            "content": [{"type": "text", "text": text}],
            "isError": true,
        }})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": AUTHORIZATION_REQUIRED, "message": text, "data": {"url": url}}})
    };
    (StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_methods_and_the_url_elicitation_capability() {
        let init = br#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"capabilities":{"elicitation":{"form":{},"url":{}}}}}"#;
        let message = Message::parse(init).unwrap();
        assert_eq!(message.id, Some(json!(7)));
        assert!(message.is_initialize() && message.declares_url_elicitation);
        let form_only = br#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"capabilities":{"elicitation":{}}}}"#;
        assert!(!Message::parse(form_only).unwrap().declares_url_elicitation);
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(Message::parse(note).unwrap().id, None);
        assert_eq!(Message::parse(b"[1,2]"), None);
        assert_eq!(Message::parse(b"not json"), None);
    }

    #[test]
    fn answers_in_the_form_the_client_understands() {
        let call = Message::parse(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{}}"#);
        let (status, body) = answer("docs", "https://gw/start?flow=x", call.as_ref(), true, "e1");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], 3);
        assert_eq!(body["error"]["code"], URL_ELICITATION_REQUIRED);
        assert_eq!(body["error"]["data"]["elicitations"][0]["mode"], "url");
        assert_eq!(
            body["error"]["data"]["elicitations"][0]["url"],
            "https://gw/start?flow=x"
        );
        let (_, body) = answer(
            "docs",
            "https://gw/start?flow=x",
            call.as_ref(),
            false,
            "e1",
        );
        assert_eq!(body["result"]["isError"], true);
        assert!(
            body["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("https://gw/start?flow=x")
        );
        let list = Message::parse(br#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#);
        let (_, body) = answer("docs", "https://gw/s", list.as_ref(), false, "e1");
        assert_eq!(body["error"]["code"], AUTHORIZATION_REQUIRED);
        assert_eq!(body["error"]["data"]["url"], "https://gw/s");
        let (status, body) = answer("docs", "https://gw/s", None, true, "e1");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body["id"].is_null());
    }
}
