//! In-process client connections: a [`Client`] of this process's own multiplexer (the
//! agent's `POST /mcp` endpoint opens one per MCP session). The connection is served by the
//! same driver as the Unix socket — JSON lines, the size limits, slow-consumer eviction, the
//! shutdown signal — over an in-memory pipe, so it behaves exactly like a socket client.

use crate::client::Client;
use crate::driver::drive;
use crate::limits::ConnectionPermit;
use crate::lines::{LineWriter, line_stream};
use tether_mux::{Identity, Mux};
use tether_proto::MAX_MESSAGE_BYTES;
use tokio::io::{BufReader, BufWriter};
use tokio_util::sync::CancellationToken;

/// Bytes the pipe holds in each direction before a writer waits for its reader.
const PIPE_BYTES: usize = 64 * 1024;

/// Connects to `mux` as `identity`. The connection ends when the client is dropped (its side
/// of the pipe closes) or when `closing` fires; `permit` (the caller's connection cap) is held
/// until then.
pub fn connect(
    mux: &Mux,
    identity: Identity,
    permit: Option<ConnectionPermit>,
    closing: CancellationToken,
) -> Client {
    let (client_side, server_side) = tokio::io::duplex(PIPE_BYTES);
    let (conn, rx) = mux.connect(identity);
    tokio::spawn(async move {
        let (read, write) = tokio::io::split(server_side);
        let inbound = line_stream(BufReader::new(read), MAX_MESSAGE_BYTES);
        drive(
            conn,
            rx,
            inbound,
            LineWriter(BufWriter::new(write)),
            closing,
        )
        .await;
        drop(permit);
    });
    let (read, write) = tokio::io::split(client_side);
    Client::over_lines(read, write)
}
