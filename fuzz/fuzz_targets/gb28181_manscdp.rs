//! MANSCDP bodies (GB2312/GBK/UTF-8 XML) on any bytes: nothing may panic; a catalog that
//! parses holds only 20-digit ids within the item limit, and assembling it stays bounded.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use skynet_gb28181::manscdp::{Body, CatalogAssembler, Limits, is_gb_id, parse, parse_str};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_items: 64,
        ..Limits::default()
    };
    match parse(data, &limits) {
        Ok(Body::Catalog(part)) => {
            assert!(part.items.len() <= limits.max_items);
            assert!(part.items.iter().all(|i| is_gb_id(&i.device_id)));
            assert!(is_gb_id(&part.device_id));
            let mut asm = CatalogAssembler::new(64, 4, Duration::from_secs(60));
            if let Ok(Some(cat)) = asm.push(part.clone(), Instant::now()) {
                assert!(cat.items.len() <= part.sum_num as usize);
                assert!(cat.cameras().count() <= cat.items.len());
            }
        }
        Ok(body) => assert!(is_gb_id(body.device_id())),
        Err(_) => {}
    }
    let _ = parse_str(&String::from_utf8_lossy(data), &limits);
});
