//! The logging channel as a simulated host sees it: a turmoil TCP stream with two faults below the framing.
//! A bit of the next bytes a node writes can be flipped (the receiver must notice by the checksum and drop the
//! channel), and a node that died at its crash point neither sends nor receives another byte.

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
}

impl AsyncRead for SimChannel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.dead.get() {
            // A dead host reads nothing more; the scenario loop crashes it before anything could wake it.
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
