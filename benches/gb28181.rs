//! GB/T 28181 (issue 27), each figure against a baseline measured in the same run:
//!
//! - `catalog`: a 10,000-channel catalog as lower platforms send it, GB2312 (GBK on the
//!   wire): `SumNum` 10000 in 500 messages of 20 items (as WVP and Hikvision platforms
//!   split it), and one body of 10,000 items. Time to decode, parse and assemble it (best of
//!   `SKYNET_BENCH_RUNS`, default 5), items/s, and memory: bytes allocated at the peak and
//!   held by the assembled catalog, per item (a counting global allocator). Baseline: the
//!   same catalog in UTF-8, the cost of GB2312 decoding.
//!
//! `SKYNET_BENCH_PART=catalog` picks one part.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use skynet_gb28181::manscdp::{self, Body, Catalog, CatalogAssembler, CatalogItem, ItemStatus};

/// Counts the bytes live on the heap and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LOWER: &str = "34020000002000000002";
const ITEMS: usize = 10_000;

fn main() {
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_else(|_| "all".into());
    println!("skynet GB/T 28181 benchmark");
    if part == "all" || part == "catalog" {
        catalog();
    }
}

/// A platform's tree: 10 business groups ("215"), 100 NVRs ("118") and the rest cameras
/// ("132") with names in Chinese, a maker, coordinates and a status, as real catalogs have.
fn items() -> Vec<CatalogItem> {
    let roads = ["解放路", "人民路", "长江路", "黄山路", "望江路"];
    (0..ITEMS)
        .map(|n| {
            let (kind, parent) = if n < 10 {
                ("215", None)
            } else if n < 110 {
                ("118", Some(format!("3402000000215{:07}", n % 10)))
            } else {
                ("132", Some(format!("3402000000118{:07}", 10 + n % 100)))
            };
            CatalogItem {
                device_id: format!("3402000000{kind}{n:07}"),
                name: format!("{}与{}路口{n}号", roads[n % 5], roads[(n / 5) % 5]),
                manufacturer: Some("Hikvision".into()),
                model: None,
                civil_code: Some("340200".into()),
                parental: Some(kind != "132"),
                parent_id: parent,
                longitude: Some(117.2272 + n as f64 * 1e-5),
                latitude: Some(31.8206 + n as f64 * 1e-5),
                status: if n % 7 == 0 {
                    ItemStatus::Off
                } else {
                    ItemStatus::On
                },
            }
        })
        .collect()
}

/// Decodes, parses and assembles `bodies`; the catalog, the peak of bytes allocated above
/// what was live at the start, and the seconds.
fn assemble(bodies: &[Vec<u8>], limits: &manscdp::Limits) -> (Catalog, usize, f64) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let mut assembler = CatalogAssembler::default();
    let mut done = None;
    for body in bodies {
        let Body::Catalog(part) = manscdp::parse(body, limits).expect("a catalog part") else {
            panic!("not a catalog");
        };
        if let Some(c) = assembler.push(part, started).expect("assembled") {
            done = Some(c);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let catalog = done.expect("the whole catalog");
    assert_eq!(catalog.items.len(), ITEMS);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    (catalog, peak, seconds)
}

fn catalog() {
    let runs: usize = std::env::var("SKYNET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let all = items();
    let parts: Vec<Vec<u8>> = all
        .chunks(20)
        .map(|c| manscdp::catalog_response(1, LOWER, ITEMS as u32, c))
        .collect();
    let single = vec![manscdp::catalog_response(2, LOWER, ITEMS as u32, &all)];
    // The same text in UTF-8 (the declaration still says GB2312, as many devices send it).
    let utf8 = |bodies: &[Vec<u8>]| -> Vec<Vec<u8>> {
        bodies
            .iter()
            .map(|b| {
                manscdp::decode_body(
                    b,
                    &manscdp::Limits {
                        max_body: usize::MAX,
                        ..Default::default()
                    },
                )
                .expect("GB2312")
                .into_bytes()
            })
            .collect()
    };
    assert!(
        std::str::from_utf8(&parts[1]).is_err(),
        "GB2312 on the wire"
    );
    // One body of 10,000 items is over the default 1 MiB body limit: raised for it.
    let wide = manscdp::Limits {
        max_body: 8 * 1024 * 1024,
        ..Default::default()
    };
    let wire = |b: &[Vec<u8>]| b.iter().map(Vec::len).sum::<usize>();
    println!("  catalog of {ITEMS} items (10 groups, 100 NVRs, 9,890 cameras), best of {runs}:");
    println!(
        "    {:<44} {:>10} {:>9} {:>12} {:>12} {:>11} {:>11}",
        "form", "wire bytes", "ms", "items/s", "peak B/item", "held B/item", "wire B/item"
    );
    for (name, bodies, limits) in [
        (
            "GB2312, 500 messages of 20 (SumNum 10000)",
            parts.clone(),
            manscdp::Limits::default(),
        ),
        (
            "UTF-8, 500 messages of 20 (baseline)",
            utf8(&parts),
            manscdp::Limits::default(),
        ),
        ("GB2312, one body of 10,000", single.clone(), wide),
        ("UTF-8, one body of 10,000 (baseline)", utf8(&single), wide),
    ] {
        let mut best = f64::INFINITY;
        let mut peak = 0;
        let mut held = 0;
        for _ in 0..runs {
            let before = LIVE.load(Ordering::Relaxed);
            let (catalog, p, s) = assemble(&bodies, &limits);
            held = LIVE.load(Ordering::Relaxed) - before;
            assert_eq!(catalog.cameras().count(), ITEMS - 110);
            drop(catalog);
            peak = p;
            best = best.min(s);
        }
        println!(
            "    {name:<44} {:>10} {:>9.2} {:>12.0} {:>12.0} {:>11.0} {:>11.0}",
            wire(&bodies),
            best * 1e3,
            ITEMS as f64 / best,
            peak as f64 / ITEMS as f64,
            held as f64 / ITEMS as f64,
            wire(&bodies) as f64 / ITEMS as f64,
        );
    }
}
