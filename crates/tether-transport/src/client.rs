//! A client of the client protocol over a Unix socket or a WebSocket. Used by the `tether`
//! CLI, by integration tests (over real sockets) and by the benchmark.
//!
//! Frames are read by a background task into a bounded channel; [`Client::request`] waits for
//! its own reply and keeps every other frame, in order, for [`Client::next_text`].

use crate::driver::Inbound;
use crate::lines::next_line;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use tether_proto::{ErrorBody, RequestId, ServerFrame, encode_request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where the agent (or hub) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Ws { url: String, token: Option<String> },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Ws { url, .. } => f.write_str(url),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("the server refused the request: {0}")]
    Server(ErrorBody),
    #[error("the connection closed")]
    Closed,
    #[error("connection error: {0}")]
    Io(String),
    #[error("unexpected frame from the server: {0}")]
    Protocol(String),
}

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// The write half of a JSON-lines connection (a Unix socket, or an in-process pipe).
type LinesSink = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

enum Writer {
    Ws(Box<WsSink>),
    Lines(LinesSink),
}

pub struct Client {
    writer: Writer,
    incoming: mpsc::Receiver<String>,
    backlog: VecDeque<String>,
    next_id: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Frames buffered between the socket and the client before the reader waits.
const INCOMING_FRAMES: usize = 4096;

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, ClientError> {
        match target {
            Target::Unix(path) => Client::connect_unix(path).await,
            Target::Ws { url, token } => Client::connect_ws(url, token.as_deref()).await,
        }
    }

    pub async fn connect_unix(path: &Path) -> Result<Client, ClientError> {
        let stream =
            tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| ClientError::Connect {
                    target: path.display().to_string(),
                    message: e.to_string(),
                })?;
        let (read, write) = stream.into_split();
        Ok(Client::over_lines(read, write))
    }

    /// A client speaking JSON lines over any byte stream (the Unix socket, or the in-process
    /// pipe of [`crate::local`]).
    pub fn over_lines(
        read: impl AsyncRead + Send + Unpin + 'static,
        write: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Client {
        let (tx, rx) = mpsc::channel(INCOMING_FRAMES);
        let reader = tokio::spawn(async move {
            let mut read = BufReader::new(read);
            // Servers send frames up to the protocol limit; allow generous headroom.
            while let Ok(Some(Inbound::Text(line))) = next_line(&mut read, 64 << 20).await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let write: Box<dyn AsyncWrite + Send + Unpin> = Box::new(write);
        Client {
            writer: Writer::Lines(BufWriter::new(write)),
            incoming: rx,
            backlog: VecDeque::new(),
            next_id: 1,
            reader,
        }
    }

    pub async fn connect_ws(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let connect_err = |message: String| ClientError::Connect {
            target: url.to_owned(),
            message,
        };
        let mut request = url
            .into_client_request()
            .map_err(|e| connect_err(e.to_string()))?;
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                connect_err("the token contains characters not allowed in a header".into())
            })?;
            request.headers_mut().insert("authorization", value);
        }
        let (socket, _response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| connect_err(describe_ws_error(&e)))?;
        let (sink, mut stream) = socket.split();
        let (tx, rx) = mpsc::channel(INCOMING_FRAMES);
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let go_on = match msg {
                    Message::Text(t) => tx.send(t.as_str().to_owned()).await.is_ok(),
                    Message::Close(_) => false,
                    _ => true,
                };
                if !go_on {
                    break;
                }
            }
        });
        Ok(Client {
            writer: Writer::Ws(Box::new(sink)),
            incoming: rx,
            backlog: VecDeque::new(),
            next_id: 1,
            reader,
        })
    }

    /// Sends one raw text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        match &mut self.writer {
            Writer::Ws(sink) => sink
                .send(Message::Text(text.into()))
                .await
                .map_err(|e| ClientError::Io(e.to_string())),
            Writer::Lines(w) => {
                let r = async {
                    w.write_all(text.as_bytes()).await?;
                    w.write_all(b"\n").await?;
                    w.flush().await
                };
                r.await.map_err(|e| ClientError::Io(e.to_string()))
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        match &mut self.writer {
            Writer::Ws(sink) => {
                let _ = sink.send(Message::Close(None)).await;
            }
            Writer::Lines(w) => {
                let _ = w.shutdown().await;
            }
        }
    }

    /// Sends `{"id", "op", ...params}` and returns the raw reply; other frames are kept.
    pub async fn request_raw(
        &mut self,
        op: &str,
        params: Value,
    ) -> Result<tether_proto::ReplyFrame, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&encode_request(&RequestId::from(id), op, params))
            .await?;
        let want = RequestId::from(id);
        let mut held = Vec::new();
        let result = loop {
            let Some(text) = self.incoming.recv().await else {
                break Err(ClientError::Closed);
            };
            match ServerFrame::decode(&text) {
                Ok(ServerFrame::Reply(reply)) if reply.re.as_ref() == Some(&want) => {
                    break Ok(reply);
                }
                Ok(_) => held.push(text),
                Err(e) => break Err(ClientError::Protocol(format!("{e}: {text}"))),
            }
        };
        self.backlog.extend(held);
        result
    }

    /// Sends a request and returns its `result`, or the server's error as `ClientError::Server`.
    pub async fn request(&mut self, op: &str, params: Value) -> Result<Value, ClientError> {
        let reply = self.request_raw(op, params).await?;
        match reply.error {
            Some(e) => Err(ClientError::Server(e)),
            None => Ok(reply.result.unwrap_or(Value::Null)),
        }
    }

    /// As [`request`](Self::request), decoding the result into `T`.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        op: &str,
        params: Value,
    ) -> Result<T, ClientError> {
        let value = self.request(op, params).await?;
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The next frame not consumed by a request, as sent by the server.
    pub async fn next_text(&mut self) -> Option<String> {
        if let Some(t) = self.backlog.pop_front() {
            return Some(t);
        }
        self.incoming.recv().await
    }

    /// The next frame, decoded. `Ok(None)` when the connection closed.
    pub async fn next_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        match self.next_text().await {
            None => Ok(None),
            Some(text) => ServerFrame::decode(&text)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("{e}: {text}"))),
        }
    }
}

fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned));
            match body {
                Some(message) => format!("HTTP {}: {message}", resp.status()),
                None => format!("HTTP {}", resp.status()),
            }
        }
        other => other.to_string(),
    }
}
