//! [`SharedRecords`](crate::store::SharedRecords) on Redis: flows and registrations beside
//! the credentials, under the same prefix.

use super::*;

impl crate::store::SharedRecords for RedisStore {
    fn get_record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let stored: Option<Vec<u8>> = connection
                .get(format!("{}record:{name}", self.prefix))
                .await
                .map_err(StoreError::new)?;
            stored
                .map(|bytes| sealing::open_bytes(self.sealing.as_ref(), name, &bytes))
                .transpose()
        })
    }

    fn compare_and_set_record<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let record = format!("{}record:{name}", self.prefix);
            // Sealed values differ on every write: compare the opened value, then swap
            // only if the stored bytes are still the ones that were opened.
            let raw_expected = match (expected, &self.sealing) {
                (Some(expected), Some(_)) => {
                    let stored: Option<Vec<u8>> =
                        connection.get(&record).await.map_err(StoreError::new)?;
                    match stored {
                        Some(raw)
                            if sealing::open_bytes(self.sealing.as_ref(), name, &raw)?
                                == expected =>
                        {
                            Some(raw)
                        }
                        _ => return Ok(false),
                    }
                }
                (expected, _) => expected.map(<[u8]>::to_vec),
            };
            let value = sealing::seal_bytes(self.sealing.as_ref(), name, value)?;
            let set: i64 = self
                .scripts
                .record_cas
                .key(record)
                .arg(if raw_expected.is_some() { "1" } else { "0" })
                .arg(raw_expected.unwrap_or_default())
                .arg(value)
                .arg(crate::limits::clamp(ttl).as_millis().max(1).to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(set == 1)
        })
    }
}
