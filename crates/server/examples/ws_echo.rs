//! A WebSocket echo server on firstcall's own RFC 6455 codec and socket task (the ones
//! `/v1/ws` runs), for the Autobahn test suite: `scripts/autobahn` starts it and points
//! `wstest -m fuzzingclient` at it.
//!
//! Usage: `ws_echo [ADDR [MAX_MESSAGE]]`, ADDR a loopback address (default
//! 127.0.0.1:9001), MAX_MESSAGE the largest message echoed in bytes (default 16 MiB,
//! the largest Autobahn sends, in its 9.* cases). Prints `listening on ADDR` once it
//! accepts connections.

use std::net::SocketAddr;

use axum::extract::Request;
use firstcall_server::websocket::{self, Echo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9001").parse()?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr}: the echo server listens on loopback only").into());
    }
    let max_message: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 16 << 20,
    };
    let echo = Echo::new(max_message);
    let app = axum::Router::new().fallback(move |req: Request| {
        let echo = echo.clone();
        async move { websocket::upgrade(echo, req) }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    // As `firstcall serve` does for /v1/ws: frames go out at once.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
