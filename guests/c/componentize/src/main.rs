//! The build tool for warren's C handlers.
//!
//! - `componentize bindings WIT_DIR OUT_DIR` writes `handler.h`,
//!   `handler.c` and `handler_component_type.o` (the world's type
//!   information, to link into the module), the C bindings of the `handler`
//!   world exactly as `wit-bindgen c` would.
//! - `componentize bindings WIT_DIR OUT_DIR MORE_WIT_DIR WORLD` does the same
//!   for world `WORLD` of the package in `MORE_WIT_DIR`, which may use the
//!   packages of `WIT_DIR` (guests/wit-http's `handler-http`, the handler
//!   world plus `wasi:http/outgoing-handler`: `handler_http.h`, ...).
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
        ["bindings", wit, out] => bindings(&[Path::new(wit)], WORLD, Path::new(out)),
        ["bindings", wit, out, more, world] => {
            bindings(&[Path::new(wit), Path::new(more)], world, Path::new(out))
        }
        ["component", core, out] => component(Path::new(core), Path::new(out)),
        _ => bail!(
            "usage: componentize bindings WIT_DIR OUT_DIR [MORE_WIT_DIR WORLD]\n       componentize component CORE.wasm OUT.wasm"
        ),
    }
}

/// Loads the WIT packages in `wits`, in order (a later one may use an
/// earlier one's), and finds `world` in the last.
fn load(wits: &[&Path], world: &str) -> Result<(Resolve, wit_parser::WorldId)> {
    // All features: this wit-parser cannot skip wasi:cli@0.2.12's import of
    // the `@unstable` wasi:clocks/timezone when the feature is off. Only
    // what `world` imports reaches the bindings either way.
    let mut resolve = Resolve {
        all_features: true,
        ..Resolve::default()
    };
    let mut pkg = None;
    for wit in wits {
        let (id, _) = resolve
            .push_path(wit)
            .with_context(|| format!("cannot read the WIT package in {}", wit.display()))?;
        pkg = Some(id);
    }
    let pkg = pkg.context("no WIT directory")?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    Ok((resolve, world))
}

fn bindings(wits: &[&Path], world: &str, out: &Path) -> Result<()> {
    let (resolve, world) = load(wits, world)?;
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
