//! The logging channel as a simulated host sees it: a turmoil TCP stream with two faults below the framing.
//! A bit of the next bytes a node writes can be flipped (the receiver must notice by the checksum and drop the
//! channel), and a node that died at its crash point (or whose host froze) neither sends nor receives another
//! byte.
//!
//! Reads gather everything that has arrived, as a real TCP stack's do: turmoil hands out one segment (one frame)
//! per read, which would never put more frames in the driver's hands than the backup has room for, and the
//! driver's per-frame flow control would go untested (found by reverting it).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turmoil::net::TcpStream;

use crate::world::{NodeId, SharedWorld};

pub struct SimChannel {
    pub inner: TcpStream,
    pub node: NodeId,
    pub world: SharedWorld,
    pub dead: Rc<Cell<bool>>,
    /// An error met while gathering after data: returned by the next read.
    pub deferred: Option<io::Error>,
}

impl SimChannel {
    pub fn new(inner: TcpStream, node: NodeId, world: SharedWorld, dead: Rc<Cell<bool>>) -> SimChannel {
        SimChannel { inner, node, world, dead, deferred: None }
    }
}

impl AsyncRead for SimChannel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.dead.get() {
            // A dead host reads nothing more (a crashed one is taken down at the next step; a frozen one never is).
            return Poll::Pending;
        }
        if let Some(error) = self.deferred.take() {
            return Poll::Ready(Err(error));
        }
        let start = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        while buf.remaining() > 0 && buf.filled().len() > start {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {}
                Poll::Ready(Err(error)) => {
                    self.deferred = Some(error);
                    break;
                }
                // Nothing more now, or the end of the stream (which the next read sees again).
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SimChannel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.dead.get() {
            return Poll::Ready(Ok(buf.len()));
        }
        let node = self.node.index();
        let corrupt = !buf.is_empty() && std::mem::take(&mut self.world.borrow_mut().faults.corrupt_channel[node]);
        if !corrupt {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        let mut damaged = buf.to_vec();
        let (at, bit) = {
            let mut world = self.world.borrow_mut();
            let at = world.rng.random_range(0..damaged.len());
            let bit = world.rng.random_range(0..8u8);
            world.log(self.node.host(), format!("NEMESIS flips bit {bit} of byte {at} of a channel write"));
            (at, bit)
        };
        damaged[at] ^= 1 << bit;
        Pin::new(&mut self.inner).poll_write(cx, &damaged)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead.get() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead.get() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
