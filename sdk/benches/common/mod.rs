//! What the load-agent benchmarks (`ingest`, `scale`) share: an agent's handshake and
//! registration over the real protocol, and percentiles.

use std::net::SocketAddr;

use anyhow::bail;
use flotilla_protocol::messages::{AgentMessage, HelloReply, Registration, Role};
use flotilla_protocol::tls::COORDINATOR_SERVER_NAME;
use flotilla_protocol::{AgentId, framing, handshake};

/// Connects to the coordinator as agent `name` (the endpoint holds an agent certificate),
/// says `Hello` and registers `slots` slots; returns the control stream.
pub async fn register(
    endpoint: &quinn::Endpoint,
    coordinator: SocketAddr,
    name: &str,
    slots: u32,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let connection = endpoint
        .connect(coordinator, COORDINATOR_SERVER_NAME)?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    framing::write_frame(&mut send, &handshake::hello(Role::Agent, name)).await?;
    match framing::read_frame::<_, HelloReply>(&mut recv).await? {
        Some(HelloReply::Welcome(_)) => {}
        other => bail!("{name}: the coordinator did not welcome the agent: {other:?}"),
    }
    let registration = Registration {
        agent_id: AgentId(name.to_string()),
        hostname: name.to_string(),
        slots,
        gpus: 0,
        running: Vec::new(),
        finished: Vec::new(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    framing::write_frame(&mut send, &AgentMessage::Register(registration)).await?;
    Ok((connection, send, recv))
}

/// The value at `fraction` (0 to 1) of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[rank] as f64 / 1000.0
}
