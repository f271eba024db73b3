//! `warren check MODULE`: compile a module the way `warren run` would, and
//! say what it is (digest, size, signer, imports, exports, compile time) or
//! exactly why it is refused.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::runtime::{Module, Runtime};
use crate::signing::Signature;

/// What `warren check` found out about a module that passed.
#[derive(Debug)]
pub struct Report {
    pub path: PathBuf,
    pub module: Module,
    /// Who signed it, or why its signature is bad (checked against no
    /// trust list: the hosts' `[deploy]` decides whom to trust).
    pub signature: Signature,
}

/// Reads, compiles and type-checks the module at `path`. The error names the
/// file and what is wrong with it.
pub fn check(runtime: &Runtime, path: &Path) -> anyhow::Result<Report> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    let module = runtime
        .compile(&bytes)
        .with_context(|| format!("module {} is refused", path.display()))?;
    Ok(Report {
        path: path.to_path_buf(),
        module,
        signature: Signature::of(&bytes),
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.module;
        writeln!(f, "module:  {}", self.path.display())?;
        writeln!(f, "world:   {} (ok)", m.world())?;
        writeln!(f, "digest:  {}", m.digest())?;
        writeln!(f, "size:    {} bytes", m.size())?;
        writeln!(f, "signed:  {}", self.signature)?;
        writeln!(f, "compile: {:.1} ms", m.compile_time().as_secs_f64() * 1e3)?;
        writeln!(f, "imports:")?;
        for i in m.imports() {
            writeln!(f, "  {i}")?;
        }
        writeln!(f, "exports:")?;
        for e in m.exports() {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
