use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = vaultfs::cli::Cli::parse();
    if let Err(e) = vaultfs::cli::run(cli) {
        eprintln!("vaultfs: {e}");
        std::process::exit(e.exit_code());
    }
}
