//! A handler component with several linear memories, built from WAT: what
//! the per-instance memory cap and the pool's per-component limits are
//! tested with. No toolchain we ship emits one, so it is written by hand:
//! one core module that implements `handle` against the canonical ABI
//! directly, wrapped into a component of the handler world.
//!
//! What `handle` does depends on the body: a body that starts with `l`
//! spins until the deadline stops it; any other body of N bytes grows each
//! extra memory by N pages (64 KiB each), traps if one refuses, and acks.

use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

use crate::repo_root;

/// The component, with `extra` memories besides the one the canonical ABI
/// uses.
pub fn component(extra: u32) -> Vec<u8> {
    let memories: String = (0..extra)
        .map(|i| format!("  (memory $m{i} 1)\n"))
        .collect();
    let grows: String = (0..extra)
        .map(|i| {
            format!(
                "    (if (i32.eq (memory.grow $m{i} (local.get $pages)) (i32.const -1)) (then unreachable))\n"
            )
        })
        .collect();
    let wat = format!(
        r#"(module
  (memory (export "memory") 2)
{memories}  (global $heap (mut i32) (i32.const 1024))
  ;; A bump allocator: the host copies the message in through it.
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  ;; The message arrives by pointer; its first field is the body (pointer,
  ;; length). The outcome is returned by pointer: 8 zero bytes are `ack`.
  (func (export "handle") (param $msg i32) (result i32)
    (local $pages i32)
    (local.set $pages (i32.load offset=4 (local.get $msg)))
    (if (i32.and (i32.gt_u (local.get $pages) (i32.const 0))
                 (i32.eq (i32.load8_u (i32.load (local.get $msg))) (i32.const 108)))
      (then (loop $spin (br $spin))))
{grows}    (i32.const 8)))
"#
    );
    let mut module = wat::parse_str(&wat).expect("the WAT parses");
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(repo_root().join("wit"))
        .expect("the WIT parses");
    let world = resolve
        .select_world(&[pkg], Some("handler"))
        .expect("the handler world");
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("the metadata embeds");
    ComponentEncoder::default()
        .module(&module)
        .expect("the module is a handler")
        .validate(true)
        .encode()
        .expect("the component encodes")
}
