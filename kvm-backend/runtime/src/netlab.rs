//! Two hosts and a client on one machine, for `ftvm demo --guest redis` and the process tests: four network
//! namespaces (a switch, hosts `a` and `b`, the client) joined by veth pairs to a bridge in the switch. Each host
//! has its own bridge `br0` holding its uplink `eth0`, where a node in Ethernet mode attaches the guest's TAP
//! when it goes live, and its own address on `br0` for the logging channel and heartbeats. Losing a host is
//! cutting its port on the switch. Everything is deleted on drop, failure included: deleting a namespace
//! deletes the links, bridges and TAPs in it.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use crate::error::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Switch,
    A,
    B,
    Client,
}

impl Host {
    fn letter(self) -> char {
        match self {
            Host::Switch => 's',
            Host::A => 'a',
            Host::B => 'b',
            Host::Client => 'c',
        }
    }

    /// The host's own address on the lab's network (the switch has none).
    pub fn address(self) -> Ipv4Addr {
        match self {
            Host::Switch => Ipv4Addr::UNSPECIFIED,
            Host::A => Ipv4Addr::new(10, 77, 0, 11),
            Host::B => Ipv4Addr::new(10, 77, 0, 12),
            Host::Client => Ipv4Addr::new(10, 77, 0, 100),
        }
    }
}

/// The hosts' bridge, to put in a node's `ethernet.bridge`.
pub const HOST_BRIDGE: &str = "br0";
const PREFIX: &str = "/24";

fn ip(args: &[&str]) -> Result<(), CliError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| CliError::io("`ip` (iproute2, for network namespaces)", &error))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(CliError::Io {
            what: format!("ip {}", args.join(" ")),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Why this machine cannot build a lab, if it cannot: not root, no `ip`, no /dev/net/tun.
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces and TAP devices need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (no TUN/TAP support)".into());
    }
    None
}

pub struct Lab {
    /// Namespace names, in the order switch, a, b, client.
    names: [String; 4],
}

impl Lab {
    /// Builds the lab; `tag` (a few letters) and the process id make the names unique on the machine.
    pub fn build(tag: &str) -> Result<Lab, CliError> {
        if let Some(reason) = missing_prerequisite() {
            return Err(CliError::Usage(format!("cannot build the network namespaces: {reason}")));
        }
        let id = std::process::id();
        let names = [Host::Switch, Host::A, Host::B, Host::Client].map(|host| format!("ft{tag}{id}{}", host.letter()));
        // A lab of a killed earlier run with the same pid would be in the way.
        for name in &names {
            let _ = ip(&["netns", "del", name]);
        }
        let lab = Lab { names };
        for name in &lab.names {
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        let switch = lab.namespace(Host::Switch).to_string();
        ip(&["-n", &switch, "link", "add", "sw0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "sw0", "up"])?;
        for host in [Host::A, Host::B, Host::Client] {
            let namespace = lab.namespace(host).to_string();
            let port = format!("p{}", host.letter());
            ip(&["-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "sw0", "up"])?;
            let address = format!("{}{PREFIX}", host.address());
            if host == Host::Client {
                ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            } else {
                ip(&["-n", &namespace, "link", "add", HOST_BRIDGE, "type", "bridge"])?;
                ip(&["-n", &namespace, "link", "set", "eth0", "master", HOST_BRIDGE])?;
                ip(&["-n", &namespace, "addr", "add", &address, "dev", HOST_BRIDGE])?;
                ip(&["-n", &namespace, "link", "set", HOST_BRIDGE, "up"])?;
            }
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    pub fn namespace(&self, host: Host) -> &str {
        &self.names[host as usize]
    }

    /// `program` run inside `host`'s namespace (`ip netns exec` execs it: the child's pid is the program's).
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.namespace(host)]).arg(program);
        command
    }

    /// Cuts `host`'s link on the switch: it can neither send nor receive.
    pub fn cut(&self, host: Host) -> Result<(), CliError> {
        ip(&["-n", self.namespace(Host::Switch), "link", "set", &format!("p{}", host.letter()), "down"])
    }

    /// Runs `work` on a thread that has entered `host`'s namespace (a namespace is per thread).
    pub fn in_namespace<T: Send + 'static>(
        &self,
        host: Host,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CliError> {
        match self.spawn_in(host, work)?.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(reason)) => Err(CliError::Io { what: "entering a network namespace".into(), reason }),
            Err(_) => Err(CliError::Io { what: "a thread in a network namespace".into(), reason: "panicked".into() }),
        }
    }

    /// Spawns `work` on a thread inside `host`'s namespace and returns its handle.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: Host,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T, String>>, CliError> {
        let path = Path::new("/run/netns").join(self.namespace(host));
        let file = std::fs::File::open(&path).map_err(|error| CliError::io(path.display().to_string(), &error))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on an open namespace descriptor changes only this thread's network namespace.
            let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if result != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(work())
        }))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
