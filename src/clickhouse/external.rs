//! Queries that take a list of strings as ClickHouse "external data": the strings travel as a
//! RowBinary file in a multipart POST and the query reads them as a temporary one-column table
//! (`… IN sextant_ids`).
//!
//! Why not a literal list (`IN ('a', 'b', …)`): ClickHouse 18.16 analyses each literal on its
//! own (tens of microseconds per value: 0.1–0.2 s for 5,000 ids), and a statement must stay
//! under `max_query_size`, so a large batch took several statements, each scanning the
//! project's id table again. External data is parsed like inserted rows and one statement takes
//! any number. Both 18.16 and current ClickHouse accept it over HTTP; the `clickhouse` crate
//! sends none, so this posts the form itself, with the hyper client the crate uses.

use std::time::Duration;

use bytes::Bytes;
use clickhouse::error::Error as ChError;
use http_body_util::{BodyExt, Full};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// The HTTP client of every statement, the `clickhouse` crate's included: the crate's own
/// settings (TCP keepalive, idle connections dropped after 2 s, before ClickHouse's 3 s
/// keep-alive closes them under a request), plus `timeout` to connect (at most 10 s) and
/// between reads or writes on a connection. Reads ask for `wait_end_of_query`, so a statement
/// sends nothing until done: `timeout` bounds its whole run, and a shard that stops answering
/// fails the call (UNAVAILABLE) instead of holding it, and an ack, for ever.
pub fn http_client<B>(timeout: Duration) -> Client<TimeoutConnector<HttpConnector>, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_nodelay(true);
    let mut connector = TimeoutConnector::new(connector);
    connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
    connector.set_read_timeout(Some(timeout));
    connector.set_write_timeout(Some(timeout));
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(2)).build(connector)
}

/// The temporary table the strings are, with its one column `value String`.
pub const TABLE: &str = "sextant_ids";

/// One shard server, for statements with external data.
#[derive(Clone)]
pub struct ExternalData {
    http: Client<TimeoutConnector<HttpConnector>, Full<Bytes>>,
    url: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
}

impl ExternalData {
    pub fn new(
        url: &str,
        database: &str,
        user: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> ExternalData {
        ExternalData {
            http: http_client(timeout),
            url: url.to_owned(),
            database: database.to_owned(),
            user: user.map(str::to_owned),
            password: password.map(str::to_owned),
        }
    }

    /// Runs `sql`, which selects one String column and reads `values` as the table `TABLE`;
    /// the strings it answers. Errors come as the `clickhouse` crate's, so they map to statuses
    /// like every other statement's.
    pub async fn strings(&self, sql: &str, values: &[&str]) -> Result<Vec<String>, ChError> {
        let mut file = Vec::with_capacity(values.iter().map(|v| v.len() + 2).sum());
        for value in values {
            put_string(&mut file, value.as_bytes());
        }
        let boundary = boundary_absent_from(&file);
        let mut body = Vec::with_capacity(file.len() + 256);
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{TABLE}\"; filename=\"{TABLE}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let uri = format!(
            "{}{separator}database={}&query={}&{TABLE}_structure={}&{TABLE}_format=RowBinary\
             &default_format=RowBinary&wait_end_of_query=1",
            self.url,
            encode(&self.database),
            encode(sql),
            encode("value String"),
        );
        let mut request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"));
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| ChError::InvalidParams(Box::new(e)))?;
        let response = self.http.request(request).await.map_err(|e| ChError::Network(Box::new(e)))?;
        let status = response.status();
        let answer = response.into_body().collect().await.map_err(|e| ChError::Network(Box::new(e)))?.to_bytes();
        if !status.is_success() {
            return Err(ChError::BadResponse(String::from_utf8_lossy(&answer).trim().to_owned()));
        }
        read_strings(&answer)
    }
}

/// A RowBinary String: its length as LEB128, then its bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::core::leb128::put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// RowBinary rows of one String column.
fn read_strings(mut bytes: &[u8]) -> Result<Vec<String>, ChError> {
    let malformed = || ChError::NotEnoughData;
    let mut strings = Vec::new();
    while !bytes.is_empty() {
        let len = crate::core::leb128::take(&mut bytes).ok_or_else(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        if len > bytes.len() {
            return Err(malformed());
        }
        let (string, rest) = bytes.split_at(len);
        strings.push(std::str::from_utf8(string)?.to_owned());
        bytes = rest;
    }
    Ok(strings)
}

/// A multipart boundary that does not occur in `file` (ids are client data).
fn boundary_absent_from(file: &[u8]) -> String {
    loop {
        let boundary = format!("sextant-{:032x}", rand::random::<u128>());
        if !file.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
            return boundary;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_row_binary() {
        let long = "x".repeat(300);
        let values = ["", "e1", "it's", "tab\tnew\nline", "é", long.as_str()];
        let mut bytes = Vec::new();
        for value in values {
            put_string(&mut bytes, value.as_bytes());
        }
        // 300 takes two LEB128 bytes: 0xAC 0x02.
        let at = bytes.len() - 302;
        assert_eq!(&bytes[at..at + 2], &[0xac, 0x02]);
        assert_eq!(read_strings(&bytes).unwrap(), values);
        assert!(read_strings(&bytes[..bytes.len() - 1]).is_err(), "a cut string");
        assert!(read_strings(&[0x80]).is_err(), "a cut length");
        assert!(read_strings(&[1, 0xff]).is_err(), "not UTF-8");
    }

    #[test]
    fn the_boundary_never_occurs_in_the_file() {
        let file = b"--sextant-0123 and more".to_vec();
        let boundary = boundary_absent_from(&file);
        assert!(boundary.starts_with("sextant-") && boundary.len() == 40);
        assert!(!file.windows(boundary.len()).any(|w| w == boundary.as_bytes()));
    }
}
