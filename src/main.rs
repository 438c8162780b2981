//! The `timeline` command: serve, mint tokens, show the configuration, prepare storage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use timeline::api::{Authenticator, resolve_jwt_secret};
use timeline::config::{Config, HumanDuration, Overrides, StoreKind};
use timeline::server::Node;

#[derive(Parser)]
#[command(name = "timeline", version, about = "Chat timeline service")]
struct Cli {
    /// Configuration file (default: ./timeline.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct Common {
    /// Address for gRPC and HTTP (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(Common),
    /// Print a token signed with the configured secret.
    Token {
        #[command(flatten)]
        common: Common,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The device id (`did`).
        #[arg(long, default_value = "cli")]
        device: String,
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: HumanDuration,
        /// An operator token: may force delivery modes (SetConversationMode).
        #[arg(long)]
        admin: bool,
    },
    /// Print the effective configuration (secrets masked).
    Config(Common),
    /// Create the storage layout (the embedded store creates its tables on open).
    Migrate(Common),
}

fn load(cli_config: Option<&PathBuf>, common: &Common) -> Result<Config, String> {
    let overrides = Overrides {
        listen: common.listen,
        data_dir: common.data_dir.clone(),
    };
    Config::load(cli_config.map(PathBuf::as_path), &overrides).map_err(|e| e.to_string())
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cli: Cli) -> Result<(), String> {
    match &cli.command {
        Command::Serve(common) => {
            let config = load(cli.config.as_ref(), common)?;
            init_logging(&config.log);
            let node = Node::build(&config).await.map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            // One line on stdout, for people and for scripts that started us on port 0.
            let scheme = if config.tls.enabled() {
                "https"
            } else {
                "http"
            };
            println!("timeline listening on {scheme}://{addr}");
            tracing::info!(%addr, data_dir = %config.data_dir.display(), tls = config.tls.enabled(), "serving gRPC and HTTP");
            node.serve(&config, listener, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Token {
            common,
            user,
            device,
            ttl,
            admin,
        } => {
            let config = load(cli.config.as_ref(), common)?;
            let (secret, generated) =
                resolve_jwt_secret(config.jwt_secret.as_deref(), &config.data_dir)
                    .map_err(|e| e.to_string())?;
            if generated {
                eprintln!(
                    "generated a new jwt secret in {}",
                    config.data_dir.display()
                );
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let token = Authenticator::new(&secret).mint_with(user, device, ttl.0, now, *admin)?;
            println!("{token}");
            Ok(())
        }
        Command::Config(common) => {
            let config = load(cli.config.as_ref(), common)?;
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Migrate(common) => {
            let config = load(cli.config.as_ref(), common)?;
            match config.store {
                StoreKind::Embedded => {
                    timeline::store::embedded::EmbeddedStore::open(
                        &config.data_dir,
                        config.embedded_options(),
                    )
                    .map_err(|e| e.to_string())?;
                    println!("embedded store ready in {}", config.data_dir.display());
                }
                StoreKind::Scylla => {
                    let options = config.scylla_options();
                    let applied = timeline::store::scylla::ScyllaStore::migrate(&options)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!(
                        "keyspace {} ready on {}: {} statements applied (all IF NOT EXISTS)",
                        options.keyspace,
                        options.nodes.join(","),
                        applied.len()
                    );
                }
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timeline: {e}");
            ExitCode::FAILURE
        }
    }
}
