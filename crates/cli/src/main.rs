//! The `dormouse` binary: parses flags and wires the crates together. It
//! decides which backends exist; the crates know nothing of the command line.

mod up;

/// Every request allocates (headers, the store, guest resources) and frees on
/// another thread as often as not; mimalloc's thread-local free lists cost a
/// fraction of glibc malloc's locking and consolidation here (see bench/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "dormouse", version, about = "Scale-to-zero host for WebAssembly HTTP components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an application (a Spin manifest) until interrupted.
    Up(up::UpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Our crates log at info, everything else at warn; RUST_LOG overrides.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,dormouse=info,dormouse_cli=info,dormouse_gateway=info,dormouse_wasm_host=info,dormouse_loader=info,dormouse_kv=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let result = match cli.command {
        Command::Up(args) => up::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
