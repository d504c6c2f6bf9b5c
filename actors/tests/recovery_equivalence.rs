//! G4: recovery is deterministic. Random command sequences for 1–8 entities with snapshot
//! intervals {1, 7, 100, never} and random restarts: the recovered state always equals the
//! state of a simple model. `PROPTEST_CASES` raises the case count (default 32).
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use stateline_actors::testkit::EventSourcedTestKit;
use stateline_actors::SnapshotPolicy;
use support::*;

#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, i64),
    Withdraw(usize, i64),
    Restart(usize),
}

fn step(entities: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..entities, 1..100i64).prop_map(|(e, a)| Step::Deposit(e, a)),
        3 => (0..entities, 1..150i64).prop_map(|(e, a)| Step::Withdraw(e, a)),
        1 => (0..entities).prop_map(Step::Restart),
    ]
}

fn policy(i: usize) -> SnapshotPolicy {
    match i {
        0 => SnapshotPolicy::every(1),
        1 => SnapshotPolicy::every(7),
        2 => SnapshotPolicy::every(100),
        _ => SnapshotPolicy::never(),
    }
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (1..=8usize, 0..4usize).prop_flat_map(|(n, p)| {
        (Just(p), proptest::collection::vec(step(n), 1..120))
            .prop_map(move |(p, s)| (p * 100 + n, s))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        .. ProptestConfig::default()
    })]

    #[test]
    fn recovered_state_equals_the_model((code, steps) in scenario()) {
        let (p, n) = (code / 100, code % 100);
        let mut kits: Vec<_> = (0..n)
            .map(|i| EventSourcedTestKit::<Account>::with_policy(&format!("acc{i}"), policy(p)))
            .collect();
        let mut model = vec![0i64; n];
        for s in steps {
            match s {
                Step::Deposit(e, a) => {
                    model[e] += a;
                    prop_assert_eq!(kits[e].run(AccountCommand::Deposit { amount: a }).reply(), Ok(model[e]));
                }
                Step::Withdraw(e, a) => {
                    let r = kits[e].run(AccountCommand::Withdraw { amount: a }).reply();
                    if a <= model[e] {
                        model[e] -= a;
                        prop_assert_eq!(r, Ok(model[e]));
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Step::Restart(e) => {
                    kits[e].restart();
                }
            }
        }
        for (e, kit) in kits.iter_mut().enumerate() {
            kit.restart();
            prop_assert_eq!(kit.state().balance, model[e]);
        }
    }
}
