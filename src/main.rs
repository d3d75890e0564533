use clap::Parser;

fn main() {
    let cli = vaultfs::cli::Cli::parse();
    if let Err(e) = vaultfs::cli::run(cli) {
        eprintln!("vaultfs: {e}");
        std::process::exit(e.exit_code());
    }
}
