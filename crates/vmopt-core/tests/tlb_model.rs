//! One TLB array against a plain model, for every replacement policy.
//!
//! The model is written independently of `tlb::array` and as plainly as
//! possible: per set a list of ways holding `(vpn, shift, asid)` tags, and
//! the replacement state of each policy in its textbook form (LRU: tags from
//! least to most recent; FIFO: tags in fill order; PLRU: `ways - 1` node bits
//! in heap order, root 0, each pointing at the pseudo-LRU half; random: the
//! seeded xorshift64, which defines the policy). Invalid ways fill first,
//! lowest first; invalidations leave the replacement state alone.

use proptest::prelude::*;
use vmopt_core::tlb::{Policy, TlbArray, TlbConfig, TlbEntry, TlbStats, XorShift64, GLOBAL_ASID};

type Tag = (u64, u8, u32);

#[derive(Clone, Copy)]
struct Way {
    tag: Tag,
    prefetched: bool,
}

struct Model {
    sets: usize,
    ways: usize,
    policy: Policy,
    shifts: Vec<u8>,
    slots: Vec<Vec<Option<Way>>>,
    order: Vec<Vec<Tag>>,
    tree: Vec<Vec<u8>>,
    rng: XorShift64,
    evictions: u64,
    invalidations: u64,
    fills: u64,
    useless: u64,
}

impl Model {
    fn new(sets: usize, ways: usize, policy: Policy, shifts: Vec<u8>, seed: u64) -> Model {
        Model {
            sets,
            ways,
            policy,
            shifts,
            slots: vec![vec![None; ways]; sets],
            order: vec![Vec::new(); sets],
            tree: vec![vec![0; ways.saturating_sub(1)]; sets],
            rng: XorShift64::new(seed),
            evictions: 0,
            invalidations: 0,
            fills: 0,
            useless: 0,
        }
    }

    fn set_of(&self, tag: Tag) -> usize {
        (tag.0 % self.sets as u64) as usize
    }

    fn way_of(&self, tag: Tag) -> Option<usize> {
        self.slots[self.set_of(tag)]
            .iter()
            .position(|w| w.is_some_and(|w| w.tag == tag))
    }

    fn path(&self, way: usize) -> Vec<(usize, u8)> {
        let depth = self.ways.trailing_zeros() as usize;
        let mut node = 0;
        let mut out = Vec::new();
        for level in 0..depth {
            let d = ((way >> (depth - 1 - level)) & 1) as u8;
            out.push((node, d));
            node = 2 * node + 1 + d as usize;
        }
        out
    }

    fn plru_use(&mut self, s: usize, way: usize) {
        for (node, d) in self.path(way) {
            self.tree[s][node] = 1 - d;
        }
    }

    fn plru_victim(&self, s: usize) -> usize {
        let (mut node, mut way) = (0, 0);
        for _ in 0..self.ways.trailing_zeros() {
            let d = self.tree[s][node] as usize;
            way = 2 * way + d;
            node = 2 * node + 1 + d;
        }
        way
    }

    fn use_tag(&mut self, tag: Tag) {
        let s = self.set_of(tag);
        match self.policy {
            Policy::Lru => {
                self.order[s].retain(|t| *t != tag);
                self.order[s].push(tag);
            }
            Policy::Plru => {
                let w = self.way_of(tag).unwrap();
                self.plru_use(s, w);
            }
            _ => {}
        }
    }

    fn lookup(&mut self, va: u64, asid: u32) -> Option<Tag> {
        for i in 0..self.shifts.len() {
            let shift = self.shifts[i];
            for a in [asid, GLOBAL_ASID] {
                let tag = (va >> shift, shift, a);
                if self.way_of(tag).is_some() {
                    self.use_tag(tag);
                    return Some(tag);
                }
            }
        }
        None
    }

    fn insert(&mut self, tag: Tag, prefetched: bool) -> Option<Tag> {
        let s = self.set_of(tag);
        if self.way_of(tag).is_some() {
            self.use_tag(tag);
            return None;
        }
        let mut victim = None;
        let way = match self.slots[s].iter().position(Option::is_none) {
            Some(w) => w,
            None => {
                self.evictions += 1;
                let w = match self.policy {
                    Policy::Lru | Policy::Fifo => {
                        let oldest = self.order[s][0];
                        self.slots[s]
                            .iter()
                            .position(|x| x.is_some_and(|x| x.tag == oldest))
                            .unwrap()
                    }
                    Policy::Random => (self.rng.next() % self.ways as u64) as usize,
                    Policy::Plru => self.plru_victim(s),
                };
                let old = self.slots[s][w].unwrap();
                if old.prefetched {
                    self.useless += 1;
                }
                self.order[s].retain(|t| *t != old.tag);
                victim = Some(old.tag);
                w
            }
        };
        self.slots[s][way] = Some(Way { tag, prefetched });
        self.order[s].push(tag);
        if prefetched {
            self.fills += 1;
        }
        if self.policy == Policy::Plru {
            self.plru_use(s, way);
        }
        victim
    }

    fn remove_where(&mut self, pred: impl Fn(Tag) -> bool) -> u64 {
        let mut n = 0;
        for s in 0..self.sets {
            for w in 0..self.ways {
                if let Some(x) = self.slots[s][w] {
                    if pred(x.tag) {
                        self.slots[s][w] = None;
                        self.order[s].retain(|t| *t != x.tag);
                        self.invalidations += 1;
                        if x.prefetched {
                            self.useless += 1;
                        }
                        n += 1;
                    }
                }
            }
        }
        n
    }

    fn flush_range(&mut self, va: u64, size: u64, asid: Option<u32>) -> u64 {
        let end = va as u128 + size as u128;
        self.remove_where(|t| {
            let start = (t.0 as u128) << t.1;
            let stop = (t.0 as u128 + 1) << t.1;
            start < end
                && (va as u128) < stop
                && asid.map_or(true, |a| t.2 == a || t.2 == GLOBAL_ASID)
        })
    }
}

#[derive(Clone, Debug)]
enum Op {
    Access {
        va: u64,
        asid: u32,
        global: bool,
        shift: u8,
        prefetched: bool,
    },
    Refill {
        va: u64,
        asid: u32,
        global: bool,
        shift: u8,
    },
    Flush,
    FlushAsid(u32),
    FlushVa(u64, Option<u32>),
    FlushRange(u64, u64, Option<u32>),
}

fn va_strategy() -> impl Strategy<Value = u64> {
    (
        0u64..3,
        prop::sample::select(vec![0u64, 1, 2, 3, 4, 5, 511]),
        prop::sample::select(vec![0u64, 8, 4095]),
    )
        .prop_map(|(r, k, off)| (r << 21) + (k << 12) + off)
}

fn op_strategy(multi: bool) -> impl Strategy<Value = Op> {
    let shift = if multi {
        prop::sample::select(vec![12u8, 21]).boxed()
    } else {
        Just(12u8).boxed()
    };
    let asid = 0u32..3;
    let opt_asid = prop::option::of(0u32..3);
    let size = prop_oneof![1u64..=64 * 4096, (64 * 4096 + 1)..=(6u64 << 20)];
    prop_oneof![
        12 => (va_strategy(), asid.clone(), any::<bool>(), shift.clone(), prop::bool::weighted(0.2))
            .prop_map(|(va, asid, global, shift, prefetched)| Op::Access { va, asid, global, shift, prefetched }),
        2 => (va_strategy(), asid.clone(), any::<bool>(), shift)
            .prop_map(|(va, asid, global, shift)| Op::Refill { va, asid, global, shift }),
        2 => (va_strategy(), opt_asid.clone()).prop_map(|(va, a)| Op::FlushVa(va, a)),
        2 => (va_strategy(), size, opt_asid).prop_map(|(va, s, a)| Op::FlushRange(va, s, a)),
        1 => asid.prop_map(Op::FlushAsid),
        1 => Just(Op::Flush),
    ]
}

fn tag_of(e: &TlbEntry) -> Tag {
    (e.vpn, e.shift, e.asid)
}

fn run(entries: u32, ways: u32, policy: Policy, sizes: &[u64], seed: u64, ops: &[Op]) {
    let cfg = TlbConfig::new(entries, ways, policy, sizes, 1, "t", seed).unwrap();
    let mut arr = TlbArray::new(&cfg);
    let mut stats = TlbStats::default();
    let shifts: Vec<u8> = cfg
        .page_sizes
        .iter()
        .map(|s| s.trailing_zeros() as u8)
        .collect();
    let mut model = Model::new(cfg.sets() as usize, ways as usize, policy, shifts, seed);
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Access {
                va,
                asid,
                global,
                shift,
                prefetched,
            } => {
                let got = arr.lookup(va, asid).map(|s| tag_of(arr.entry(s)));
                let want = model.lookup(va, asid);
                assert_eq!(got, want, "step {step}: {op:?}");
                if want.is_none() {
                    let a = if global { GLOBAL_ASID } else { asid };
                    let mut e = TlbEntry::new(va >> shift, shift, a, 0, 0x3F, true, 0);
                    e.prefetched = prefetched;
                    let victim = arr.insert(e, &mut stats).unwrap().map(|v| tag_of(&v));
                    assert_eq!(
                        victim,
                        model.insert((va >> shift, shift, a), prefetched),
                        "step {step}"
                    );
                }
            }
            Op::Refill {
                va,
                asid,
                global,
                shift,
            } => {
                let a = if global { GLOBAL_ASID } else { asid };
                let e = TlbEntry::new(va >> shift, shift, a, 0, 0x3F, true, 0);
                let victim = arr.insert(e, &mut stats).unwrap().map(|v| tag_of(&v));
                assert_eq!(
                    victim,
                    model.insert((va >> shift, shift, a), false),
                    "step {step}"
                );
            }
            Op::Flush => assert_eq!(arr.flush(&mut stats), model.remove_where(|_| true)),
            Op::FlushAsid(a) => assert_eq!(
                arr.flush_asid(a, &mut stats),
                model.remove_where(|t| t.2 == a)
            ),
            Op::FlushVa(va, a) => {
                assert_eq!(arr.flush_va(va, a, &mut stats), model.flush_range(va, 1, a))
            }
            Op::FlushRange(va, size, a) => {
                assert_eq!(
                    arr.flush_range(va, size, a, &mut stats),
                    model.flush_range(va, size, a),
                    "step {step}"
                )
            }
        }
        assert_eq!(stats.evictions, model.evictions, "step {step}");
        assert_eq!(stats.invalidations, model.invalidations, "step {step}");
        assert_eq!(stats.prefetch_fills, model.fills, "step {step}");
        assert_eq!(stats.prefetch_useless, model.useless, "step {step}");
    }
    let ways_state: Vec<Option<Tag>> = arr
        .ways_state()
        .iter()
        .map(|w| w.as_ref().map(tag_of))
        .collect();
    let model_state: Vec<Option<Tag>> = model
        .slots
        .iter()
        .flatten()
        .map(|w| w.map(|w| w.tag))
        .collect();
    assert_eq!(ways_state, model_state);
    assert_eq!(arr.len(), model_state.iter().flatten().count());
}

fn geometry() -> impl Strategy<Value = (u32, u32)> {
    prop::sample::select(vec![(8u32, 8u32), (8, 1), (16, 4), (8, 2), (4, 4)])
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(vec![
        Policy::Lru,
        Policy::Fifo,
        Policy::Random,
        Policy::Plru,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn array_matches_model(
        (entries, ways) in geometry(), policy in policy(), seed in 0u64..4,
        ops in prop::collection::vec(op_strategy(false), 20..150),
    ) {
        run(entries, ways, policy, &[4096], seed, &ops);
    }

    #[test]
    fn multi_size_array_matches_model(
        (entries, ways) in prop::sample::select(vec![(8u32, 8u32), (16, 4)]), policy in policy(),
        seed in 0u64..4, ops in prop::collection::vec(op_strategy(true), 20..150),
    ) {
        run(entries, ways, policy, &[4096, 2 << 20], seed, &ops);
    }
}

#[test]
fn lru_fifo_plru_random_hand_worked() {
    let one_set = |p| TlbArray::new(&TlbConfig::new(4, 4, p, &[4096], 1, "t", 7).unwrap());
    let fill = |a: &mut TlbArray, s: &mut TlbStats, vpn: u64| {
        a.insert(TlbEntry::new(vpn, 12, 0, 0, 0x3F, true, 0), s)
            .unwrap()
            .map(|v| v.vpn)
    };
    let mut s = TlbStats::default();
    let mut lru = one_set(Policy::Lru);
    for vpn in 0..4 {
        assert_eq!(fill(&mut lru, &mut s, vpn), None);
    }
    assert!(lru.lookup(0, 0).is_some() && lru.lookup(1 << 12, 0).is_some());
    assert_eq!(fill(&mut lru, &mut s, 4), Some(2));
    assert_eq!(fill(&mut lru, &mut s, 5), Some(3));
    assert_eq!(fill(&mut lru, &mut s, 6), Some(0));

    let mut fifo = one_set(Policy::Fifo);
    for vpn in 0..4 {
        fill(&mut fifo, &mut s, vpn);
    }
    assert!(fifo.lookup(0, 0).is_some());
    assert_eq!(fill(&mut fifo, &mut s, 0), None); // in place: keeps the fill order
    assert_eq!(fill(&mut fifo, &mut s, 4), Some(0));

    let mut plru = one_set(Policy::Plru);
    for vpn in 0..4 {
        fill(&mut plru, &mut s, vpn);
    }
    assert_eq!(fill(&mut plru, &mut s, 4), Some(0));
    assert_eq!(fill(&mut plru, &mut s, 5), Some(2));
    assert!(plru.lookup(1 << 12, 0).is_some());
    assert_eq!(fill(&mut plru, &mut s, 6), Some(3));
    let vpns: Vec<u64> = plru.ways_state().iter().map(|w| w.unwrap().vpn).collect();
    assert_eq!(vpns, vec![4, 1, 5, 6]);

    let mut random = one_set(Policy::Random);
    let mut rng = XorShift64::new(7);
    for vpn in 0..4 {
        fill(&mut random, &mut s, vpn);
    }
    let mut ways = [0u64, 1, 2, 3];
    for vpn in 4..40 {
        let w = (rng.next() % 4) as usize;
        assert_eq!(fill(&mut random, &mut s, vpn), Some(ways[w]));
        ways[w] = vpn;
    }
}

#[test]
fn plru_with_128_ways_uses_two_words() {
    let cfg = TlbConfig::new(128, 128, Policy::Plru, &[4096], 1, "t", 0).unwrap();
    let mut arr = TlbArray::new(&cfg);
    let mut s = TlbStats::default();
    let shifts = vec![12u8];
    let mut model = Model::new(1, 128, Policy::Plru, shifts, 0);
    for vpn in 0..600u64 {
        let vpn = (vpn * 7919) % 300;
        let hit = arr.lookup(vpn << 12, 0).map(|x| arr.entry(x).vpn);
        assert_eq!(hit, model.lookup(vpn << 12, 0).map(|t| t.0));
        if hit.is_none() {
            let v = arr
                .insert(TlbEntry::new(vpn, 12, 0, 0, 0, true, 0), &mut s)
                .unwrap();
            assert_eq!(
                v.map(|v| v.vpn),
                model.insert((vpn, 12, 0), false).map(|t| t.0)
            );
        }
    }
    assert!(arr.plru_bits(0).len() == 2 && arr.plru_bits(0)[1] != 0);
}

#[test]
fn global_entries_and_flushes() {
    let cfg = TlbConfig::new(8, 8, Policy::Lru, &[4096, 2 << 20], 1, "t", 0).unwrap();
    let mut arr = TlbArray::new(&cfg);
    let mut s = TlbStats::default();
    arr.insert(TlbEntry::new(1, 12, GLOBAL_ASID, 0, 0, true, 0), &mut s)
        .unwrap();
    arr.insert(TlbEntry::new(2, 12, 1, 0, 0, true, 0), &mut s)
        .unwrap();
    for asid in [0, 1, 2, 65535] {
        assert!(arr.lookup(1 << 12, asid).is_some());
    }
    assert!(arr.lookup(2 << 12, 0).is_none());
    assert_eq!(arr.flush_asid(1, &mut s), 1);
    assert_eq!(arr.flush_va(1 << 12, Some(5), &mut s), 1);
    assert!(arr.is_empty() && arr.globals() == 0);
    // A small entry is found before a covering large one; INVLPG drops both.
    arr.insert(TlbEntry::new(1, 21, 0, 0, 0, true, 1), &mut s)
        .unwrap();
    arr.insert(TlbEntry::new((1 << 9) + 5, 12, 0, 0, 0, true, 0), &mut s)
        .unwrap();
    let hit = arr.lookup((1 << 21) + (5 << 12), 0).unwrap();
    assert_eq!(arr.entry(hit).shift, 12);
    assert_eq!(arr.flush_va((1 << 21) + (5 << 12), None, &mut s), 2);
    assert_eq!(s.invalidations, 4);
    // Ranges at the top of the address space do not overflow.
    arr.insert(TlbEntry::new(u64::MAX >> 12, 12, 0, 0, 0, true, 0), &mut s)
        .unwrap();
    assert_eq!(arr.flush_range(u64::MAX - 8191, 1 << 20, None, &mut s), 1);
    assert!(arr
        .insert(TlbEntry::new(1, 30, 0, 0, 0, true, 0), &mut s)
        .is_err());
}
