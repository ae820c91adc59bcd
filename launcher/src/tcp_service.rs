//! A TCP listener served from a background thread, one thread per connection, with a bound on
//! connections served at once: what the launcher's HTTP endpoints (`http_endpoint.rs`) and its
//! unix-socket forwarders (`forward.rs`) share.
//!
//! A connection beyond the bound is closed at once, so a peer that connects and stalls holds
//! only its own thread, never the listener, a vCPU or another peer.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

/// Accepts connections on `listener` for the rest of the process, from a thread named `name`,
/// and runs `handle` on each in its own thread (`<name>-conn`); at most `max` run at once.
pub fn serve(
    listener: TcpListener,
    max: usize,
    name: &'static str,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Result<()> {
    let handle = Arc::new(handle);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if busy.fetch_add(1, Ordering::SeqCst) >= max {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (handle, done) = (handle.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .spawn(move || {
                        handle(conn);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!(listener = name, "cannot start a connection thread");
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .with_context(|| format!("cannot start the {name} thread"))?;
    Ok(())
}
