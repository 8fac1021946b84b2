//! The `firstcall` binary.

mod doctor;
mod import_coturn;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firstcall_server::config::ServeArgs;

/// firstcall: a WebRTC calling backend whose calls connect on the first attempt.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run signaling, the HTTP API, the embedded STUN/TURN server and metrics.
    Serve(Box<ServeArgs>),
    /// Print an HS256 JWT for a user (for testing and for apps without their own issuer).
    Token(TokenArgs),
    /// Check a deployment (a firstcall server, or any TURN server) end to end and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Translate coturn's turnserver.conf into a firstcall config file (stdout or --output),
    /// and report on stderr what became of every coturn setting.
    ImportCoturn(import_coturn::ImportArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The HS256 secret the server runs with (--jwt-secret).
    #[arg(long, env = "FIRSTCALL_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The user (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::ImportCoturn(a) => std::process::exit(import_coturn::run(&a)),
        Cmd::Doctor(a) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let code = rt.block_on(doctor::run(a))?;
            std::process::exit(code);
        }
        Cmd::Token(a) => {
            let ttl = firstcall_server::config::parse_duration("--ttl", &a.ttl)?;
            if firstcall_signal::protocol::UserId::parse(&a.user).is_none() {
                anyhow::bail!("--user must be 1-128 printable characters without spaces");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            println!(
                "{}",
                firstcall_server::tokens::mint_hs256(&a.jwt_secret, &a.user, now, ttl.as_secs())?
            );
            Ok(())
        }
        Cmd::Serve(args) => {
            let config = args.clone().resolve()?;
            let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
                .with_context(|| format!("bad --log filter {:?}", config.log))?;
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match config.log_format {
                firstcall_server::config::LogFormat::Text => fmt
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init(),
                // One object per line, spans and fields included, for log shippers.
                firstcall_server::config::LogFormat::Json => fmt.json().with_current_span(true).init(),
            }
            let secrets: Vec<String> = config
                .turn_secrets
                .iter()
                .map(|s| firstcall_turn::auth::Secret::new(s.clone()).fingerprint())
                .collect();
            tracing::info!(
                http = %config.http_listen, turn = %config.turn_listen, tls = ?config.turn_tls_listen,
                realm = %config.realm, relay_ports = ?config.relay_ports, external_ip = ?config.external_ip,
                secret_fingerprints = ?secrets, secret_generated = config.secret_generated,
                data_dir = %config.data_dir.display(), "starting firstcall serve"
            );
            if config.secret_generated {
                tracing::info!(file = %config.data_dir.join(firstcall_server::config::SECRET_FILE).display(),
                    "no --turn-secret given: using the generated one kept in the data dir");
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(firstcall_server::serve(*args, config))?;
            Ok(())
        }
    }
}
