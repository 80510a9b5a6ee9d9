//! One WebSocket connection's plumbing, shared by every protocol: a single writer fed by a
//! bounded outbox (a client that lets it fill up is disconnected, never buffered for), and
//! the reading side that turns frames into text messages and completes the close handshake.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::limits::{Limits, WsError};

/// How long closing may wait on the client: for our close frame to be taken, or for the
/// client's answer to it. A client that does neither is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Splits `socket` into the outbox every part of the connection writes through, the
/// incoming side, and the writer future that must run beside the protocol until both end.
pub fn open(socket: WebSocket, limits: &Limits) -> (Outbox, Incoming, impl Future<Output = ()> + Send) {
    let (sink, stream) = socket.split();
    let (queue, pending) = mpsc::channel(limits.outgoing_queue);
    let overflow = CancellationToken::new();
    let outbox = Outbox {
        queue,
        overflow: overflow.clone(),
    };
    (outbox, Incoming(stream), write(sink, pending, overflow))
}

/// Where messages to the client go. Cloned into every subscription of the connection.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Message>,
    overflow: CancellationToken,
}

impl Outbox {
    /// Queues `message`; false when it will never be written (the connection is going away).
    /// A full queue means the client does not read: the connection is dropped.
    pub fn send(&self, message: Message) -> bool {
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.overflow.cancel();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    pub fn send_json(&self, message: &Value) -> bool {
        self.send(Message::Text(message.to_string().into()))
    }

    /// Queues the close frame of `error`; the writer stops after it.
    pub fn close(&self, error: &WsError) -> bool {
        self.close_with(error.close_code(), &error.close_reason())
    }

    pub fn close_with(&self, code: u16, reason: &str) -> bool {
        self.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
    }

    /// Resolves once nothing more can be written: the writer sent a close frame, failed, or
    /// dropped a slow reader.
    pub async fn closed(&self) {
        self.queue.closed().await
    }
}

/// Writes queued messages in order until a close frame, a write error, a slow reader, or
/// the end of every outbox (then it completes the close handshake: a client's close frame
/// is answered, as RFC 6455 requires).
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut pending: mpsc::Receiver<Message>,
    overflow: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = overflow.cancelled() => break,
            next = pending.recv() => next,
        };
        let Some(message) = next else {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
            return;
        };
        let last = matches!(message, Message::Close(_));
        tokio::select! {
            biased;
            _ = overflow.cancelled() => break,
            sent = sink.send(message) => if sent.is_err() {
                // After the client's close frame tungstenite refuses any other message; the
                // answer it queued to that close frame still has to be flushed.
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
                return;
            },
        }
        if last {
            return;
        }
    }
    // The queue filled up while the socket would not take more: the close frame most likely
    // cannot get through either, so it gets a short chance and then the socket is dropped.
    tracing::info!("WebSocket client does not read what it is sent; disconnecting");
    let error = WsError::SlowReader;
    let frame = Message::Close(Some(CloseFrame {
        code: error.close_code(),
        reason: error.close_reason().into(),
    }));
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(frame)).await;
}

/// What the client sent, as the protocols see it.
#[derive(Debug)]
pub enum Inbound {
    /// A text message (a binary one is read as text: some clients send JSON as binary).
    Text(String),
    /// A message or frame over the size limit: the stream cannot be read any further.
    TooLarge,
    /// The client closed the connection (its close frame is answered by the writer), or the
    /// connection broke.
    Closed,
}

/// The reading side of a connection.
pub struct Incoming(SplitStream<WebSocket>);

impl Incoming {
    pub async fn next(&mut self) -> Inbound {
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Text(text))) => Inbound::Text(text.as_str().to_owned()),
                Some(Ok(Message::Binary(bytes))) => {
                    Inbound::Text(String::from_utf8_lossy(&bytes).into_owned())
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Inbound::Closed,
                Some(Err(err)) if is_too_large(&err) => Inbound::TooLarge,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "WebSocket read failed");
                    Inbound::Closed
                }
            };
        }
    }

    /// After our close frame: reads (and discards) until the client's close frame or the
    /// end, for a short while, so the handshake completes and no unread data makes the
    /// kernel reset the connection before the client has read our close frame.
    pub async fn finish(mut self) {
        let drain = async {
            loop {
                match self.0.next().await {
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Ok(_)) => {}
                    // The reader gave up on the stream (a message over the limit is left
                    // unread, and the client may still be sending it): the socket is held
                    // open for the rest of the grace period, since closing it with unread
                    // bytes resets it and can destroy our close frame before the client
                    // reads it.
                    Some(Err(_)) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }
}

fn is_too_large(err: &axum::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|inner| matches!(inner, tungstenite::Error::Capacity(_)))
}
