//! `floe-loadgen`: thin; the library does the work.

use clap::Parser;

fn main() {
    let cli = floe_loadgen::cli::Cli::parse();
    let mut out = std::io::stdout().lock();
    match floe_loadgen::cli::execute(cli, &mut out) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("floe-loadgen: {error:#}");
            std::process::exit(1);
        }
    }
}
