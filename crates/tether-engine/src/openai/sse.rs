//! A server-sent-events decoder that reuses its buffers.
//!
//! Written here rather than taken from `eventsource-stream` because the hot path of a model
//! stream is one small event per token: `eventsource-stream` allocates several `String`s per
//! network read and per event (a copy of the bytes, the line remainder, the data, the event
//! name), while this decoder allocates nothing once its two buffers have grown to the largest
//! event. It implements what chat-completion streams use of the format (`data:` fields,
//! comments, blank-line dispatch, LF / CRLF / CR line ends); `event:`, `id:` and `retry:`
//! fields are skipped.

/// Why the byte stream is not a usable event stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SseError {
    #[error("a stream event is larger than {0} bytes")]
    TooLarge(usize),
}

pub(crate) struct SseDecoder {
    /// Received bytes; `buf[start..]` is not decoded yet.
    buf: Vec<u8>,
    start: usize,
    /// The `data` of the event being assembled (or, after `next_event` returned true, of the
    /// event just completed).
    data: Vec<u8>,
    /// `data` holds a completed event that is cleared on the next call.
    dispatched: bool,
    /// The last line ended with CR: a LF right after it belongs to the same line end.
    skip_lf: bool,
    max: usize,
}

impl SseDecoder {
    /// A decoder that refuses events (and lines) longer than `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        SseDecoder {
            buf: Vec::with_capacity(8 * 1024),
            start: 0,
            data: Vec::with_capacity(1024),
            dispatched: false,
            skip_lf: false,
            max,
        }
    }

    /// Appends received bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() - self.start + bytes.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Marks the end of the byte stream: a last event without its closing blank line is
    /// still delivered (some servers end with `data: [DONE]` and no blank line).
    pub(crate) fn push_end(&mut self) {
        // Cannot exceed the limit by more than two bytes; not worth an error.
        self.buf.extend_from_slice(b"\n\n");
    }

    /// Decodes the next complete event from the buffered bytes. Returns `true` when one is
    /// ready (read it with [`data`](Self::data)), `false` when more bytes are needed.
    pub(crate) fn next_event(&mut self) -> Result<bool, SseError> {
        if self.dispatched {
            self.data.clear();
            self.dispatched = false;
        }
        loop {
            if self.skip_lf && self.start < self.buf.len() {
                if self.buf[self.start] == b'\n' {
                    self.start += 1;
                }
                self.skip_lf = false;
            }
            let rest = &self.buf[self.start..];
            let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                return Ok(false);
            };
            let line_start = self.start;
            let line_end = line_start + end;
            self.skip_lf = rest[end] == b'\r';
            self.start = line_end + 1;

            let line = &self.buf[line_start..line_end];
            if line.is_empty() {
                if self.data.is_empty() {
                    continue;
                }
                // The data buffer ends with the LF added after its last line.
                self.data.pop();
                self.dispatched = true;
                return Ok(true);
            }
            if line[0] == b':' {
                continue; // a comment (keep-alive)
            }
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &line[line.len()..]),
            };
            if field == b"data" {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::TooLarge(self.max));
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
        }
    }

    /// The data of the event `next_event` just completed.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for p in pieces {
            assert_eq!(d.push(p), Ok(()));
            while d.next_event() == Ok(true) {
                out.push(String::from_utf8_lossy(d.data()).into_owned());
            }
        }
        d.push_end();
        while d.next_event() == Ok(true) {
            out.push(String::from_utf8_lossy(d.data()).into_owned());
        }
        out
    }

    #[test]
    fn events_split_anywhere_decode_the_same() {
        let wire: &[u8] = b": keep-alive\n\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\nevent: x\nid: 7\ndata: line1\ndata: line2\r\rdata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "{\"b\":2}", "line1\nline2", "[DONE]"];
        assert_eq!(decode_all(&[wire]), expected);
        for split in 1..wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(decode_all(&[a, b]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytes), expected);
    }

    #[test]
    fn a_last_event_without_blank_line_is_delivered_at_the_end() {
        assert_eq!(
            decode_all(&[b"data: a\n\ndata: [DONE]"]),
            vec!["a", "[DONE]"]
        );
        assert_eq!(decode_all(&[b"data: a\r"]), vec!["a"]);
    }

    #[test]
    fn empty_data_and_field_without_colon() {
        // `data` with no colon is a data field with an empty value.
        assert_eq!(decode_all(&[b"data\n\n"]), vec![""]);
        assert_eq!(decode_all(&[b"event: ping\n\n"]), Vec::<String>::new());
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut d = SseDecoder::new(16);
        assert_eq!(d.push(b"data: 0123456789"), Ok(()));
        assert_eq!(d.push(b"0123456789"), Err(SseError::TooLarge(16)));
        let mut d = SseDecoder::new(16);
        let mut refused = false;
        for _ in 0..4 {
            if d.push(b"data: 01234567\n").is_err() {
                refused = true;
                break;
            }
            if d.next_event().is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn buffers_are_reused() {
        let mut d = SseDecoder::new(1 << 20);
        let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        for _ in 0..1000 {
            assert_eq!(d.push(event), Ok(()));
            assert_eq!(d.next_event(), Ok(true));
        }
        assert!(d.buf.capacity() <= 8 * 1024);
        assert!(d.data.capacity() <= 1024);
    }
}
