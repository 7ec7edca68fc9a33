//! JSON-lines framing for the Unix socket and stdio: one JSON object per `\n`-terminated line.
//! A line over the limit is discarded up to its newline and reported, and the stream goes
//! on: the framing lets the connection stay usable.

use crate::driver::{FrameWriter, Inbound};
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Reads the next line of at most `max` bytes (newline excluded).
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Inbound>> {
    let mut line: Vec<u8> = Vec::new();
    let mut size = 0usize;
    let mut too_large = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            // End of stream: a final unterminated line still counts.
            if size == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        size += chunk.len();
        if !too_large {
            if size > max {
                too_large = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = found.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if found.is_some() {
            if size == 0 {
                // Blank line: skip it.
                continue;
            }
            break;
        }
    }
    if too_large {
        return Ok(Some(Inbound::TooLarge(size)));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(match String::from_utf8(line) {
        Ok(s) => Inbound::Text(s),
        Err(_) => Inbound::NotUtf8,
    }))
}

/// The inbound stream of a JSON-lines reader.
pub fn line_stream<R: AsyncBufRead + Unpin + Send + 'static>(
    reader: R,
    max: usize,
) -> impl Stream<Item = std::io::Result<Inbound>> + Unpin + Send {
    Box::pin(futures_util::stream::unfold(
        reader,
        move |mut r| async move {
            match next_line(&mut r, max).await {
                Ok(Some(item)) => Some((Ok(item), r)),
                Ok(None) => None,
                Err(e) => Some((Err(e), r)),
            }
        },
    ))
}

/// Writes each frame followed by `\n`.
pub struct LineWriter<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> FrameWriter for LineWriter<W> {
    async fn write(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.0.write_all(&frame).await?;
        self.0.write_all(b"\n").await?;
        self.0.flush().await
    }

    async fn close(&mut self, _code: u16, _reason: &str) {
        let _ = self.0.flush().await;
        let _ = self.0.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(item) = next_line(&mut r, max).await.expect("io") {
            out.push(match item {
                Inbound::Text(t) => t,
                Inbound::TooLarge(n) => format!("<too large {n}>"),
                Inbound::NotText => "<not text>".into(),
                Inbound::NotUtf8 => "<not utf-8>".into(),
                Inbound::Fatal { code, .. } => format!("<fatal {code}>"),
            });
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_survives_an_oversized_one() {
        let got = lines(b"{\"a\":1}\n0123456789abcdef\n\n{\"b\":2}\r\ntail", 10).await;
        assert_eq!(
            got,
            vec!["{\"a\":1}", "<too large 16>", "{\"b\":2}", "tail"]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_is_reported_not_fatal() {
        let got = lines(b"\xff\xfe\nok\n", 100).await;
        assert_eq!(got, vec!["<not utf-8>", "ok"]);
    }
}
