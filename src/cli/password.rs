//! Where passwords come from: `--passfile F` (first line, without its newline), `--extpass
//! CMD` (first line of the command's stdout, run with `sh -c`), else the terminal without
//! echo. Passwords are zeroized when dropped and never logged.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;
use zeroize::Zeroizing;

use crate::vault::{Result, VaultError};

pub type Password = Zeroizing<Vec<u8>>;

#[derive(Debug, Clone, Args, Default)]
pub struct PasswordArgs {
    /// Read the password from the first line of this file
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub passfile: Option<PathBuf>,
    /// Run this command (with `sh -c`) and use the first line of its output as the password
    #[arg(long, value_name = "CMD")]
    pub extpass: Option<String>,
}

fn first_line(bytes: Zeroizing<Vec<u8>>, source: &str) -> Result<Password> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut line = Zeroizing::new(bytes[..end].to_vec());
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err(VaultError::PasswordSource(format!(
            "{source} gave an empty password"
        )));
    }
    Ok(line)
}

pub fn read_passfile(path: &Path) -> Result<Password> {
    let bytes = std::fs::read(path).map_err(|e| {
        VaultError::PasswordSource(format!("cannot read password file {}: {e}", path.display()))
    })?;
    first_line(
        Zeroizing::new(bytes),
        &format!("password file {}", path.display()),
    )
}

fn run_extpass(cmd: &str) -> Result<Password> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| VaultError::PasswordSource(format!("cannot run --extpass command: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(VaultError::PasswordSource(format!(
            "--extpass command failed ({})",
            out.status
        )));
    }
    first_line(stdout, "--extpass command")
}

fn prompt(text: &str) -> Result<Password> {
    match rpassword::prompt_password(text) {
        Ok(p) => first_line(Zeroizing::new(p.into_bytes()), "the terminal"),
        Err(e) => Err(VaultError::PasswordSource(format!(
            "cannot ask for the password ({e}): no terminal? use --passfile FILE or --extpass CMD"
        ))),
    }
}

impl PasswordArgs {
    /// The password to unlock a vault.
    pub fn get(&self, what: &str) -> Result<Password> {
        if let Some(f) = &self.passfile {
            return read_passfile(f);
        }
        if let Some(c) = &self.extpass {
            return run_extpass(c);
        }
        prompt(&format!("Password for {what}: "))
    }

    /// A new password: from the file or command, or asked twice on the terminal.
    pub fn get_new(&self, what: &str) -> Result<Password> {
        if self.passfile.is_some() || self.extpass.is_some() {
            return self.get(what);
        }
        let first = prompt(&format!("New password for {what}: "))?;
        let second = prompt("Repeat the password: ")?;
        if *first != *second {
            return Err(VaultError::PasswordSource(
                "the two passwords differ".into(),
            ));
        }
        Ok(first)
    }
}

/// Reads lines from a reader until one is non-empty (for recovery keys from stdin).
pub fn read_line_from(reader: impl BufRead) -> Option<Zeroizing<String>> {
    reader
        .lines()
        .map_while(|l| l.ok())
        .map(Zeroizing::new)
        .find(|l| !l.trim().is_empty())
}
