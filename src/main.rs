use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `vaultfs VAULT MOUNTPOINT -o OPTS` (mount.fuse3, fstab) or `mount.vaultfs ...`.
    let result = match vaultfs::cli::fstab::parse(&args) {
        Some(form) => form.and_then(vaultfs::cli::cmd_mount),
        None => vaultfs::cli::run(vaultfs::cli::Cli::parse_from(args)),
    };
    if let Err(e) = result {
        eprintln!("vaultfs: {e}");
        std::process::exit(e.exit_code());
    }
}
