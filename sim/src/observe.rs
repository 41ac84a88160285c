//! What a simulated host reports to the world: the timeline (in sentences), the counters of interesting
//! events, and the facts the checkers need from the drivers: outputs released, log entries received and
//! acknowledged. Crash points aimed at protocol edges fire here too.

use ft::driver::Observation;
use ft::log::{Control, Entry, OutputKind};
use ft::storage::StorageRequest;
use ft::wire::Message;
use ft::{Action, Event, Role};

use crate::check;
use crate::node_host::SimHost;
use crate::plan::Edge;
use crate::world::{NodeId, Release, World};

pub fn observe(host: &SimHost, now_ns: u64, observation: Observation) {
    let edge = {
        let mut world = host.world.borrow_mut();
        world.now_ns = now_ns;
        record(host, &mut world, now_ns, &observation)
    };
    // A crash at an edge: the host dies before the driver performs what it just reported.
    if let Some(edge) = edge {
        if host.reached(edge) {
            host.die(edge);
        }
    }
}

/// Records one observation; returns the crash-point edge it reaches, if any.
fn record(host: &SimHost, world: &mut World, now_ns: u64, observation: &Observation) -> Option<Edge> {
    let id = host.id;
    let who = id.host();
    match observation {
        Observation::Action(Action::Notify(event)) => return record_event(world, id, event, host),
        Observation::Action(Action::Release { output, log_index }) => {
            let release = Release {
                at_ns: now_ns,
                node: id,
                seq: output.seq,
                kind: output.kind,
                digest: output.digest(),
                log_index: *log_index,
            };
            check::output_rule::on_release(world, &release);
            if output.kind == OutputKind::Console {
                let line = String::from_utf8_lossy(&output.bytes).trim_end().to_string();
                world.log(who, format!("console #{}: {line}", output.seq));
            }
            world.releases.push(release);
        }
        Observation::Action(Action::Storage { request, .. }) => {
            if let StorageRequest::Write { output_seq, log_index, data, .. } = request {
                let release = Release {
                    at_ns: now_ns,
                    node: id,
                    seq: *output_seq,
                    kind: OutputKind::DiskWrite,
                    digest: xxhash_rust::xxh3::xxh3_64(data),
                    log_index: *log_index,
                };
                check::output_rule::on_release(world, &release);
                world.releases.push(release);
            }
            let left = host.reissues_left.get();
            if left > 0 {
                host.reissues_left.set(left - 1);
                return Some(Edge::DuringReissue);
            }
        }
        Observation::Action(Action::Send(Message::Ack { received, .. }))
            if world.role[id.index()] == Some(Role::Backup) =>
        {
            let lineage = world.role_epoch[id.index()];
            let acked = world.backup_acked_max.entry(lineage).or_default();
            *acked = (*acked).max(*received);
        }
        // The joiner's lineage is the epoch of the clone it receives: its log (which may arrive in the same read
        // as the cut, before the joiner says it restored it) belongs there.
        Observation::Received(Message::CloneBegin { epoch, .. }) => world.role_epoch[id.index()] = *epoch,
        Observation::Action(Action::Send(Message::CloneWrite { seq, .. })) => {
            let lineage = world.role_epoch[id.index()];
            world.clone_writes.insert((lineage, *seq));
        }
        Observation::Action(Action::Send(Message::CloneCut { .. })) => {
            let lineage = world.role_epoch[id.index()];
            world.cuts_sent.insert(lineage, (id, now_ns));
        }
        Observation::Action(Action::Send(Message::Goodbye { .. })) => return Some(Edge::DuringPowerOff),
        Observation::Action(Action::Send(Message::ClonePages { .. }))
        | Observation::Received(Message::ClonePages { .. }) => return Some(Edge::DuringClone),
        Observation::Received(Message::Goodbye { .. }) => {
            world.goodbye_received_ns.get_or_insert(now_ns);
        }
        Observation::Received(Message::Log { index, entry }) => {
            let lineage = world.role_epoch[id.index()];
            world.lineage_backup.insert(lineage, id);
            check::replay::on_log_received(world, lineage, *index);
            if let Entry::Output { record, .. } = entry {
                world.backup_logged_index.entry((lineage, record.seq)).or_insert(*index);
                if record.kind != OutputKind::DiskWrite {
                    let logged = (record.kind, record.digest, *index);
                    world.logged_outputs.entry((lineage, record.seq)).or_insert(logged);
                }
            }
            if let Entry::Control { control: Control::PowerOff { .. }, .. } = entry {
                world.log(who, "received the guest's power-off");
            }
        }
        Observation::Action(Action::Send(Message::Log { index, .. })) => {
            world.log_sent_ns.insert((id.index(), *index), now_ns);
        }
        Observation::Received(Message::Ack { received, replayed, .. }) => {
            check::replay::on_ack(world, *received, *replayed, host.buffered_max);
            let oldest_unreplayed = world.log_sent_ns.get(&(id.index(), replayed + 1));
            world.lag_samples_ns.push(oldest_unreplayed.map_or(0, |sent_ns| now_ns.saturating_sub(*sent_ns)));
            if world.role[id.index()] == Some(Role::Primary) {
                return Some(Edge::AfterAck);
            }
        }
        Observation::ChannelError(reason) => {
            world.counts.channel_errors += 1;
            if reason.contains("checksum") {
                cov_mark::hit!(channel_checksum_error);
            }
            world.log(who, format!("logging channel: {reason}"));
        }
        _ => {}
    }
    None
}

fn record_event(world: &mut World, id: NodeId, event: &Event, host: &SimHost) -> Option<Edge> {
    let who = id.host();
    match event {
        Event::Checkpoint { .. } => {
            world.counts.checkpoints_verified += 1;
            return None;
        }
        // Every period of a throttled primary: too many for the trace.
        Event::CpuShare { .. } => return None,
        Event::WentLive { epoch, reissued_outputs, reissued_disk_requests, .. } => {
            let was_backup = world.role[id.index()] == Some(Role::Backup);
            world.live.entry(*epoch).or_default().push(id);
            world.role[id.index()] = Some(Role::Unprotected);
            world.role_epoch[id.index()] = *epoch;
            world.went_live_ns.get_or_insert(world.now_ns);
            if was_backup {
                world.counts.failovers += 1;
                world.went_live_at[id.index()] = Some(world.positions[id.index()]);
                host.reissues_left.set(*reissued_disk_requests as u64);
            } else {
                world.counts.unprotected += 1;
            }
            world.counts.outputs_reissued += *reissued_outputs as u64;
            world.counts.disk_reissued += *reissued_disk_requests as u64;
            check::epochs::on_went_live(world, id, *epoch);
        }
        Event::LostRace { .. } => {
            world.counts.lost_races += 1;
            world.role[id.index()] = Some(Role::Stopped);
        }
        Event::ArbiterUnreachable => world.counts.arbiter_unreachable += 1,
        Event::Stalled { .. } => world.counts.stalls += 1,
        Event::Diverged(divergence) => world.violation("S5 state hashes", format!("{who} {divergence}")),
        Event::PoweredOff { .. } => {
            world.counts.power_offs += 1;
            world.powered_off[id.index()] = true;
            world.role[id.index()] = Some(Role::Stopped);
        }
        Event::GuestStopped { .. } => world.role[id.index()] = Some(Role::Stopped),
        // Re-protection: the lineage (the epoch whose log the pair shares) moves on at the enlisting grant for
        // the primary, and at the restored cut for the joiner.
        Event::CloneStarted { epoch, .. } => world.role_epoch[id.index()] = *epoch,
        Event::CloneCut { .. } => {
            world.counts.reprotections += 1;
            world.role[id.index()] = Some(Role::Primary);
        }
        Event::Cloned { epoch, .. } => {
            world.role[id.index()] = Some(Role::Backup);
            world.role_epoch[id.index()] = *epoch;
            let now_ns = world.now_ns;
            world.protected_again_ns.push(now_ns);
        }
        Event::CloneAbandoned { .. } => world.counts.clones_abandoned += 1,
        _ => {}
    }
    world.log(who, event.to_string());
    None
}
