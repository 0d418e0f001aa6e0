use clap::Parser;
use spillway::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    spillway::logging::init();
    let result = match cli.command {
        Command::Serve(args) => spillway::serve::run(*args),
        Command::Recover(args) => spillway::recover::run(args),
        Command::Scrub(args) => spillway::scrub::run(args),
        Command::Config(_) => {
            print!("{}", spillway::config::file::print_defaults());
            Ok(())
        }
        Command::Doctor(args) => spillway::config::doctor::run(*args).map_err(anyhow::Error::from),
        Command::Import(args) => spillway::image::run_import(args),
        Command::Export(args) => spillway::image::run_export(args),
        Command::List(args) => spillway::inspect::run_list(args),
        Command::Info(args) => spillway::inspect::run_info(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spillway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
