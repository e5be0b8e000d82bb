//! rmcp's [`StreamableHttpClient`] for [`StackClient`]: POST, the GET stream and DELETE
//! through the stack, each answer mapped to what rmcp expects.

use super::*;

impl<S, ResBody> StreamableHttpClient for StackClient<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Error = StackError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<StackError>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<StackError>> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            limits,
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<StackError>> {
        let body = Bytes::from(serde_json::to_vec(&message)?);
        let session_attached = session_id.is_some();
        let mut request = self.request(
            Method::POST,
            &uri,
            session_id.as_deref(),
            auth_header,
            custom_headers,
            ReplayBody::from(body),
        )?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let response = self.send(request).await?;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if let Some(error) = auth_failure(status, &parts.headers) {
            return Err(error);
        }
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_attached {
            return Err(StreamableHttpError::SessionExpired);
        }
        let is_json = media_type_is(&parts.headers, JSON);
        let session = session_of(&parts.headers);
        let awaits_no_response = !matches!(message, ClientJsonRpcMessage::Request(_));
        if !status.is_success() {
            let mut status_error = status_error(status, &parts.headers);
            // A 5xx with a JSON body may carry a JSON-RPC error worth surfacing; a 429
            // and anything else is its status.
            if let Some(error) =
                status_error.take_if(|_| !is_json || status == StatusCode::TOO_MANY_REQUESTS)
            {
                return Err(error.into());
            }
            let auth = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            let text = if is_json && !auth {
                match read_bounded(body, limits.max_json_response_size).await {
                    Ok(bytes) => {
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        if let Ok(error @ ServerJsonRpcMessage::Error(_)) =
                            serde_json::from_str::<ServerJsonRpcMessage>(&text)
                        {
                            if let Some(response) =
                                discover_refusal(&message, session_attached, status, &text)
                            {
                                return Ok(response);
                            }
                            return Ok(StreamableHttpPostResponse::Json(error, session));
                        }
                        text.chars()
                            .take(limits.max_error_response_size)
                            .collect::<String>()
                    }
                    Err(error @ StreamableHttpError::ResponseBodyTooLarge { .. }) => {
                        return Err(status_error.map(Into::into).unwrap_or(error));
                    }
                    Err(_) => "<failed to read response body>".to_owned(),
                }
            } else {
                read_prefix(body, limits.max_error_response_size).await
            };
            if let Some(response) = discover_refusal(&message, session_attached, status, &text) {
                return Ok(response);
            }
            if let Some(error) = status_error {
                return Err(error.into());
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                format!("HTTP {status}: {text}"),
            )));
        }
        if awaits_no_response && body.size_hint().exact() == Some(0) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if media_type_is(&parts.headers, EVENT_STREAM) {
            let events = sse_events(body, limits.max_sse_event_size);
            return Ok(StreamableHttpPostResponse::Sse(events, session));
        }
        if is_json {
            let bytes = read_bounded(body, limits.max_json_response_size).await?;
            return match serde_json::from_slice::<ServerJsonRpcMessage>(&bytes) {
                Ok(message) => Ok(StreamableHttpPostResponse::Json(message, session)),
                Err(_) if awaits_no_response => Ok(StreamableHttpPostResponse::Accepted),
                Err(error) => Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                    format!(
                        "invalid JSON-RPC response: {error}; body starts with {:?}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(256)])
                    ),
                ))),
            };
        }
        if awaits_no_response {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        Err(StreamableHttpError::UnexpectedContentType(
            parts
                .headers
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        ))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<StackError>> {
        let request = self.request(
            Method::DELETE,
            &uri,
            Some(&session_id),
            auth_header,
            custom_headers,
            ReplayBody::empty(),
        )?;
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED || status.is_success() {
            if status == StatusCode::METHOD_NOT_ALLOWED {
                tracing::debug!("the server does not support deleting sessions");
            }
            return Ok(());
        }
        if let Some(error) = auth_failure(status, response.headers()) {
            return Err(error);
        }
        if let Some(error) = status_error(status, response.headers()) {
            return Err(error.into());
        }
        Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
            format!("HTTP {status} deleting the session"),
        )))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<StackError>> {
        self.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            DEFAULT_MAX_SSE_EVENT,
        )
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<StackError>> {
        let mut request = self.request(
            Method::GET,
            &uri,
            session_id.as_deref(),
            auth_header,
            custom_headers,
            ReplayBody::empty(),
        )?;
        let headers = request.headers_mut();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("text/event-stream, application/json"),
        );
        if let Some(id) = last_event_id {
            headers.insert(
                LAST_EVENT_ID,
                HeaderValue::from_str(&id).map_err(client_error)?,
            );
        }
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if let Some(error) = auth_failure(status, response.headers()) {
            return Err(error);
        }
        if let Some(error) = status_error(status, response.headers()) {
            return Err(error.into());
        }
        if status == StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        if !status.is_success() {
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                format!("HTTP {status} opening the event stream"),
            )));
        }
        if !media_type_is(response.headers(), EVENT_STREAM)
            && !media_type_is(response.headers(), JSON)
        {
            return Err(StreamableHttpError::UnexpectedContentType(
                response
                    .headers()
                    .get(CONTENT_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ));
        }
        Ok(sse_events(response.into_body(), max_sse_event_size))
    }
}
