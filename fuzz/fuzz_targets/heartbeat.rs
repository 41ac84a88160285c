//! Heartbeat datagrams from outside: any datagram is refused or accepted without a panic, and a frame the
//! backup sealed opens, once, to the same frame on the primary's side (the session comes from a real
//! handshake between the two sides, in memory).
#![no_main]

use std::sync::OnceLock;

use ft_host::auth::{self, Session};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn sessions() -> &'static (Session, Session) {
    static SESSIONS: OnceLock<(Session, Session)> = OnceLock::new();
    SESSIONS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        runtime.block_on(async {
            let (mut primary_end, mut backup_end) = tokio::io::duplex(4096);
            let primary = auth::handshake_as_primary(&mut primary_end, KEY, 9, 1, "a");
            let backup = auth::handshake_as_backup(&mut backup_end, KEY, 9, "b", async { Ok(1) });
            let (primary, backup) = tokio::join!(primary, backup);
            (primary.expect("the primary's session"), backup.expect("the backup's session"))
        })
    })
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let (primary, backup) = sessions();
    let receiver = primary.heartbeats(true);
    let _ = receiver.open(input);
    let sender = backup.heartbeats(false);
    let datagram = sender.seal(input.to_vec());
    let receiver = primary.heartbeats(true);
    assert_eq!(receiver.open(&datagram).ok().as_deref(), Some(input), "a sealed heartbeat opens");
    assert!(receiver.open(&datagram).is_err(), "and only once");
});
