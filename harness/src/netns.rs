//! Network namespaces, for partitions.

use std::path::Path;
use std::process::Command;

/// A network namespace joined to this one by a veth pair on a /30 from 198.18.0.0/15 (the
/// range reserved for network tests), with no route anywhere else. A process started in it
/// reaches the host side's address (and the host reaches its address) until [`Netns::cut`].
pub struct Netns {
    pub name: String,
    host_link: String,
    /// The host side's address, reachable from inside.
    pub host_ip: String,
    /// The namespace's address, reachable from the host.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// Namespace number `index` of this test process.
    pub fn create(index: u32) -> Result<Netns, String> {
        let id = std::process::id();
        let name = format!("flt{id}n{index}");
        let host_link = format!("flt{id}h{index}");
        let peer_link = format!("flt{id}p{index}");
        // 198.18.A.B/30 with a block per (process, index): A.B from the low bits of both.
        let block = ((id % 4000) * 4 + index) * 4;
        let (third, fourth) = (block / 256 % 256, block % 256);
        let host_ip = format!("198.18.{third}.{}", fourth + 1);
        let ns_ip = format!("198.18.{third}.{}", fourth + 2);
        ip(&["netns", "add", &name])?;
        let netns = Netns {
            name: name.clone(),
            host_link: host_link.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
        ])?;
        ip(&["link", "set", &peer_link, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &peer_link])?;
        inside(&["link", "set", &peer_link, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Whether this machine lets tests make namespaces (root, iproute2, no sandbox in the
    /// way); the reason when it does not.
    pub fn supported() -> Result<(), String> {
        Netns::create(99).map(drop)
    }

    /// Cuts the link: nothing passes between the namespace and the host until [`Netns::heal`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]).expect("cut the link");
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]).expect("heal the link");
    }

    /// `command` run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}
