//! `redis`: a Redis server guest. smoltcp is its TCP/IP stack over the ABI's network device in Ethernet mode,
//! on its own MAC and IPv4 address; it serves a subset of RESP (PING, ECHO, GET, SET, DEL, INCR, EXISTS,
//! DBSIZE, FLUSHALL, QUIT, pipelining) on port 6379, appends every change to a log on the disk before the reply
//! that depends on it leaves, and rebuilds its data from that log when it boots.
#![no_std]

extern crate alloc;

mod aof;
mod commands;
mod record;
mod resp;
mod server;
mod store;

/// The guest's network identity: the runtime's `[ethernet]` section announces the same at go-live.
pub const MAC: [u8; 6] = [0x02, 0x66, 0x74, 0x76, 0x6d, 0x01];
pub const IPV4: [u8; 4] = [10, 77, 0, 2];
pub const PREFIX_LENGTH: u8 = 24;
pub const PORT: u16 = 6379;

fn main() -> u32 {
    server::run()
}

ftvm_guest::entry!(main);
