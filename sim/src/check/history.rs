//! The client history checked against a model of the key-value service: each key is a register written with
//! unique values. A read may not return a value overwritten before the read began, nor a value never written,
//! and the disk must end up holding a value no acknowledged write has superseded (durability across failover).
//! Indeterminate operations (no answer) may or may not have taken effect, at any time after their invocation.

use std::collections::BTreeMap;

use ft::kv::Op;

use crate::world::{ClientOp, World};

pub fn check(world: &mut World) {
    let mut puts: BTreeMap<u64, Vec<&ClientOp>> = BTreeMap::new();
    for op in world.history.iter().filter(|op| op.op == Op::Put) {
        puts.entry(op.key).or_default().push(op);
    }
    let mut problems = Vec::new();
    for get in world.history.iter().filter(|op| op.op == Op::Get && op.ok) {
        let key_puts = puts.get(&get.key).map(Vec::as_slice).unwrap_or(&[]);
        let completed = get.completed_ns.unwrap_or(u64::MAX);
        let source = key_puts.iter().find(|put| put.value == get.value);
        if get.value != 0 && source.is_none_or(|put| put.invoked_ns > completed) {
            problems.push(format!("get of key {} returned {:#x}, which no put wrote before it", get.key, get.value));
            continue;
        }
        if let Some(newer) = superseding(key_puts, source.copied(), get.invoked_ns) {
            problems.push(format!(
                "get of key {} (client {} request {}) returned {:#x}, stale: put {:#x} finished before the get began",
                get.key, get.client, get.request, get.value, newer.value
            ));
        }
    }
    for (key, key_puts) in puts.iter().filter(|_| world.disk_is_kv) {
        let stored = stored_value(world, *key);
        let source = key_puts.iter().find(|put| put.value == stored).copied();
        if stored != 0 && source.is_none() {
            problems.push(format!("disk holds {stored:#x} for key {key}, which no put wrote"));
        } else if let Some(newer) = superseding(key_puts, source, u64::MAX) {
            problems.push(format!(
                "disk holds {stored:#x} for key {key}, but acknowledged put {:#x} came later",
                newer.value
            ));
        }
    }
    world.counts.requests_ok += world.history.iter().filter(|op| op.ok).count() as u64;
    world.counts.requests_indeterminate += world.history.iter().filter(|op| op.completed_ns.is_none()).count() as u64;
    for problem in problems {
        world.violation("S2 client history", problem);
    }
}

/// An acknowledged put that, in real time, follows `source` (or any initial value) and finished before `before_ns`.
fn superseding<'a>(puts: &[&'a ClientOp], source: Option<&ClientOp>, before_ns: u64) -> Option<&'a ClientOp> {
    puts.iter().copied().filter(|put| put.ok && put.completed_ns.is_some_and(|done| done < before_ns)).find(|put| {
        match source {
            None => true,
            Some(source) => source.completed_ns.is_some_and(|done| done < put.invoked_ns),
        }
    })
}

fn stored_value(world: &World, key: u64) -> u64 {
    let Some(sector) = world.sectors.get(&(1 + key)) else { return 0 };
    let word = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap_or([0; 8]));
    let magic = u32::from_le_bytes(sector[0..4].try_into().unwrap_or([0; 4]));
    if magic != ft::kv::MAGIC {
        return 0;
    }
    // RECORD layout: magic u32, reserved u32, key u64, value u64, version u64.
    word(16)
}
