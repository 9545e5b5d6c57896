//! How fast evaluation is: 100,000 requests against 1,000 rules, timed and
//! printed (not asserted: machines differ), and checked to allocate nothing
//! for rp IDs already in canonical form (what browsers send).
//!
//! `cargo test -p fidoseal-policy --release --test perf -- --nocapture`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use common::Rng;
use fidoseal_policy::{Action, Operation, Policy, Principal, Request};

/// Counts the allocations of the thread that asks for it.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn thousand_rules() -> String {
    let mut text = String::from("[default]\naction = \"deny\"\nrequire_user_verification = true\n");
    for i in 0..1000 {
        let rule = match i % 10 {
            // 600 exact rp IDs
            0..=5 => format!("rp = [\"app{i}.corp{}.example.com\"]\naction = \"allow\"\n", i % 50),
            // 300 wildcards at two depths
            6 | 7 => format!("rp = [\"*.corp{}.example.com\"]\naction = \"allow\"\nmin_cred_protect = 2\n", i % 97),
            8 => format!("rp = [\"*.dept{i}.corp{}.example.com\"]\naction = \"deny\"\n", i % 50),
            // 100 rules for users and groups
            _ => format!(
                "rp = [\"*.corp{}.example.com\", \"app{i}.partner.example\"]\n{} = [\"u{}\"]\naction = \"allow\"\n",
                i % 50,
                if i % 20 == 9 { "users" } else { "groups" },
                i % 7
            ),
        };
        text.push_str("[[rule]]\n");
        text.push_str(&rule);
    }
    // A few rules for every rp ID.
    text.push_str("[[rule]]\nrp = [\"*\"]\ngroups = [\"contractors\"]\naction = \"deny\"\n");
    text
}

#[test]
fn evaluate_100k_requests_against_1000_rules() {
    let policy = Policy::from_sources(&[("/p/perf.toml", thousand_rules())]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.rules().len(), 1001);
    let mut rng = Rng::new(1234);
    let rp_ids: Vec<String> = (0..1000)
        .map(|_| match rng.below(4) {
            0 => format!("app{}.corp{}.example.com", rng.below(1000), rng.below(50)),
            1 => format!("x.dept{}.corp{}.example.com", rng.below(1000), rng.below(50)),
            2 => format!("www.app{}.partner.example", rng.below(1000)),
            _ => format!("site{}.elsewhere.org", rng.below(1000)),
        })
        .collect();
    let principals =
        [Principal::default(), Principal::user("u3", ["u3", "staff"]), Principal::user("alice", ["u1", "contractors"])];
    let requests: Vec<Request<'_>> = (0..100_000)
        .map(|i| Request {
            rp_id: &rp_ids[i % rp_ids.len()],
            operation: if i % 2 == 0 { Operation::MakeCredential } else { Operation::GetAssertion },
            principal: &principals[i % principals.len()],
            ctap1: false,
        })
        .collect();

    COUNTING.with(|c| c.set(true));
    let start = Instant::now();
    let mut allowed = 0u32;
    for request in &requests {
        if policy.evaluate(request).action == Action::Allow {
            allowed += 1;
        }
    }
    let elapsed = start.elapsed();
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(Cell::get);

    println!(
        "policy evaluation: {} requests against {} rules in {:.1} ms ({:.0} ns per request; {allowed} allowed; \
         {allocations} allocations; {} build)",
        requests.len(),
        policy.rules().len(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / requests.len() as f64,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    assert!(allowed > 0 && allowed < 100_000, "the workload exercises both outcomes");
    assert_eq!(allocations, 0, "evaluating canonical rp IDs must not allocate");

    // Uppercase or a trailing dot costs one allocation per request, not per rule.
    let upper = Request { rp_id: "APP1.CORP1.EXAMPLE.COM.", ..requests[0] };
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let _ = policy.evaluate(&upper);
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.with(Cell::get), 1);
}
