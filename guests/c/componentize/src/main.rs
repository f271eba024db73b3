//! The build tool for warren's C handlers.
//!
//! - `componentize bindings WIT_DIR OUT_DIR` writes `handler.h`,
//!   `handler.c` and `handler_component_type.o` (the world's type
//!   information, to link into the module), the C bindings of the `handler`
//!   world exactly as `wit-bindgen c` would.
//! - `componentize component CORE.wasm OUT.wasm` wraps a wasm32-wasi core
//!   module (a reactor: no `main`) linked with those bindings into a
//!   component, turning its WASI preview-1 imports into preview-2 ones with
//!   the adapter of the wasmtime release the host runs.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use wit_component::ComponentEncoder;
use wit_parser::Resolve;

/// The world every handler implements.
const WORLD: &str = "handler";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bindings", wit, out] => bindings(Path::new(wit), Path::new(out)),
        ["component", core, out] => component(Path::new(core), Path::new(out)),
        _ => bail!(
            "usage: componentize bindings WIT_DIR OUT_DIR\n       componentize component CORE.wasm OUT.wasm"
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
    let (resolve, world) = load(wit)?;
    let opts = wit_bindgen_c::Opts::default();
    let mut files = wit_bindgen_core::Files::default();
    opts.build().generate(&resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn component(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
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
