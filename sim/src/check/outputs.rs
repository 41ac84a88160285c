//! S2 output consistency: every copy of an output is identical; each node releases console and network output
//! in order; and a backup that went live lost none of the outputs it had in its log, nor changed one.

use std::collections::BTreeMap;

use ft::log::OutputKind;

use crate::world::{NodeId, World};

pub fn check(world: &mut World) {
    let mut first: BTreeMap<u64, (OutputKind, u64)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut duplicates = 0;
    for release in &world.releases {
        match first.get(&release.seq) {
            None => {
                first.insert(release.seq, (release.kind, release.digest));
            }
            Some(&(kind, digest)) => {
                duplicates += 1;
                if (kind, digest) != (release.kind, release.digest) {
                    problems.push(format!("output #{} released twice with different content", release.seq));
                }
            }
        }
    }
    for node in NodeId::ALL {
        let mut last: Option<u64> = None;
        let streamed = world.releases.iter().filter(|r| r.node == node && r.kind != OutputKind::DiskWrite);
        for release in streamed {
            if last.is_some_and(|last| release.seq <= last) {
                problems.push(format!("{} released output #{} after #{}", node.host(), release.seq, last.unwrap_or(0)));
            }
            last = Some(release.seq);
        }
    }
    // A backup that went live (in an epoch after its lineage's) lost none of the outputs it had acknowledged.
    for (lineage, backup) in world.lineage_backup.clone() {
        let went_live = world.live.iter().any(|(epoch, nodes)| *epoch > lineage && nodes.contains(&backup));
        if !went_live {
            continue;
        }
        let acked = world.backup_acked_max.get(&lineage).copied().unwrap_or(0);
        let logged = world.logged_outputs.range((lineage, 0)..=(lineage, u64::MAX));
        for ((_, seq), (kind, digest, _)) in logged.filter(|(_, (_, _, index))| *index <= acked) {
            match first.get(seq) {
                None => problems.push(format!(
                    "{kind:?} output #{seq} was in the backup's log (lineage {lineage}) but never reached the outside"
                )),
                Some(&(_, released)) if released != *digest => problems.push(format!(
                    "{kind:?} output #{seq} reached the outside with other content than the backup had in its log"
                )),
                Some(_) => {}
            }
        }
    }
    world.counts.duplicate_outputs += duplicates;
    for problem in problems {
        world.violation("S2 output consistency", problem);
    }
}
