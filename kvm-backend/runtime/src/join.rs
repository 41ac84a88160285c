//! Re-protection in the deployment: how a live primary without a backup meets the node that clones its VM, and
//! how that node finds the live primary. The clone itself is the protocol core's (`ft::primary::clone`,
//! `ft::join`); this module only connects, authenticates and authorises.
//!
//! - The live primary takes joiners on its `join_listen` address, and calls the `spares` of its config in order.
//!   Both run in a task of their own ([`JoinDesk`]), so a handshake in progress is never cut short by the driver's
//!   loop, and connections that arrive while the node is protected (or not live) are refused at once.
//! - The joining node (`ftvm backup --join`) calls the `join_peers` of its config in order, or waits on its
//!   `channel_listen` as a spare.
//! - Either way the live primary plays the handshake's primary, with its epoch: the joiner refuses a node whose
//!   epoch is older than the arbiter's (a deposed primary), and both prove the pair's key.
//! - Authorisation: the primary records the joiner in the arbiter record as the backup of the epoch its clone
//!   begins in (its own test-and-set, `Record::backup`), and the joiner reads the record when the clone begins
//!   ([`check_enlisted`]) and refuses a clone that the record does not name it for ([`Revocable`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

use crate::auth::{self, Session};
use crate::status::SharedBoard;
use crate::storage::SharedStorage;

/// Longest a joiner's handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Joiners' handshakes the desk runs at once; a connection beyond them is refused at once, so idle connections
/// cannot pile up tasks.
const GREETINGS_MAX: usize = 8;
/// Longest a call to a spare or a join peer may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the desk looks whether its node wants a joiner, and the pause after a round of spares that all
/// failed.
const DESK_PERIOD: Duration = Duration::from_millis(100);
const SPARES_ROUND_PAUSE: Duration = Duration::from_secs(1);

/// The role string of a live primary without a backup (`status::Snapshot::role`).
pub const UNPROTECTED: &str = "live, not protected";

/// An authenticated joiner's connection, ready for the driver.
pub type Ready = (TcpStream, Session);

/// What the desk needs to take joiners for its node.
pub struct DeskSetup {
    pub name: String,
    pub key: Vec<u8>,
    pub pair_id: u64,
    pub listener: Option<TcpListener>,
    pub spares: Vec<SocketAddr>,
    pub board: SharedBoard,
}

/// The primary's side: joiners, authenticated, one at a time.
pub struct JoinDesk {
    ready: Mutex<mpsc::Receiver<Ready>>,
}

impl JoinDesk {
    /// Starts the desk's task (on the current `LocalSet`), or returns None when the node takes no joiners.
    pub fn start(setup: DeskSetup) -> Option<JoinDesk> {
        if setup.listener.is_none() && setup.spares.is_empty() {
            return None;
        }
        // One joiner waits at most: a second one is refused (or not called) until the first is taken.
        let (sender, ready) = mpsc::channel(1);
        tokio::task::spawn_local(desk(setup, sender));
        Some(JoinDesk { ready: Mutex::new(ready) })
    }

    /// The next authenticated joiner (cancellation-safe: the driver's loop asks anew at every turn).
    pub async fn next(&self) -> Ready {
        let mut ready = self.ready.lock().await;
        match ready.recv().await {
            Some(joiner) => joiner,
            None => std::future::pending().await,
        }
    }
}

/// The epoch to greet a joiner in, while the node is live without a backup and no joiner's clone is under way
/// (`Board::joiner_busy`: from the driver's taking a joiner until its cut or its end).
fn wants_joiner(board: &SharedBoard) -> Option<u64> {
    let board = board.borrow();
    (board.snapshot.role == UNPROTECTED && !board.joiner_busy).then_some(board.snapshot.epoch)
}

async fn desk(setup: DeskSetup, sender: mpsc::Sender<Ready>) {
    let name = setup.name.clone();
    let greetings = Rc::new(std::cell::Cell::new(0usize));
    let mut next_spare = 0usize;
    let mut failed_in_round = 0usize;
    loop {
        let accepting = async {
            match &setup.listener {
                Some(listener) => listener.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = accepting => {
                let Ok((stream, from)) = accepted else {
                    tokio::time::sleep(DESK_PERIOD).await;
                    continue;
                };
                let wanted = wants_joiner(&setup.board).filter(|_| sender.capacity() > 0);
                let Some(epoch) = wanted.filter(|_| greetings.get() < GREETINGS_MAX) else {
                    let (role, busy) = {
                        let board = setup.board.borrow();
                        (board.snapshot.role.clone(), board.joiner_busy)
                    };
                    let why = if role != UNPROTECTED {
                        format!("this node is {role}, not live without a backup")
                    } else if busy {
                        "another node is joining".to_string()
                    } else {
                        "joiners are waiting already".to_string()
                    };
                    tracing::warn!("{name}: refused a joiner from {from}: {why}");
                    continue;
                };
                let (key, pair_id, me, sender) = (setup.key.clone(), setup.pair_id, name.clone(), sender.clone());
                let greetings = greetings.clone();
                greetings.set(greetings.get() + 1);
                tokio::task::spawn_local(async move {
                    let ready = greet(stream, from, &key, pair_id, epoch, &me).await;
                    greetings.set(greetings.get() - 1);
                    if let Some(ready) = ready {
                        let _ = sender.send(ready).await;
                    }
                });
            }
            _ = tokio::time::sleep(DESK_PERIOD) => {
                if setup.spares.is_empty() || sender.capacity() == 0 {
                    continue;
                }
                let Some(epoch) = wants_joiner(&setup.board) else { continue };
                let spare = setup.spares[next_spare % setup.spares.len()];
                next_spare += 1;
                let called = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(spare)).await;
                let ready = match called {
                    Ok(Ok(stream)) => greet(stream, spare, &setup.key, setup.pair_id, epoch, &name).await,
                    _ => None,
                };
                match ready {
                    Some(ready) => {
                        tracing::info!(target: crate::node::TIMELINE, "{name}: spare {spare} answered: cloning onto it");
                        failed_in_round = 0;
                        let _ = sender.send(ready).await;
                    }
                    None => {
                        failed_in_round += 1;
                        if failed_in_round >= setup.spares.len() {
                            failed_in_round = 0;
                            tracing::warn!("{name}: no spare of {:?} answered; calling them again", setup.spares);
                            tokio::time::sleep(SPARES_ROUND_PAUSE).await;
                        }
                    }
                }
            }
        }
    }
}

/// The live primary's handshake with a joiner (either way the connection was made).
async fn greet(
    mut stream: TcpStream,
    from: SocketAddr,
    key: &[u8],
    pair_id: u64,
    epoch: u64,
    name: &str,
) -> Option<Ready> {
    let _ = stream.set_nodelay(true);
    let handshake = auth::handshake_as_primary(&mut stream, key, pair_id, epoch, name);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(session)) => {
            tracing::info!(
                target: crate::node::TIMELINE,
                "{name}: joiner {} at {from} authenticated (epoch {epoch})",
                session.peer_name
            );
            Some((stream, session))
        }
        Ok(Err(error)) => {
            tracing::warn!("{name}: refused a joiner at {from}: {error}");
            None
        }
        Err(_) => {
            tracing::warn!("{name}: refused a joiner at {from}: handshake timed out");
            None
        }
    }
}

/// The joiner's side, calling: asks each of `peers` in turn until a live primary of the pair takes it (its
/// handshake checks the primary's epoch against the arbiter's), or `deadline` passes.
pub async fn call_primary(
    peers: &[SocketAddr],
    name: &str,
    key: &[u8],
    pair_id: u64,
    storage: &Arc<SharedStorage>,
    storage_timeout: Duration,
    deadline: tokio::time::Instant,
) -> Option<(TcpStream, Session, SocketAddr)> {
    let mut round = 0u64;
    while tokio::time::Instant::now() < deadline {
        for &peer in peers {
            let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await else {
                if round == 0 {
                    tracing::info!("{name}: nobody takes joiners at {peer} (yet)");
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let arbiter_epoch = crate::node::arbiter_epoch(storage.clone(), storage_timeout);
            let handshake = auth::handshake_as_backup(&mut stream, key, pair_id, name, arbiter_epoch);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(session)) => return Some((stream, session, peer)),
                Ok(Err(error)) => tracing::warn!("{name}: {peer} did not take this node: {error}"),
                Err(_) => tracing::warn!("{name}: {peer} did not take this node: handshake timed out"),
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Whether the arbiter record names `identity` as the backup of `epoch`: the joiner's authorisation, read when the
/// clone begins. Blocks the calling thread up to `timeout` (a joiner serves nothing yet, and the clone must not
/// go on before the answer).
pub fn check_enlisted(storage: &SharedStorage, epoch: u64, identity: &str, timeout: Duration) -> Result<(), String> {
    let (sender, answer) = std::sync::mpsc::channel();
    let storage = storage.clone();
    std::thread::spawn(move || {
        let _ = sender.send(storage.record());
    });
    match answer.recv_timeout(timeout) {
        Ok(Ok(record)) if record.epoch == epoch && record.backup.as_deref() == Some(identity) => Ok(()),
        Ok(Ok(record)) => Err(format!(
            "the arbiter record (epoch {}, owner {}, backup {}) does not name this node ({identity}) as the backup \
             of epoch {epoch}",
            record.epoch,
            record.owner,
            record.backup.as_deref().unwrap_or("none")
        )),
        Ok(Err(error)) => Err(format!("the arbiter record cannot be read: {error}")),
        Err(_) => Err(format!("the arbiter record did not answer within {timeout:?}")),
    }
}

/// Why a channel was revoked, once it is.
pub type Revoked = Rc<RefCell<Option<String>>>;

/// A channel the host can cut from outside the driver: once revoked, every read and write fails with the reason
/// (the driver then takes the channel for lost, and a joiner gives up). Revocation happens inside the driver's
/// own turn (its observer), so the next read or write sees it without a wake-up.
pub struct Revocable<S> {
    inner: S,
    revoked: Revoked,
}

impl<S> Revocable<S> {
    pub fn new(inner: S, revoked: Revoked) -> Revocable<S> {
        Revocable { inner, revoked }
    }

    fn check(&self) -> io::Result<()> {
        match self.revoked.borrow().as_ref() {
            Some(reason) => Err(io::Error::new(io::ErrorKind::PermissionDenied, reason.clone())),
            None => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Revocable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Revocable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The joiner's authorisation believes only the arbiter record: another node named, another epoch, or no
    /// backup recorded all refuse the clone, with the record in the reason.
    #[test]
    fn only_a_record_naming_this_node_for_the_epoch_authorises_a_clone() {
        let storage = crate::storage::scratch("enlisted");
        let dir = storage.disk.parent().expect("a scratch directory").to_path_buf();
        let timeout = Duration::from_secs(2);
        assert!(check_enlisted(&storage, 2, "a2/1", timeout).unwrap_err().contains("backup none"));
        storage.test_and_set(1, "b/9").unwrap();
        storage.test_and_set_enlisting(2, "b/9", Some("a2/1")).unwrap();
        assert_eq!(check_enlisted(&storage, 3, "a2/1", timeout), Ok(()));
        assert!(check_enlisted(&storage, 3, "a2/2", timeout).unwrap_err().contains("does not name this node"));
        assert!(check_enlisted(&storage, 4, "a2/1", timeout).is_err(), "another epoch");
        let gone = SharedStorage { arbiter: dir.join("missing"), ..storage.clone() };
        assert!(check_enlisted(&gone, 3, "a2/1", timeout).unwrap_err().contains("cannot be read"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A revoked channel fails its next read and write with the reason.
    #[test]
    fn a_revoked_channel_fails_reads_and_writes_with_the_reason() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (near, mut far) = tokio::io::duplex(64);
            let revoked = Revoked::default();
            let mut channel = Revocable::new(near, revoked.clone());
            channel.write_all(b"ok").await.unwrap();
            let mut two = [0u8; 2];
            far.read_exact(&mut two).await.unwrap();
            *revoked.borrow_mut() = Some("not the backup of epoch 3".into());
            let error = channel.write_all(b"no").await.unwrap_err();
            assert_eq!(error.to_string(), "not the backup of epoch 3");
            far.write_all(b"x").await.unwrap();
            assert_eq!(channel.read(&mut two).await.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        });
    }
}
