//! The logging channel's handshake from outside: whatever a peer sends to a backup (as the primary's hello and
//! confirmation) or to a primary (as the backup's welcome) is refused with an error, never a panic.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A peer that sends `input` and then closes; what we write is dropped.
struct Peer<'a> {
    input: &'a [u8],
}

impl AsyncRead for Peer<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let take = self.input.len().min(buf.remaining());
        buf.put_slice(&self.input[..take]);
        self.input = &self.input[take..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let mut peer = Peer { input };
        let _ = ft_host::auth::handshake_as_backup(&mut peer, KEY, 9, "b", async { Ok(1) }).await;
        let mut peer = Peer { input };
        let _ = ft_host::auth::handshake_as_primary(&mut peer, KEY, 9, 1, "a").await;
    });
});
