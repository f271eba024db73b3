//! The build tool for warren's Go handlers.
//!
//! - `componentize-go bindings WIT_DIR OUT_DIR` writes the Go bindings of the
//!   `handler` world exactly as `wit-bindgen go` would (a `main` package
//!   with the exported entry points, one package per interface), and the
//!   Go support package they import (`go.bytecodealliance.org/pkg`, which
//!   the generator's crate ships) into `OUT_DIR/pkg`, so a build needs no
//!   Go module download.
//! - `componentize-go component CORE.wasm OUT.wasm` embeds the world's type
//!   information into a `GOOS=wasip1 -buildmode=c-shared` core module and
//!   wraps it into a component, turning its WASI preview-1 imports into
//!   preview-2 ones with the reactor adapter of the wasmtime release the
//!   host runs.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The world every handler implements.
const WORLD: &str = "handler";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bindings", wit, out] => bindings(Path::new(wit), Path::new(out)),
        ["component", wit, core, out] => component(Path::new(wit), Path::new(core), Path::new(out)),
        _ => bail!(
            "usage: componentize-go bindings WIT_DIR OUT_DIR\n       componentize-go component WIT_DIR CORE.wasm OUT.wasm"
        ),
    }
}

/// Loads the WIT package in `wit` and finds the handler world in it.
fn load(wit: &Path) -> Result<(Resolve, wit_parser::WorldId)> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot read the WIT package in {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(WORLD))?;
    Ok((resolve, world))
}

fn bindings(wit: &Path, out: &Path) -> Result<()> {
    let (mut resolve, world) = load(wit)?;
    let opts = wit_bindgen_go::Opts::default();
    let mut files = wit_bindgen_core::Files::default();
    opts.build().generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn component(wit: &Path, core: &Path, out: &Path) -> Result<()> {
    let (resolve, world) = load(wit)?;
    let mut module =
        std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        StringEncoding::UTF8,
        false,
    )
    .context("cannot embed the world's type information")?;
    let component = ComponentEncoder::default()
        .module(&module)?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .with_context(|| format!("cannot make a component of {}", core.display()))?;
    std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
