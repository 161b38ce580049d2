//! What the binary's tests share: running `converge` against a journal and reading what it
//! printed.

#![allow(dead_code)] // each test file uses what it needs

use std::path::Path;
use std::process::{Command, Output};

/// `converge --db <db> <args>`, with `CONVERGE_DB` unset.
pub(crate) fn converge(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CONVERGE_DB")
        .output()
        .expect("the converge binary runs")
}

/// Bytes a command printed, as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
