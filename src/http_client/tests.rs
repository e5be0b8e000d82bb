use super::*;

#[test]
fn retry_after_parses_delta_seconds_and_http_dates() {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    // A date in the past means "now".
    headers.insert(
        http::header::RETRY_AFTER,
        "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
    );
    assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
    );
    assert_eq!(
        parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
        Some(std::time::UNIX_EPOCH)
    );
    // A date 90 s ahead.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(90);
    let secs = ahead
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let formatted = format_http_date(days, rem);
    headers.insert(http::header::RETRY_AFTER, formatted.parse().unwrap());
    let wait = retry_after(&headers).unwrap();
    assert!(
        wait > Duration::from_secs(85) && wait <= Duration::from_secs(90),
        "{wait:?}"
    );
    for bad in [
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Nov -994 08:49:37 GMT",
        "soon",
        "-5",
    ] {
        headers.insert(http::header::RETRY_AFTER, bad.parse().unwrap());
        assert_eq!(retry_after(&headers), None, "{bad}");
    }
}

/// IMF-fixdate of `days` since the epoch plus `rem` seconds (test helper; the
/// inverse of the civil-from-days algorithm).
fn format_http_date(days: u64, rem: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    format!(
        "{weekday}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        months[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test]
async fn oversized_and_failing_responses_are_typed() {
    let big = AuthHttpClient::from_service(tower::service_fn(|_| async {
        Ok::<_, BoxError>(http::Response::new(Bytes::from(vec![b'x'; 2048])))
    }))
    .with_max_response_bytes(1024);
    let request = || http::Request::new(Bytes::new());
    assert!(matches!(
        big.send(request()).await,
        Err(HttpError::TooLarge(1024))
    ));

    let busy = AuthHttpClient::from_service(tower::service_fn(|_| async {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        Ok::<_, BoxError>(response)
    }));
    match busy.send(request()).await {
        Err(HttpError::Status {
            status,
            retry_after,
        }) => {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn hung_server_times_out() {
    let hung = AuthHttpClient::from_service(tower::service_fn(|_| async {
        std::future::pending::<Result<http::Response<Bytes>, BoxError>>().await
    }))
    .with_timeout(Duration::from_secs(2));
    assert!(matches!(
        hung.send(http::Request::new(Bytes::new())).await,
        Err(HttpError::Timeout(_))
    ));
}
