//! `flotilla certs …`: the cluster CA, certificates for each role and agent, and revocation.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_protocol::etcd_pki;
use flotilla_protocol::messages::Role;
use flotilla_protocol::revocation::{self, RevocationList};
use flotilla_protocol::tls::{self, ClusterCa};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a CA and coordinator, agent, client, admin and router certificates in DIR, and
    /// in DIR/etcd a separate CA with certificates for etcd members and etcd's users
    /// (root, coordinator, agent).
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the coordinator's certificate.
        #[arg(long = "coordinator-name")]
        coordinator_names: Vec<String>,
        /// Extra DNS names or IP addresses for the etcd members' certificate (loopback is
        /// always in it).
        #[arg(long = "etcd-host")]
        etcd_hosts: Vec<String>,
    },
    /// Issue one more certificate with the CA in --certs (it needs ca-key.pem). Agents get
    /// one each: `--id NAME` binds the agent id into the certificate, and the coordinator
    /// refuses that certificate for any other id. `etcd-member`, `etcd-coordinator`,
    /// `etcd-agent` and `etcd-root` issue from the etcd CA in CERTS/etcd instead.
    Issue {
        /// coordinator, agent, client, admin, router, or etcd-member, etcd-coordinator,
        /// etcd-agent, etcd-root.
        role: String,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
        /// The agent id the certificate is bound to (agents only).
        #[arg(long)]
        id: Option<String>,
        /// File names: NAME.pem and NAME-key.pem (default: ROLE-ID with --id, else ROLE-N).
        #[arg(long)]
        name: Option<String>,
        /// Extra DNS names or IP addresses (coordinator and etcd-member certificates).
        #[arg(long = "coordinator-name", alias = "host")]
        coordinator_names: Vec<String>,
    },
    /// Give every instance of an EC2 Auto Scaling group an agent certificate of its own,
    /// bound to its instance id, with the CA in --certs (run it where ca-key.pem is kept).
    /// Each goes to `TO/ROLE_ID:INSTANCE_ID/` (agent.pem, agent-key.pem): the name of the
    /// instance's role session, the only part of TO the agents' IAM policy lets that
    /// instance read. Instances that left the group lose theirs. Once, or every --every.
    IssueInstances {
        /// The group, as aws:GROUP.
        #[arg(long)]
        group: String,
        /// Where certificates go: s3://BUCKET/PREFIX (Terraform's agent_certificates_url).
        #[arg(long)]
        to: String,
        /// The agents' IAM role's unique id, AROA… (Terraform's agent_role_unique_id).
        #[arg(long)]
        role_id: String,
        /// Keep going, once per this interval, until interrupted.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// Make etcd's users and roles for this cluster and turn etcd authentication on, with
    /// CERTS/etcd/root.pem: coordinators may read and write the cluster's prefix, agents
    /// only its checkpoint-lease keys. etcd must run with TLS and --client-cert-auth (the
    /// common name of a client certificate is its etcd user). Safe to run again.
    EtcdAuth {
        /// etcd client URLs (https://), separated by commas.
        #[arg(long, env = "FLOTILLA_ETCD", value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        /// The cluster's key prefix in etcd.
        #[arg(long, env = "FLOTILLA_ETCD_PREFIX", default_value = "/flotilla")]
        etcd_prefix: String,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// Revoke certificates: the CA in --certs signs a new crl.pem there. Coordinators
    /// started with that file (`--crl`, default CERTS/crl.pem) reload it within seconds,
    /// refuse the certificate at every new handshake and close its open connections.
    Revoke {
        /// Serial numbers as `certs show` and `certs issue` print them, or certificate files.
        #[arg(required = true)]
        serials_or_files: Vec<String>,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// Show a certificate file: role, agent id, serial, validity, and whether crl.pem beside
    /// it revokes it.
    Show { file: PathBuf },
    /// List the certificates crl.pem in --certs revokes.
    Revoked {
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// Bearer tokens for HTTP endpoints (router feedback and gated predictions), kept
    /// hashed in a file that routers reload when it changes.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token, print it once, and add its hash to the file.
    Create {
        name: String,
        /// feedback, predict, read; repeatable (default: feedback).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// The token file (default: CERTS/tokens, which `flotilla router` reads).
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// Remove a token: routers refuse it within seconds.
    Revoke {
        name: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
    /// List the tokens' names and scopes (the tokens themselves are not kept).
    List {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, env = "FLOTILLA_CERTS", default_value = "certs")]
        certs: PathBuf,
    },
}

pub async fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init {
            out,
            coordinator_names,
            etcd_hosts,
        } => init(&out, &coordinator_names, &etcd_hosts),
        CertsCommand::EtcdAuth {
            etcd,
            etcd_prefix,
            certs,
        } => etcd_auth(etcd, etcd_prefix, &certs).await,
        CertsCommand::IssueInstances {
            group,
            to,
            role_id,
            every,
            certs,
        } => issue_instances(&group, &to, &role_id, every, &certs).await,
        CertsCommand::Issue {
            role,
            certs,
            id,
            name,
            coordinator_names,
        } => issue(&role, &certs, id.as_deref(), name, &coordinator_names),
        CertsCommand::Revoke {
            serials_or_files,
            certs,
        } => revoke(&serials_or_files, &certs),
        CertsCommand::Show { file } => show(&file),
        CertsCommand::Revoked { certs } => revoked(&certs),
        CertsCommand::Token(command) => token(command),
    }
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    use flotilla_telemetry::tokens::{self, Scope};
    let path = |file: Option<PathBuf>, certs: PathBuf| file.unwrap_or_else(|| certs.join("tokens"));
    match command {
        TokenCommand::Create {
            name,
            scopes,
            file,
            certs,
        } => {
            let scopes = if scopes.is_empty() {
                vec![Scope::Feedback]
            } else {
                scopes
                    .iter()
                    .map(|scope| {
                        Scope::from_name(scope).ok_or_else(|| {
                            anyhow::anyhow!("--scope {scope:?}: one of feedback, predict, read")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let path = path(file, certs);
            let names: Vec<&str> = scopes.iter().map(|scope| scope.name()).collect();
            let token = tokens::create(&path, &name, scopes.clone())?;
            eprintln!(
                "added token {name:?} ({}) to {}; it is shown once, here:",
                names.join(","),
                path.display()
            );
            println!("{token}");
        }
        TokenCommand::Revoke { name, file, certs } => {
            let path = path(file, certs);
            if !tokens::revoke(&path, &name)? {
                bail!("{} holds no token named {name:?}", path.display());
            }
            println!(
                "removed token {name:?} from {}; routers reading it refuse it within seconds",
                path.display()
            );
        }
        TokenCommand::List { file, certs } => {
            let path = path(file, certs);
            let entries = tokens::read(&path)?;
            if entries.is_empty() {
                println!("{} holds no tokens", path.display());
            }
            for entry in entries {
                let line = entry.line();
                let mut fields = line.split_whitespace();
                println!(
                    "{}  {}",
                    fields.next().unwrap_or_default(),
                    fields.next().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn init(out: &Path, coordinator_names: &[String], etcd_hosts: &[String]) -> anyhow::Result<()> {
    let etcd_dir = out.join(etcd_pki::DIR);
    for ca in [out.join("ca.pem"), etcd_dir.join("ca.pem")] {
        if ca.exists() {
            bail!(
                "{} already holds a CA; choose another directory or remove it",
                ca.display()
            );
        }
    }
    let ca = ClusterCa::generate("flotilla")?;
    let mut written = ca.write_cluster_material(out, &tls::with_loopback(coordinator_names))?;
    written.extend(etcd_pki::write_etcd_material(&etcd_dir, etcd_hosts)?);
    println!("wrote {} files to {}:", written.len(), out.display());
    for path in written {
        println!("  {}", path.display());
    }
    println!("keep ca-key.pem offline; hand each process only its own certificate and key");
    println!(
        "give each agent its own certificate: flotilla certs issue agent --id NAME --certs {}",
        out.display()
    );
    println!(
        "etcd: start members with {0}/member.pem (TLS, --client-cert-auth; see docs/operations.md), then run flotilla certs etcd-auth --etcd https://HOST:2379 --certs {1}",
        etcd_dir.display(),
        out.display()
    );
    Ok(())
}

/// `certs issue-instances`: see [`CertsCommand::IssueInstances`].
async fn issue_instances(
    group: &str,
    to: &str,
    role_id: &str,
    every: Option<std::time::Duration>,
    certs: &Path,
) -> anyhow::Result<()> {
    use flotilla_autoscale::Provider;
    let options = flotilla_autoscale::aws::AwsOptions::parse(group)
        .map_err(|message| anyhow::anyhow!("--group {message}"))?;
    let role_valid = role_id.len() >= 4
        && role_id.starts_with("AROA")
        && role_id.chars().all(|c| c.is_ascii_alphanumeric());
    if !role_valid {
        bail!(
            "--role-id {role_id:?}: an IAM role's unique id looks like AROA… (terraform output agent_role_unique_id)"
        );
    }
    let ca = ClusterCa::load_from_dir(certs)
        .with_context(|| format!("issuing needs the CA in {}", certs.display()))?;
    let store = flotilla_train::ArtifactStore::open(to).with_context(|| format!("--to {to}"))?;
    let provider = flotilla_autoscale::aws::AwsProvider::from_env(options).await;
    loop {
        let group = provider.group().await?;
        let present = store.list_folders().await?;
        let session = |instance: &str| format!("{role_id}:{instance}");
        for instance in &group.instances {
            let name = session(&instance.id);
            if present.contains(&name) {
                continue;
            }
            check_agent_id(&instance.id)?;
            let issued = ca.issue_bound_pem(Role::Agent, &instance.id, &[], Some(&instance.id))?;
            // The key first: an instance waiting for agent.pem finds its key with it.
            store
                .put_new(
                    &format!("{name}/agent-key.pem"),
                    issued.key_pem.into_bytes(),
                )
                .await?;
            store
                .put_new(&format!("{name}/agent.pem"), issued.cert_pem.into_bytes())
                .await?;
            println!(
                "issued agent {} (serial {}) to {}{name}/",
                instance.id,
                issued.serial,
                store.root()
            );
        }
        for name in present {
            let Some(instance) = name.strip_prefix(&format!("{role_id}:")) else {
                continue;
            };
            if group.instances.iter().any(|known| known.id == instance) {
                continue;
            }
            for file in ["agent.pem", "agent-key.pem"] {
                store.delete(&format!("{name}/{file}")).await?;
            }
            println!(
                "removed the certificate of {instance}, no longer in the group (revoke it too if it may still run: flotilla certs revoke)"
            );
        }
        let Some(every) = every else { return Ok(()) };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            result = tokio::signal::ctrl_c() => {
                result?;
                return Ok(());
            }
        }
    }
}

async fn etcd_auth(endpoints: Vec<String>, prefix: String, certs: &Path) -> anyhow::Result<()> {
    let mut config = flotilla_etcd::EtcdConfig::new(endpoints);
    config.prefix = prefix;
    if !config.is_tls() {
        bail!(
            "--etcd {}: etcd authentication by certificate needs https:// endpoints (etcd with TLS and --client-cert-auth)",
            config.endpoints.join(",")
        );
    }
    config.tls = Some(flotilla_etcd::EtcdTls::in_dir(
        &certs.join(etcd_pki::DIR),
        etcd_pki::EtcdCert::Root.name(),
    ));
    let mut client = flotilla_etcd::connect(&config)
        .await
        .with_context(|| format!("connecting to etcd at {}", config.endpoints.join(",")))?;
    let done = flotilla_etcd::auth::enable(&mut client, &config)
        .await
        .context("setting up etcd users and roles as root")?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}

fn issue_etcd(
    kind: &str,
    certs: &Path,
    name: Option<String>,
    hosts: &[String],
) -> anyhow::Result<()> {
    let Some(kind) = etcd_pki::EtcdCert::from_name(kind) else {
        bail!(
            "unknown etcd certificate etcd-{kind}: one of etcd-member, etcd-coordinator, etcd-agent, etcd-root"
        );
    };
    let dir = certs.join(etcd_pki::DIR);
    let ca = ClusterCa::load_from_dir(&dir)
        .with_context(|| format!("issuing needs the etcd CA in {}", dir.display()))?;
    let stem = name.unwrap_or_else(|| free_stem(&dir, kind.name()));
    let issued = ca.issue_etcd_pem(kind, hosts)?;
    write_issued(&issued, &dir, &stem)?;
    println!("etcd user {}, serial {}", kind.common_name(), issued.serial);
    Ok(())
}

/// Agent ids travel in certificates (a SAN URI) and in file names.
fn check_agent_id(id: &str) -> anyhow::Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!(
            "--id {id:?}: an agent id is 1 to 128 letters, digits, '-', '_' or '.' (an instance id such as i-0abc… fits)"
        );
    }
    Ok(())
}

fn issue(
    role: &str,
    certs: &Path,
    id: Option<&str>,
    name: Option<String>,
    coordinator_names: &[String],
) -> anyhow::Result<()> {
    if let Some(kind) = role.strip_prefix("etcd-") {
        if id.is_some() {
            bail!(
                "--id binds an agent id into a cluster certificate; etcd certificates name their etcd user only"
            );
        }
        return issue_etcd(kind, certs, name, coordinator_names);
    }
    let Some(role) = Role::from_name(role) else {
        bail!("unknown role {role:?}: one of coordinator, agent, client, admin, router");
    };
    if let Some(id) = id {
        if role != Role::Agent {
            bail!(
                "--id binds an agent id; a {} certificate has none",
                role.name()
            );
        }
        check_agent_id(id)?;
    }
    let ca = ClusterCa::load_from_dir(certs)
        .with_context(|| format!("issuing needs the CA in {}", certs.display()))?;
    let stem = match (name, id) {
        (Some(name), _) => name,
        (None, Some(id)) => format!("{}-{id}", role.name()),
        (None, None) => free_stem(certs, role.name()),
    };
    let common_name = match id {
        Some(id) => id.to_string(),
        None => format!("flotilla-{}", role.name()),
    };
    let extra = if role == Role::Coordinator {
        tls::with_loopback(coordinator_names)
    } else {
        vec![]
    };
    for path in [
        certs.join(format!("{stem}.pem")),
        certs.join(format!("{stem}-key.pem")),
    ] {
        if path.exists() {
            bail!("{} exists; choose another --name", path.display());
        }
    }
    let issued = ca.issue_bound_pem(role, &common_name, &extra, id)?;
    write_issued(&issued, certs, &stem)?;
    println!("role {}, serial {}", role.name(), issued.serial);
    if let Some(id) = id {
        println!(
            "bound to agent id {id}: run it as `flotilla agent --id {id} --identity {stem}` (ca.pem, {stem}.pem and {stem}-key.pem on that host)"
        );
    }
    Ok(())
}

/// `BASE-N` for the first N with no `BASE-N.pem` in `dir`.
fn free_stem(dir: &Path, base: &str) -> String {
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|stem| !dir.join(format!("{stem}.pem")).exists())
        .unwrap_or_else(|| base.to_string())
}

/// Writes `STEM.pem` and `STEM-key.pem` into `dir` (never over a file) and says so.
fn write_issued(issued: &tls::IssuedPem, dir: &Path, stem: &str) -> anyhow::Result<()> {
    let mut written = Vec::new();
    issued.write(dir, stem, false, &mut written)?;
    println!(
        "wrote {}",
        written
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    Ok(())
}

fn read_certificate(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path)
        .map_err(|error| anyhow::anyhow!("{}: not a PEM certificate: {error}", path.display()))
}

fn revoke(serials_or_files: &[String], certs: &Path) -> anyhow::Result<()> {
    let ca = ClusterCa::load_from_dir(certs)
        .with_context(|| format!("revoking needs the CA in {}", certs.display()))?;
    let mut serials = Vec::new();
    for item in serials_or_files {
        let path = Path::new(item);
        let serial = if path.exists() {
            revocation::serial_of(&read_certificate(path)?)?
        } else {
            revocation::parse_serial(item)?
        };
        serials.push(serial);
    }
    let crl_path = certs.join("crl.pem");
    let previous = match std::fs::read(&crl_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => bail!("cannot read {}: {error}", crl_path.display()),
    };
    let crl = ca.revoke(&previous, &serials)?;
    revocation::write_crl(&crl_path, &crl)?;
    let list = RevocationList::load(&crl_path)?;
    for serial in &serials {
        println!("revoked {}", revocation::format_serial(serial));
    }
    println!(
        "{} now revokes {} certificate(s); coordinators reading it reload it within seconds (copy it to every coordinator host)",
        crl_path.display(),
        list.len()
    );
    Ok(())
}

fn show(file: &Path) -> anyhow::Result<()> {
    let certificate = read_certificate(file)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
    let role = tls::role_of_certificate(&certificate)
        .map(|role| role.name().to_string())
        .unwrap_or_else(|error| format!("none ({error})"));
    println!("file      {}", file.display());
    println!("subject   {}", parsed.subject());
    println!("role      {role}");
    if let Some(id) = tls::agent_id_of_certificate(&certificate)? {
        println!("agent id  {id}");
    }
    println!(
        "serial    {}",
        revocation::format_serial(&revocation::serial_of(&certificate)?)
    );
    println!(
        "valid     {} to {}",
        parsed.validity().not_before,
        parsed.validity().not_after
    );
    let crl = file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("crl.pem");
    let list = RevocationList::load(&crl)?;
    println!(
        "revoked   {}",
        if list.revokes(&certificate) {
            format!("yes (by {})", crl.display())
        } else {
            "no".to_string()
        }
    );
    Ok(())
}

fn revoked(certs: &Path) -> anyhow::Result<()> {
    let crl = certs.join("crl.pem");
    let all = revocation::list(&crl)?;
    if all.is_empty() {
        println!("{} revokes nothing", crl.display());
    }
    for revoked in all {
        println!("{}  revoked at unix {}", revoked.serial, revoked.revoked_at);
    }
    Ok(())
}
