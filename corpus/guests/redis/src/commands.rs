//! The Redis commands the guest serves: each request gives a reply and, for a write, the change to log.

use alloc::format;
use alloc::vec::Vec;

use crate::resp;
use crate::store::{Change, Store};

/// What a request does.
pub struct Outcome {
    pub reply: Vec<u8>,
    /// The changes to append to the log before the reply may leave (already applied to the store).
    pub changes: Vec<Change>,
    /// QUIT: close the connection once the reply is out.
    pub close: bool,
}

fn reply(build: impl FnOnce(&mut Vec<u8>)) -> Outcome {
    let mut reply = Vec::new();
    build(&mut reply);
    Outcome { reply, changes: Vec::new(), close: false }
}

fn wrong_arity(name: &[u8]) -> Outcome {
    let name = core::str::from_utf8(name).unwrap_or("?");
    reply(|out| resp::error(out, &format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase())))
}

/// Why writes are refused now, if they are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    None,
    /// The log has no room for more records.
    DiskFull,
    /// The heap is mostly used (Redis's `maxmemory`): writes stop before an allocation fails.
    MemoryFull,
    /// This request's record would be longer than the log takes.
    TooLarge,
}

/// Executes one request against `store`.
pub fn execute(store: &mut Store, arguments: &[Vec<u8>], refusal: Refusal) -> Outcome {
    let Some((name, rest)) = arguments.split_first() else { return reply(|_| {}) };
    let upper = name.to_ascii_uppercase();
    let grows = matches!(upper.as_slice(), b"SET" | b"INCR");
    let is_write = grows || matches!(upper.as_slice(), b"DEL" | b"FLUSHALL");
    if is_write && refusal == Refusal::DiskFull {
        return reply(|out| resp::error(out, "ERR disk full: the append log has no room"));
    }
    if is_write && refusal == Refusal::TooLarge {
        return reply(|out| resp::error(out, "ERR request too large for the append log"));
    }
    if grows && refusal == Refusal::MemoryFull {
        return reply(|out| resp::error(out, "OOM command not allowed when used memory > 'maxmemory'."));
    }
    match (upper.as_slice(), rest) {
        (b"PING", []) => reply(|out| resp::simple(out, "PONG")),
        (b"PING", [message]) => reply(|out| resp::bulk(out, Some(message))),
        (b"ECHO", [message]) => reply(|out| resp::bulk(out, Some(message))),
        (b"GET", [key]) => reply(|out| resp::bulk(out, store.get(key))),
        (b"SET", [key, value]) => {
            write(store, Change::Set(key.clone(), value.clone()), |out, _| resp::simple(out, "OK"))
        }
        (b"SET", [_, _, ..]) => reply(|out| resp::error(out, "ERR syntax error (SET options are not supported)")),
        (b"DEL", keys) if !keys.is_empty() => {
            // Each key once, as Redis counts them.
            let mut present: Vec<&Vec<u8>> = keys.iter().filter(|key| store.contains(key)).collect();
            present.sort();
            present.dedup();
            let count = present.len() as i64;
            let changes: Vec<Change> = present.into_iter().map(|key| Change::Delete(key.clone())).collect();
            for change in &changes {
                store.apply(change);
            }
            let mut outcome = reply(|out| resp::integer(out, count));
            outcome.changes = changes;
            outcome
        }
        (b"EXISTS", keys) if !keys.is_empty() => {
            let count = keys.iter().filter(|key| store.contains(key)).count() as i64;
            reply(|out| resp::integer(out, count))
        }
        (b"INCR", [key]) => {
            let current = match store.get(key) {
                None => Some(0),
                Some(value) => resp::parse_integer(value).filter(|number| {
                    // Only the canonical form, as Redis: no leading zeros, no "-0", no sign on its own.
                    let mut canonical = Vec::new();
                    resp::decimal(&mut canonical, *number);
                    canonical == *value
                }),
            };
            match current.and_then(|value| value.checked_add(1)) {
                None => reply(|out| resp::error(out, "ERR value is not an integer or out of range")),
                Some(next) => {
                    let mut digits = Vec::new();
                    resp::decimal(&mut digits, next);
                    write(store, Change::Set(key.clone(), digits), |out, _| resp::integer(out, next))
                }
            }
        }
        (b"DBSIZE", []) => reply(|out| resp::integer(out, store.len() as i64)),
        (b"FLUSHALL", []) | (b"FLUSHALL", [_]) => write(store, Change::FlushAll, |out, _| resp::simple(out, "OK")),
        // redis-benchmark and redis-cli ask for these; an empty answer tells them there is nothing to know.
        (b"CONFIG", _) | (b"COMMAND", _) => reply(resp::empty_array),
        (b"QUIT", _) => {
            let mut outcome = reply(|out| resp::simple(out, "OK"));
            outcome.close = true;
            outcome
        }
        (b"PING" | b"ECHO" | b"GET" | b"SET" | b"DEL" | b"EXISTS" | b"INCR" | b"DBSIZE" | b"FLUSHALL", _) => {
            wrong_arity(name)
        }
        _ => {
            let name = core::str::from_utf8(name).unwrap_or("?");
            // CR and LF would end the error line early and desynchronise a pipelining client.
            let shown: alloc::string::String =
                name.chars().take(64).map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
            reply(|out| resp::error(out, &format!("ERR unknown command '{shown}'")))
        }
    }
}

fn write(store: &mut Store, change: Change, answer: impl FnOnce(&mut Vec<u8>, bool)) -> Outcome {
    let removed = store.apply(&change);
    let mut outcome = reply(|out| answer(out, removed));
    outcome.changes.push(change);
    outcome
}
