//! Every sandbox guest mode through the real runtime: each misbehaviour ends
//! in its typed result, and the same runtime serves the next message normally.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren::runtime::{
    Completed, HandlerEnv, Limits, Module, Outcome, Retry, RunError, Runtime, RuntimeConfig,
    WarmInstances,
};
use warren_tests::{guest, message, multi_memory};

const TIMEOUT: Duration = Duration::from_millis(300);
const MEMORY: usize = 32 << 20;

fn setup() -> (Runtime, Module, Arc<HandlerEnv>) {
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 2,
        max_memory_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let bytes = std::fs::read(guest("sandbox")).unwrap();
    let module = rt.compile(&bytes).unwrap();
    let env = HandlerEnv {
        name: "sandbox".into(),
        config: BTreeMap::new(),
        publish_allow: vec![String::new()],
        limits: Limits {
            timeout: TIMEOUT,
            memory_bytes: MEMORY,
            ..Limits::default()
        },
        kv: None,
        http: None,
        metrics: None,
    };
    (rt, module, Arc::new(env))
}

async fn run(
    rt: &Runtime,
    module: &Module,
    env: &Arc<HandlerEnv>,
    body: &str,
) -> Result<Completed, RunError> {
    let permit = rt.try_acquire().expect("a free instance permit");
    rt.run(module, env, &message(body), &permit).await
}

/// After whatever came before, a well-behaved message still runs normally.
async fn assert_still_serves(rt: &Runtime, module: &Module, env: &Arc<HandlerEnv>) {
    let done = run(rt, module, env, "ack")
        .await
        .expect("the next message runs");
    assert_eq!(done.outcome, Outcome::Ack);
}

#[tokio::test]
async fn infinite_loop_is_stopped_by_the_deadline() {
    let (rt, module, env) = setup();
    let started = Instant::now();
    let err = run(&rt, &module, &env, "loop").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, RunError::Timeout { limit: TIMEOUT });
    assert!(
        took >= TIMEOUT,
        "stopped after {took:?}, before the {TIMEOUT:?} deadline"
    );
    assert_eq!(err.to_string(), "handler exceeded its time limit of 300 ms");
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn memory_bomb_is_stopped_by_the_cap() {
    let (rt, module, env) = setup();
    let err = run(&rt, &module, &env, "oom").await.unwrap_err();
    assert_eq!(err, RunError::MemoryCap { cap_bytes: MEMORY });
    assert_eq!(err.to_string(), "handler exceeded its memory cap of 32 MiB");
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow() {
    let (rt, module, env) = setup();
    let err = run(&rt, &module, &env, "recurse").await.unwrap_err();
    assert_eq!(err, RunError::StackOverflow);
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn panic_is_a_trap_carrying_the_panic_message() {
    let (rt, module, env) = setup();
    let err = run(&rt, &module, &env, "panic").await.unwrap_err();
    let RunError::Trap { message } = &err else {
        panic!("expected a trap, got {err:?}")
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        message.contains("the sandbox guest panics on purpose"),
        "{message}"
    );
    assert_eq!(err.kind(), "trap");
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn files_environment_and_network_are_out_of_reach() {
    let (rt, module, env) = setup();
    let done = run(&rt, &module, &env, "escape").await.unwrap();
    assert_eq!(done.outcome, Outcome::Ack);
    assert_eq!(done.publishes.len(), 1);
    let report = String::from_utf8(done.publishes[0].body.clone()).unwrap();
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in report:\n{report}"))
            .to_string()
    };
    assert!(field("read_file").starts_with("Err("), "{report}");
    assert!(field("read_dir").starts_with("Err("), "{report}");
    assert!(field("cwd_file").starts_with("Err("), "{report}");
    assert_eq!(field("env_home"), "None", "{report}");
    assert_eq!(field("env_count"), "0", "{report}");
    assert_eq!(field("args_count"), "0", "{report}");
    assert!(field("tcp").starts_with("Err("), "{report}");
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn log_spam_is_capped() {
    let (rt, module, env) = setup();
    // Spamming takes real time; this test is about the cap, not the deadline.
    let mut env = (*env).clone();
    env.limits.timeout = Duration::from_secs(30);
    let env = Arc::new(env);
    let done = run(&rt, &module, &env, "logspam").await.unwrap();
    assert_eq!(done.outcome, Outcome::Ack);
    let per_line = "log line 9999 of a guest that will not stop talking".len();
    let kept_at_most = env.limits.log_bytes / (per_line - 5);
    assert!(
        done.logs_dropped >= 10_000 - kept_at_most as u64,
        "only {} of 10000 log lines dropped",
        done.logs_dropped
    );
    let stdout_total = (0..10_000)
        .map(|i| format!("stdout line {i} of a guest that will not stop talking\n").len())
        .sum::<usize>();
    assert_eq!(
        done.stdio_dropped,
        (stdout_total - env.limits.stdio_bytes) as u64
    );
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn retry_and_reject_are_the_guests_own_outcomes() {
    let (rt, module, env) = setup();
    let retry = run(&rt, &module, &env, "retry").await.unwrap();
    assert_eq!(
        retry.outcome,
        Outcome::Retry(Retry {
            delay_ms: Some(100),
            reason: "the sandbox guest asked for a retry".into()
        })
    );
    let reject = run(&rt, &module, &env, "reject").await.unwrap();
    assert_eq!(
        reject.outcome,
        Outcome::Reject("the sandbox guest rejects this on purpose".into())
    );
}

#[tokio::test]
async fn publish_to_an_exchange_not_allowed_is_refused_in_the_guest() {
    let (rt, module, env) = setup();
    let done = run(&rt, &module, &env, "publish-denied").await.unwrap();
    let Outcome::Reject(reason) = done.outcome else {
        panic!("expected reject, got {:?}", done.outcome)
    };
    assert!(reason.contains("NotAllowed"), "{reason}");
    assert!(
        reason.contains("may not publish to exchange \\\"forbidden\\\""),
        "{reason}"
    );
    assert!(done.publishes.is_empty());
}

#[tokio::test]
async fn publishes_are_buffered_in_call_order() {
    let (rt, module, env) = setup();
    let done = run(&rt, &module, &env, "publish3").await.unwrap();
    assert_eq!(done.outcome, Outcome::Ack);
    let bodies: Vec<_> = done
        .publishes
        .iter()
        .map(|p| String::from_utf8(p.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, ["part 0", "part 1", "part 2"]);
    assert!(
        done.publishes
            .iter()
            .all(|p| p.routing_key == "sandbox.out" && p.exchange.is_empty())
    );
}

#[tokio::test]
async fn instances_are_bounded_by_the_pool_size() {
    let (rt, module, env) = setup();
    let a = rt.try_acquire().unwrap();
    let b = rt.try_acquire().unwrap();
    assert!(
        rt.try_acquire().is_none(),
        "a third permit from a pool of two"
    );
    // Every held permit can instantiate: the pool never refuses.
    assert_eq!(
        rt.run(&module, &env, &message("ack"), &a)
            .await
            .unwrap()
            .outcome,
        Outcome::Ack
    );
    assert_eq!(
        rt.run(&module, &env, &message("ack"), &b)
            .await
            .unwrap()
            .outcome,
        Outcome::Ack
    );
    drop(a);
    assert!(rt.try_acquire().is_some());
}

#[tokio::test]
async fn config_values_reach_the_guest() {
    let (rt, module, env) = setup();
    let mut env = (*env).clone();
    env.config.insert("mode".into(), "reject".into());
    let env = Arc::new(env);
    // The body says ack, the config says reject: config wins in this guest.
    let done = run(&rt, &module, &env, "ack").await.unwrap();
    assert!(matches!(done.outcome, Outcome::Reject(_)));
}

fn count(done: &Completed) -> String {
    String::from_utf8(done.publishes[0].body.clone()).unwrap()
}

#[tokio::test]
async fn per_message_instances_share_nothing() {
    let (rt, module, env) = setup();
    for _ in 0..3 {
        assert_eq!(
            count(&run(&rt, &module, &env, "count").await.unwrap()),
            "count 1"
        );
    }
}

/// Minor page faults this thread has taken (`/proc/thread-self/stat`, field
/// 10): a test on tokio's current-thread runtime runs its guests here.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Whether the kernel has `PAGEMAP_SCAN` (Linux 6.7+), which the slot
/// reset needs to keep pages resident; without it every reset decommits.
fn kernel_has_pagemap_scan() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 7)
}

/// The slot reset keeps the pages a guest dirtied resident and rewrites
/// them, scanning for them a buffer of runs at a time (vendor/README.md). A
/// guest that leaves many more separate runs of dirty pages than one buffer
/// holds (96 here, in its data image and past it) must find none of them in
/// the next fresh instance, and with `PAGEMAP_SCAN` the next instances take
/// no page faults for them (the published wasmtime decommitted every page
/// past the 32nd run, so each of them faulted again). A reused instance
/// does see its own writes, which shows the check would see stale pages.
#[tokio::test(flavor = "current_thread")]
async fn a_fresh_instance_sees_no_page_an_earlier_one_wrote() {
    let (rt, module, env) = setup();
    let stale = |done: Completed| String::from_utf8(done.publishes[0].body.clone()).unwrap();
    for i in 0..8 {
        let seen = stale(run(&rt, &module, &env, "scribble").await.unwrap());
        assert_eq!(seen, "stale 0", "fresh instance {i}");
    }
    let before = minor_faults();
    let n = 24;
    for i in 0..n {
        let seen = stale(run(&rt, &module, &env, "scribble").await.unwrap());
        assert_eq!(seen, "stale 0", "fresh instance {}", i + 8);
    }
    let per_message = (minor_faults() - before) / n;
    if kernel_has_pagemap_scan() {
        assert!(
            per_message < 16,
            "{per_message} page faults per fresh instance of a guest that dirties 96 pages"
        );
    }

    let warm = WarmInstances::default();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let permit = rt.try_acquire().unwrap();
        let done = rt
            .run_warm(&module, &env, &message("scribble"), &permit, &warm, 10)
            .await
            .unwrap();
        seen.push(stale(done));
    }
    assert_eq!(seen, ["stale 0", "stale 96"]);
}

/// The page size the sandbox guest's `scribble` mode counts in (its
/// `PAGE`): what it writes, not the host's page size, which the slot reset
/// rounds to.
const SCRIBBLE_PAGE: usize = 4096;

/// Bytes the pool keeps resident in its unused slots: what the last reset
/// of this runtime's only busy slot rewrote and kept for the next instance.
fn resident_bytes(rt: &Runtime) -> usize {
    rt.engine()
        .pooling_allocator_metrics()
        .expect("warren runs on the pooling allocator")
        .unused_memory_bytes_resident()
}

async fn serve_small(rt: &Runtime, module: &Module, env: &Arc<HandlerEnv>, n: usize) {
    for _ in 0..n {
        assert_still_serves(rt, module, env).await;
    }
}

/// A page the slot reset rewrites by hand stays the slot's own copy, and
/// the kernel cannot tell it from one the next instance writes, so without
/// more every later reset rewrites it again: one message that dirtied many
/// pages (a large body, say) would tax every later message in its slot for
/// as long as the slot lives. The vendored wasmtime (vendor/README.md, part
/// 5) decommits the slot instead when a reset rewrites well over what the
/// first reset after the slot was clean did; the pages kept resident for
/// the next instance then go back to what a small message leaves.
#[tokio::test(flavor = "current_thread")]
async fn one_message_that_dirties_many_pages_does_not_tax_every_later_reset() {
    let (rt, module, env) = setup();
    serve_small(&rt, &module, &env, 4).await;
    let small = resident_bytes(&rt);
    run(&rt, &module, &env, "scribble").await.unwrap();
    let after_large = resident_bytes(&rt);
    serve_small(&rt, &module, &env, 4).await;
    let later = resident_bytes(&rt);
    if kernel_has_pagemap_scan() {
        // "scribble" dirties 96 of its pages more than "ack" does.
        assert!(
            later < small + 48 * SCRIBBLE_PAGE,
            "after one message that dirtied 96 more pages, {later} bytes are still \
             rewritten by every reset (a small message alone: {small}; the large \
             one's reset: {after_large})"
        );
    }
}

/// What a slot compares its resets with is learned at the first reset after
/// it was clean, and that may follow a large message itself (one of a
/// burst): every 1,024 resets a slot that rewrites more than 32 pages is
/// decommitted and learns it again, so such a slot is back to what a small
/// message leaves within that many messages.
#[tokio::test(flavor = "current_thread")]
async fn a_slot_whose_first_message_was_large_learns_again() {
    let (rt, module, env) = setup();
    run(&rt, &module, &env, "scribble").await.unwrap();
    serve_small(&rt, &module, &env, 8).await;
    let stuck = resident_bytes(&rt);
    serve_small(&rt, &module, &env, 1024).await;
    let later = resident_bytes(&rt);
    if kernel_has_pagemap_scan() {
        assert!(
            stuck >= 96 * SCRIBBLE_PAGE,
            "the large first message's pages are rewritten by every reset at first: {stuck} bytes"
        );
        assert!(
            later < 48 * SCRIBBLE_PAGE,
            "1,032 small messages after a large first one, {later} bytes are still rewritten \
             by every reset"
        );
    }
}

#[tokio::test]
async fn reused_instances_carry_state_until_max_uses_or_a_trap() {
    let (rt, module, env) = setup();
    let warm = WarmInstances::default();
    let run_warm = async |body: &str| {
        let permit = rt.try_acquire().unwrap();
        rt.run_warm(&module, &env, &message(body), &permit, &warm, 3)
            .await
    };
    // One instance serves three messages, then a fresh one takes over.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(count(&run_warm("count").await.unwrap()));
    }
    assert_eq!(seen, ["count 1", "count 2", "count 3", "count 1"]);
    // A trap throws the instance away.
    assert!(matches!(
        run_warm("panic").await,
        Err(RunError::Trap { .. })
    ));
    assert_eq!(count(&run_warm("count").await.unwrap()), "count 1");
    // Per-message state (publishes, log counters) starts from zero each time.
    let done = run_warm("publish3").await.unwrap();
    assert_eq!(done.publishes.len(), 3);
    assert_eq!(count(&run_warm("count").await.unwrap()), "count 2");
}

#[tokio::test]
async fn a_guest_blocked_in_a_wasi_sleep_ends_at_the_deadline() {
    let (rt, module, env) = setup();
    let started = Instant::now();
    // Far longer than any wait below: only the deadline can end it.
    let err = run(&rt, &module, &env, "sleep 600000").await.unwrap_err();
    assert_eq!(err, RunError::Timeout { limit: TIMEOUT });
    assert!(started.elapsed() >= TIMEOUT);
    assert_still_serves(&rt, &module, &env).await;
}

#[tokio::test]
async fn a_warm_instance_whose_call_was_dropped_is_not_reused() {
    let (rt, module, env) = setup();
    let warm = WarmInstances::default();
    let run_warm = async |body: &str| {
        let permit = rt.try_acquire().unwrap();
        rt.run_warm(&module, &env, &message(body), &permit, &warm, 100)
            .await
    };
    assert_eq!(count(&run_warm("count").await.unwrap()), "count 1");
    assert_eq!(count(&run_warm("count").await.unwrap()), "count 2");
    // The warm instance is taken, its call dropped inside the sleep.
    let err = run_warm("sleep 600000").await.unwrap_err();
    assert_eq!(err.kind(), "timeout");
    // A fresh instance serves next: the count starts over.
    assert_eq!(count(&run_warm("count").await.unwrap()), "count 1");
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_shares_its_thread() {
    // One thread for both: the ticker task only runs if the spinning guest
    // yields the thread, as it must every epoch tick.
    let (rt, module, env) = setup();
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let err = run(&rt, &module, &env, "loop").await.unwrap_err();
    ticker.abort();
    assert_eq!(err.kind(), "timeout");
    let n = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n >= 5,
        "the other task ran only {n} times while the guest spun"
    );
}

fn multi_memory_setup(extra: u32, memory: usize) -> (Runtime, Module, Arc<HandlerEnv>) {
    let (rt, _, env) = setup();
    let module = rt.compile(&multi_memory::component(extra)).unwrap();
    let mut env = (*env).clone();
    env.limits.memory_bytes = memory;
    (rt, module, Arc::new(env))
}

#[tokio::test]
async fn the_memory_cap_holds_for_all_memories_of_an_instance() {
    // Three extra memories of 20 MiB each: each under the 32 MiB cap,
    // together over it.
    let (rt, module, env) = multi_memory_setup(3, MEMORY);
    let pages = (20 << 20) / 65536;
    let err = run(&rt, &module, &env, &"x".repeat(pages))
        .await
        .unwrap_err();
    assert_eq!(err, RunError::MemoryCap { cap_bytes: MEMORY });
    // 4 MiB each fits.
    let done = run(&rt, &module, &env, &"x".repeat(64)).await.unwrap();
    assert_eq!(done.outcome, Outcome::Ack);
}

#[tokio::test]
async fn a_component_with_more_memories_than_an_instance_slot_has_is_refused() {
    let (rt, _, _) = setup();
    let err = rt.compile(&multi_memory::component(8)).unwrap_err();
    assert!(
        err.to_string()
            .contains("memories count of 9 exceeds the per-instance limit of 4"),
        "{err}"
    );
}

#[tokio::test]
async fn a_handler_with_the_most_memories_cannot_starve_another() {
    // A pool of two: a component with the most memories allowed in one
    // slot, spinning, and an ordinary one in the other, at the same time.
    let (rt, wide, env) = multi_memory_setup(3, MEMORY);
    let bytes = std::fs::read(guest("sandbox")).unwrap();
    let narrow = rt.compile(&bytes).unwrap();
    let (a, b) = (rt.try_acquire().unwrap(), rt.try_acquire().unwrap());
    let spin = message("loop");
    let ack = message("ack");
    let (spun, acked) = tokio::join!(
        rt.run(&wide, &env, &spin, &a),
        rt.run(&narrow, &env, &ack, &b)
    );
    assert_eq!(spun.unwrap_err().kind(), "timeout");
    assert_eq!(acked.unwrap().outcome, Outcome::Ack);
}

/// The vendored wasmtime fills a table from an element segment whose offset
/// is known only at instantiation (an imported global, as in every
/// dynamically linked library, Python's among them) by making all the
/// module's function references at once and storing their addresses, where
/// the published one made a call out of wasm per element
/// (vendor/README.md, patch 4). Every element must still be the function it
/// names, imported or defined, the same reference `ref.func` gives, in
/// every fresh instance; and a segment that does not fit still fails the
/// instantiation, before writing anything.
#[tokio::test]
async fn tables_filled_at_a_dynamic_offset_hold_the_functions_they_name() {
    use wasmtime::{Func, Global, GlobalType, Instance, Mutability, Store, Val, ValType};

    let rt = Runtime::new(RuntimeConfig {
        max_instances: 2,
        ..Default::default()
    })
    .unwrap();
    let engine = rt.engine();
    let wat = r#"
        (module
          (import "env" "base" (global $base i32))
          (import "env" "host" (func $host (result i32)))
          (type $r (func (result i32)))
          (table $t (export "t") 8 funcref)
          (func $a (result i32) i32.const 11)
          (func $b (result i32) i32.const 22)
          (func $never (result i32) i32.const 33)
          (elem (table $t) (global.get $base) func $a $host $b $a)
          (elem declare func $never)
          (func (export "call") (param i32) (result i32)
            local.get 0
            call_indirect (type $r))
          (func (export "ref_a") (result funcref) ref.func $a)
          (func (export "ref_b") (result funcref) ref.func $b)
          (func (export "ref_never") (result funcref) ref.func $never))
    "#;
    let module = wasmtime::Module::new(engine, wat::parse_str(wat).unwrap()).unwrap();

    async fn instantiate(
        engine: &wasmtime::Engine,
        module: &wasmtime::Module,
        base: i32,
    ) -> wasmtime::Result<(Store<()>, Instance)> {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(1 << 20);
        let host = Func::wrap(&mut store, || 44i32);
        let base = Global::new(
            &mut store,
            GlobalType::new(ValType::I32, Mutability::Const),
            Val::I32(base),
        )?;
        let instance = Instance::new_async(&mut store, module, &[base.into(), host.into()]).await?;
        Ok((store, instance))
    }

    for round in 0..4 {
        let base = 1 + round;
        let (mut store, instance) = instantiate(engine, &module, base).await.unwrap();
        let call = instance
            .get_typed_func::<i32, i32>(&mut store, "call")
            .unwrap();
        let mut seen = Vec::new();
        for i in 0..8 {
            seen.push(call.call_async(&mut store, i).await.ok());
        }
        let mut want = vec![None; 8];
        for (i, v) in [11, 44, 22, 11].into_iter().enumerate() {
            want[base as usize + i] = Some(v);
        }
        assert_eq!(seen, want, "fresh instance {round}, elements at {base}");

        // The table holds the very references `ref.func` makes.
        let table = instance.get_table(&mut store, "t").unwrap();
        for (name, at) in [("ref_a", base), ("ref_b", base + 2), ("ref_a", base + 3)] {
            let by_ref = instance
                .get_typed_func::<(), Option<Func>>(&mut store, name)
                .unwrap()
                .call_async(&mut store, ())
                .await
                .unwrap()
                .unwrap();
            let in_table = table.get(&mut store, at as u64).unwrap();
            let in_table = *in_table.unwrap_func().unwrap();
            let (a, b) = (by_ref.to_raw(&mut store), in_table.to_raw(&mut store));
            assert_eq!(a, b, "{name} and element {at}");
        }
        // A function no segment holds still gets a working reference.
        let never = instance
            .get_typed_func::<(), Option<Func>>(&mut store, "ref_never")
            .unwrap()
            .call_async(&mut store, ())
            .await
            .unwrap()
            .unwrap();
        let never = never.typed::<(), i32>(&store).unwrap();
        assert_eq!(never.call_async(&mut store, ()).await.unwrap(), 33);
    }

    // Four elements from 5 run past the table's 8: the instantiation fails
    // with wasmtime's out-of-bounds trap, and the next one is unharmed.
    let Err(err) = instantiate(engine, &module, 5).await else {
        panic!("four elements at 5 fit a table of 8");
    };
    assert!(
        format!("{err:?}").contains("out of bounds table access"),
        "{err:?}"
    );
    let (mut store, instance) = instantiate(engine, &module, 0).await.unwrap();
    let call = instance
        .get_typed_func::<i32, i32>(&mut store, "call")
        .unwrap();
    assert_eq!(call.call_async(&mut store, 1).await.unwrap(), 44);
}
